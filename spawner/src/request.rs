//! One request, from whichever front it came (`spawner run`, `spawner hook`): build the
//! envelope, spawn a fresh agent-exec under the spawn policy, and, when agent-exec could
//! not finish (deadline kill, signal, unexpected exit), record the run in its place.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agent_contract::envelope::{CompileStep, ENVELOPE_VERSION, JournalMode};
use agent_contract::hook::HookEvent;
use agent_contract::layout::BrokerLayout;
use agent_contract::{
    Home, LogFormat, Manifest, Outcome, OutputFormat, PhaseTimings, RequestHeader, RunReport,
};
use anyhow::Context;
use memory_store::{Leased, RunRecord, Store};

use crate::admission::Admission;
use crate::cancel::{Stop, StopReason};
use crate::executor::{Executor, Job, Local, Ran};
use crate::spawn::{ProviderKeys, SpawnPolicy, StderrSink, Termination};

/// Environment variable naming the agent-exec binary, for installs that keep it elsewhere.
pub const AGENT_EXEC_ENV: &str = "SPAWNER_AGENT_EXEC";

/// What to run and how agent-exec should answer.
#[derive(Debug, Clone)]
pub struct Request {
    /// The run's id ([`crate::run_id::new_run_id`]).
    pub run_id: String,
    /// The agent's name.
    pub agent: String,
    /// The input bytes.
    pub input: Vec<u8>,
    /// Overrides the manifest's deadline.
    pub timeout: Option<Duration>,
    /// How agent-exec writes its answer.
    pub output: OutputFormat,
    /// How agent-exec writes log lines.
    pub log_format: LogFormat,
    /// Lowest log level shown.
    pub log_level: Option<String>,
    /// The caller's working directory (for `relative_to = "work_dir"` preopens).
    pub work_dir: Option<PathBuf>,
    /// Set for a hook call.
    pub hook: Option<HookEvent>,
    /// Capture agent-exec's standard output instead of letting it write to ours.
    pub capture_stdout: bool,
    /// Have agent-exec show LLM text on its standard error as it is generated.
    pub stream_llm: bool,
    /// How a durable agent's journal serves the run: a new run records it.
    pub journal: JournalMode,
    /// Which attempt of `run_id` this is: 1, or more for a resume.
    pub attempt: u32,
    /// Set for a sub-run: the run that started it.
    pub parent_run_id: Option<String>,
}

/// How a request ended.
#[derive(Debug)]
pub struct Finished {
    /// The outcome.
    pub outcome: Outcome,
    /// agent-exec's standard output, when captured.
    pub stdout: Vec<u8>,
    /// Set when agent-exec did not finish and the spawner recorded the run itself: the
    /// report of that record. agent-exec then wrote no answer.
    pub spawner_report: Option<RunReport>,
    /// Set when the run was stopped early.
    pub stopped: Option<StopReason>,
    /// Whether running it on could end otherwise (a retry): it failed in a way that may
    /// pass ([`Outcome::may_pass`]), was not stopped (even after it had finished), and was
    /// not ended by its compile step.
    pub retryable: bool,
}

impl Finished {
    /// A run that agent-exec finished and reported itself, with `outcome`.
    fn reported(outcome: Outcome, stdout: Vec<u8>) -> Finished {
        Finished {
            outcome,
            stdout,
            spawner_report: None,
            stopped: None,
            retryable: outcome.may_pass(),
        }
    }

    /// Whether the run finished `ok` (agent-exec committed it) but was killed before its
    /// answer reached the spawner: the outcome is the recorded one, the output is lost.
    /// Callers that act on the answer itself (a hook's verdict) cannot take it as given.
    pub fn answer_lost(&self) -> bool {
        self.outcome == Outcome::Ok && self.spawner_report.is_some()
    }

    /// The run's report: agent-exec's own (the captured JSON answer of a request made
    /// with [`OutputFormat::Json`] and `capture_stdout`) when it wrote one whole (it
    /// writes it after recording the run, so it stands even when agent-exec was killed
    /// then), else the spawner's.
    pub fn into_report(self) -> anyhow::Result<RunReport> {
        if let Some(report) = self.spawner_report {
            return Ok(serde_json::from_slice(&self.stdout).unwrap_or(report));
        }
        serde_json::from_slice(&self.stdout).with_context(|| {
            format!(
                "agent-exec exited with {} but its report is not valid JSON",
                self.outcome
            )
        })
    }
}

/// Where a run's log lines go, from whichever thread has one: the run id they belong to
/// (the run's own, or one of its sub-runs') and the line, without its newline.
pub type LineSink<'s> = &'s (dyn Fn(&str, &[u8]) + Sync + 's);

/// Where runs in flight are listed while they run (the daemon's table, for `runs.active`
/// and `runs.cancel`): a request's sub-runs are listed there as they start.
pub trait ActiveRuns: Sync {
    /// `run_id`, of `agent` (a sub-run of `parent` when given), is running, and is
    /// stopped by cancelling `cancel`. False when a run of that id is in flight already.
    fn enter(
        &self,
        run_id: &str,
        agent: &str,
        parent: Option<&str>,
        cancel: std::sync::Arc<crate::cancel::CancelToken>,
    ) -> bool;

    /// `run_id` has ended.
    fn leave(&self, run_id: &str);
}

/// What the caller that runs a request provides around it.
#[derive(Clone, Copy)]
pub struct Runner<'a> {
    /// Gets each log line of agent-exec's standard error as it comes, and those of the
    /// run's sub-runs; `None`: they go to our standard error.
    pub on_line: Option<LineSink<'a>>,
    /// Runs the first attempt, once the request is known to be runnable (so that a bad
    /// one does not use up one of the daemon's spares); retries and sub-runs run on
    /// [`Local::FRESH`].
    pub executor: &'a dyn Executor,
    /// The admission gate the caller passed for this run, whose slot it holds (the
    /// daemon's, or the command line's own): the run's sub-runs pass it too, at every
    /// depth, and the run lends its slot to them while it waits on them
    /// ([`crate::subruns`]).
    pub shared: Option<&'a Admission>,
    /// Where the run's sub-runs are listed while they run (the daemon's table; the run
    /// itself is listed by the caller). `None` on the command line.
    pub active: Option<&'a dyn ActiveRuns>,
    /// A run that passed no gate (`shared`: the command line) and whose agent may start
    /// sub-runs makes one of this many slots ([`crate::admission::default_max_running`]
    /// when `None`): it holds one, and its sub-runs at every depth share them, so that a
    /// nested fan-out has no more runs at work at once than that (parents waiting in
    /// `join` lend their slots), not `parallel` to the power of its depth. Made only then: sizing it by the cores reads cgroup files.
    pub gate_slots: Option<u32>,
    /// Take a captured answer as soon as agent-exec has closed its output, and reap its
    /// process in the background ([`crate::spawn::Exiting`]): the daemon's, whose reply
    /// then need not wait for the teardown of agent-exec's memory. Its slot is given back
    /// with the answer; the process is past its work by then. Never a sub-run's, so that
    /// a fan-out has no more agent-execs at once than its slots.
    pub reap_after_answer: bool,
}

impl Runner<'static> {
    /// The command line's: lines to our standard error, a fresh agent-exec per attempt, no
    /// table; its gate is set by [`execute_from_command_line`].
    pub const COMMAND_LINE: Runner<'static> = Runner {
        on_line: None,
        executor: &Local::FRESH,
        shared: None,
        active: None,
        gate_slots: None,
        reap_after_answer: false,
    };
}

/// Run `request` in a fresh agent-exec and wait for it, with what `runner` provides.
///
/// A durable agent whose manifest asks for retries (`[durable] retries`) is resumed here
/// after an attempt that failed for a reason that may pass ([`Outcome::may_pass`]), each
/// retry a fresh agent-exec with the whole deadline, served the steps its journal holds,
/// after a backoff that doubles; a stop ends the retries. The last attempt is what is
/// returned.
pub fn execute(
    home: &Home,
    request: &Request,
    stop: Stop<'_>,
    runner: Runner<'_>,
) -> anyhow::Result<Finished> {
    let manifest = Manifest::load(&home.agent_manifest(&request.agent)?)?;
    // This process owns the run from here to its end: its marker says it is running (a
    // replay is not a run of its own), and is removed when `marker` is dropped.
    let mut marker = if request.journal == JournalMode::Replay {
        None
    } else {
        mark(home, request, &manifest, stop, runner)?
    };
    let own_gate = (runner.shared.is_none() && manifest.runs.any()).then(|| {
        let slots = runner
            .gate_slots
            .map_or_else(crate::admission::default_max_running, |n| n as usize);
        Admission::for_home(home, slots, usize::MAX)
    });
    let _own_slot = own_gate.as_ref().map(Admission::enter_waiting);
    let runner = match &own_gate {
        Some(gate) => Runner {
            shared: Some(gate),
            ..runner
        },
        None => runner,
    };
    let ctx = Attempts {
        home,
        manifest: &manifest,
        stop,
        runner,
        marked: marker.is_some(),
    };
    let finished = attempt(ctx, request, runner.executor)?;
    let durable = &manifest.durable;
    if durable.retries == 0 || request.journal == JournalMode::Replay || !finished.retryable {
        return Ok(finished);
    }
    // The run's lease, held from the first retry to the last: taken here (and given back
    // here), or held already by this process's resume of it.
    let mut leased: Option<(Store, Leased)> = None;
    let retried = retry(ctx, request, finished, &mut leased, &mut marker);
    if let Some((store, Leased::Taken)) = leased
        && let Err(e) = store.release_lease(&request.run_id, std::process::id())
    {
        say_to(
            ctx,
            request,
            &format!(
                "warning: could not give back run {}'s lease: {e}",
                request.run_id
            ),
        );
    }
    retried
}

/// Mark `request`'s run as running, owned by this process ([`memory_store::running`]); a
/// run that cannot be marked is said and run unmarked (it is recorded all the same when it
/// ends; only a kill of this process could then leave it unrecorded). A run of that id in
/// flight already (a sub-run whose agent-exec outlived its parent's spawner, asked for
/// again by the parent's resume) is refused: it must not run twice at once.
fn mark(
    home: &Home,
    request: &Request,
    manifest: &Manifest,
    stop: Stop<'_>,
    runner: Runner<'_>,
) -> anyhow::Result<Option<memory_store::running::Marker>> {
    let started = memory_store::running::Started {
        run_id: request.run_id.clone(),
        agent: manifest.name.clone(),
        started_at_ms: memory_store::now_ms(),
        attempt: request.attempt,
        parent_run_id: request.parent_run_id.clone(),
        owner_pid: std::process::id(),
        keep_runs: manifest.memory.keep_runs,
        input: (manifest.memory.retain_input || manifest.durable.journal)
            .then(|| request.input.clone()),
    };
    match memory_store::running::Marker::create(&home.store_path(), started) {
        Ok(marker) => Ok(Some(marker)),
        Err(e @ memory_store::StoreError::InFlight { .. }) => {
            Err(crate::exit::UsageError(e.to_string()).into())
        }
        Err(e) => {
            let ctx = Attempts {
                home,
                manifest,
                stop,
                runner,
                marked: false,
            };
            say_to(
                ctx,
                request,
                &format!(
                    "warning: run {} is not marked as running: {e}",
                    request.run_id
                ),
            );
            Ok(None)
        }
    }
}

/// [`execute`] for the command line: stopped by this process's SIGINT, SIGTERM or SIGHUP,
/// run in a fresh agent-exec per attempt; a run that may start sub-runs makes a gate of
/// `max_running` slots ([`Runner::gate_slots`]) for itself and its sub-runs at every
/// depth.
pub fn execute_from_command_line(
    home: &Home,
    request: &Request,
    max_running: Option<u32>,
) -> anyhow::Result<Finished> {
    let token =
        crate::cancel::CancelToken::new().context("cannot create the run's cancel token")?;
    let runner = Runner {
        gate_slots: max_running,
        ..Runner::COMMAND_LINE
    };
    execute(home, request, Stop::signals(&token), runner)
}

/// [`execute`]'s retries of `finished`, the lease they hold kept in `leased`.
fn retry(
    ctx: Attempts<'_>,
    request: &Request,
    mut finished: Finished,
    leased: &mut Option<(Store, Leased)>,
    marker: &mut Option<memory_store::running::Marker>,
) -> anyhow::Result<Finished> {
    let Attempts {
        home,
        manifest,
        stop,
        ..
    } = ctx;
    let durable = &manifest.durable;
    let run_id = &request.run_id;
    let mut attempt_no = request.attempt;
    for n in 1..=durable.retries {
        if !finished.retryable {
            break;
        }
        if leased.is_none() {
            let taken = Store::open(&home.store_path())
                .map_err(anyhow::Error::from)
                .and_then(|store| Ok((crate::durable::take_lease(&store, run_id)?, store)));
            match taken {
                Ok((Ok(how), store)) => *leased = Some((store, how)),
                // The failed attempt stands as the answer; the store's trouble is said.
                Err(e) => {
                    say_to(
                        ctx,
                        request,
                        &format!("warning: run {run_id} cannot be retried: {e:#}"),
                    );
                    break;
                }
                Ok((Err(holder), _)) => {
                    say_to(
                        ctx,
                        request,
                        &format!(
                            "run {run_id} is being resumed by process {holder}: no retry here"
                        ),
                    );
                    break;
                }
            }
        }
        let wait = durable.backoff(n);
        say_to(
            ctx,
            request,
            &format!(
                "run {run_id} attempt {attempt_no} ended {}; retry {n} of {} in {} ms",
                finished.outcome,
                durable.retries,
                wait.as_millis()
            ),
        );
        if crate::spawn::pause(wait, stop)? {
            finished.stopped = stop.token.reason();
            break;
        }
        let Some((store, _)) = leased.as_mut() else {
            break;
        };
        // What agent-exec recorded lands in the run log when the store was open: read it.
        // Under the lease, the run must still be where this attempt left it: another
        // resumer may have run it on during the backoff.
        let record = store
            .import_run_log()
            .and_then(|_| store.run(run_id))
            .map_err(|e| format!("its record cannot be read: {e}"));
        match record {
            Ok(Some(r)) if r.attempt == attempt_no && r.status.may_pass() => {}
            Err(why) => {
                say_to(
                    ctx,
                    request,
                    &format!("warning: run {run_id} cannot be retried: {why}"),
                );
                break;
            }
            Ok(r) => {
                say_to(
                    ctx,
                    request,
                    &format!(
                        "run {run_id} was run on elsewhere ({}): no retry here",
                        r.map_or_else(
                            || "it has no record".to_owned(),
                            |r| format!("attempt {} ended {}", r.attempt, r.status)
                        )
                    ),
                );
                break;
            }
        }
        attempt_no = attempt_no.saturating_add(1);
        if let Some(m) = marker.as_mut()
            && let Err(e) = m.next_attempt(attempt_no)
        {
            say_to(
                ctx,
                request,
                &format!("warning: run {run_id}'s marker still says its last attempt: {e}"),
            );
        }
        let again = Request {
            journal: crate::durable::resume_mode(request.journal == JournalMode::ResumeChanged),
            attempt: attempt_no,
            ..request.clone()
        };
        finished = attempt(ctx, &again, &Local::FRESH)?;
    }
    Ok(finished)
}

/// A line from the spawner among `request`'s log lines, in their format (a JSON line
/// shaped as agent-exec's), to the caller's line sink when it takes them, else to
/// standard error.
fn say_to(ctx: Attempts<'_>, request: &Request, text: &str) {
    let line = match request.log_format {
        LogFormat::Json => serde_json::json!({
            "level": "WARN",
            "message": text,
            "target": "spawner",
        })
        .to_string(),
        LogFormat::Human => format!("spawner: {text}"),
    };
    match ctx.runner.on_line {
        Some(sink) => sink(&request.run_id, line.as_bytes()),
        None => crate::say!("{line}"),
    }
}

/// One process's standard error, cut into lines for a [`LineSink`]: chunks come as the
/// pipe gives them, a line may span several. A last line without its newline is passed
/// on when the process has ended ([`Lines::finish`]).
struct Lines<'a> {
    run_id: &'a str,
    sink: LineSink<'a>,
    pending: Vec<u8>,
}

impl<'a> Lines<'a> {
    fn new(run_id: &'a str, sink: LineSink<'a>) -> Lines<'a> {
        Lines {
            run_id,
            sink,
            pending: Vec::new(),
        }
    }

    fn feed(&mut self, chunk: &[u8]) {
        let mut rest = chunk;
        while let Some(i) = rest.iter().position(|b| *b == b'\n') {
            let (line, after) = rest.split_at(i);
            if self.pending.is_empty() {
                (self.sink)(self.run_id, line);
            } else {
                self.pending.extend_from_slice(line);
                (self.sink)(self.run_id, &self.pending);
                self.pending.clear();
            }
            rest = &after[1..];
        }
        self.pending.extend_from_slice(rest);
    }

    fn finish(self) {
        if !self.pending.is_empty() {
            (self.sink)(self.run_id, &self.pending);
        }
    }
}

/// What every attempt at one request shares.
#[derive(Clone, Copy)]
struct Attempts<'a> {
    home: &'a Home,
    manifest: &'a Manifest,
    stop: Stop<'a>,
    runner: Runner<'a>,
    /// The run is marked as running ([`mark`]): its agent-exec holds the marker.
    marked: bool,
}

/// The outcome a whole report in `stdout` gives, if it is one.
fn answered(stdout: &[u8]) -> Option<Outcome> {
    #[derive(serde::Deserialize)]
    struct Status {
        status: Outcome,
    }
    serde_json::from_slice::<Status>(stdout)
        .ok()
        .map(|s| s.status)
}

/// One attempt at `request`: [`execute`] without its retries.
fn attempt(
    ctx: Attempts<'_>,
    request: &Request,
    executor: &dyn Executor,
) -> anyhow::Result<Finished> {
    let Attempts {
        home,
        manifest,
        stop,
        runner,
        marked,
    } = ctx;
    let on_line = runner.on_line;
    let mut lines = on_line.map(|sink| Lines::new(&request.run_id, sink));
    let mut feed = |chunk: &[u8]| {
        if let Some(lines) = lines.as_mut() {
            lines.feed(chunk);
        }
    };
    let on_stderr: Option<StderrSink<'_>> = on_line.is_some().then_some(&mut feed);
    let timeout = request.timeout.unwrap_or(manifest.limits.timeout);
    let mut policy = SpawnPolicy::for_request(agent_exec_path()?, timeout);
    if manifest.may_use_broker() {
        // It may start the broker, which must then have the providers' keys.
        policy.keys = ProviderKeys::from_env(home.root());
    }
    let run_id = request.run_id.clone();
    let started = Instant::now();
    let started_ms = memory_store::now_ms();
    // A replay starts no sub-runs: its joins come from the journal.
    let sub_runs = if manifest.runs.any() && request.journal != JournalMode::Replay {
        Some(
            crate::subruns::Server::open(&run_id)
                .context("cannot open the channel for the run's sub-runs")?,
        )
    } else {
        None
    };
    let header = RequestHeader {
        v: ENVELOPE_VERSION,
        run_id: run_id.clone(),
        agent: manifest.name.clone(),
        home: absolute(home.root())?,
        timeout_ms: request
            .timeout
            .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        output: request.output,
        log_format: request.log_format,
        log_level: request.log_level.clone(),
        spawned_at_unix_ns: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()
            .and_then(|d| u64::try_from(d.as_nanos()).ok()),
        work_dir: request.work_dir.clone(),
        hook: request.hook.clone(),
        // A compile must not eat the request's deadline: on a cache miss agent-exec leaves
        // it to the compile step below.
        compile: CompileStep::Defer,
        // agent-exec's environment is cleared: the broker's socket and programs are
        // resolved here, as `spawner doctor` resolves them.
        stream_llm: request.stream_llm,
        journal: request.journal,
        attempt: request.attempt,
        broker: Some(BrokerLayout::beside(home, &policy.program)),
        sub_runs: sub_runs.as_ref().map(crate::subruns::Server::channel),
        parent_run_id: request.parent_run_id.clone(),
        marked,
    };
    let job = Job {
        policy: &policy,
        header,
        input: &request.input,
        capture_stdout: request.capture_stdout,
        stop,
        reap_after_answer: runner.reap_after_answer && request.capture_stdout,
    };
    let Ran {
        exit,
        failed_compile,
    } = match &sub_runs {
        None => executor.run(job, on_stderr)?,
        Some(server) => {
            let parent = crate::subruns::Parent {
                home,
                request,
                manifest,
                runner,
            };
            let local = Admission::new(manifest.runs.parallel, 0);
            std::thread::scope(|scope| {
                // The server's threads must not take the signals the command line waits
                // for: they inherit this mask, and the signalfd reads them.
                let serving = crate::spawn::with_stop_signals_blocked(|| {
                    scope.spawn(|| server.serve(&parent, &local))
                });
                let ran = executor.run(job, on_stderr);
                server.end(runner.shared, Some(&local));
                let _ = serving.join();
                ran
            })?
        }
    };
    if let Some(lines) = lines {
        lines.finish();
    }
    let (termination, stdout) = (exit.termination, exit.stdout);
    // An answer taken before agent-exec exited stands when it is a whole report (written
    // after the run was recorded); else its exit says what happened.
    let termination = match (termination, exit.exiting) {
        (Termination::Answered, Some(exiting)) => match answered(&stdout) {
            Some(outcome) => {
                exiting.reap_in_background();
                return Ok(Finished::reported(outcome, stdout));
            }
            None => exiting.wait()?,
        },
        (termination, _) => termination,
    };
    let stopped = match termination {
        Termination::Stopped => stop.token.reason(),
        _ => None,
    };

    // A stop or a failed compile is not retried, whatever the record says.
    let retryable_failure = stopped.is_none() && failed_compile.is_none();
    let (outcome, error) = if let Some(failed) = failed_compile {
        failed
    } else {
        match termination {
            Termination::Exited(code) => match Outcome::from_exit_code(code) {
                Some(outcome) => return Ok(Finished::reported(outcome, stdout)),
                // Not one of ours (a panic exits with 101): agent-exec failed before it could
                // record the run.
                None => (
                    Outcome::Internal,
                    format!("agent-exec exited with unexpected code {code}"),
                ),
            },
            Termination::DeadlineKilled => (
                Outcome::Timeout,
                format!(
                    "agent {:?} was still running {} ms after its {} ms deadline; its process group was killed",
                    manifest.name,
                    policy.kill_after.saturating_sub(timeout).as_millis(),
                    timeout.as_millis()
                ),
            ),
            Termination::Signaled(sig) => (
                Outcome::Killed,
                format!("agent-exec was killed by signal {sig}"),
            ),
            Termination::Stopped => (
                Outcome::Killed,
                stopped.map_or_else(String::new, StopReason::describe),
            ),
            // Not after the wait above.
            Termination::Answered => (
                Outcome::Internal,
                "agent-exec closed its output without a report".to_owned(),
            ),
        }
    };
    // agent-exec did not finish, so it may not have recorded the run: record it here.
    let record = RunRecord {
        run_id: run_id.clone(),
        agent: manifest.name.clone(),
        started_at_ms: started_ms,
        ended_at_ms: memory_store::now_ms(),
        status: outcome,
        error: Some(error.clone()),
        // A durable run keeps its input, so that it can be resumed.
        input: (manifest.memory.retain_input || manifest.durable.journal)
            .then(|| request.input.clone()),
        cache_hit: None,
        timings: PhaseTimings {
            total_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            ..PhaseTimings::default()
        },
        llm_calls: Vec::new(),
        tool_calls: Vec::new(),
        attempt: request.attempt,
        component_sha256: None,
        output_sha256: None,
        parent_run_id: request.parent_run_id.clone(),
        output: None,
    };
    // agent-exec may have committed its record (and the run's memory writes) just before it
    // was killed: then that record is the run's outcome, and the caller must see the same,
    // so that one who retries on `killed` does not apply the writes twice.
    // A replay writes nothing, its failure included.
    let committed = match request.journal {
        JournalMode::Replay => Ok(None),
        _ => Store::open(&home.store_path()).and_then(|mut store| {
            if store.record_run(&record, manifest.memory.keep_runs)? {
                Ok(None)
            } else {
                store.run(&run_id)
            }
        }),
    };
    let (outcome, error, stopped) = match committed {
        Ok(Some(existing)) => (
            existing.status,
            existing.error.unwrap_or_else(|| {
                format!(
                    "the run had finished ({}) when it was stopped; its answer was lost",
                    existing.status
                )
            }),
            None,
        ),
        Ok(None) => (outcome, error, stopped),
        Err(e) => {
            crate::say!("spawner: warning: could not record run {run_id}: {e}");
            (outcome, error, stopped)
        }
    };
    Ok(Finished {
        outcome,
        stdout,
        spawner_report: Some(RunReport::failed(
            run_id,
            manifest.name.clone(),
            outcome,
            error,
            record.timings,
        )),
        stopped,
        retryable: retryable_failure && outcome.may_pass(),
    })
}

/// Environment variable naming the lowest level of log line shown, for commands without
/// `--log-level`.
pub const LOG_LEVEL_ENV: &str = "SPAWNER_LOG";

/// The log level `$SPAWNER_LOG` asks for; one that is not a level is said and left out,
/// so lines are shown at the default, `warn`.
pub fn log_level_from_env() -> Option<String> {
    let level = std::env::var(LOG_LEVEL_ENV)
        .ok()
        .filter(|l| !l.is_empty())?;
    match agent_contract::envelope::check_log_level(&level) {
        Ok(level) => Some(level),
        Err(e) => {
            crate::say!("spawner: warning: ${LOG_LEVEL_ENV}: {e}; showing warn and above");
            None
        }
    }
}

/// The agent-exec binary: `$SPAWNER_AGENT_EXEC`, else next to this executable.
pub fn agent_exec_path() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(AGENT_EXEC_ENV).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let me = std::env::current_exe().context("cannot locate the spawner executable")?;
    let sibling = me.with_file_name("agent-exec");
    if sibling.is_file() {
        Ok(sibling)
    } else {
        anyhow::bail!(
            "agent-exec not found next to {} (build it with `cargo build --release`, or set ${AGENT_EXEC_ENV})",
            me.display()
        )
    }
}

fn absolute(path: &std::path::Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot resolve {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn standard_error_is_cut_into_whole_lines_however_it_is_chunked() {
        let got: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());
        let sink = |from: &str, line: &[u8]| {
            got.lock()
                .expect("lock")
                .push((from.to_owned(), String::from_utf8_lossy(line).into_owned()));
        };
        let mut lines = Lines::new("r.1", &sink);
        // A line split mid-character, one whole, an empty one, and a last with no newline.
        let text = "première ligne\nzweite\n\n最後".as_bytes();
        for chunk in [&text[..5], &text[5..20], &text[20..]] {
            lines.feed(chunk);
        }
        lines.finish();
        let got = got.into_inner().expect("lock");
        let texts: Vec<&str> = got.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(texts, ["première ligne", "zweite", "", "最後"]);
        assert!(got.iter().all(|(from, _)| from == "r.1"));
    }
}
