//! agent-compile: `agent-compile <home> <agent>` compiles the agent's component into the
//! home's compiled cache and exits. The spawner runs it when a request finds no entry,
//! before the request's deadline starts; agent-exec runs it for a request sent to it
//! directly. It links Cranelift so that agent-exec need not (see `agent_exec::compile`).

fn main() -> std::process::ExitCode {
    agent_exec::compile::main_entry()
}
