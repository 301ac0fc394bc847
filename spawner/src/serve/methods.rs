//! The daemon's methods. Names and params are documented in the README ("Management API").

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use agent_contract::envelope::JournalMode;
use agent_contract::{LogFormat, Manifest, Outcome, OutputFormat};
use memory_store::RunFilter;
use serde::Deserialize;
use serde_json::{Value, json};

use super::Daemon;
use super::rpc::{self, Request, RpcError};
use crate::cancel::{CancelToken, Stop, StopReason};
use crate::executor::Local;
use crate::request::{ActiveRuns, Runner};

/// Most log lines a run's result carries when they are not streamed.
const MAX_LOG_LINES: usize = 200;

/// The client's end, for answers and notifications.
pub struct Connection {
    pub(super) stream: UnixStream,
}

impl Connection {
    /// Write one line to the client.
    pub fn send(&mut self, line: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(line)
    }
}

/// The method names, for `capabilities`.
const METHODS: &[&str] = &[
    "run",
    "agents.list",
    "agents.describe",
    "runs.list",
    "runs.get",
    "runs.active",
    "runs.cancel",
    "runs.resume",
    "runs.replay",
    "health",
    "capabilities",
    "metrics",
];

/// Answer one request.
pub fn dispatch(daemon: &Daemon, conn: &mut Connection, req: &Request) -> Result<Value, RpcError> {
    match req.method.as_str() {
        "run" => run(daemon, conn, params(&req.params)?),
        "runs.resume" => resume(daemon, conn, params(&req.params)?),
        "runs.replay" => replay(daemon, conn, params(&req.params)?),
        "agents.list" => {
            no_params::<Empty>(&req.params)?;
            let agents = crate::commands::agents::list(&daemon.home).map_err(internal)?;
            Ok(json!({ "agents": agents }))
        }
        "agents.describe" => describe(daemon, params(&req.params)?),
        "runs.list" => {
            let p: RunsList = params(&req.params)?;
            // Sub-runs are folded into their parents (counted by status), unless the runs
            // of one agent are asked for.
            let mut store = daemon.lock_store();
            let fold = p.agent.is_none();
            let in_flight = store.in_flight().map_err(internal)?;
            let mut listed: Vec<Value> = in_flight
                .iter()
                .filter(|r| p.agent.as_ref().is_none_or(|a| *a == r.agent))
                .filter(|r| !fold || r.parent_run_id.is_none())
                .map(crate::commands::runs::running_json)
                .collect();
            let filter = RunFilter {
                agent: p.agent,
                limit: p.limit.unwrap_or(20).min(10_000),
            };
            let runs = if fold {
                store.caller_runs(&filter)
            } else {
                store.runs(&filter)
            }
            .map_err(internal)?;
            // A run in a retry is listed once, as running (its last attempt's record is
            // in `runs.get`).
            for run in runs
                .into_iter()
                .filter(|r| !in_flight.iter().any(|m| m.run_id == r.run_id))
            {
                let mut entry = crate::commands::runs::ended_json(&run).map_err(internal)?;
                let counts = store.sub_run_counts(&run.run_id).map_err(internal)?;
                if fold
                    && !counts.is_empty()
                    && let Some(map) = entry.as_object_mut()
                {
                    let by_status: serde_json::Map<String, Value> = counts
                        .into_iter()
                        .map(|(status, n)| (status.to_string(), json!(n)))
                        .collect();
                    map.insert("sub_runs".into(), Value::Object(by_status));
                }
                listed.push(entry);
            }
            Ok(json!({ "runs": listed }))
        }
        "runs.get" => {
            let p: RunId = params(&req.params)?;
            // A run in flight is shown as `running` (what its marker says), with what it
            // has recorded so far; its record, under `run`, is written when it ends.
            let (record, running, sub_runs) = {
                let mut store = daemon.lock_store();
                let mut running = None;
                let mut sub_runs = Vec::new();
                for r in store.in_flight().map_err(internal)? {
                    if r.run_id == p.run_id {
                        running = Some(crate::commands::runs::running_json(&r));
                    } else if r.parent_run_id.as_deref() == Some(&p.run_id) {
                        sub_runs.push(crate::commands::runs::running_json(&r));
                    }
                }
                for c in store.children(&p.run_id).map_err(internal)? {
                    sub_runs.push(crate::commands::runs::ended_json(&c).map_err(internal)?);
                }
                (store.run(&p.run_id).map_err(internal)?, running, sub_runs)
            };
            if record.is_none() && running.is_none() {
                // Admitted here but not marked yet (or its marker could not be written).
                let why = if daemon.lock_active().contains_key(&p.run_id) {
                    format!(
                        "run {} is still in flight; its record is written when it ends",
                        p.run_id
                    )
                } else {
                    format!("no run {}", p.run_id)
                };
                return Err(RpcError::new(rpc::NOT_FOUND, why));
            }
            let mut answer = json!({ "sub_runs": sub_runs });
            if let Some(run) = record {
                answer["run"] = serde_json::to_value(&run).map_err(internal)?;
            }
            if let Some(running) = running {
                answer["running"] = running;
            }
            Ok(answer)
        }
        "runs.active" => {
            no_params::<Empty>(&req.params)?;
            let active: Vec<Value> = daemon
                .lock_active()
                .iter()
                .map(|(id, r)| {
                    let mut run =
                        json!({"run_id": id, "agent": r.agent, "started_at_ms": r.started_at_ms});
                    if let Some(parent) = &r.parent_run_id {
                        run["parent_run_id"] = json!(parent);
                    }
                    run
                })
                .collect();
            Ok(json!({ "runs": active }))
        }
        "runs.cancel" => {
            let p: RunId = params(&req.params)?;
            let cancel = daemon
                .lock_active()
                .get(&p.run_id)
                .map(|r| Arc::clone(&r.cancel));
            match cancel {
                Some(cancel) => {
                    cancel.cancel(StopReason::Cancelled);
                    Ok(json!({ "cancelled": true }))
                }
                None => Err(RpcError::new(
                    rpc::NOT_FOUND,
                    format!("no run {} in flight", p.run_id),
                )),
            }
        }
        "health" => {
            no_params::<Empty>(&req.params)?;
            let counts = daemon.admission.counts();
            Ok(json!({
                "status": if daemon.shutting_down.load(Ordering::SeqCst) { "shutting_down" } else { "ok" },
                "version": env!("CARGO_PKG_VERSION"),
                "pid": std::process::id(),
                "uptime_ms": daemon.started.elapsed().as_millis() as u64,
                "in_flight": counts.running,
                "queued": counts.queued,
                "connections": daemon.connections.lock().map_or(0, |c| c.len()),
                "spares_ready": daemon.spares.ready(),
            }))
        }
        "capabilities" => {
            no_params::<Empty>(&req.params)?;
            capabilities(daemon)
        }
        "metrics" => {
            no_params::<Empty>(&req.params)?;
            Ok(json!({ "text": daemon.metrics.render(daemon.admission.counts()) }))
        }
        other => Err(RpcError::new(
            rpc::METHOD_NOT_FOUND,
            format!("no method {other:?}; methods: {}", METHODS.join(", ")),
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunParams {
    agent: String,
    #[serde(default)]
    input: Option<String>,
    #[serde(default)]
    input_base64: Option<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    stream: bool,
    /// Lowest level of the run's log lines: trace, debug, info, warn (the default), error.
    #[serde(default)]
    log_level: Option<String>,
}

/// The log levels agent-exec knows.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResumeParams {
    run_id: String,
    #[serde(default)]
    allow_changed: bool,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    stream: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayParams {
    run_id: String,
    #[serde(default)]
    stream: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentName {
    agent: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunsList {
    #[serde(default)]
    agent: Option<String>,
    #[serde(default)]
    limit: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunId {
    run_id: String,
}

fn params<T: serde::de::DeserializeOwned>(params: &Value) -> Result<T, RpcError> {
    serde_json::from_value(params.clone())
        .map_err(|e| RpcError::params(format!("invalid params: {e}")))
}

fn no_params<T: serde::de::DeserializeOwned>(p: &Value) -> Result<T, RpcError> {
    params(p)
}

fn internal(e: impl std::fmt::Display) -> RpcError {
    RpcError::new(rpc::INTERNAL_ERROR, e.to_string())
}

/// A run that could not start, with its place in the outcome table.
fn run_failed(outcome: Outcome, message: String) -> RpcError {
    RpcError {
        code: rpc::RUN_FAILED,
        message,
        data: Some(json!({"status": outcome, "exit_code": outcome.exit_code()})),
    }
}

/// A request that failed before it could run (a run that cannot be resumed, an agent-exec
/// that cannot be spawned), with its place in the outcome table.
fn refused(e: &anyhow::Error) -> RpcError {
    run_failed(crate::exit::outcome(e), format!("{e:#}"))
}

/// No new runs once the daemon is shutting down.
fn open_for_runs(daemon: &Daemon) -> Result<(), RpcError> {
    if daemon.shutting_down.load(Ordering::SeqCst) {
        return Err(RpcError::new(
            rpc::SHUTTING_DOWN,
            "the daemon is shutting down; no new runs",
        ));
    }
    Ok(())
}

/// A deadline in milliseconds from the params: more than zero.
fn timeout(ms: Option<u64>) -> Result<Option<std::time::Duration>, RpcError> {
    if ms == Some(0) {
        return Err(RpcError::params("timeout_ms must be greater than zero"));
    }
    Ok(ms.map(std::time::Duration::from_millis))
}

/// `runs.resume`: a failed or killed durable run again, as `spawner runs resume`: under
/// its lease, served its journaled steps; the result is the attempt's run report.
fn resume(daemon: &Daemon, conn: &mut Connection, p: ResumeParams) -> Result<Value, RpcError> {
    open_for_runs(daemon)?;
    let timeout = timeout(p.timeout_ms)?;
    let (store, record) =
        crate::durable::resumable(&daemon.home, &p.run_id).map_err(|e| refused(&e))?;
    // The lease keeps other processes out; this daemon's own threads share its pid, so a
    // run in flight here (its first attempt, or its retries) is refused by `serve`.
    crate::durable::lease(&store, &p.run_id).map_err(|e| refused(&e))?;
    let mode = crate::durable::resume_mode(p.allow_changed);
    let request = crate::request::Request {
        timeout,
        stream_llm: p.stream,
        ..crate::durable::again(record, mode, true)
    };
    let served = serve(daemon, conn, request, p.stream);
    if let Err(e) = store.release_lease(&p.run_id, std::process::id()) {
        crate::say!(
            "spawner serve: warning: could not release run {}'s lease: {e}",
            p.run_id
        );
    }
    served
}

/// `runs.replay`: a finished durable run again from its journal alone, as `spawner runs
/// replay`; the result is the replay's run report: `ok` when it answered the same,
/// `diverged` (naming the step) when not.
fn replay(daemon: &Daemon, conn: &mut Connection, p: ReplayParams) -> Result<Value, RpcError> {
    open_for_runs(daemon)?;
    let (store, record) =
        crate::durable::replayable(&daemon.home, &p.run_id).map_err(|e| refused(&e))?;
    drop(store);
    let request = crate::durable::again(record, JournalMode::Replay, true);
    serve(daemon, conn, request, p.stream)
}

/// `run`: one request in a fresh agent-exec.
fn run(daemon: &Daemon, conn: &mut Connection, p: RunParams) -> Result<Value, RpcError> {
    use base64::Engine as _;
    open_for_runs(daemon)?;
    let input = match (p.input, p.input_base64) {
        (Some(_), Some(_)) => {
            return Err(RpcError::params("give input or input_base64, not both"));
        }
        (Some(text), None) => text.into_bytes(),
        (None, Some(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| RpcError::params(format!("input_base64 is not base64: {e}")))?,
        (None, None) => Vec::new(),
    };
    if input.len() as u64 > agent_contract::envelope::MAX_INPUT_BYTES {
        return Err(RpcError::params(format!(
            "input is over the limit of {} bytes",
            agent_contract::envelope::MAX_INPUT_BYTES
        )));
    }
    let log_level = p
        .log_level
        .as_deref()
        .map(agent_contract::envelope::check_log_level)
        .transpose()
        .map_err(|e| RpcError::params(format!("log_level: {e}")))?;
    let request = crate::request::Request {
        run_id: crate::run_id::new_run_id(),
        agent: p.agent,
        input,
        timeout: timeout(p.timeout_ms)?,
        output: OutputFormat::Json,
        log_format: LogFormat::Json,
        log_level,
        work_dir: None,
        hook: None,
        capture_stdout: true,
        stream_llm: p.stream,
        journal: JournalMode::Record,
        attempt: 1,
        parent_run_id: None,
    };
    serve(daemon, conn, request, p.stream)
}

/// Run `request` under admission control, cancellable (`runs.cancel`, the client hanging
/// up), its log lines streamed as notifications (`stream`) or kept for the result: the
/// run report.
fn serve(
    daemon: &Daemon,
    conn: &mut Connection,
    request: crate::request::Request,
    stream: bool,
) -> Result<Value, RpcError> {
    let admitted = Instant::now();
    let _permit = daemon.admission.enter().map_err(|busy| {
        daemon.metrics.busy.fetch_add(1, Ordering::Relaxed);
        RpcError {
            code: rpc::BUSY,
            message: format!(
                "busy: {} runs in flight and {} waiting (the limits); retry later",
                busy.0.running, busy.0.queued
            ),
            data: Some(json!({"status": Outcome::Busy, "exit_code": Outcome::Busy.exit_code()})),
        }
    })?;
    let run_id = request.run_id.clone();
    let cancel = Arc::new(CancelToken::new().map_err(internal)?);
    if !daemon.enter(&run_id, &request.agent, None, Arc::clone(&cancel)) {
        return Err(run_failed(
            Outcome::Usage,
            format!("run {run_id} is in flight here; wait for it to end (`runs.active`)"),
        ));
    }
    if stream {
        let _ = conn.send(&rpc::notification(
            "run.started",
            json!({"run_id": run_id, "agent": request.agent}),
        ));
    }
    // Log lines, the run's and its sub-runs': streamed as notifications, each naming the
    // run it belongs to, or (the run's own) kept for the result. They come from the
    // run's thread and its sub-runs' threads: one notification is written at a time.
    let logs: Mutex<Vec<Value>> = Mutex::new(Vec::new());
    let client = Mutex::new(&conn.stream);
    let on_line = |from: &str, line: &[u8]| {
        let value = serde_json::from_slice::<Value>(line)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(line).into_owned()));
        if stream {
            // LLM text as it is generated gets its own notification.
            let notification = match value.get("llm_text") {
                Some(text) => {
                    rpc::notification("run.llm_text", json!({"run_id": from, "text": text}))
                }
                None => rpc::notification("run.log", json!({"run_id": from, "line": value})),
            };
            let mut client = client.lock().unwrap_or_else(PoisonError::into_inner);
            let _ = client.write_all(&notification);
        } else if from == run_id {
            let mut logs = logs.lock().unwrap_or_else(PoisonError::into_inner);
            if logs.len() < MAX_LOG_LINES {
                logs.push(value);
            }
        }
    };
    let finished = crate::request::execute(
        &daemon.home,
        &request,
        Stop {
            token: &cancel,
            client: Some(conn.stream.as_fd()),
            signals: false,
        },
        Runner {
            on_line: Some(&on_line),
            executor: &Local::with_spares(&|agent| daemon.spares.take_for(agent)),
            shared: Some(&daemon.admission),
            active: Some(daemon),
            gate_slots: None,
            reap_after_answer: true,
        },
    );
    daemon.leave(&run_id);
    let finished = match finished {
        Ok(f) => f,
        Err(e) => {
            if e.downcast_ref::<crate::spawn::SpawnError>().is_some() {
                daemon
                    .metrics
                    .spawn_failures
                    .fetch_add(1, Ordering::Relaxed);
            }
            return Err(refused(&e));
        }
    };
    // The spawner's own report of a run whose answer was lost says nothing of the store.
    let answered = !finished.answer_lost();
    let report = finished
        .into_report()
        .map_err(|e| internal(format!("{e:#}")))?;
    daemon.metrics.run_finished(report.status);
    // A run whose handler returned committed what it used; one that trapped or was
    // killed tells nothing about its agent's use of the store.
    if answered
        && matches!(
            report.status,
            Outcome::Ok | Outcome::AgentError | Outcome::Rejected
        )
    {
        daemon.spares.learn(&request.agent, report.used_store);
    }
    daemon
        .metrics
        .latency
        .observe_us(u64::try_from(admitted.elapsed().as_micros()).unwrap_or(u64::MAX));
    // Up to the handler: a spare's start-to-main happened before the request (none).
    let t = &report.timings;
    if let (Some(b), Some(c), Some(d), Some(e)) =
        (t.config_us, t.store_us, t.load_us, t.instantiate_us)
    {
        let a = t.start_to_main_us.unwrap_or(0);
        daemon.metrics.cold_start.observe_us(a + b + c + d + e);
    }
    let mut result = serde_json::to_value(&report).map_err(internal)?;
    if !stream && let Some(object) = result.as_object_mut() {
        object.insert(
            "logs".into(),
            Value::Array(logs.into_inner().unwrap_or_else(PoisonError::into_inner)),
        );
    }
    Ok(result)
}

/// `agents.describe`: the validated manifest.
fn describe(daemon: &Daemon, p: AgentName) -> Result<Value, RpcError> {
    let path = daemon.home.agent_manifest(&p.agent).map_err(|e| {
        let outcome = match e {
            agent_contract::AgentLookupError::InvalidName { .. } => Outcome::Usage,
            agent_contract::AgentLookupError::NotFound { .. } => Outcome::NotFound,
        };
        run_failed(outcome, e.to_string())
    })?;
    let m = Manifest::load(&path).map_err(|e| run_failed(Outcome::Config, e.to_string()))?;
    let check = crate::commands::agents::check(&daemon.home, &p.agent);
    Ok(json!({
        "name": m.name,
        "version": m.version,
        "description": m.description,
        "status": check.status,
        "error": check.error,
        "component": m.component,
        "sha256_pinned": m.sha256.is_some(),
        "limits": {
            "timeout_ms": m.limits.timeout.as_millis() as u64,
            "memory_bytes": m.limits.memory_bytes,
            "fuel": m.limits.fuel,
        },
        "memory": {
            "namespace": m.memory.namespace,
            "retain_input": m.memory.retain_input,
            "keep_runs": m.memory.keep_runs,
        },
        "allowed_models": m.allowed_models,
        "preopens": m.preopens.iter().map(|p| json!({
            "host": p.host,
            "guest": p.guest,
            "writable": p.writable,
            "relative_to": match p.base {
                agent_contract::manifest::PreopenBase::AgentDir => "agent",
                agent_contract::manifest::PreopenBase::WorkDir => "work_dir",
            },
        })).collect::<Vec<_>>(),
        "requires_gpu": m.placement.requires_gpu,
        "config": m.config,
    }))
}

/// `capabilities`: what this machine and daemon offer.
fn capabilities(daemon: &Daemon) -> Result<Value, RpcError> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = |key: &str| {
        meminfo
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse::<u64>().ok())
            .map(|k| k * 1024)
    };
    let agents = crate::commands::agents::list(&daemon.home).map_err(internal)?;
    let (max_running, max_queued) = daemon.admission.limits();
    Ok(json!({
        "cpus": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "memory_total_bytes": kib("MemTotal:"),
        "memory_available_bytes": kib("MemAvailable:"),
        "broker": crate::commands::doctor::broker_status(&daemon.home),
        "runnable_agents": agents.iter().filter(|a| a.status == "ok").map(|a| a.name.as_str()).collect::<Vec<_>>(),
        "max_running": max_running,
        "max_queued": max_queued,
        "max_line_bytes": rpc::MAX_LINE_BYTES,
        "max_pending_bytes": rpc::MAX_PENDING_BYTES,
        "max_input_bytes": agent_contract::envelope::MAX_INPUT_BYTES,
        "methods": METHODS,
    }))
}
