//! `AgentHost`: the one host struct, implementing the host side of `wit/agent.wit`
//! (memory, log, config, inference), WASI's view, and the resource limiter.

use std::collections::BTreeMap;

use memory_store::{MemoryError, RunMemory};
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Bindings generated from `wit/agent.wit`, which documents them.
#[allow(
    missing_docs,
    reason = "generated from wit/agent.wit; the WIT file carries the docs"
)]
pub mod bindings {
    wasmtime::component::bindgen!({
        world: "agent",
        path: "../wit",
        // A durable run journals the results of host calls, and serves them again.
        additional_derives: [serde::Serialize, serde::Deserialize],
    });
}

pub use bindings::Agent;
use bindings::spawner::agent::{config, hooks, inference, llm, log, memory, runs, tools, types};

use crate::journal::kind::{INFERENCE, LLM, MEMORY, SUB_RUN, TOOL, TOOLS};

/// Per-request state the host functions work on. Lives in the wasmtime `Store`.
pub struct AgentHost {
    /// WASI state: no environment, no network, only declared preopens.
    pub wasi: WasiCtx,
    /// WASI resources (streams, files).
    pub table: ResourceTable,
    /// The store as this run sees it; `None` only after it has been taken back.
    pub memory: Option<RunMemory>,
    /// `[config]` from agent.toml.
    pub config: BTreeMap<String, String>,
    /// Models this agent may call.
    pub allowed_models: Vec<String>,
    /// Where inference calls go (the gpu-broker).
    pub inference: Box<dyn crate::inference::Inference>,
    /// Where chats go (the gpu-broker).
    pub llm: Box<dyn crate::llm::Llm>,
    /// The agent's `[llm]`.
    pub llm_policy: agent_contract::manifest::LlmPolicy,
    /// The agent's `[placement] requires_gpu`.
    pub requires_gpu: bool,
    /// Evidence of the run's chats, in order.
    pub llm_calls: Vec<memory_store::LlmCall>,
    /// Where tool calls go (the gpu-broker, which holds the servers' sessions).
    pub tools: Box<dyn crate::tools::Tools>,
    /// The agent's `[tools]`.
    pub tool_policy: agent_contract::manifest::ToolPolicy,
    /// Evidence of the run's tool calls, in order.
    pub tool_calls: Vec<memory_store::ToolCall>,
    /// When the run's deadline falls (set when it is armed).
    pub deadline: Option<std::time::Instant>,
    /// The home directory (model repository, `providers.toml`).
    pub home: std::path::PathBuf,
    /// Show LLM text on standard error as it comes, in this format (the request asked).
    pub stream_llm: Option<agent_contract::LogFormat>,
    /// Set when an inference call found no broker: a run that then fails is reported as
    /// `broker_unavailable`, not as the agent's own error.
    pub broker_unavailable: Option<String>,
    /// Attached to every log line.
    pub run_id: String,
    /// Attached to every log line.
    pub agent: String,
    /// Cap on each linear memory, in bytes.
    pub memory_cap: u64,
    /// Set when the agent tried to grow past `memory_cap`: the size it asked for.
    pub memory_cap_hit: Option<u64>,
    /// The request's hook event, for a hook call.
    pub hook: Option<agent_contract::hook::HookEvent>,
    /// The agent's verdict on it, once it has decided.
    pub verdict: Option<agent_contract::hook::Verdict>,
    /// A durable run's journal (`None` for other agents).
    pub journal: Option<crate::journal::Shared>,
    /// Set when a journal write failed: the run then fails, as the store did.
    pub journal_error: Option<String>,
    /// The sub-runs this run starts (`runs`).
    pub sub_runs: crate::subruns::SubRuns,
}

impl AgentHost {
    fn memory(&mut self) -> Result<&mut RunMemory, memory::MemoryError> {
        self.memory
            .as_mut()
            .ok_or_else(|| memory::MemoryError::Unavailable("memory is closed".into()))
    }
}

/// Whether a failed call may succeed when made again (a resume makes it again).
trait Transient {
    fn transient(&self) -> bool;
}

impl Transient for llm::LlmError {
    fn transient(&self) -> bool {
        use llm::LlmError as E;
        matches!(
            self,
            E::NotAllowed(_) | E::Unavailable(_) | E::ConsentRequired(_) | E::Timeout(_)
        )
    }
}

impl Transient for tools::ToolError {
    fn transient(&self) -> bool {
        use tools::ToolError as E;
        matches!(
            self,
            E::NotAllowed(_) | E::Unavailable(_) | E::ConsentRequired(_) | E::Timeout(_)
        )
    }
}

impl Transient for inference::InferenceError {
    fn transient(&self) -> bool {
        use inference::InferenceError as E;
        matches!(self, E::NotAllowed(_) | E::Unavailable(_))
    }
}

impl Transient for runs::RunError {
    fn transient(&self) -> bool {
        use runs::RunError as E;
        matches!(self, E::NotAllowed(_) | E::Unavailable(_) | E::Timeout(_))
    }
}

impl Transient for memory::MemoryError {
    fn transient(&self) -> bool {
        matches!(self, memory::MemoryError::Unavailable(_))
    }
}

/// Where a call stands with the journal before it is made.
enum Begun<R> {
    /// Not a durable run.
    Untracked,
    /// Its result, from the journal.
    Served(R),
    /// The run has diverged from its journal.
    Diverged(String),
    /// To be made, then journaled.
    Made(crate::journal::Call),
}

/// How the journal treats a kind of call.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Durability {
    /// It costs or acts: journaled in the store before the guest gets its result.
    Write,
    /// A read: journaled with the next write, or at the run's end.
    Read,
}

impl AgentHost {
    /// Make a host call of `kind` through a durable run's journal: served from it when the
    /// step is journaled, else made by `call` and journaled (unless it failed in a way that
    /// may pass). `fail` turns a divergence or a failed journal write into the error the
    /// guest gets; the run then fails as `diverged` or `store_error`. Other runs just call.
    fn journaled<T, E>(
        &mut self,
        kind: &'static str,
        durability: Durability,
        request: &impl serde::Serialize,
        fail: impl FnOnce(String) -> E,
        call: impl FnOnce(&mut Self) -> Result<T, E>,
    ) -> Result<T, E>
    where
        T: serde::Serialize + serde::de::DeserializeOwned,
        E: serde::Serialize + serde::de::DeserializeOwned + Transient,
    {
        match self.begin_step(kind, request) {
            Begun::Served(result) => result,
            Begun::Diverged(why) => Err(fail(why)),
            Begun::Untracked => call(self),
            Begun::Made(made) => {
                let result = call(self);
                self.end_step(made, result, durability, fail)
            }
        }
    }

    /// The first half of [`AgentHost::journaled`], for a call that must own its arguments.
    fn begin_step<R: serde::de::DeserializeOwned>(
        &mut self,
        kind: &'static str,
        request: &impl serde::Serialize,
    ) -> Begun<R> {
        let Some(journal) = &self.journal else {
            return Begun::Untracked;
        };
        match crate::journal::lock(journal).begin::<R>(kind, request) {
            Ok(crate::journal::Step::Served(result)) => Begun::Served(result),
            Ok(crate::journal::Step::Call(made)) => Begun::Made(made),
            Err(why) => Begun::Diverged(format!("this run diverged from its journal: {why}")),
        }
    }

    /// The second half: journal the result of a call made live.
    fn end_step<T, E>(
        &mut self,
        made: crate::journal::Call,
        result: Result<T, E>,
        durability: Durability,
        fail: impl FnOnce(String) -> E,
    ) -> Result<T, E>
    where
        T: serde::Serialize,
        E: serde::Serialize + Transient,
    {
        let Some(journal) = self.journal.clone() else {
            return result;
        };
        let pending = {
            let mut journal = crate::journal::lock(&journal);
            match &result {
                Err(e) if e.transient() => journal.skip(made),
                _ => journal.record(made, &result),
            }
            match durability {
                Durability::Write => journal.take_pending(),
                Durability::Read => Vec::new(),
            }
        };
        match self.write_journal(&pending) {
            Ok(()) => result,
            Err(why) => Err(fail(why)),
        }
    }

    /// Write journal entries to the store; a failure is kept and fails the run.
    pub(crate) fn write_journal(
        &mut self,
        entries: &[memory_store::JournalEntry],
    ) -> Result<(), String> {
        if entries.is_empty() {
            return Ok(());
        }
        let written = self
            .memory
            .as_ref()
            .ok_or_else(|| "the store is closed".to_owned())
            .and_then(|m| m.store().map_err(|e| e.to_string()))
            .and_then(|store| {
                store
                    .append_journal(&self.run_id, entries)
                    .map_err(|e| e.to_string())
            });
        written.map_err(|e| {
            let why = format!("cannot write this run's journal: {e}");
            self.journal_error.get_or_insert(why).clone()
        })
    }
}

impl WasiView for AgentHost {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Largest table an agent may grow to, in elements.
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl ResourceLimiter for AgentHost {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.memory_cap {
            self.memory_cap_hit = Some(desired as u64);
            return Err(wasmtime::format_err!(
                "linear memory would grow to {desired} bytes, over the cap of {} bytes",
                self.memory_cap
            ));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

fn to_wit(e: MemoryError) -> memory::MemoryError {
    match e {
        MemoryError::InvalidKey(m) => memory::MemoryError::InvalidKey(m),
        MemoryError::TooLarge(m) => memory::MemoryError::TooLarge(m),
        MemoryError::QuotaExceeded(m) => memory::MemoryError::QuotaExceeded(m),
        MemoryError::Store(e) => memory::MemoryError::Unavailable(e.to_string()),
    }
}

impl types::Host for AgentHost {}

impl hooks::Host for AgentHost {
    fn event(&mut self) -> Option<hooks::HookEvent> {
        self.hook.clone().map(crate::hook::to_wit)
    }

    fn decide(&mut self, verdict: hooks::Verdict) {
        crate::hook::decide(&mut self.verdict, verdict);
    }

    fn advise(&mut self, advice: hooks::Advice) {
        crate::hook::advise(&mut self.verdict, advice);
    }

    fn details(&mut self) -> Option<hooks::AssistantDetails> {
        self.hook.as_ref().and_then(crate::hook::details)
    }
}

impl memory::Host for AgentHost {
    fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, memory::MemoryError> {
        self.journaled(
            MEMORY,
            Durability::Read,
            &("get", &key),
            memory::MemoryError::Unavailable,
            |h| h.memory()?.get(&key).map_err(to_wit),
        )
    }

    fn put(&mut self, key: String, value: Vec<u8>) -> Result<(), memory::MemoryError> {
        self.memory()?.put(&key, value).map_err(to_wit)
    }

    fn delete(&mut self, key: String) -> Result<bool, memory::MemoryError> {
        // Whether it was there is a read; the delete itself is buffered, like a put, and
        // made again on every attempt.
        let existed = self.journaled(
            MEMORY,
            Durability::Read,
            &("delete", &key),
            memory::MemoryError::Unavailable,
            |h| h.memory()?.get(&key).map(|v| v.is_some()).map_err(to_wit),
        )?;
        self.memory()?.delete(&key).map_err(to_wit)?;
        Ok(existed)
    }

    fn entries(
        &mut self,
        prefix: String,
        limit: u32,
    ) -> Result<Vec<memory::Entry>, memory::MemoryError> {
        self.journaled(
            MEMORY,
            Durability::Read,
            &("entries", &prefix, limit),
            memory::MemoryError::Unavailable,
            |h| {
                Ok(h.memory()?
                    .list(&prefix, limit)
                    .map_err(to_wit)?
                    .into_iter()
                    .map(|e| memory::Entry {
                        key: e.key,
                        value: e.value,
                    })
                    .collect())
            },
        )
    }

    fn append_event(&mut self, kind: String, payload: Vec<u8>) -> Result<(), memory::MemoryError> {
        let now = memory_store::now_ms();
        self.memory()?
            .append_event(&kind, payload, now)
            .map_err(to_wit)
    }

    fn read_events(
        &mut self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<memory::Event>, memory::MemoryError> {
        self.journaled(
            MEMORY,
            Durability::Read,
            &("read-events", after, limit),
            memory::MemoryError::Unavailable,
            |h| {
                Ok(h.memory()?
                    .read_events(after, limit)
                    .map_err(to_wit)?
                    .into_iter()
                    .map(|e| memory::Event {
                        seq: e.seq,
                        at_ms: e.at_ms,
                        kind: e.kind,
                        payload: e.payload,
                    })
                    .collect())
            },
        )
    }
}

impl log::Host for AgentHost {
    fn log(&mut self, level: log::Level, message: String) {
        let (agent, run_id) = (self.agent.as_str(), self.run_id.as_str());
        let wanted = match level {
            log::Level::Trace => tracing::Level::TRACE,
            log::Level::Debug => tracing::Level::DEBUG,
            log::Level::Info => tracing::Level::INFO,
            log::Level::Warn => tracing::Level::WARN,
            log::Level::Error => tracing::Level::ERROR,
        };
        if !crate::logging::enabled(wanted) {
            return;
        }
        match level {
            log::Level::Trace => tracing::trace!(agent, run_id, "{message}"),
            log::Level::Debug => tracing::debug!(agent, run_id, "{message}"),
            log::Level::Info => tracing::info!(agent, run_id, "{message}"),
            log::Level::Warn => tracing::warn!(agent, run_id, "{message}"),
            log::Level::Error => tracing::error!(agent, run_id, "{message}"),
        }
    }
}

impl config::Host for AgentHost {
    fn get(&mut self, key: String) -> Option<String> {
        self.config.get(&key).cloned()
    }

    fn all(&mut self) -> Vec<(String, String)> {
        self.config
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

impl inference::Host for AgentHost {
    fn infer(
        &mut self,
        model: String,
        inputs: Vec<inference::Tensor>,
    ) -> Result<Vec<inference::Tensor>, inference::InferenceError> {
        if !self.allowed_models.contains(&model) {
            return Err(inference::InferenceError::NotAllowed(format!(
                "model {model:?} is not in [models] allowed of agent {:?} (add it to agent.toml to use it)",
                self.agent
            )));
        }
        let made = match self.begin_step(INFERENCE, &(&model, &inputs)) {
            Begun::Served(result) => return result,
            Begun::Diverged(why) => return Err(inference::InferenceError::Failed(why)),
            Begun::Untracked => None,
            Begun::Made(made) => Some(made),
        };
        let inputs = inputs.into_iter().map(crate::inference::to_wire).collect();
        let result = match self.inference.infer(&model, inputs) {
            Ok(outputs) => Ok(outputs
                .into_iter()
                .map(crate::inference::from_wire)
                .collect()),
            Err(e) => {
                let e = crate::inference::to_wit_error(e);
                if let inference::InferenceError::Unavailable(m) = &e {
                    self.broker_unavailable = Some(m.clone());
                }
                Err(e)
            }
        };
        match made {
            Some(made) => self.end_step(
                made,
                result,
                Durability::Write,
                inference::InferenceError::Failed,
            ),
            None => result,
        }
    }
}

impl llm::Host for AgentHost {
    fn chat(
        &mut self,
        model: String,
        messages: Vec<llm::Message>,
        params: llm::Params,
    ) -> Result<llm::Completion, llm::LlmError> {
        let made = match self.begin_step(LLM, &(&model, &messages, &params)) {
            Begun::Served(result) => return result,
            Begun::Diverged(why) => return Err(llm::LlmError::Failed(why)),
            Begun::Untracked => None,
            Begun::Made(made) => Some(made),
        };
        let answer = self.chat_now(model, messages, params);
        match made {
            Some(made) => self.end_step(made, answer, Durability::Write, llm::LlmError::Failed),
            None => answer,
        }
    }
}

impl AgentHost {
    /// A chat, made now, with its evidence kept.
    fn chat_now(
        &mut self,
        model: String,
        messages: Vec<llm::Message>,
        params: llm::Params,
    ) -> Result<llm::Completion, llm::LlmError> {
        let (agent, memory) = (&self.agent, &self.memory);
        let consent = |provider: &str| consent_of(memory, agent, provider);
        let policy = crate::llm::Policy {
            agent,
            llm: &self.llm_policy,
            deadline: self.deadline,
            home: &self.home,
            consent: &consent,
            stream: self.stream_llm,
            requires_gpu: self.requires_gpu,
        };
        let (answer, call) = crate::llm::chat(&mut *self.llm, &policy, model, messages, params);
        self.llm_calls.push(call);
        if let Err(llm::LlmError::Unavailable(m)) = &answer
            && m.starts_with("the inference broker is unavailable")
        {
            self.broker_unavailable = Some(m.clone());
        }
        answer
    }
}

/// The live consent of the user to `agent`'s use of `name` (a provider or tool server).
fn consent_of(
    memory: &Option<RunMemory>,
    agent: &str,
    name: &str,
) -> Result<Option<memory_store::Consent>, String> {
    let memory = memory.as_ref().ok_or("the store is closed")?;
    memory
        .store()
        .and_then(|store| store.live_consent(agent, name, memory_store::now_ms()))
        .map_err(|e| format!("cannot read the consents: {e}"))
}

impl AgentHost {
    /// Note a broker that could not be reached (see `broker_unavailable`).
    fn note_unavailable(&mut self, error: Option<&tools::ToolError>) {
        if let Some(tools::ToolError::Unavailable(m)) = error
            && m.starts_with("the inference broker is unavailable")
        {
            self.broker_unavailable = Some(m.clone());
        }
    }
}

impl AgentHost {
    /// Run `f` with the tool broker and the policy of this run's tool calls.
    fn with_tools<R>(
        &mut self,
        f: impl FnOnce(&mut dyn crate::tools::Tools, &crate::tools::Policy<'_>) -> R,
    ) -> R {
        let (agent, memory) = (&self.agent, &self.memory);
        let consent = |server: &str| consent_of(memory, agent, server);
        let policy = crate::tools::Policy {
            agent,
            tools: &self.tool_policy,
            deadline: self.deadline,
            home: &self.home,
            consent: &consent,
        };
        f(&mut *self.tools, &policy)
    }
}

impl tools::Host for AgentHost {
    fn list(&mut self) -> Result<Vec<tools::Tool>, tools::ToolError> {
        self.journaled(
            TOOLS,
            Durability::Write,
            &(),
            tools::ToolError::Failed,
            |h| {
                let answer = h.with_tools(crate::tools::list);
                h.note_unavailable(answer.as_ref().err());
                answer
            },
        )
    }

    fn call(
        &mut self,
        server: String,
        tool: String,
        arguments: String,
    ) -> Result<tools::ToolResult, tools::ToolError> {
        let made = match self.begin_step(TOOL, &(&server, &tool, &arguments)) {
            Begun::Served(result) => return result,
            Begun::Diverged(why) => return Err(tools::ToolError::Failed(why)),
            Begun::Untracked => None,
            Begun::Made(made) => Some(made),
        };
        // The step's key: a resume that makes this call again sends the same one.
        let key = made
            .as_ref()
            .map(|m| format!("{}:{}", self.run_id, m.seq()));
        let (answer, evidence) = self.with_tools(|broker, policy| {
            crate::tools::call(broker, policy, server, tool, arguments, key)
        });
        self.tool_calls.push(evidence);
        self.note_unavailable(answer.as_ref().err());
        match made {
            Some(made) => self.end_step(made, answer, Durability::Write, tools::ToolError::Failed),
            None => answer,
        }
    }
}

impl runs::Host for AgentHost {
    fn start(&mut self, agent: String, input: Vec<u8>) -> Result<u32, runs::RunError> {
        let deadline = self.deadline;
        self.sub_runs.start(agent, input, deadline)
    }

    fn join(&mut self, child: u32) -> Result<runs::Finished, runs::RunError> {
        let Some(request) = self.sub_runs.join_request(child) else {
            // Not started: the same error whether journaled or not.
            return self.sub_runs.join(child, self.deadline);
        };
        let made = match self.begin_step(SUB_RUN, &request) {
            Begun::Served(result) => return result,
            Begun::Diverged(why) => return Err(runs::RunError::Unavailable(why)),
            Begun::Untracked => None,
            Begun::Made(made) => Some(made),
        };
        let deadline = self.deadline;
        let answer = self.sub_runs.join(child, deadline);
        let Some(made) = made else {
            return answer;
        };
        // A child that failed in a way that may pass is run again by a resume of this run
        // (its own next attempt), so its result is not journaled.
        let may_pass = answer.as_ref().is_ok_and(|f| {
            f.status
                .parse::<agent_contract::Outcome>()
                .map_or(true, |o| o.may_pass())
        });
        if may_pass {
            if let Some(journal) = &self.journal {
                crate::journal::lock(journal).skip(made);
            }
            return answer;
        }
        self.end_step(made, answer, Durability::Write, runs::RunError::Unavailable)
    }
}
