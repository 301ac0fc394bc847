//! The inference broker: its cold start (spawn to ready), model load time, the round trip
//! of a small-model inference through it against the same call in-process with `ort`, and
//! throughput at 16 clients with batching off and on; its RSS with the models loaded.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use broker_client::{Client, Launch, Tensor};

use super::daemon::{mib, rss_kib};
use super::measure::Stats;
use super::report::{Report, Target};

/// Target: what the socket adds to an inference, at the median (issue: gpu-broker).
const OVERHEAD_TARGET_US: f64 = 100.0;

fn input(rows: u64) -> Vec<Tensor> {
    let values: Vec<f32> = (0..64 * rows as usize)
        .map(|i| (i % 64) as f32 / 64.0)
        .collect();
    vec![Tensor::from_f32("features", vec![rows, 64], &values)]
}

fn stop(client: &mut Client) -> anyhow::Result<()> {
    let pid = client.status()?["pid"].as_i64().context("pid")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    Ok(())
}

/// Stop the broker of `home` if one runs, so that no benchmark leaves one behind for its
/// idle time-to-live.
pub fn stop_home_broker(home: &Path) {
    if let Ok(mut client) = Client::connect(&home.join("run/broker.sock")) {
        let _ = stop(&mut client);
    }
}

/// `clients` connections sending `per_client` requests each to `model`; requests/s.
fn throughput(
    socket: &Path,
    launch: &Launch,
    model: &str,
    clients: usize,
    per_client: usize,
) -> anyhow::Result<f64> {
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(clients));
    let started = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let (socket, launch, model, barrier) = (
                socket.to_owned(),
                launch.clone(),
                model.to_owned(),
                barrier.clone(),
            );
            std::thread::spawn(move || -> anyhow::Result<()> {
                let mut c = Client::connect_or_start(&socket, &launch)?;
                barrier.wait();
                for _ in 0..per_client {
                    c.infer(&model, input(1))?;
                }
                Ok(())
            })
        })
        .collect();
    for w in workers {
        w.join()
            .map_err(|_| anyhow::anyhow!("a client panicked"))??;
    }
    Ok((clients * per_client) as f64 / started.elapsed().as_secs_f64())
}

#[allow(
    clippy::too_many_arguments,
    reason = "one call site, each argument named there"
)]
pub fn measure(
    report: &mut Report,
    bin: &Path,
    profile: &str,
    home: &Path,
    runs: usize,
    starts: usize,
) -> anyhow::Result<()> {
    // The same model with batching on.
    let batched = home.join("models/scorer-batched");
    std::fs::create_dir_all(&batched)?;
    std::fs::copy(
        home.join("models/scorer/scorer.onnx"),
        batched.join("scorer.onnx"),
    )?;
    let manifest = std::fs::read_to_string(home.join("models/scorer/model.toml"))?
        .replace("name = \"scorer\"", "name = \"scorer-batched\"")
        + "\n[batching]\nmax_batch = 16\nmax_delay_us = 200\n";
    std::fs::write(batched.join("model.toml"), manifest)?;
    let socket = home.join("run/broker.sock");
    agent_contract::home::create_private_dir_all(&home.join("run"))?;
    let launch = Launch::new(bin.join("gpu-broker"), home, &socket);

    // Cold start: from spawning gpu-broker to a finished handshake, `starts` times.
    let mut cold = Vec::new();
    for i in 0..starts {
        let started = Instant::now();
        let mut client = Client::connect_or_start(&socket, &launch)?;
        cold.push(started.elapsed().as_secs_f64() * 1000.0);
        if i + 1 < starts {
            stop(&mut client)?;
            // Let the killed broker's lock go before the next start.
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let cold = Stats::new("gpu-broker: spawn to ready + handshake".into(), cold);
    let mut client = Client::connect_or_start(&socket, &launch)?;
    let load_started = Instant::now();
    client.infer("scorer", input(1))?;
    let first_call_ms = load_started.elapsed().as_secs_f64() * 1000.0;
    let status = client.status()?;
    let load_ms = status["models"]["scorer"]["load_ms"]
        .as_f64()
        .unwrap_or(f64::NAN);
    let provider = status["models"]["scorer"]["provider"]
        .as_str()
        .unwrap_or("?")
        .to_owned();

    // Round trip through the broker, then the same call in-process.
    let mut through = Vec::with_capacity(runs);
    for i in 0..runs + runs / 10 {
        let started = Instant::now();
        client.infer("scorer", input(1))?;
        if i >= runs / 10 {
            through.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    let through = Stats::new(
        "broker round trip: scorer, 1×64 float32 (µs)".into(),
        through,
    );
    crate::run(crate::cargo().args([
        "build",
        "--profile",
        profile,
        "-p",
        "gpu-broker",
        "--example",
        "in_process",
    ]))?;
    let library = bin.join(format!("libonnxruntime.so.{}", crate::ONNXRUNTIME_VERSION));
    let out = Command::new(bin.join("examples/in_process"))
        .arg(home.join("models"))
        .args(["scorer", "64", &runs.to_string()])
        .env("ORT_DYLIB_PATH", &library)
        .output()
        .context("cannot run the in-process reference")?;
    if !out.status.success() {
        anyhow::bail!(
            "in_process failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let in_process = Stats::new(
        "in-process ort: the same model and input (µs)".into(),
        serde_json::from_slice(&out.stdout)?,
    );

    let per_client = (runs / 4).max(10);
    let off = throughput(&socket, &launch, "scorer", 16, per_client)?;
    let on = throughput(&socket, &launch, "scorer-batched", 16, per_client)?;
    // A fresh connection: the broker closes one that stayed quiet past its client timeout
    // (the in-process and throughput runs can take that long on a busy machine).
    let mut client = Client::connect_or_start(&socket, &launch)?;
    let status = client.status()?;
    let largest = status["models"]["scorer-batched"]["largest_batch"]
        .as_u64()
        .unwrap_or(0);
    let pid = status["pid"].as_i64().unwrap_or(0) as u32;
    let rss = rss_kib(pid);

    report.heading(
        "Inference through the broker",
        &format!(
            "`gpu-broker` (ONNX Runtime {} from PyPI, provider reported: **{provider}**) serving \
             the 1.3 KB `scorer` model (64 float32 in, 4 out). The client is broker-client in \
             `cargo xtask bench`, one connection; the in-process row runs the same model on \
             the same library with `ort` in one process (`gpu-broker/examples/in_process.rs`). \
             No GPU on this machine: the CUDA path is not measured here.",
            crate::ONNXRUNTIME_VERSION
        ),
    );
    let mut table =
        String::from("| what | median | p95 | min | runs |\n|---|---:|---:|---:|---:|\n");
    for s in [&in_process, &through] {
        table.push_str(&format!(
            "| {} | {:.1} µs | {:.1} µs | {:.1} µs | {} |\n",
            s.command,
            s.median(),
            s.percentile(95.0),
            s.min(),
            s.times_ms.len()
        ));
    }
    table.push_str(&format!(
        "| {} | {:.1} ms | {:.1} ms | {:.1} ms | {} |\n",
        cold.command,
        cold.median(),
        cold.percentile(95.0),
        cold.min(),
        cold.times_ms.len()
    ));
    report.text(&table);
    let overhead = through.median() - in_process.median();
    report.text(&format!(
        "Model load (session creation, reported by the broker): {load_ms:.1} ms; the first \
         call, which loads it: {first_call_ms:.1} ms. Throughput at 16 clients, {per_client} \
         requests each: batching off {off:.0} requests/s, batching on (max 16, 200 µs) \
         {on:.0} requests/s ({:.2}×; largest batch formed: {largest}). Broker RSS with both \
         models loaded: {}.",
        on / off,
        rss.map_or_else(|| "unknown".into(), mib)
    ));
    report.value("broker.cold_start_ms", cold.median(), "ms");
    report.value("broker.model_load_ms", load_ms, "ms");
    report.value("broker.overhead_us", overhead, "us");
    report.value("broker.throughput.batching_off", off, "requests/s");
    report.value("broker.throughput.batching_on", on, "requests/s");
    if let Some(kib) = rss {
        report.value("memory.broker_rss_models_loaded", kib as f64, "KiB");
    }
    report.check(
        "broker round trip overhead over in-process ort, at the median",
        overhead,
        "µs",
        Target::Below(OVERHEAD_TARGET_US),
    );
    report.provenance(&format!(
        "{runs} round trips after {} warm-up ones; {starts} broker starts",
        runs / 10
    ));
    // Times in ms for the results file and the plot.
    let as_ms = |s: &Stats| {
        Stats::new(
            s.command.replace("(µs)", ""),
            s.times_ms.iter().map(|us| us / 1000.0).collect(),
        )
    };
    report.section_rows(
        "broker",
        &[as_ms(&in_process), as_ms(&through)],
        "round trips from the client in xtask",
    );
    stop(&mut client)?;
    Ok(())
}
