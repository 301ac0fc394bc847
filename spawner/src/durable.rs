//! Running a durable run again, for the command line (`spawner runs resume|replay`) and
//! the daemon (`runs.resume`, `runs.replay`): which runs may be, and the request that
//! runs one again. The retries a manifest asks for are [`crate::request::execute`]'s.

use agent_contract::envelope::JournalMode;
use agent_contract::{Home, LogFormat, Manifest, Outcome, OutputFormat};
use memory_store::{Leased, RunRecord, Store};

use crate::exit::UsageError;
use crate::request::Request;

/// A durable run's record, checked to be run again: its agent keeps a journal and the run
/// kept its input. With the store it was read from.
pub fn durable_run(home: &Home, run_id: &str) -> anyhow::Result<(Store, RunRecord)> {
    let path = home.store_path();
    let record = if Store::exists(&path) || memory_store::running::any_marked(&path) {
        // A run whose processes ended before it did is recorded (killed) here, and so can
        // be resumed; one in flight cannot be run again beside itself.
        let mut store = Store::open(&path)?;
        let in_flight = store.in_flight()?;
        if let Some(m) = in_flight.iter().find(|m| m.run_id == run_id) {
            return Err(UsageError(format!(
                "run {run_id} is running or being retried (attempt {}, in process {}): wait for it to end, or cancel it",
                m.attempt, m.owner_pid
            ))
            .into());
        }
        // A sub-run still running (its agent-exec outlived the parent's spawner) would
        // be asked for again by the parent's resume.
        let child_prefix = format!("{run_id}.");
        if let Some(m) = in_flight
            .iter()
            .find(|m| m.run_id.starts_with(&child_prefix))
        {
            return Err(UsageError(format!(
                "run {run_id}'s sub-run {} is still running (in process {}): wait for it to end",
                m.run_id, m.owner_pid
            ))
            .into());
        }
        store.run(run_id)?.map(|r| (store, r))
    } else {
        None
    };
    let Some((store, record)) = record else {
        return Err(UsageError(format!(
            "no run {run_id:?} in {} (see `spawner runs`)",
            path.display()
        ))
        .into());
    };
    let manifest = Manifest::load(&home.agent_manifest(&record.agent)?)?;
    if !manifest.durable.journal {
        return Err(UsageError(format!(
            "agent {} keeps no journal, so its runs cannot be resumed or replayed (set `[durable] journal = true` in its agent.toml; runs made since then can be)",
            record.agent
        ))
        .into());
    }
    if record.input.is_none() {
        return Err(UsageError(format!(
            "run {run_id} kept no input (it ran before its agent kept a journal), so it cannot be run again"
        ))
        .into());
    }
    Ok((store, record))
}

/// A run to resume: durable, and not finished `ok`.
pub fn resumable(home: &Home, run_id: &str) -> anyhow::Result<(Store, RunRecord)> {
    let (store, record) = durable_run(home, run_id)?;
    if record.status == Outcome::Ok {
        return Err(UsageError(format!(
            "run {run_id} finished ok (attempt {}): there is nothing to resume (`spawner runs replay {run_id}` checks that it reproduces)",
            record.attempt
        ))
        .into());
    }
    Ok((store, record))
}

/// A run to replay: durable, and finished `ok` with an answer to check against.
pub fn replayable(home: &Home, run_id: &str) -> anyhow::Result<(Store, RunRecord)> {
    let (store, record) = durable_run(home, run_id)?;
    if record.status != Outcome::Ok || record.output_sha256.is_none() {
        return Err(UsageError(format!(
            "run {run_id} did not finish ok ({}), so it has no answer to replay against; `spawner runs resume {run_id}` runs it on",
            record.status
        ))
        .into());
    }
    Ok((store, record))
}

/// How a resume serves the journal: the component must be the run's unless
/// `allow_changed`.
pub fn resume_mode(allow_changed: bool) -> JournalMode {
    if allow_changed {
        JournalMode::ResumeChanged
    } else {
        JournalMode::Resume
    }
}

/// Take the lease on resuming `run_id` for this process: `Err(pid)` when a live process
/// `pid` holds it (the lease of a process that is gone is taken over).
pub fn take_lease(store: &Store, run_id: &str) -> anyhow::Result<Result<Leased, u32>> {
    let alive =
        |pid: u32| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok();
    Ok(store.take_lease(run_id, std::process::id(), alive)?)
}

/// [`take_lease`] for a resume, which the caller gives back; else the usage error that
/// says who holds it (this process, when it is the daemon running it on another thread).
pub fn lease(store: &Store, run_id: &str) -> anyhow::Result<()> {
    let holder = match take_lease(store, run_id)? {
        Ok(Leased::Taken) => return Ok(()),
        Ok(Leased::Held) => std::process::id(),
        Err(holder) => holder,
    };
    Err(UsageError(format!(
        "run {run_id} is being resumed or retried by process {holder}; wait for it to finish"
    ))
    .into())
}

/// The request that runs `record` again (its run id, agent and input, the next attempt),
/// answering as a JSON report (captured) or raw.
pub fn again(record: RunRecord, journal: JournalMode, json: bool) -> Request {
    Request {
        run_id: record.run_id,
        agent: record.agent,
        input: record.input.unwrap_or_default(),
        timeout: None,
        output: if json {
            OutputFormat::Json
        } else {
            OutputFormat::Raw
        },
        log_format: if json {
            LogFormat::Json
        } else {
            LogFormat::Human
        },
        log_level: None,
        work_dir: None,
        hook: None,
        // A JSON answer is one report, whichever process writes it (see `run::finish`).
        capture_stdout: json || journal == JournalMode::Replay,
        stream_llm: false,
        journal,
        attempt: record.attempt.saturating_add(1),
        parent_run_id: record.parent_run_id,
    }
}
