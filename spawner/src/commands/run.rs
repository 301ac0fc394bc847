//! `spawner run`: one request, in a fresh agent-exec.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use agent_contract::envelope::{ENVELOPE_VERSION, write_envelope};
use agent_contract::{
    Home, LogFormat, Manifest, Outcome, OutputFormat, PhaseTimings, RequestHeader, RunReport,
};
use anyhow::Context;
use memory_store::{RunRecord, Store};

use crate::cli::RunArgs;
use crate::exit::{Interrupted, UsageError};
use crate::run_id::new_run_id;
use crate::spawn::{SpawnPolicy, Termination};

/// Environment variable naming the agent-exec binary, for installs that keep it elsewhere.
pub const AGENT_EXEC_ENV: &str = "SPAWNER_AGENT_EXEC";

/// Run the agent once and exit with its outcome.
pub fn execute(home: &Home, args: RunArgs) -> anyhow::Result<Outcome> {
    let manifest = Manifest::load(&home.agent_manifest(&args.agent)?)?;
    let input = read_input(&args)?;
    let timeout = args.timeout.unwrap_or(manifest.limits.timeout);
    let policy = SpawnPolicy::for_request(agent_exec_path()?, timeout);
    let run_id = new_run_id();
    let started = Instant::now();
    let started_ms = memory_store::now_ms();
    let header = RequestHeader {
        v: ENVELOPE_VERSION,
        run_id: run_id.clone(),
        agent: manifest.name.clone(),
        home: absolute(home.root())?,
        timeout_ms: args
            .timeout
            .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        output: if args.json {
            OutputFormat::Json
        } else {
            OutputFormat::Raw
        },
        log_format: if args.json {
            LogFormat::Json
        } else {
            LogFormat::Human
        },
        log_level: args
            .log_level
            .clone()
            .or_else(|| std::env::var("SPAWNER_LOG").ok()),
        spawned_at_unix_ns: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()
            .and_then(|d| u64::try_from(d.as_nanos()).ok()),
    };
    let mut envelope = Vec::with_capacity(input.len() + 512);
    write_envelope(&mut envelope, &header, &input).context("cannot build the request")?;
    let termination = crate::spawn::run(&policy, &envelope)?;

    let (outcome, error) = match termination {
        Termination::Exited(code) => match Outcome::from_exit_code(code) {
            Some(outcome) => return Ok(outcome),
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
        Termination::Interrupted(sig) => (
            Outcome::Killed,
            format!("the run was killed because spawner received {sig}"),
        ),
    };
    // agent-exec did not finish, so it may not have recorded the run: record it here.
    let record = RunRecord {
        run_id: run_id.clone(),
        agent: manifest.name.clone(),
        started_at_ms: started_ms,
        ended_at_ms: memory_store::now_ms(),
        status: outcome,
        error: Some(error.clone()),
        input: None,
        cache_hit: None,
        timings: PhaseTimings {
            total_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            ..PhaseTimings::default()
        },
    };
    if let Err(e) = Store::open(&home.store_path())
        .and_then(|mut store| store.record_run(&record, manifest.memory.keep_runs))
    {
        eprintln!("spawner: warning: could not record run {run_id}: {e}");
    }
    if args.json {
        let report = RunReport {
            run_id,
            agent: manifest.name,
            status: outcome,
            exit_code: outcome.exit_code(),
            output: None,
            output_base64: None,
            error: Some(error.clone()),
            cache_hit: None,
            timings: record.timings,
        };
        let mut stdout = std::io::stdout().lock();
        serde_json::to_writer(&mut stdout, &report)?;
        stdout.write_all(b"\n")?;
    }
    if let Termination::Interrupted(sig) = termination {
        return Err(Interrupted(sig).into());
    }
    if !args.json {
        eprintln!("spawner: error: {error}");
    }
    Ok(outcome)
}

/// The input: the words given, else the file, else standard input when it is not a
/// terminal, else nothing.
fn read_input(args: &RunArgs) -> anyhow::Result<Vec<u8>> {
    if !args.input.is_empty() {
        return Ok(args.input.join(" ").into_bytes());
    }
    let limit = agent_contract::envelope::MAX_INPUT_BYTES;
    let mut input = Vec::new();
    match &args.input_file {
        Some(path) if path.as_os_str() != "-" => {
            let file = std::fs::File::open(path).map_err(|e| {
                UsageError(format!("cannot read input file {}: {e}", path.display()))
            })?;
            file.take(limit + 1).read_to_end(&mut input)
        }
        Some(_) => std::io::stdin()
            .lock()
            .take(limit + 1)
            .read_to_end(&mut input),
        None if std::io::stdin().is_terminal() => Ok(0),
        None => std::io::stdin()
            .lock()
            .take(limit + 1)
            .read_to_end(&mut input),
    }
    .map_err(|e| UsageError(format!("cannot read the input: {e}")))?;
    if input.len() as u64 > limit {
        return Err(UsageError(format!("input is over the limit of {limit} bytes")).into());
    }
    Ok(input)
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
