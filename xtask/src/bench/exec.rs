//! agent-exec alone, without the spawner: fed the request envelope on standard input by the
//! benchmark's own spawn loop, on echo (14 KB component), on bulky (echo's job in a 4 MB
//! component) and on shout-py (a Python agent, componentize-py: ~18 MB with the
//! interpreter's pre-initialized heap), beside `python3 -c pass`. Shows the per-phase
//! breakdown from the run records these runs wrote, each run's peak RSS, and how cold
//! start grows with component size.

use std::path::Path;

use agent_contract::envelope::{ENVELOPE_VERSION, RequestHeader, write_envelope};

use super::daemon::mib;
use super::measure::{self, Runs, Stats};
use super::report::Report;

/// One agent measured: its stats, peak RSS, component size and phase medians (µs).
struct Measured {
    agent: &'static str,
    stats: Stats,
    peak_rss_kib: u64,
    component_bytes: u64,
    phases: Vec<(&'static str, f64)>,
}

/// The envelope of run `i` of `agent`, written to `path`; opened for reading.
fn envelope(path: &Path, home: &Path, agent: &str, i: usize) -> anyhow::Result<std::fs::File> {
    let header = RequestHeader {
        v: ENVELOPE_VERSION,
        run_id: format!("bench-alone-{}-{agent}-{i}", std::process::id()),
        agent: agent.to_owned(),
        home: home.to_owned(),
        timeout_ms: None,
        output: Default::default(),
        log_format: Default::default(),
        log_level: None,
        spawned_at_unix_ns: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .and_then(|d| u64::try_from(d.as_nanos()).ok()),
        work_dir: None,
        hook: None,
        compile: Default::default(),
        stream_llm: false,
        broker: None,
        journal: Default::default(),
        attempt: 1,
        sub_runs: None,
        parent_run_id: None,
        marked: false,
    };
    write_envelope(std::fs::File::create(path)?, &header, b"hello")?;
    Ok(std::fs::File::open(path)?)
}

/// Median of each phase over the records of this benchmark's own runs of `agent`.
fn phases(
    spawner: &Path,
    home: &Path,
    agent: &str,
    runs: usize,
) -> anyhow::Result<Vec<(&'static str, f64)>> {
    let prefix = format!("bench-alone-{}-{agent}-", std::process::id());
    let records: Vec<serde_json::Value> = super::run_records(spawner, home, agent, runs)?
        .into_iter()
        .filter(|r| {
            r["run_id"]
                .as_str()
                .is_some_and(|id| id.starts_with(&prefix))
        })
        .collect();
    Ok(agent_contract::PhaseTimings::FIELDS
        .iter()
        .map(|key| {
            let values: Vec<f64> = records
                .iter()
                .filter_map(|r| r["timings"][key].as_f64())
                .collect();
            (*key, Stats::new(String::new(), values).median())
        })
        .collect())
}

pub fn measure(
    report: &mut Report,
    bin: &Path,
    spawner: &Path,
    home: &Path,
    out: &Path,
    runs: Runs,
) -> anyhow::Result<()> {
    let agent_exec = bin.join("agent-exec");
    let path = out.join("envelope");
    // The loop's own floor: /bin/true fed the same envelope.
    let (floor, _) = measure::spawn_loop(
        "/bin/true < envelope".into(),
        Path::new("/bin/true"),
        &[],
        runs,
        |i| envelope(&path, home, "echo", i),
    )?;
    // What a Python agent is compared with: the interpreter's own start.
    let python = ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file());
    let python_floor = match python {
        Some(python) => Some(
            measure::spawn_loop(
                format!("{} -c pass < envelope", python.display()),
                python,
                &["-c", "pass"],
                runs,
                |i| envelope(&path, home, "echo", i),
            )?
            .0,
        ),
        None => None,
    };
    let mut measured = Vec::new();
    for agent in ["echo", "bulky", "shout-py"] {
        let (stats, peak_rss_kib) = measure::spawn_loop(
            format!("agent-exec < envelope ({agent})"),
            &agent_exec,
            &[],
            runs,
            |i| envelope(&path, home, agent, i),
        )?;
        let component_bytes = std::fs::metadata(
            home.join("agents")
                .join(agent)
                .join(format!("{agent}.wasm")),
        )?
        .len();
        measured.push(Measured {
            agent,
            phases: phases(spawner, home, agent, runs.runs + runs.warmup)?,
            stats,
            peak_rss_kib,
            component_bytes,
        });
    }

    report.heading(
        "agent-exec alone, and how it grows with the component",
        "The benchmark's own spawn loop starts `agent-exec` with a request envelope on \
         standard input (as the spawner does, without the spawner), waits for it, and reads \
         its peak RSS from `wait4`. `echo` is a 14 KB component; `bulky` does echo's job in a \
         4 MB component (a 4 MiB table in its data segment, as an agent with a vocabulary \
         would carry); `shout-py` is a Python agent (`agents/shout-py`, componentize-py: \
         the interpreter and its pre-initialized heap in the component), which also counts \
         its runs in the memory store, beside `python3 -c pass` fed the same envelope. All \
         are compiled and cached before the clock starts. Phases are \
         medians, in µs, over the run records these very runs wrote; `exit` is what is left \
         of the wall time: median wall − start_to_main − total (exit, reap, and the \
         loop's own spawn).",
    );
    let mut table = String::from("| command | component | median | p95 | peak RSS | ÷ first row |");
    let phase_names: Vec<&str> = measured[0]
        .phases
        .iter()
        .map(|(k, _)| k.trim_end_matches("_us"))
        .collect();
    for name in &phase_names {
        table.push_str(&format!(" {name} |"));
    }
    table.push_str(" exit |\n|---|---:|---:|---:|---:|---:|");
    for _ in 0..=phase_names.len() {
        table.push_str("---:|");
    }
    table.push('\n');
    table.push_str(&format!(
        "| `{}` | – | {:.2} ms | {:.2} ms | – | 1.0× |{} – |\n",
        floor.command,
        floor.median(),
        floor.percentile(95.0),
        " – |".repeat(phase_names.len())
    ));
    if let Some(p) = &python_floor {
        table.push_str(&format!(
            "| `{}` | – | {:.2} ms | {:.2} ms | – | {:.1}× |{} – |\n",
            p.command,
            p.median(),
            p.percentile(95.0),
            p.median() / floor.median(),
            " – |".repeat(phase_names.len())
        ));
        report.value("exec.python_c_pass_median_ms", p.median(), "ms");
    }
    for m in &measured {
        let get = |key: &str| {
            m.phases
                .iter()
                .find(|(k, _)| *k == key)
                .map_or(f64::NAN, |(_, v)| *v)
        };
        let exit_us = m.stats.median() * 1000.0 - get("start_to_main_us") - get("total_us");
        table.push_str(&format!(
            "| `{}` | {:.1} KB | {:.2} ms | {:.2} ms | {} | {:.1}× |",
            m.stats.command,
            m.component_bytes as f64 / 1000.0,
            m.stats.median(),
            m.stats.percentile(95.0),
            mib(m.peak_rss_kib),
            m.stats.median() / floor.median()
        ));
        for (_, v) in &m.phases {
            table.push_str(&format!(" {v:.0} |"));
        }
        table.push_str(&format!(" {exit_us:.0} |\n"));
        let agent = m.agent;
        report.value(
            &format!("memory.agent_exec_peak_rss.{agent}"),
            m.peak_rss_kib as f64,
            "KiB",
        );
        report.value(
            &format!("component_bytes.{agent}"),
            m.component_bytes as f64,
            "bytes",
        );
        for (k, v) in &m.phases {
            report.value(&format!("phases.{agent}.{k}"), *v, "us");
        }
        report.value(&format!("phases.{agent}.exit_us"), exit_us, "us");
    }
    report.text(&table);
    let (echo, bulky, python_agent) = (&measured[0], &measured[1], &measured[2]);
    super::lean::exec(
        report,
        (&echo.stats, echo.peak_rss_kib),
        &bulky.stats,
        &python_agent.stats,
        python_floor.as_ref(),
    );
    report.text(&format!(
        "Component {:.0}× larger: cold start {:.2}× ({:+.2} ms at the median), peak RSS {:+.1} MiB.",
        bulky.component_bytes as f64 / echo.component_bytes as f64,
        bulky.stats.median() / echo.stats.median(),
        bulky.stats.median() - echo.stats.median(),
        (bulky.peak_rss_kib as f64 - echo.peak_rss_kib as f64) / 1024.0,
    ));
    let against_python = python_floor.as_ref().map_or(String::new(), |p| {
        format!(
            "; {:.2}× `python3 -c pass` ({:.2} ms)",
            python_agent.stats.median() / p.median(),
            p.median()
        )
    });
    report.text(&format!(
        "The Python agent ({:.1} MB): {:.2} ms at the median, {:.2}× echo{against_python}; peak RSS {}.",
        python_agent.component_bytes as f64 / 1e6,
        python_agent.stats.median(),
        python_agent.stats.median() / echo.stats.median(),
        mib(python_agent.peak_rss_kib),
    ));
    report.provenance(&format!(
        "the spawn loop in xtask, {} warm-up + {} runs of each row, one after another",
        runs.warmup, runs.runs
    ));
    let rows: Vec<Stats> = std::iter::once(floor)
        .chain(python_floor)
        .chain(measured.into_iter().map(|m| m.stats))
        .collect();
    report.section_rows("agent_exec_alone", &rows, "spawn loop in xtask");
    Ok(())
}
