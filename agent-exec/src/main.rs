//! agent-exec: runs one agent request read from standard input, then exits.
//! See the library docs for the phases and `agent_contract::outcome` for exit codes.

/// Linked against musl (`cargo xtask setup` does where it can), mimalloc: musl's own
/// allocator made loading a large component (a Python agent's thousands of small
/// allocations) a tenth slower than with glibc's.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    agent_exec::main_entry()
}
