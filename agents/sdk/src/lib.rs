//! The Rust SDK for agents: implement [`Agent`], call [`export!`], build for
//! `wasm32-wasip2`, and the result is a component that `agent-exec` can run.
//!
//! ```ignore
//! use agent_sdk::{Agent, AgentError, Request, Response};
//!
//! struct Echo;
//!
//! impl Agent for Echo {
//!     fn handle(request: Request) -> Result<Response, AgentError> {
//!         Ok(Response::bytes(request.input))
//!     }
//! }
//!
//! agent_sdk::export!(Echo);
//! ```
//!
//! Hook agents (`spawner hook`) read the event with [`hooks::event`], a [`HookEvent`], and
//! answer with [`Response::verdict`] (or [`hooks::decide`]); an agent that ignores hooks
//! still works as one (its `Ok` passes, its [`AgentError::Rejected`] blocks) and carries no
//! code for them.
//!
//! The host interfaces of `wit/agent.wit` are re-exported as [`memory`], [`config`],
//! [`inference`], [`llm`], [`tools`], [`runs`] (sub-runs) and [`log`]; [`chat`] builds conversations for [`llm`],
//! and [`tool_use`] hands [`tools`] to a model and reads its tool calls back. Memory writes become durable when the handler returns
//! (with `Ok` or `Err`); a trap, timeout or kill discards them.

/// Bindings generated from `wit/agent.wit`, which documents them.
#[allow(
    missing_docs,
    reason = "generated from wit/agent.wit; the WIT file carries the docs"
)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "agent",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "export_bindings",
        default_bindings_module: "agent_sdk::bindings",
    });
}

pub use bindings::spawner::agent::hooks::{
    AddedLine, Advice, AssistantEvent, Decision, FileChange, HookEvent, Push, PushRef, Verdict,
};
pub use bindings::spawner::agent::types::{AgentError, Request, Response};
pub use bindings::spawner::agent::{config, hooks, inference, llm, memory, runs, tools};

pub mod tool_use;

/// What an agent implements: one request in, one response (or typed error) out.
pub trait Agent {
    /// Handle one request. Runs once per process; nothing survives it but memory.
    fn handle(request: Request) -> Result<Response, AgentError>;
}

/// Export `$agent` (a type implementing [`Agent`]) as this component's handler.
#[macro_export]
macro_rules! export {
    ($agent:ty) => {
        struct __AgentSdkExport;
        impl $crate::bindings::Guest for __AgentSdkExport {
            fn handle(
                request: $crate::Request,
            ) -> ::core::result::Result<$crate::Response, $crate::AgentError> {
                <$agent as $crate::Agent>::handle(request)
            }
        }
        $crate::bindings::export_bindings!(__AgentSdkExport with_types_in $crate::bindings);
    };
}

impl Request {
    /// The input as UTF-8 text, or an `invalid-input` error saying it is not.
    pub fn text(&self) -> Result<&str, AgentError> {
        std::str::from_utf8(&self.input)
            .map_err(|e| AgentError::InvalidInput(format!("input is not UTF-8 text: {e}")))
    }
}

impl Response {
    /// A response carrying `text`.
    pub fn text(text: impl Into<String>) -> Response {
        Response::bytes(text.into().into_bytes())
    }

    /// A response carrying `output` unchanged.
    pub fn bytes(output: Vec<u8>) -> Response {
        Response { output }
    }

    /// A hook's answer: decide `verdict` ([`hooks::decide`]), with no output.
    pub fn verdict(verdict: Verdict) -> Response {
        hooks::decide(&verdict);
        Response { output: Vec::new() }
    }
}

impl FileChange {
    /// Every line of `text` as added to `path`, numbered from 1.
    pub fn whole_text(path: impl Into<String>, text: &str) -> FileChange {
        FileChange {
            path: path.into(),
            added: text
                .lines()
                .zip(1u32..)
                .map(|(text, line)| AddedLine {
                    line,
                    text: text.to_owned(),
                })
                .collect(),
        }
    }
}

impl Verdict {
    /// A verdict with `decision` and, when given, its reason.
    pub fn new(decision: Decision, reason: Option<String>) -> Verdict {
        Verdict {
            decision,
            reason,
            message: None,
            rewrite: None,
        }
    }

    /// No objection.
    pub fn pass() -> Verdict {
        Verdict::new(Decision::Pass, None)
    }

    /// Block, saying why.
    pub fn deny(reason: impl Into<String>) -> Verdict {
        Verdict::new(Decision::Deny, Some(reason.into()))
    }
}

/// Log lines, written by the host to its standard error with the run id attached.
pub mod log {
    use crate::bindings::spawner::agent::log::{Level, log};

    /// Log at debug level.
    pub fn debug(message: &str) {
        log(Level::Debug, message);
    }
    /// Log at info level.
    pub fn info(message: &str) {
        log(Level::Info, message);
    }
    /// Log at warn level.
    pub fn warn(message: &str) {
        log(Level::Warn, message);
    }
    /// Log at error level.
    pub fn error(message: &str) {
        log(Level::Error, message);
    }
}

/// Turn a memory error into an agent error, for `?` in handlers.
impl From<memory::MemoryError> for AgentError {
    fn from(e: memory::MemoryError) -> Self {
        AgentError::Failed(format!("memory: {e:?}"))
    }
}

/// Turn an inference error into an agent error, for `?` in handlers. An `unavailable`
/// broker makes the run end `broker_unavailable` (exit 12) whatever the agent answers
/// after it, unless the agent handles it and answers `Ok`.
impl From<inference::InferenceError> for AgentError {
    fn from(e: inference::InferenceError) -> Self {
        use inference::InferenceError as E;
        match e {
            E::InvalidInput(m) => AgentError::Failed(format!("inference: invalid input: {m}")),
            E::Unavailable(m) => AgentError::Failed(format!("inference: {m}")),
            E::NotAllowed(m) => AgentError::Failed(format!("inference: not allowed: {m}")),
            E::UnknownModel(m) => AgentError::Failed(format!("inference: unknown model: {m}")),
            E::Failed(m) => AgentError::Failed(format!("inference: {m}")),
        }
    }
}

impl inference::Tensor {
    /// A float32 tensor named `name` of `shape` holding `values` (row-major).
    pub fn from_f32(name: &str, shape: &[u64], values: &[f32]) -> inference::Tensor {
        inference::Tensor {
            name: name.into(),
            dtype: inference::Dtype::Float32,
            shape: shape.to_vec(),
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// The values of a float32 tensor; None for another dtype.
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        (self.dtype == inference::Dtype::Float32).then(|| {
            self.data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        })
    }
}

/// Turn an LLM error into an agent error, for `?` in handlers.
impl From<llm::LlmError> for AgentError {
    fn from(e: llm::LlmError) -> Self {
        use llm::LlmError as E;
        match e {
            E::InvalidInput(m) => AgentError::InvalidInput(format!("llm: {m}")),
            E::NotAllowed(m) => AgentError::Failed(format!("llm: not allowed: {m}")),
            E::Unavailable(m) => AgentError::Failed(format!("llm: unavailable: {m}")),
            E::ContextTooLong(m) => AgentError::InvalidInput(format!("llm: context too long: {m}")),
            E::ConsentRequired(m) => AgentError::Failed(format!("llm: consent required: {m}")),
            E::Timeout(m) => AgentError::Failed(format!("llm: timeout: {m}")),
            E::Failed(m) => AgentError::Failed(format!("llm: {m}")),
        }
    }
}

/// Turn a tool error into an agent error, for `?` in handlers.
impl From<tools::ToolError> for AgentError {
    fn from(e: tools::ToolError) -> Self {
        AgentError::Failed(format!("tools: {}", tool_use::describe_error(&e)))
    }
}

/// Conversations for [`llm::chat`]: messages by role, and default parameters.
///
/// ```ignore
/// let answer = agent_sdk::chat::ask("smollm2-135m", "Name a prime number.")?;
/// ```
pub mod chat {
    use crate::llm::{self, Completion, LlmError, Message, Params};

    /// A message from `role`.
    pub fn message(role: &str, content: impl Into<String>) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }

    /// A system message.
    pub fn system(content: impl Into<String>) -> Message {
        message("system", content)
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Message {
        message("user", content)
    }

    /// An assistant message (an earlier answer).
    pub fn assistant(content: impl Into<String>) -> Message {
        message("assistant", content)
    }

    /// Greedy decoding, the model's whole context, no stop sequences.
    pub fn params() -> Params {
        Params {
            max_tokens: None,
            temperature: None,
            top_p: None,
            stop: Vec::new(),
            seed: None,
        }
    }

    /// Ask `model` one question, greedily; the answer's text.
    pub fn ask(model: &str, question: &str) -> Result<String, LlmError> {
        llm::chat(model, &[user(question)], &params()).map(|c: Completion| c.text)
    }
}
