//! `spawner runs`: recent run records from the memory store.

use std::io::Write;

use agent_contract::envelope::JournalMode;
use agent_contract::report::utc;
use agent_contract::{Home, Outcome};
use memory_store::running::Started;
use memory_store::{RunFilter, Store};

use crate::cli::{RunsArgs, RunsCommand};
use crate::request::Request;

/// List recent runs, newest first; or show one.
pub fn execute(home: &Home, args: RunsArgs) -> anyhow::Result<Outcome> {
    match args.command {
        Some(RunsCommand::Show { run_id, json }) => return show(home, &run_id, json),
        Some(RunsCommand::Export { agent }) => return export(home, agent),
        Some(RunsCommand::Delete { run_ids, agent }) => return delete(home, &run_ids, agent),
        Some(RunsCommand::Resume {
            run_id,
            allow_changed,
            timeout,
            json,
        }) => return resume(home, &run_id, allow_changed, timeout, json),
        Some(RunsCommand::Replay { run_id, json }) => return replay(home, &run_id, json),
        None => {}
    }
    let path = home.store_path();
    let mut out = std::io::stdout().lock();
    if !Store::exists(&path) && !memory_store::running::any_marked(&path) {
        if !args.json {
            writeln!(out, "no runs yet ({} does not exist)", path.display())?;
        }
        return Ok(Outcome::Ok);
    }
    let mut store = Store::open(&path)?;
    // Sub-runs are folded into their parents, unless the runs of one agent are asked for.
    let fold = args.agent.is_none();
    let in_flight = store.in_flight()?;
    let running: Vec<&Started> = in_flight
        .iter()
        .filter(|r| args.agent.as_ref().is_none_or(|a| *a == r.agent))
        .filter(|r| !fold || r.parent_run_id.is_none())
        .collect();
    let filter = RunFilter {
        agent: args.agent,
        limit: args.limit,
    };
    let mut runs = if fold {
        store.caller_runs(&filter)?
    } else {
        store.runs(&filter)?
    };
    // A run in a retry is listed once, as running (`runs show` has its last attempt).
    runs.retain(|r| !in_flight.iter().any(|m| m.run_id == r.run_id));
    if args.json {
        for r in &running {
            serde_json::to_writer(&mut out, &running_json(r))?;
            out.write_all(b"\n")?;
        }
        for run in &runs {
            serde_json::to_writer(&mut out, &ended_json(run)?)?;
            out.write_all(b"\n")?;
        }
        return Ok(Outcome::Ok);
    }
    writeln!(
        out,
        "{:28}  {:16}  {:14}  {:>4}  {:19}  {:>9}  ERROR",
        "RUN", "AGENT", "STATUS", "EXIT", "STARTED (UTC)", "TOTAL"
    )?;
    let now = memory_store::now_ms();
    for r in &running {
        writeln!(
            out,
            "{:28}  {:16}  {:14}  {:>4}  {:19}  {:>7.2}ms  (attempt {}, in process {})",
            r.run_id,
            r.agent,
            "running",
            "",
            utc(r.started_at_ms),
            now.saturating_sub(r.started_at_ms) as f64,
            r.attempt,
            r.owner_pid
        )?;
        if fold {
            let counts = store.sub_run_counts(&r.run_id)?;
            let children = in_flight
                .iter()
                .filter(|c| c.parent_run_id.as_deref() == Some(&r.run_id))
                .count();
            if !counts.is_empty() || children > 0 {
                writeln!(
                    out,
                    "  + {} (`spawner runs show {}`)",
                    describe_sub_runs(&counts, children),
                    r.run_id
                )?;
            }
        }
    }
    for r in &runs {
        writeln!(
            out,
            "{:28}  {:16}  {:14}  {:>4}  {:19}  {:>7.2}ms  {}",
            r.run_id,
            r.agent,
            r.status.as_str(),
            r.status.exit_code(),
            utc(r.started_at_ms),
            r.timings.total_us as f64 / 1000.0,
            r.error
                .as_deref()
                .unwrap_or("")
                .lines()
                .next()
                .unwrap_or("")
        )?;
        if fold {
            let counts = store.sub_run_counts(&r.run_id)?;
            if !counts.is_empty() {
                writeln!(
                    out,
                    "  + {} (`spawner runs show {}`)",
                    describe_sub_runs(&counts, 0),
                    r.run_id
                )?;
            }
        }
    }
    Ok(Outcome::Ok)
}

/// A run in flight, as `runs` lists it in JSON: what its marker says, `"state": "running"`.
pub fn running_json(r: &Started) -> serde_json::Value {
    let mut v = serde_json::to_value(r).unwrap_or_default();
    if let Some(map) = v.as_object_mut() {
        map.insert("state".into(), "running".into());
    }
    v
}

/// A run's record, as `runs` lists it in JSON: the record, `"state": "ended"`.
pub fn ended_json(r: &memory_store::RunRecord) -> anyhow::Result<serde_json::Value> {
    let mut v = serde_json::to_value(r)?;
    if let Some(map) = v.as_object_mut() {
        map.insert("state".into(), "ended".into());
    }
    Ok(v)
}

/// "3 sub-runs: 2 ok, 1 running" from the ended sub-runs' counts by status and how many
/// are running.
fn describe_sub_runs(counts: &[(Outcome, u32)], running: usize) -> String {
    let running = u32::try_from(running).unwrap_or(u32::MAX);
    let total: u32 = counts.iter().map(|(_, n)| n).sum::<u32>() + running;
    let mut each: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
    if running > 0 {
        each.push(format!("{running} running"));
    }
    format!(
        "{total} sub-run{}: {}",
        if total == 1 { "" } else { "s" },
        each.join(", ")
    )
}

/// Every run record whole, as JSON lines.
fn export(home: &Home, agent: Option<String>) -> anyhow::Result<Outcome> {
    let path = home.store_path();
    if !Store::exists(&path) {
        return Ok(Outcome::Ok);
    }
    let store = Store::open(&path)?;
    let mut out = std::io::stdout().lock();
    for r in store.runs(&RunFilter {
        agent,
        limit: u32::MAX,
    })? {
        let whole = store.run(&r.run_id)?.unwrap_or(r);
        serde_json::to_writer(&mut out, &whole)?;
        out.write_all(b"\n")?;
    }
    Ok(Outcome::Ok)
}

/// Resume a failed run: a fresh agent-exec, served the journaled calls.
fn resume(
    home: &Home,
    run_id: &str,
    allow_changed: bool,
    timeout: Option<std::time::Duration>,
    json: bool,
) -> anyhow::Result<Outcome> {
    let (store, record) = crate::durable::resumable(home, run_id)?;
    crate::durable::lease(&store, run_id)?;
    let mode = crate::durable::resume_mode(allow_changed);
    let request = Request {
        timeout,
        ..again(record, mode, json)
    };
    let finished = crate::request::execute_from_command_line(home, &request, None);
    store.release_lease(run_id, std::process::id())?;
    super::run::finish(&finished?, json)
}

/// Replay a finished run from its journal and check its answer.
fn replay(home: &Home, run_id: &str, json: bool) -> anyhow::Result<Outcome> {
    let (store, record) = crate::durable::replayable(home, run_id)?;
    let steps = store.journal(run_id)?.len();
    drop(store);
    let finished = crate::request::execute_from_command_line(
        home,
        &again(record, JournalMode::Replay, json),
        None,
    )?;
    if finished.outcome == Outcome::Ok && finished.spawner_report.is_none() {
        let mut out = std::io::stdout().lock();
        if json {
            out.write_all(&finished.stdout)?;
        } else {
            writeln!(
                out,
                "replay of run {run_id} matches: the same answer from its journal of {steps} step(s)"
            )?;
        }
        return Ok(Outcome::Ok);
    }
    super::run::finish(&finished, json)
}

/// The request that runs `record` again from the command line.
fn again(record: memory_store::RunRecord, journal: JournalMode, json: bool) -> Request {
    Request {
        log_level: crate::request::log_level_from_env(),
        work_dir: std::env::current_dir().ok(),
        ..crate::durable::again(record, journal, json)
    }
}

/// Delete runs with their evidence.
fn delete(home: &Home, run_ids: &[String], agent: Option<String>) -> anyhow::Result<Outcome> {
    if run_ids.is_empty() && agent.is_none() {
        anyhow::bail!("name the runs to delete, or --agent <name> for all of an agent's runs");
    }
    let path = home.store_path();
    let deleted = if Store::exists(&path) {
        Store::open(&path)?.delete_runs(run_ids, agent.as_deref())?
    } else {
        0
    };
    writeln!(
        std::io::stdout().lock(),
        "deleted {deleted} run record(s) with their evidence"
    )?;
    Ok(Outcome::Ok)
}

/// What `runs show` found of one run.
#[derive(Default)]
struct Shown {
    /// Its record: of its last attempt that ended.
    record: Option<memory_store::RunRecord>,
    /// Its marker, while an attempt is in flight.
    running: Option<Started>,
    journal: Vec<memory_store::JournalEntry>,
    /// Its sub-runs that ended.
    children: Vec<memory_store::RunRecord>,
    /// Its sub-runs in flight.
    running_children: Vec<Started>,
}

/// One run whole, with the evidence of its LLM and tool calls; or, while it runs, what it
/// has done so far.
fn show(home: &Home, run_id: &str, json: bool) -> anyhow::Result<Outcome> {
    let path = home.store_path();
    let mut found = Shown::default();
    if Store::exists(&path) || memory_store::running::any_marked(&path) {
        let mut store = Store::open(&path)?;
        for r in store.in_flight()? {
            if r.run_id == run_id {
                found.running = Some(r);
            } else if r.parent_run_id.as_deref() == Some(run_id) {
                found.running_children.push(r);
            }
        }
        found.record = store.run(run_id)?;
        found.journal = store.journal(run_id)?;
        found.children = store.children(run_id)?;
    }
    let Shown {
        record,
        running,
        journal,
        children,
        running_children,
    } = found;
    if record.is_none() && running.is_none() {
        anyhow::bail!(
            "no run {run_id:?} in {} (see `spawner runs`)",
            path.display()
        );
    }
    let mut out = std::io::stdout().lock();
    if json {
        let mut sub_runs: Vec<serde_json::Value> =
            running_children.iter().map(running_json).collect();
        for c in &children {
            sub_runs.push(ended_json(c)?);
        }
        let mut whole = match (&record, &running) {
            (Some(r), _) => ended_json(r)?,
            (None, Some(m)) => running_json(m),
            (None, None) => serde_json::Value::Null,
        };
        if let Some(map) = whole.as_object_mut() {
            if let Some(m) = &running {
                map.insert("state".into(), "running".into());
                map.insert("running".into(), running_json(m));
            }
            map.insert("sub_runs".into(), sub_runs.into());
        }
        serde_json::to_writer(&mut out, &whole)?;
        out.write_all(b"\n")?;
        return Ok(Outcome::Ok);
    }
    if let Some(m) = &running {
        writeln!(out, "run {}", m.run_id)?;
        if let Some(parent) = &m.parent_run_id {
            writeln!(out, "sub-run of {parent}")?;
        }
        writeln!(out, "agent {}", m.agent)?;
        writeln!(
            out,
            "status running (attempt {}, in process {})",
            m.attempt, m.owner_pid
        )?;
        writeln!(out, "started {} UTC", utc(m.started_at_ms))?;
        writeln!(
            out,
            "running for {} ms",
            memory_store::now_ms().saturating_sub(m.started_at_ms)
        )?;
        if let Some(r) = &record {
            writeln!(
                out,
                "attempt {} ended {}{}",
                r.attempt,
                r.status.as_str(),
                r.error
                    .as_deref()
                    .and_then(|e| e.lines().next())
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            )?;
        }
    }
    if let (Some(r), None) = (&record, &running) {
        writeln!(out, "run {}", r.run_id)?;
        if let Some(parent) = &r.parent_run_id {
            writeln!(out, "sub-run of {parent}")?;
        }
        writeln!(out, "agent {}", r.agent)?;
        writeln!(
            out,
            "status {} (exit {})",
            r.status.as_str(),
            r.status.exit_code()
        )?;
        writeln!(out, "started {} UTC", utc(r.started_at_ms))?;
        writeln!(out, "total {:.2} ms", r.timings.total_us as f64 / 1000.0)?;
        if let Some(hit) = r.cache_hit {
            writeln!(out, "compiled cache {}", if hit { "hit" } else { "miss" })?;
        }
        if r.attempt > 1 {
            writeln!(out, "attempt {} (resumed or retried)", r.attempt)?;
        }
        if let Some(e) = &r.error {
            writeln!(out, "error {e}")?;
        }
    }
    let (llm_calls, tool_calls) = record.as_ref().map_or((&[][..], &[][..]), |r| {
        (&r.llm_calls[..], &r.tool_calls[..])
    });
    for (i, c) in llm_calls.iter().enumerate() {
        writeln!(
            out,
            "llm call {}: {} ({}) model {}{}: {}; {} tokens in, {} out; {} bytes sent off this machine; {:.1} ms{}",
            i + 1,
            c.provider,
            if c.remote { "remote" } else { "local" },
            c.model,
            c.device
                .as_deref()
                .map(|d| format!(" on {d}"))
                .unwrap_or_default(),
            c.outcome,
            c.prompt_tokens.map_or("?".into(), |n| n.to_string()),
            c.completion_tokens.map_or("?".into(), |n| n.to_string()),
            c.bytes_sent,
            c.latency_ms,
            c.first_token_ms
                .map(|t| format!(" (first token {t:.1} ms)"))
                .unwrap_or_default()
        )?;
        for (label, value) in [
            ("error", &c.error),
            ("escalation", &c.escalation),
            ("consent", &c.consent),
            ("prompt", &c.prompt),
            ("answer", &c.answer),
        ] {
            if let Some(v) = value {
                writeln!(out, "  {label}: {v}")?;
            }
        }
    }
    for (i, c) in tool_calls.iter().enumerate() {
        writeln!(
            out,
            "tool call {}: {}/{} ({}): {}; {} bytes in, {} out; {:.1} ms{}",
            i + 1,
            c.server,
            c.tool,
            if c.remote { "remote" } else { "local" },
            c.outcome,
            c.bytes_in,
            c.bytes_out,
            c.duration_ms,
            if c.start_ms > 0.0 {
                format!(" (of it {:.1} ms starting the server)", c.start_ms)
            } else {
                String::new()
            }
        )?;
        for (label, value) in [
            ("error", &c.error),
            ("consent", &c.consent),
            ("arguments", &c.arguments),
            ("result", &c.result),
        ] {
            if let Some(v) = value {
                writeln!(out, "  {label}: {v}")?;
            }
        }
    }
    for e in &journal {
        writeln!(
            out,
            "journal step {}: {} at {} UTC, {:.3} ms",
            e.seq,
            e.kind,
            utc(e.at_ms),
            e.duration_us as f64 / 1000.0
        )?;
    }
    for c in &children {
        writeln!(
            out,
            "sub-run {}: {} {} (exit {}), {:.2} ms{}{}",
            c.run_id,
            c.agent,
            c.status.as_str(),
            c.status.exit_code(),
            c.timings.total_us as f64 / 1000.0,
            if c.attempt > 1 {
                format!(", attempt {}", c.attempt)
            } else {
                String::new()
            },
            c.error
                .as_deref()
                .and_then(|e| e.lines().next())
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        )?;
    }
    for c in &running_children {
        writeln!(
            out,
            "sub-run {}: {} running (attempt {}), for {} ms",
            c.run_id,
            c.agent,
            c.attempt,
            memory_store::now_ms().saturating_sub(c.started_at_ms)
        )?;
    }
    Ok(Outcome::Ok)
}
