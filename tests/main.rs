//! Integration tests over the real binaries: `spawner` and `agent-exec` as built by
//! `cargo build --release` (which `cargo xtask test` runs first), real SQLite files, and
//! the real agent components from `agents/` (built by `cargo xtask build-agents`).
//! Every test gets its own home directory in a temp dir.

mod harness;

/// gpu-broker: inference from agents, answers against Python onnxruntime's, faults, lifecycle.
mod broker;
/// `spawner agents` and `spawner runs`.
mod cli;
/// command-guard: allow, deny, rules read fresh on every run.
mod command_guard;
/// Durable runs: the journal of host calls, resume after a kill, replay, retries, and the
/// daemon's runs.resume and runs.replay.
mod durable;
/// echo: input from words, files and stdin; JSON reports; phase timings.
mod echo;
/// Agents that trap, hang, hoard memory, or get killed; a corrupt compiled cache.
mod faults;
/// `spawner hook`: git and Claude Code protocols, secret-guard, install/uninstall.
mod hooks;
/// Language models: chat from agents on the embedded model, against the Python loop.
mod llm;
/// Bad agent names, missing components, pin mismatches, invalid manifests.
mod manifests;
/// A remote host for tests: a network namespace linked to the machine's.
mod network;
/// notes: memory that outlives the process; concurrent writers.
mod notes;
/// shout-py and shout-js: agents in Python and JavaScript, compiled outside their first
/// run's deadline.
mod other_languages;
/// Remote LLM providers: consent, evidence and faults against a real llama.cpp server.
mod providers;
/// What an agent can and cannot see: environment, filesystem, inference.
mod sandbox;
/// `spawner serve`: the daemon, its methods, misbehaving clients and agents, load.
mod serve;
/// Sub-runs: fan-out under admission control, order, cancel, refusals, resume and replay.
mod subruns;
/// Tools: MCP servers (time, git, filesystem, everything over HTTP, a faulty one) through
/// the host, the allowlist, faults, consent, evidence, and the tool-agent loop.
mod tools;
