//! echo-cli: the echo agent's job as a plain WASI command (`wasi:cli/run`), so that the
//! benchmark can run the same logic with the `wasmtime run` CLI, a peer a user might pick
//! instead of this runtime. Not an agent: it has no manifest and is never installed.

use std::io::Write;

fn main() {
    let words: Vec<String> = std::env::args().skip(1).collect();
    let mut out = std::io::stdout().lock();
    // A closed stdout is the caller's business, as with /bin/echo.
    let _ = writeln!(out, "{}", words.join(" "));
}
