//! agent-exec: runs one agent request read from standard input, then exits.
//! See the library docs for the phases and `agent_contract::outcome` for exit codes.

fn main() -> std::process::ExitCode {
    agent_exec::main_entry()
}
