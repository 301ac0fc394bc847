// The Node.js peer of `cargo xtask bench`: a process that answers with its arguments, the
// same job as the echo agent.
process.stdout.write(process.argv.slice(2).join(" ") + "\n");
