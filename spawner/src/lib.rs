//! spawner: the front process. It finds the agent, spawns a fresh `agent-exec` for each
//! request under one spawn policy, and reports what happened.
//!
//! # Layout
//!
//! - [`cli`]: the command line (clap), one struct per subcommand.
//! - [`commands`]: one module per subcommand, each with an `execute()`.
//! - [`spawn`]: the spawn policy, in one place: posix_spawn (no `pre_exec`), a process
//!   group per run, resource limits, the deadline that kills the whole group, signal
//!   forwarding, reaping.
//! - [`request`]: one request from any front: envelope header, retries, sub-runs, and the
//!   record of a run agent-exec could not finish.
//! - [`executor`]: where an attempt runs (today [`executor::Local`]: a fresh agent-exec,
//!   or one of the daemon's spares); [`cancel`]: the token that stops a run early.
//! - [`durable`]: which durable runs may be resumed or replayed, and the request that
//!   runs one again (the command line's `runs resume|replay`, the daemon's methods).
//! - [`hook`]: hook protocols (Claude Code, git, plain): the caller's wire format to one
//!   normalized event, and the agent's verdict back to the caller's answer.
//! - [`serve`]: the `spawner serve` daemon (JSON-RPC on a local socket); [`client`]
//!   calls it.
//! - [`exit`]: how an error chain becomes an exit code (the table is
//!   [`agent_contract::outcome`]).
//!
//! # A request, end to end
//!
//! `spawner run echo hello` resolves the home, validates the agent name, reads
//! `agent.toml` (for the deadline), writes the request envelope to a new `agent-exec`'s
//! standard input, and waits. The child writes the answer straight to the inherited
//! standard output and its log lines to standard error; the spawner copies nothing. Its
//! exit code becomes the spawner's. If the child outlives its deadline, the spawner kills
//! its process group and records the run as `timeout` itself.

/// `eprintln!` that never panics. Standard error may be a pipe whose reader went away (an
/// editor that gave up on its hook, `2>&-` in a script): that is no bug, and must not turn
/// the run's outcome into a panic's exit code 101. What cannot be said is dropped.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// `eprint!` that never panics (see [`say!`]).
#[macro_export]
macro_rules! say_text {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stderr(), $($arg)*);
    }};
}

/// Make sure standard input, output and error are open (on `/dev/null` when the caller
/// closed them): otherwise the first file this process opens (the memory store, a lock)
/// would take descriptor 2, and every message meant for standard error would land in it.
pub fn ensure_standard_fds() {
    use nix::fcntl::{FcntlArg, OFlag, fcntl, open};
    use std::os::fd::{AsRawFd, BorrowedFd, IntoRawFd};
    for fd in 0..=2 {
        // SAFETY: 0, 1 and 2 are only borrowed for the check; an invalid one fails with EBADF.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        if fcntl(borrowed, FcntlArg::F_GETFD) == Err(nix::errno::Errno::EBADF) {
            // The lowest free descriptor is the one that is closed.
            if let Ok(null) = open("/dev/null", OFlag::O_RDWR, nix::sys::stat::Mode::empty())
                && null.as_raw_fd() == fd
            {
                let _ = null.into_raw_fd();
            }
        }
    }
}

pub mod admission;
pub mod cancel;
pub mod cli;
pub mod client;
pub mod commands;
pub mod durable;
pub mod executor;
pub mod exit;
pub mod hook;
pub mod request;
pub mod run_id;
pub mod serve;
pub mod spawn;
pub mod subruns;
