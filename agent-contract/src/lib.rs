//! What `spawner` and `agent-exec` agree on, kept small so the front process stays small.
//!
//! # Layout
//!
//! - [`home`]: where things live (agents, the memory store, the compiled-component cache)
//!   and how an agent name becomes a directory, safely.
//! - [`manifest`]: `agent.toml`, parsed into a raw form with source spans, then validated
//!   into a [`Manifest`]; every error names the file, line and column.
//! - [`envelope`]: the request envelope `spawner` writes on `agent-exec`'s standard input.
//! - [`hook`]: hook calls in one normalized form, and an agent's verdict on them.
//! - [`imports`]: the interfaces the host provides to components, and a check of a
//!   component's imports against them.
//! - [`outcome`]: the one table of run outcomes, their exit codes and status names.
//! - [`report`]: the JSON report of a run (`--json`) and its phase timings.
//! - [`subruns`]: the wire between a parent run's agent-exec and the spawner that starts
//!   its sub-runs.
//! - [`tools`]: `tools.toml`, the MCP tool servers of a home.
//! - [`service`]: what the home's long-lived processes (daemon, broker) set up for
//!   themselves at start: their own resource limits.

pub mod envelope;
pub mod home;
pub mod hook;
pub mod imports;
pub mod layout;
pub mod manifest;
pub mod outcome;
pub mod providers;
pub mod report;
pub mod service;
pub mod subruns;
pub mod tools;

pub use envelope::{LogFormat, OutputFormat, RequestHeader};
pub use home::{AgentLookupError, Home};
pub use manifest::{ComponentError, Manifest, ManifestError};
pub use outcome::Outcome;
pub use report::{PhaseTimings, RunReport};
