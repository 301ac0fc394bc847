//! The phases of one request, from envelope to answer.

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agent_contract::envelope::{CompileStep, JournalMode, MAX_OUTPUT_BYTES, read_envelope};
use agent_contract::hook::{Decision, Verdict};
use agent_contract::manifest::{DEFAULT_KEEP_RUNS, PreopenBase};
use agent_contract::{
    Home, LogFormat, Manifest, Outcome, OutputFormat, PhaseTimings, RequestHeader, RunReport,
};
use memory_store::{RunMemory, RunRecord, Store};
use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Store as WasmStore, Trap};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use crate::ExecError;
use crate::cache::CacheError;
use crate::host::bindings::spawner::agent::types;
use crate::host::{Agent, AgentHost};

/// How many bytes one call between guest and host may copy (wasmtime's "hostcall fuel",
/// 128 MiB by default, also spent lifting the handler's answer). Tied to the agent's own
/// memory cap, which bounds what it can hand over anyway, so that an answer over the
/// output limit is refused by name rather than trapping while it is copied.
fn hostcall_fuel(memory_cap: u64) -> usize {
    usize::try_from(memory_cap.saturating_mul(2))
        .unwrap_or(usize::MAX)
        .max(128 << 20)
}

/// The error for a component the cache could not provide.
pub(crate) fn cache_error(e: CacheError, manifest: &Manifest) -> ExecError {
    match e {
        CacheError::Component(e) => ExecError::Component(e),
        CacheError::Compile(message) => ExecError::InvalidComponent {
            path: manifest.component.clone(),
            message,
        },
        e @ CacheError::Missing { .. } => ExecError::NotCompiled(e.to_string()),
        e @ CacheError::Write { .. } => ExecError::Internal(e.to_string()),
    }
}

/// What the agent answered: its output and, for a hook, its verdict.
struct Answer {
    output: Vec<u8>,
    verdict: Option<Verdict>,
}

/// The result of one request, ready to be written out.
pub struct Execution {
    header: Option<RequestHeader>,
    /// The request was a hook call (its event has been handed to the agent).
    hook_call: bool,
    result: Result<Answer, ExecError>,
    cache_hit: Option<bool>,
    timings: PhaseTimings,
    /// The run log's size after this run's record was appended to it, if it was.
    run_log_bytes: Option<u64>,
    /// The run used the store (see [`RunReport::used_store`]).
    used_store: bool,
    home: Option<Home>,
}

impl Execution {
    /// How the request ended.
    pub fn outcome(&self) -> Outcome {
        match &self.result {
            Ok(_) => Outcome::Ok,
            Err(e) => e.outcome(),
        }
    }

    /// Write the answer (standard output) or the error (standard error, or the JSON report)
    /// and return the exit code.
    pub fn answer(self) -> ExitCode {
        if let Err(ExecError::NotCompiled(why)) = &self.result {
            // Nothing to answer: the spawner compiles the component and asks again.
            if crate::logging::enabled(tracing::Level::DEBUG) {
                tracing::debug!("{why}; leaving the compile to the caller");
            }
            return ExitCode::from(agent_contract::envelope::COMPILE_FIRST_EXIT_CODE);
        }
        let outcome = self.outcome();
        let format = self.header.as_ref().map_or(OutputFormat::Raw, |h| h.output);
        let mut stdout = std::io::stdout().lock();
        let written = match (format, self.result) {
            (OutputFormat::Raw, Ok(answer)) => stdout.write_all(&answer.output),
            (OutputFormat::Raw, Err(e)) => {
                match &self.header {
                    Some(h) if h.log_format == LogFormat::Json => {
                        if crate::logging::enabled(tracing::Level::ERROR) {
                            tracing::error!("{e}");
                        }
                    }
                    Some(h) => eprintln!("error: {}: {e}", h.agent),
                    // The envelope itself was bad: no agent, no log settings.
                    None => eprintln!("agent-exec: error: {e}"),
                }
                Ok(())
            }
            (OutputFormat::Json, result) => {
                let header = self.header.as_ref();
                let (output, verdict, error) = match result {
                    Ok(answer) => (Some(answer.output), answer.verdict, None),
                    Err(e) => {
                        // To a hook, `rejected` is a denial, in the agent's own words.
                        let verdict = match &e {
                            ExecError::Rejected(reason) if self.hook_call => Some(Verdict {
                                decision: Decision::Deny,
                                reason: Some(reason.clone()),
                                ..Verdict::default()
                            }),
                            _ => None,
                        };
                        (None, verdict, Some(e.to_string()))
                    }
                };
                let report = RunReport {
                    run_id: header.map(|h| h.run_id.clone()).unwrap_or_default(),
                    agent: header.map(|h| h.agent.clone()).unwrap_or_default(),
                    status: outcome,
                    exit_code: outcome.exit_code(),
                    output: None,
                    output_base64: None,
                    error,
                    cache_hit: self.cache_hit,
                    timings: self.timings,
                    verdict,
                    used_store: self.used_store,
                };
                let report = match output {
                    Some(o) => report.with_output(o),
                    None => report,
                };
                serde_json::to_writer(&mut stdout, &report)
                    .map_err(std::io::Error::other)
                    .and_then(|()| stdout.write_all(b"\n"))
            }
        };
        let flushed = written.and_then(|()| stdout.flush());
        drop(stdout);
        // The answer is whole: close our standard output (pointing it at standard error,
        // so that no file opened later can take its number), which tells a spawner that
        // reads it that it may reply now, while this process exits. Nothing is written to
        // it from here on.
        let _ = nix::unistd::dup2_stdout(std::io::stderr());
        // Answered: now is the time to import a long run log, once in a few hundred runs.
        if let (Some(bytes), Some(home)) = (self.run_log_bytes, &self.home)
            && bytes > memory_store::run_log::IMPORT_AFTER_BYTES
            && let Err(e) = Store::open(&home.store_path())
            && crate::logging::enabled(tracing::Level::WARN)
        {
            tracing::warn!("could not import the run log: {e}");
        }
        if flushed.is_err() && outcome == Outcome::Ok {
            // The caller went away; there is nobody left to tell.
            return ExitCode::from(Outcome::Internal.exit_code());
        }
        ExitCode::from(outcome.exit_code())
    }
}

/// What a spare agent-exec (`agent-exec --prepare <home>`) sets up before its request
/// arrives: the engine (without fuel metering, the common case), the linker, and, if asked,
/// the store connection. None of it depends on the request; a request that needs another
/// engine or home builds its own.
pub struct Prepared {
    home: std::path::PathBuf,
    engine: wasmtime::Engine,
    linker: Linker<AgentHost>,
    store: Option<Store>,
}

impl Prepared {
    /// Set up for requests against `home`, with its store's connection open when
    /// `with_store`. Opening it costs a spare about a third of a millisecond of CPU (the
    /// schema is parsed anew by every connection), which on a busy daemon competes with
    /// the requests: the daemon asks for it only for agents that use memory.
    pub fn new(home: std::path::PathBuf, with_store: bool) -> Result<Prepared, ExecError> {
        let engine = crate::engine::build(false)
            .map_err(|e| ExecError::Internal(format!("engine: {e:#}")))?;
        let linker = crate::link::all(&engine)?;
        // The store may not exist yet; the request then opens (and creates) it.
        let store = with_store
            .then(|| Store::open(&Home::new(&home).store_path()).ok())
            .flatten();
        Ok(Prepared {
            home,
            engine,
            linker,
            store,
        })
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Run the request read from `stdin`. `started` and `started_at` are taken first thing in
/// `main`, or, for a spare, when its request has arrived (its start-to-main is then not
/// part of the request and is left out).
pub fn execute(
    stdin: impl Read,
    started: Instant,
    started_at: SystemTime,
    prepared: Option<Prepared>,
) -> Execution {
    let (header, input) = match read_envelope(stdin) {
        Ok(envelope) => envelope,
        Err(e) => {
            return Execution {
                header: None,
                hook_call: false,
                result: Err(e.into()),
                cache_hit: None,
                timings: PhaseTimings {
                    total_us: micros(started.elapsed()),
                    ..PhaseTimings::default()
                },
                run_log_bytes: None,
                used_store: false,
                home: None,
            };
        }
    };
    crate::logging::init(header.log_format, header.log_level.as_deref());
    let mut run = Run {
        started,
        started_ms: started_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0)),
        timings: PhaseTimings {
            start_to_main_us: header
                .spawned_at_unix_ns
                .filter(|_| prepared.is_none())
                .and_then(|ns| {
                    let spawned = UNIX_EPOCH + Duration::from_nanos(ns);
                    started_at.duration_since(spawned).ok().map(micros)
                }),
            ..PhaseTimings::default()
        },
        cache_hit: None,
        llm_calls: Vec::new(),
        tool_calls: Vec::new(),
        run_log_bytes: None,
        used_store: false,
        journal: None,
        component_sha256: None,
        output_sha256: None,
        sub_run_output: None,
        _marker: None,
        prepared,
        hook_call: header.hook.is_some(),
        home: Home::new(&header.home),
        header,
        input,
    };
    let result = run.phases();
    run.timings.total_us = micros(started.elapsed());
    Execution {
        header: Some(run.header),
        hook_call: run.hook_call,
        result,
        cache_hit: run.cache_hit,
        timings: run.timings,
        run_log_bytes: run.run_log_bytes,
        used_store: run.used_store,
        home: Some(run.home),
    }
}

/// One request in progress.
struct Run {
    /// What a spare set up in advance; its pieces are taken as they are used.
    prepared: Option<Prepared>,
    /// The request is a hook call; its event moves from the header to the agent's host.
    hook_call: bool,
    header: RequestHeader,
    home: Home,
    input: Vec<u8>,
    started: Instant,
    started_ms: u64,
    timings: PhaseTimings,
    cache_hit: Option<bool>,
    /// Evidence of the run's chats, for its record.
    llm_calls: Vec<memory_store::LlmCall>,
    /// Evidence of the run's tool calls, for its record.
    tool_calls: Vec<memory_store::ToolCall>,
    /// The run log's size after this run's record went there.
    run_log_bytes: Option<u64>,
    /// The run used the store: read it, or committed writes to it.
    used_store: bool,
    /// A durable run's journal.
    journal: Option<crate::journal::Shared>,
    /// SHA-256 of the component, once loaded.
    component_sha256: Option<String>,
    /// A durable run's answer's SHA-256; for a replay, the one it must match.
    output_sha256: Option<String>,
    /// A sub-run's answer, kept with its record for its parent's resume.
    sub_run_output: Option<Vec<u8>>,
    /// The run's marker, held (locked) while this process runs it.
    _marker: Option<std::fs::File>,
}

/// Time from `since` to now, in microseconds, and reset `since`.
fn lap(since: &mut Instant) -> Option<u64> {
    let now = Instant::now();
    let us = micros(now - *since);
    *since = now;
    Some(us)
}

impl Run {
    fn phases(&mut self) -> Result<Answer, ExecError> {
        let mut clock = self.started;
        if self.header.marked {
            self.hold_marker()?;
        }

        // No such agent: nothing to record, so the store is not even opened.
        let path = self.home.agent_manifest(&self.header.agent)?;
        let manifest = Manifest::load(&path).map_err(ExecError::from);
        self.timings.config_us = lap(&mut clock);

        // The store is opened when the run first uses memory, or to commit its writes; a
        // run that uses none has its record logged without opening it. The home is made
        // private here all the same, as the store's open would (a spare's open did).
        let prepared_store = self
            .prepared
            .as_mut()
            .filter(|p| p.home == self.header.home)
            .and_then(|p| p.store.take());
        let home_checked = match &prepared_store {
            Some(_) => Ok(None),
            None => agent_contract::home::ensure_private_dir(self.home.root()),
        };
        match home_checked {
            Ok(Some(old)) if crate::logging::enabled(tracing::Level::WARN) => tracing::warn!(
                "{}",
                agent_contract::home::made_private_notice(self.home.root(), old)
            ),
            Ok(_) => {}
            Err(e) => {
                return Err(ExecError::Store(memory_store::StoreError::Open {
                    path: self.home.store_path(),
                    source: e.into(),
                }));
            }
        }
        let store_path = self.home.store_path();
        self.timings.store_us = lap(&mut clock);

        let manifest = match manifest {
            Ok(m) => m,
            Err(e) => {
                // A real agent with a broken manifest: record the attempt.
                let memory = RunMemory::lazy(store_path, prepared_store, "");
                let _ = self.record(memory, &Err(&e), DEFAULT_KEEP_RUNS, false);
                return Err(e);
            }
        };
        let memory = RunMemory::lazy(
            store_path,
            prepared_store,
            manifest.memory.namespace.clone(),
        );
        let keep = manifest.memory.keep_runs;
        let retain_input = manifest.memory.retain_input || manifest.durable.journal;
        if manifest.durable.journal
            && let Err(e) = self.open_journal(&memory)
        {
            if self.header.journal != JournalMode::Replay {
                let _ = self.record(memory, &Err(&e), keep, retain_input);
            }
            return Err(e);
        }
        let (result, memory) = self.run_component(&manifest, memory, &mut clock);
        let result = result.and_then(|answer| self.check_output(answer));
        if self.header.journal == JournalMode::Replay && self.journal.is_some() {
            // A replay writes nothing: its memory writes and its record are dropped. It
            // read the journal from the store.
            self.used_store = memory.used();
            return result;
        }
        match result {
            // Nothing ran: nothing to record (the request runs again once compiled).
            Err(e @ ExecError::NotCompiled(_)) => Err(e),
            Ok(output) => {
                if self.header.parent_run_id.is_some() {
                    self.sub_run_output = Some(output.output.clone());
                }
                self.record(memory, &Ok(()), keep, retain_input)
                    .map(|()| output)
            }
            Err(e) => {
                let _ = self.record(memory, &Err(&e), keep, retain_input);
                Err(e)
            }
        }
    }

    /// Hold the run's marker, so that it is not settled as killed while this process runs
    /// it; a run settled already is not run (it is recorded as killed: nothing is
    /// recorded here). A marker that cannot be read is said and run without.
    fn hold_marker(&mut self) -> Result<(), ExecError> {
        use memory_store::running::{Held, hold};
        let run_id = &self.header.run_id;
        match hold(&self.home.store_path(), run_id) {
            Ok(Held::Marker(file)) => self._marker = Some(file),
            Ok(Held::Missing | Held::Settled) => {
                return Err(ExecError::Settled(format!(
                    "run {run_id} was recorded as killed before it could start: the process that started it had ended (see `spawner runs show {run_id}`)"
                )));
            }
            Err(e) => {
                if crate::logging::enabled(tracing::Level::WARN) {
                    tracing::warn!(run_id = %run_id, "cannot hold the run's marker: {e}");
                }
            }
        }
        Ok(())
    }

    /// A durable run's journal: empty for a new run, as journaled for a resume or replay
    /// (and, for a replay, the answer's hash it must match).
    fn open_journal(&mut self, memory: &RunMemory) -> Result<(), ExecError> {
        let mode = self.header.journal;
        let run_id = &self.header.run_id;
        let recorded = match mode {
            JournalMode::Record => Vec::new(),
            _ => {
                let store = memory.store()?;
                if mode == JournalMode::Replay {
                    let record = store.run(run_id)?.ok_or_else(|| {
                        ExecError::Journal(format!("run {run_id} has no record to replay"))
                    })?;
                    self.output_sha256 = record.output_sha256;
                    if self.output_sha256.is_none() {
                        return Err(ExecError::Journal(format!(
                            "run {run_id} did not finish ok with a journal, so it has no answer to replay"
                        )));
                    }
                }
                store.journal(run_id)?
            }
        };
        self.journal = Some(crate::journal::Journal::new(mode, recorded).shared());
        Ok(())
    }

    /// A durable run's answer: hashed for its record; for a replay, checked against the
    /// run's.
    fn check_output(&mut self, answer: Answer) -> Result<Answer, ExecError> {
        if self.journal.is_none() {
            return Ok(answer);
        }
        use sha2::{Digest, Sha256};
        let hash = agent_contract::manifest::to_hex(&Sha256::digest(&answer.output));
        match self.output_sha256.replace(hash.clone()) {
            Some(expected) if expected != hash => Err(ExecError::Diverged(format!(
                "the replay answered otherwise than run {}: its answer's sha256 is {hash}, the run's was {expected}",
                self.header.run_id
            ))),
            _ => Ok(answer),
        }
    }

    /// Commit the run's writes and record when the handler returned; otherwise discard the
    /// writes and record only the run. Only a failure to commit a successful run changes
    /// its outcome; other recording failures are logged.
    fn record(
        &mut self,
        memory: RunMemory,
        result: &Result<(), &ExecError>,
        keep_runs: u32,
        retain_input: bool,
    ) -> Result<(), ExecError> {
        let (status, error) = match result {
            Ok(()) => (Outcome::Ok, None),
            Err(e) => (e.outcome(), Some(e.to_string())),
        };
        let record = RunRecord {
            run_id: self.header.run_id.clone(),
            agent: self.header.agent.clone(),
            started_at_ms: self.started_ms,
            ended_at_ms: memory_store::now_ms(),
            status,
            error,
            input: retain_input.then(|| self.input.clone()),
            cache_hit: self.cache_hit,
            timings: PhaseTimings {
                total_us: micros(self.started.elapsed()),
                ..self.timings.clone()
            },
            llm_calls: self.llm_calls.clone(),
            tool_calls: self.tool_calls.clone(),
            attempt: self.header.attempt,
            component_sha256: self.component_sha256.clone(),
            // Only an answer that reached the caller counts.
            output_sha256: self.output_sha256.clone().filter(|_| status == Outcome::Ok),
            parent_run_id: self.header.parent_run_id.clone(),
            output: self.sub_run_output.take(),
        };
        // The handler returned (with a response or a typed error): its writes count.
        // It trapped, timed out or hit a limit: they are discarded.
        let handler_returned = matches!(
            status,
            Outcome::Ok | Outcome::AgentError | Outcome::Rejected
        );
        // What the daemon learns of the agent: a run that only read memory still logs.
        self.used_store = memory.used();
        let committed = if handler_returned {
            memory.commit(&record, keep_runs)
        } else {
            memory.discard(&record, keep_runs)
        };
        match committed {
            Ok(memory_store::Recorded::Logged(bytes)) => {
                self.run_log_bytes = Some(bytes);
                Ok(())
            }
            Ok(memory_store::Recorded::Store(_)) => {
                self.used_store = true;
                Ok(())
            }
            Err(e) if status == Outcome::Ok => Err(e.into()),
            Err(e) => {
                if crate::logging::enabled(tracing::Level::WARN) {
                    tracing::warn!(run_id = %self.header.run_id, "could not record the failed run: {e}");
                }
                Ok(())
            }
        }
    }

    /// Load, instantiate and call the component. Always hands the run's memory back.
    fn run_component(
        &mut self,
        manifest: &Manifest,
        memory: RunMemory,
        clock: &mut Instant,
    ) -> (Result<Answer, ExecError>, RunMemory) {
        let fuel = manifest.limits.fuel.is_some();
        let engine = match self.prepared.as_ref().filter(|_| !fuel) {
            Some(p) => p.engine.clone(),
            None => match crate::engine::build(fuel) {
                Ok(e) => e,
                Err(e) => return (Err(ExecError::Internal(format!("engine: {e:#}"))), memory),
            },
        };
        let component = match self.load_component(&engine, manifest) {
            Ok(c) => c,
            Err(e) => return (Err(e), memory),
        };
        self.timings.load_us = lap(clock);
        let durable = match self.durable_sources() {
            Ok(d) => d,
            Err(e) => return (Err(e), memory),
        };

        let wasi = match wasi_ctx(manifest, self.header.work_dir.as_deref(), durable) {
            Ok(w) => w,
            Err(e) => return (Err(e), memory),
        };
        let mut store = self.new_store(&engine, manifest, wasi, memory);
        let result = self.instantiate_and_call(&engine, &component, manifest, &mut store, clock);
        let result = self.close_journal(store.data_mut(), result);
        let memory = store
            .data_mut()
            .memory
            .take()
            .expect("the run's memory stays in the store until taken here");
        self.llm_calls = std::mem::take(&mut store.data_mut().llm_calls);
        self.tool_calls = std::mem::take(&mut store.data_mut().tool_calls);
        // The process exits right after answering: tearing the instance down (unmapping its
        // memory, freeing its tables) is work the kernel does anyway, faster, at exit.
        std::mem::forget(store);
        (result, memory)
    }

    /// A durable run's step 0 (the component) and the guest's clocks and random
    /// sources, which come through its journal; `None` for other runs.
    fn durable_sources(&mut self) -> Result<Option<Durable>, ExecError> {
        let Some(journal) = &self.journal else {
            return Ok(None);
        };
        let sha = self.component_sha256.as_deref().unwrap_or_default();
        crate::journal::lock(journal)
            .component(sha)
            .map_err(ExecError::Diverged)?;
        let secret = crate::journal::random_secret(&self.home).map_err(|e| {
            ExecError::Journal(format!(
                "cannot read or make the home's random key {}: {e}",
                self.home.random_key_path().display()
            ))
        })?;
        Ok(Some(Durable {
            journal: journal.clone(),
            secret,
            run_id: self.header.run_id.clone(),
        }))
    }

    /// After the guest: write what the journal still holds, and let a divergence or a
    /// failed journal write decide the outcome.
    fn close_journal(
        &self,
        host: &mut AgentHost,
        result: Result<Answer, ExecError>,
    ) -> Result<Answer, ExecError> {
        let Some(journal) = &self.journal else {
            return result;
        };
        let (pending, diverged) = {
            let mut journal = crate::journal::lock(journal);
            (
                journal.take_pending(),
                journal.diverged().map(str::to_owned),
            )
        };
        if let Some(why) = diverged {
            return Err(ExecError::Diverged(format!(
                "run {} diverged from its journal: {why}",
                self.header.run_id
            )));
        }
        if self.header.journal != JournalMode::Replay {
            let _ = host.write_journal(&pending);
        }
        match host.journal_error.take() {
            Some(why) => Err(ExecError::Journal(why)),
            None => result,
        }
    }

    fn load_component(
        &mut self,
        engine: &wasmtime::Engine,
        manifest: &Manifest,
    ) -> Result<wasmtime::component::Component, ExecError> {
        let fuel = manifest.limits.fuel.is_some();
        let entry =
            crate::cache::entry_path(&self.home.component_cache_dir(), &manifest.component, fuel);
        let loaded = match crate::cache::load(engine, &entry, manifest) {
            Ok(loaded) => loaded,
            // Sent directly: compile it now, before the deadline is armed, and load it.
            Err(CacheError::Missing { .. }) if self.header.compile != CompileStep::Defer => {
                crate::compile::run_helper(self.home.root(), manifest)?;
                let loaded = crate::cache::load(engine, &entry, manifest).map_err(|e| match e {
                    // Compiled, yet not loadable here (agent-compile of another build?).
                    CacheError::Missing { rejected } => ExecError::Internal(format!(
                        "agent-compile succeeded but its entry {} does not load: {}",
                        entry.display(),
                        rejected.as_deref().unwrap_or("no entry was written")
                    )),
                    e => cache_error(e, manifest),
                })?;
                crate::cache::Loaded {
                    cache_hit: false,
                    ..loaded
                }
            }
            Err(e) => return Err(cache_error(e, manifest)),
        };
        // Compiled by the caller for this very request: it was a miss all the same.
        self.cache_hit = Some(loaded.cache_hit && self.header.compile != CompileStep::Done);
        self.component_sha256 = Some(loaded.sha256_hex);
        Ok(loaded.component)
    }

    fn new_store(
        &mut self,
        engine: &wasmtime::Engine,
        manifest: &Manifest,
        wasi: wasmtime_wasi::WasiCtx,
        memory: RunMemory,
    ) -> WasmStore<AgentHost> {
        let host = AgentHost {
            wasi,
            table: ResourceTable::new(),
            memory: Some(memory),
            config: manifest.config.clone(),
            allowed_models: manifest.allowed_models.clone(),
            inference: Box::new(crate::inference::Broker::new(
                self.home.clone(),
                self.header.broker.clone(),
            )),
            llm: Box::new(crate::inference::Broker::new(
                self.home.clone(),
                self.header.broker.clone(),
            )),
            llm_policy: manifest.llm.clone(),
            requires_gpu: manifest.placement.requires_gpu,
            llm_calls: Vec::new(),
            tools: Box::new(crate::inference::Broker::new(
                self.home.clone(),
                self.header.broker.clone(),
            )),
            tool_policy: manifest.tools.clone(),
            tool_calls: Vec::new(),
            deadline: None,
            home: self.home.root().to_owned(),
            stream_llm: self.header.stream_llm.then_some(self.header.log_format),
            broker_unavailable: None,
            run_id: self.header.run_id.clone(),
            agent: manifest.name.clone(),
            memory_cap: manifest.limits.memory_bytes,
            memory_cap_hit: None,
            hook: self.header.hook.take(),
            verdict: None,
            journal: self.journal.clone(),
            journal_error: None,
            sub_runs: crate::subruns::SubRuns::new(
                self.header.run_id.clone(),
                manifest.runs.clone(),
                self.header.sub_runs.clone(),
                self.header.journal == JournalMode::Replay && manifest.durable.journal,
            ),
        };
        let mut store = WasmStore::new(engine, host);
        store.limiter(|h| h);
        store.set_hostcall_fuel(hostcall_fuel(manifest.limits.memory_bytes));
        store.set_epoch_deadline(1);
        store.epoch_deadline_trap();
        if let Some(fuel) = manifest.limits.fuel {
            store
                .set_fuel(fuel)
                .expect("the engine meters fuel whenever the manifest sets fuel");
        }
        store
    }

    fn instantiate_and_call(
        &mut self,
        engine: &wasmtime::Engine,
        component: &wasmtime::component::Component,
        manifest: &Manifest,
        store: &mut WasmStore<AgentHost>,
        clock: &mut Instant,
    ) -> Result<Answer, ExecError> {
        let timeout = self
            .header
            .timeout_ms
            .map_or(manifest.limits.timeout, Duration::from_millis);
        crate::deadline::arm(engine, timeout)
            .map_err(|e| ExecError::Internal(format!("cannot arm the deadline: {e}")))?;
        store.data_mut().deadline = Some(Instant::now() + timeout);

        let linker = match self
            .prepared
            .take()
            .filter(|p| wasmtime::Engine::same(&p.engine, engine))
        {
            Some(p) => p.linker,
            None => crate::link::for_component(engine, component)?,
        };
        let agent = Agent::instantiate(&mut *store, component, &linker)
            .map_err(|e| self.classify(store, e, timeout, manifest, true))?;
        self.timings.instantiate_us = lap(clock);

        let request = types::Request {
            run_id: self.header.run_id.clone(),
            agent: manifest.name.clone(),
            input: std::mem::take(&mut self.input),
        };
        let called = agent.call_handle(&mut *store, &request);
        self.input = request.input;
        self.timings.handler_us = lap(clock);
        let answered = match called {
            Ok(Ok(response)) if response.output.len() as u64 > MAX_OUTPUT_BYTES => {
                Err(ExecError::Agent(format!(
                    "the answer is {} bytes, over the limit of {} MiB on an agent's output; answer less, or keep large results in memory or a preopened directory",
                    response.output.len(),
                    MAX_OUTPUT_BYTES >> 20
                )))
            }
            Ok(Ok(response)) => Ok(Answer {
                output: response.output,
                verdict: store.data_mut().verdict.take(),
            }),
            Ok(Err(types::AgentError::Rejected(m))) => Err(ExecError::Rejected(m)),
            Ok(Err(types::AgentError::InvalidInput(m))) => {
                Err(ExecError::Agent(format!("invalid input: {m}")))
            }
            Ok(Err(types::AgentError::Failed(m))) => Err(ExecError::Agent(format!("failed: {m}"))),
            Err(e) => Err(self.classify(store, e, timeout, manifest, false)),
        };
        // An agent that fails (or panics) after an inference call found no broker failed
        // because of it: its own exit code, so callers can tell and retry.
        match (answered, store.data_mut().broker_unavailable.take()) {
            (Err(ExecError::Agent(_) | ExecError::Trap(_)), Some(why)) => {
                Err(ExecError::BrokerUnavailable(why))
            }
            (answered, _) => answered,
        }
    }

    /// Turn a wasmtime error from instantiation or the call into the right outcome.
    fn classify(
        &self,
        store: &WasmStore<AgentHost>,
        e: wasmtime::Error,
        timeout: Duration,
        manifest: &Manifest,
        instantiating: bool,
    ) -> ExecError {
        if let Some(desired) = store.data().memory_cap_hit {
            return ExecError::MemoryLimit {
                desired,
                cap: manifest.limits.memory_bytes,
            };
        }
        match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => ExecError::Timeout(format!(
                "agent stopped at its deadline of {} ms (raise limits.timeout_ms or pass --timeout)",
                timeout.as_millis()
            )),
            Some(Trap::OutOfFuel) => ExecError::Timeout(format!(
                "agent ran out of fuel ({} units; raise limits.fuel)",
                manifest.limits.fuel.unwrap_or(0)
            )),
            Some(_) => ExecError::Trap(format!("{e:#}")),
            None if instantiating => ExecError::InvalidComponent {
                path: manifest.component.clone(),
                message: format!("{e:#}"),
            },
            None => ExecError::Trap(format!("{e:#}")),
        }
    }
}

/// What a durable run's guest gets its clocks and random numbers from.
struct Durable {
    journal: crate::journal::Shared,
    secret: Vec<u8>,
    run_id: String,
}

/// The real directory of a preopen (symlinks resolved), refused when it lies outside
/// `base`: the manifest checked its path, but a symlink on the way can still lead
/// elsewhere. The caller opens this real path, not `host` again by name.
fn check_within(
    host: &std::path::Path,
    base: &std::path::Path,
) -> Result<std::path::PathBuf, ExecError> {
    let refuse = |message: String| ExecError::Preopen {
        path: host.to_owned(),
        message,
    };
    let real = std::fs::canonicalize(host).map_err(|e| refuse(e.to_string()))?;
    let real_base = std::fs::canonicalize(base).map_err(|e| refuse(e.to_string()))?;
    if real.starts_with(&real_base) {
        Ok(real)
    } else {
        Err(refuse(format!(
            "it resolves to {}, outside {} (set `allow_outside = true` in its [[preopens]] to grant it)",
            real.display(),
            real_base.display()
        )))
    }
}

/// The agent's WASI context: no environment, no network (wasmtime-wasi denies sockets
/// unless allowed), its name as the only argument, only the declared preopens, and both
/// output streams on our standard error so they cannot corrupt the answer. Preopens
/// relative to the work dir are found in `work_dir` (this process's own when `None`).
fn wasi_ctx(
    manifest: &Manifest,
    work_dir: Option<&std::path::Path>,
    durable: Option<Durable>,
) -> Result<wasmtime_wasi::WasiCtx, ExecError> {
    let mut wasi = WasiCtxBuilder::new();
    wasi.stdout(std::io::stderr())
        .stderr(std::io::stderr())
        .arg(&manifest.name)
        .allow_blocking_current_thread(true);
    if let Some(d) = durable {
        use crate::journal::{MonotonicClock, SeededRandom, WallClock};
        let seed = SeededRandom::new(&d.secret, &d.run_id, "insecure-seed").seed_u128();
        wasi.wall_clock(WallClock(d.journal.clone()))
            .monotonic_clock(MonotonicClock {
                journal: d.journal,
                origin: Instant::now(),
            })
            .secure_random(SeededRandom::new(&d.secret, &d.run_id, "secure"))
            .insecure_random(SeededRandom::new(&d.secret, &d.run_id, "insecure"))
            .insecure_random_seed(seed);
    }
    for p in &manifest.preopens {
        let perms = if p.writable {
            FsPerms::ReadWrite
        } else {
            FsPerms::ReadOnly
        };
        let base = match (p.base, work_dir) {
            (PreopenBase::WorkDir, Some(dir)) => dir.to_owned(),
            (PreopenBase::WorkDir, None) => std::path::PathBuf::from("."),
            (PreopenBase::AgentDir, _) => manifest.dir.clone(),
        };
        let host = match p.base {
            PreopenBase::WorkDir => base.join(&p.host),
            PreopenBase::AgentDir => p.host.clone(),
        };
        let host = if p.allow_outside {
            host
        } else {
            check_within(&host, &base)?
        };
        wasi.preopened_dir(&host, &p.guest, perms)
            .map_err(|e| ExecError::Preopen {
                path: host.clone(),
                message: format!("{e:#}"),
            })?;
    }
    Ok(wasi.build())
}
