//! Everything that can end a request early, each mapped to one [`Outcome`].

use std::path::PathBuf;

use agent_contract::Outcome;
use agent_contract::envelope::EnvelopeError;
use agent_contract::home::{AgentLookupError, NoHome};
use agent_contract::manifest::{ComponentError, ManifestError};
use memory_store::StoreError;

/// Why a request did not produce an answer.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The envelope on standard input could not be read.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// No home directory.
    #[error(transparent)]
    NoHome(#[from] NoHome),
    /// The agent name is invalid or names no agent.
    #[error(transparent)]
    Lookup(#[from] AgentLookupError),
    /// `agent.toml` is invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The memory store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The component file is unreadable or does not match its pin.
    #[error(transparent)]
    Component(#[from] ComponentError),
    /// The component is not a valid component or does not fit `wit/agent.wit`.
    #[error("component {} is not a valid agent: {message}", path.display())]
    InvalidComponent {
        /// The component's path.
        path: PathBuf,
        /// What wasmtime said.
        message: String,
    },
    /// A preopen directory could not be opened.
    #[error("cannot preopen {} for the agent: {message}", path.display())]
    Preopen {
        /// The host directory.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The handler returned `invalid-input` or `failed`.
    #[error("{0}")]
    Agent(String),
    /// The handler returned `rejected`.
    #[error("rejected: {0}")]
    Rejected(String),
    /// The agent trapped.
    #[error("agent trapped: {0}")]
    Trap(String),
    /// The deadline passed or fuel ran out.
    #[error("{0}")]
    Timeout(String),
    /// The agent tried to grow memory past its cap.
    #[error(
        "agent stopped at its memory cap: tried to grow linear memory to {desired} bytes, cap is {cap} bytes (raise limits.memory_mb in agent.toml)"
    )]
    MemoryLimit {
        /// The size asked for.
        desired: u64,
        /// The cap.
        cap: u64,
    },
    /// An inference call found no broker, and the agent failed.
    #[error("{0}")]
    BrokerUnavailable(String),
    /// The component has no compiled-cache entry and the request asked agent-exec not to
    /// compile it (`CompileStep::Defer`): nothing ran and nothing was recorded.
    #[error("{0}")]
    NotCompiled(String),
    /// The compile step (`agent-compile`) failed: its outcome and its message.
    #[error("{message}")]
    CompileFailed {
        /// The outcome it exited with.
        outcome: Outcome,
        /// What it said.
        message: String,
    },
    /// A durable run asked its host something else than its journal holds, or its replay
    /// answered otherwise than the run did.
    #[error("{0}")]
    Diverged(String),
    /// A durable run's journal could not be read or written.
    #[error("{0}")]
    Journal(String),
    /// The run was recorded as killed before this process could start it: its owner
    /// ended first ([`memory_store::running`]). Nothing is recorded again.
    #[error("{0}")]
    Settled(String),
    /// Anything else: a bug or unexpected I/O failure.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ExecError {
    /// The outcome this error stands for.
    pub fn outcome(&self) -> Outcome {
        match self {
            ExecError::Envelope(_) | ExecError::NoHome(_) => Outcome::Usage,
            ExecError::Lookup(AgentLookupError::InvalidName { .. }) => Outcome::Usage,
            ExecError::Lookup(AgentLookupError::NotFound { .. }) => Outcome::NotFound,
            ExecError::Manifest(_) => Outcome::Config,
            ExecError::Store(_) => Outcome::Store,
            ExecError::Component(_)
            | ExecError::InvalidComponent { .. }
            | ExecError::Preopen { .. } => Outcome::Component,
            ExecError::Agent(_) => Outcome::AgentError,
            ExecError::Rejected(_) => Outcome::Rejected,
            ExecError::Trap(_) => Outcome::Trap,
            ExecError::Timeout(_) => Outcome::Timeout,
            ExecError::MemoryLimit { .. } => Outcome::MemoryLimit,
            ExecError::BrokerUnavailable(_) => Outcome::BrokerUnavailable,
            ExecError::Diverged(_) => Outcome::Diverged,
            ExecError::Journal(_) => Outcome::Store,
            ExecError::Settled(_) => Outcome::Killed,
            ExecError::CompileFailed { outcome, .. } => *outcome,
            // Never an outcome a caller sees: agent-exec exits with COMPILE_FIRST_EXIT_CODE.
            ExecError::NotCompiled(_) | ExecError::Internal(_) => Outcome::Internal,
        }
    }
}
