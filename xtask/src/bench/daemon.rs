//! Through the daemon: `spawner serve` answering JSON-RPC `run` requests for echo on 1, 8
//! and 32 connections at once; latency percentiles, throughput, and the daemon's idle RSS
//! beside its spare agent-execs'.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::measure::Stats;
use super::report::{Report, Target};

/// Target median latency through the daemon at concurrency 1 (issue: management API).
const P50_TARGET_MS: f64 = 3.0;
/// Target throughput through the daemon (runs per second, 2 cores).
const THROUGHPUT_TARGET: f64 = 500.0;

/// One JSON-RPC `run` of echo; returns its latency.
fn run_once(reader: &mut BufReader<UnixStream>, id: usize) -> anyhow::Result<Duration> {
    run_agent(reader, id, "echo", "hello")
}

/// One JSON-RPC `run` of `agent` on `input`; returns its latency.
fn run_agent(
    reader: &mut BufReader<UnixStream>,
    id: usize,
    agent: &str,
    input: &str,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let line = serde_json::json!({
        "jsonrpc": "2.0", "id": id, "method": "run",
        "params": {"agent": agent, "input": input},
    })
    .to_string()
        + "\n";
    reader.get_mut().write_all(line.as_bytes())?;
    let mut answer = String::new();
    reader.read_line(&mut answer)?;
    let elapsed = started.elapsed();
    let value: serde_json::Value = serde_json::from_str(&answer)?;
    if value["result"]["status"] != "ok" {
        bail!("a benchmark run failed: {answer}");
    }
    Ok(elapsed)
}

/// `clients` connections doing `total` runs between them; latencies in ms and the wall time.
fn load(socket: &Path, clients: usize, total: usize) -> anyhow::Result<(Vec<f64>, Duration)> {
    let started = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|k| {
            let socket = socket.to_owned();
            std::thread::spawn(move || -> anyhow::Result<Vec<f64>> {
                let mut reader = BufReader::new(UnixStream::connect(&socket)?);
                (k..total)
                    .step_by(clients)
                    .map(|i| run_once(&mut reader, i).map(|d| d.as_secs_f64() * 1000.0))
                    .collect()
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(total);
    for w in workers {
        latencies.extend(
            w.join()
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))??,
        );
    }
    Ok((latencies, started.elapsed()))
}

/// A process's resident set in KiB, from /proc.
pub fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Measure the daemon with `runs` runs per row (half at concurrency 1).
pub fn measure(
    report: &mut Report,
    spawner: &Path,
    home: &Path,
    out: &Path,
    runs: usize,
) -> anyhow::Result<()> {
    let socket = out.join("d.sock");
    let _ = std::fs::remove_file(&socket);
    let mut child = Command::new(spawner)
        .arg("--home")
        .arg(home)
        .arg("serve")
        .arg("--socket")
        .arg(&socket)
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start spawner serve")?;
    let outcome = measure_running(report, child.id(), &socket, runs)
        .and_then(|()| inference_share(report, spawner, home, &socket, runs / 4));
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    outcome
}

/// Runs per second: the runs of `stats` over the `wall` time all clients took together.
fn throughput(stats: &Stats, wall: Duration) -> f64 {
    stats.times_ms.len() as f64 / wall.as_secs_f64()
}

fn measure_running(
    report: &mut Report,
    daemon: u32,
    socket: &Path,
    runs: usize,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while UnixStream::connect(socket).is_err() {
        if Instant::now() > deadline {
            bail!("spawner serve did not start");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // Let the keeper thread start the spares before measuring the idle daemon.
    std::thread::sleep(Duration::from_millis(200));
    let idle_rss = rss_kib(daemon);
    // The spares are the daemon's idle children (agent-exec --prepare), started by its
    // keeper thread: /proc lists children per thread.
    let spares: Vec<u64> = std::fs::read_dir(format!("/proc/{daemon}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|pids| {
            pids.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .filter_map(rss_kib)
        .collect();
    load(socket, 4, runs / 4)?; // warm-up
    let mut measured = Vec::new();
    for (clients, total) in [(1, runs / 2), (8, runs), (32, runs)] {
        let (latencies, wall) = load(socket, clients, total)?;
        measured.push((clients, Stats::new(String::new(), latencies), wall));
    }
    report.heading(
        "Through the daemon: `spawner serve`, `run` of echo over the socket",
        &format!(
            "A client in `cargo xtask bench` sends JSON-RPC `run` requests for `echo` on \
             `clients` connections at once, each waiting for its answer before sending the \
             next; latency is from sending the request to reading the answer. Each run is a \
             fresh agent-exec. Daemon defaults: {} runs in flight at most.",
            2 * std::thread::available_parallelism().map_or(1, |n| n.get())
        ),
    );
    let mut table = String::from(
        "| clients | runs | p50 | p95 | p99 | max | throughput |\n|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut rows = Vec::new();
    for (clients, stats, wall) in &measured {
        let throughput = throughput(stats, *wall);
        table.push_str(&format!(
            "| {clients} | {} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {throughput:.0} runs/s |\n",
            stats.times_ms.len(),
            stats.median(),
            stats.percentile(95.0),
            stats.percentile(99.0),
            stats.max(),
        ));
        report.value(
            &format!("daemon.throughput.clients_{clients}"),
            throughput,
            "runs/s",
        );
        rows.push(Stats::new(
            format!("daemon run echo, {clients} clients"),
            stats.times_ms.clone(),
        ));
    }
    report.text(&table);
    report.section_rows(
        "daemon",
        &rows,
        "latency per request from the client in xtask",
    );
    let spare_text = spares
        .iter()
        .map(|k| mib(*k))
        .collect::<Vec<_>>()
        .join(", ");
    report.text(&format!(
        "Daemon idle RSS (after start, before any run): {}; its {} spare agent-execs \
         (started ahead of requests, `--spares`): {spare_text} each.",
        idle_rss.map_or_else(|| "unknown".to_owned(), mib),
        spares.len(),
    ));
    if let Some(kib) = idle_rss {
        report.value("memory.daemon_idle_rss", kib as f64, "KiB");
    }
    for (i, kib) in spares.iter().enumerate() {
        report.value(&format!("memory.daemon_spare_{i}_rss"), *kib as f64, "KiB");
    }
    report.check(
        "daemon p50 at concurrency 1",
        measured[0].1.median(),
        "ms",
        Target::Below(P50_TARGET_MS),
    );
    let best = measured
        .iter()
        .map(|(_, s, wall)| throughput(s, *wall))
        .fold(0.0, f64::max);
    report.check(
        "daemon best throughput",
        best,
        "runs/s",
        Target::AtLeast(THROUGHPUT_TARGET),
    );
    if let Some((_, eight, wall)) = measured.iter().find(|(clients, _, _)| *clients == 8) {
        super::lean::daemon(report, &measured[0].1, (eight, throughput(eight, *wall)));
    }
    report.provenance("the client's own clock, one warm-up round of 4 clients first");
    Ok(())
}

/// Target: cold start's share of a request that does inference, at p95 (the design's
/// success criteria).
const COLD_SHARE_TARGET: f64 = 5.0;

/// `runs` requests of the sentiment agent (one model call each) through the daemon, one at
/// a time: their latency, and from their run records the share of each request that is
/// cold start (spawn to main, config, store, component load, instantiate) rather than
/// the handler's work (which includes the inference round trip).
fn inference_share(
    report: &mut Report,
    spawner: &Path,
    home: &Path,
    socket: &Path,
    runs: usize,
) -> anyhow::Result<()> {
    let mut reader = BufReader::new(UnixStream::connect(socket)?);
    // Warm: the broker starts, the model loads, the component compiles.
    for i in 0..5 {
        run_agent(&mut reader, i, "sentiment", "great work, thanks")?;
    }
    let mut latencies = Vec::with_capacity(runs);
    for i in 0..runs {
        let took = run_agent(&mut reader, 100 + i, "sentiment", "great work, thanks")?;
        latencies.push(took.as_secs_f64() * 1000.0);
    }
    let mut shares: Vec<f64> = super::run_records(spawner, home, "sentiment", runs)?
        .into_iter()
        .filter_map(|r| {
            let t = &r["timings"];
            let us = |k: &str| t[k].as_f64();
            // A spare (the daemon's default) started before the request: its start-up is
            // not part of the request and its record has no start_to_main.
            let start = us("start_to_main_us").unwrap_or(0.0);
            let cold =
                start + us("config_us")? + us("store_us")? + us("load_us")? + us("instantiate_us")?;
            let whole = start + us("total_us")?;
            Some(100.0 * cold / whole)
        })
        .collect();
    shares.sort_by(f64::total_cmp);
    let latency = Stats::new("daemon run sentiment (one inference)".into(), latencies);
    report.heading(
        "A request with inference, through the daemon",
        &format!(
            "`run` of the `sentiment` agent over the daemon's socket, one at a time ({runs} requests): a fresh agent-exec that calls the `sentiment` model through the broker. Latency p50 {:.2} ms, p95 {:.2} ms. Cold start's share of each request, from its run record ((start_to_main + config + store + load + instantiate) ÷ (start_to_main + total); a spare's start-up, done before the request came, is not counted): p50 {:.0}%, p95 {:.0}%. With a 742-byte model the inference is microseconds, so cold start is nearly all of the request; the budget is written for requests whose model work is real.",
            latency.median(),
            latency.percentile(95.0),
            super::measure::percentile(&shares, 50.0),
            super::measure::percentile(&shares, 95.0),
        ),
    );
    report.check(
        "cold start's share of a request with inference, at p95",
        super::measure::percentile(&shares, 95.0),
        "%",
        Target::Below(COLD_SHARE_TARGET),
    );
    super::broker::stop_home_broker(home);
    report.section_rows(
        "daemon_inference",
        &[latency],
        "latency per request from the client in xtask",
    );
    Ok(())
}
