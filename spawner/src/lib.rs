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
//! - [`request`]: one request from any front: envelope, spawn, and the record of a run
//!   agent-exec could not finish.
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

pub mod cli;
pub mod client;
pub mod commands;
pub mod exit;
pub mod hook;
pub mod request;
pub mod run_id;
pub mod serve;
pub mod spawn;
