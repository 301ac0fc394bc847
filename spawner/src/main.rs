//! spawner: run AI agents on demand, one fresh process per request.
//! See the library docs for the layout; exit codes are `agent_contract::outcome`.

use std::process::ExitCode;

use clap::Parser;

/// Linked against musl, mimalloc: musl's allocator maps and unmaps small groups as it
/// goes, which a short command-line process pays in system calls.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    spawner::ensure_standard_fds();
    let cli = spawner::cli::Cli::parse();
    match spawner::commands::dispatch(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            spawner::say!("spawner: error: {e:#}");
            ExitCode::from(spawner::exit::exit_code(&e))
        }
    }
}
