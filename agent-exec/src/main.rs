//! agent-exec: runs one agent request read from standard input, then exits.
//! See the library docs for the phases and `agent_contract::outcome` for exit codes.

/// Linked against musl (`cargo xtask setup` does where it can), mimalloc: musl's own
/// allocator made a Python agent's request (thousands of small allocations while its
/// component loads) 1.06-1.13x as long as with glibc's (benches/ab.md).
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    agent_exec::main_entry()
}
