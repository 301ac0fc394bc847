//! agent-exec: one request, in one fresh process, then exit.
//!
//! # Theory of operation
//!
//! `spawner` starts `agent-exec` with the request envelope on standard input (a JSON
//! header line, then the input bytes). [`execute`] then goes through the phases below,
//! timing each one into the run record:
//!
//! 1. **config**: read the envelope, load and validate the agent's `agent.toml` (fresh on
//!    every request: an edit applies to the next request, no restart).
//! 2. **store**: make sure the home is private. The SQLite memory store is opened later,
//!    when the run first uses memory or has writes to commit (or was opened by a spare).
//! 3. **load**: map the precompiled component from the cache ([`cache`]), checking the
//!    sha256 pin against the hash the entry carries. On a miss the spawner's requests
//!    (`CompileStep::Defer`) exit at once, unrecorded, for the spawner to compile the
//!    component (`agent-compile`, [`compile`]) before the deadline and ask again; a
//!    request sent otherwise runs agent-compile itself, before its deadline is armed.
//!    agent-exec has no compiler of its own.
//! 4. **instantiate**: link the WASI interfaces (no network, no environment, only declared
//!    preopens) and the host interfaces of `wit/agent.wit` ([`host`]) that the component
//!    imports, and no others ([`link`]), with the limits applied: a
//!    wall-clock deadline by epoch interruption, a linear-memory cap, optional fuel.
//! 5. **handler**: call the agent's `handle` export (for a hook, with the normalized
//!    event of the request header, and its verdict into the JSON report).
//! 6. **commit**: the agent's buffered memory writes and the run record, in one
//!    transaction; a failed run records only the run. A run with no writes appends its
//!    record to the store's run log ([`memory_store::run_log`]) instead.
//!
//! The answer goes to standard output (raw bytes, or a JSON report), log lines to standard
//! error, and the exit code comes from [`agent_contract::Outcome`].

pub mod cache;
pub mod compile;
mod deadline;
pub mod engine;
mod error;
mod hook;
pub mod host;
pub mod inference;
pub mod journal;
pub mod link;
pub mod llm;
mod logging;
mod run;
pub mod subruns;
pub mod tools;

pub use error::ExecError;
pub use run::{Execution, Prepared, execute};

/// The process entry point: run the request on standard input, answer, return the exit code.
///
/// `agent-exec --prepare <home> [--with-store]` is a spare: it sets up what does not depend
/// on the request ([`Prepared`]; with `--with-store`, the store's connection too) and then
/// waits for its one request on standard input. The `spawner serve` daemon keeps a few, so
/// that a request does not wait for a process to start.
///
/// A component is compiled by `agent-compile` ([`compile`]), not here.
pub fn main_entry() -> std::process::ExitCode {
    let mut started = std::time::Instant::now();
    let mut started_at = std::time::SystemTime::now();
    let mut args = std::env::args_os().skip(1);
    let spare = match (args.next(), args.next(), args.next(), args.next()) {
        (None, _, _, _) => None,
        (Some(flag), Some(home), None, None) if flag == "--prepare" => Some((home, false)),
        (Some(flag), Some(home), Some(store), None)
            if flag == "--prepare" && store == "--with-store" =>
        {
            Some((home, true))
        }
        _ => {
            eprintln!(
                "agent-exec: usage: agent-exec [--prepare <home> [--with-store]] < envelope (agent-compile compiles components)"
            );
            return std::process::ExitCode::from(agent_contract::Outcome::Usage.exit_code());
        }
    };
    let prepared = match spare.map(|(home, with_store)| Prepared::new(home.into(), with_store)) {
        None => None,
        Some(Ok(p)) => Some(p),
        Some(Err(e)) => {
            eprintln!("agent-exec: error: cannot prepare: {e}");
            return std::process::ExitCode::from(e.outcome().exit_code());
        }
    };
    let mut stdin = std::io::stdin().lock();
    if prepared.is_some() {
        // Wait for the request before starting the clock: the idle wait is not its time.
        use std::io::BufRead;
        let _ = stdin.fill_buf();
        started = std::time::Instant::now();
        started_at = std::time::SystemTime::now();
    }
    let exec = execute(stdin, started, started_at, prepared);
    exec.answer()
}
