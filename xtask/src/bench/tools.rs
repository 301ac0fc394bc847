//! Tools: a tool call through the host (a whole `spawner run` of an agent that makes one
//! call to mcp-server-time, the session held warm by the broker) against the same server
//! called directly by the official Python SDK's client in one long-lived process
//! (benches/mcp_direct.py), and against a plain request of the same agent; the first call
//! after the server's cold start; a whole tool-agent request (the LLM and the tool) and its
//! cold start's share.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};

use super::measure::Stats;
use super::report::Report;

const ARGUMENTS: &str = r#"{"timezone": "Asia/Tokyo"}"#;

/// One `spawner run --json` (which must succeed); its wall time and run record.
pub fn request(
    spawner: &Path,
    home: &Path,
    agent: &str,
    input: &str,
) -> anyhow::Result<(f64, serde_json::Value)> {
    let started = Instant::now();
    let out = Command::new(spawner)
        .arg("--home")
        .arg(home)
        .args(["run", "--json", agent, input])
        .output()?;
    let wall = started.elapsed().as_secs_f64() * 1000.0;
    let run: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| String::from_utf8_lossy(&out.stderr).into_owned())?;
    if run["status"] != "ok" {
        bail!("{agent} failed: {run}");
    }
    let id = run["run_id"].as_str().context("run_id")?;
    let shown = Command::new(spawner)
        .arg("--home")
        .arg(home)
        .args(["runs", "show", id, "--json"])
        .output()?;
    Ok((wall, serde_json::from_slice(&shown.stdout)?))
}

/// Measure; `reps` requests of each kind, `loops` tool-agent requests.
pub fn measure(
    report: &mut Report,
    root: &Path,
    spawner: &Path,
    home: &Path,
    reps: usize,
    loops: usize,
) -> anyhow::Result<()> {
    let python = crate::mcp_python(root)?;
    let server_args = ["-m", "mcp_server_time", "--local-timezone", "UTC"];
    std::fs::write(
        home.join(agent_contract::tools::TOOLS_FILE),
        format!(
            "[[server]]\nname = \"time\"\ncommand = \"python3\"\nargs = {server_args:?}\n\
             env = {{ PYTHONPATH = {:?} }}\n",
            python.display().to_string()
        ),
    )?;
    let dir = home.join("agents").join("caller");
    agent_contract::home::create_private_dir_all(&dir)?;
    std::fs::copy(
        crate::agent_artifacts(root).join("testing.wasm"),
        dir.join("caller.wasm"),
    )?;
    std::fs::write(
        dir.join("agent.toml"),
        "name = \"caller\"\nversion = \"0.1.0\"\ncomponent = \"caller.wasm\"\n\
         [limits]\ntimeout_ms = 60000\n[tools]\nservers = [\"time\"]\n",
    )?;
    let call = format!("tool time get_current_time {ARGUMENTS}");
    // The first run compiles the component; then a fresh broker, whose first call starts
    // the server.
    request(spawner, home, "caller", "warm")?;
    super::broker::stop_home_broker(home);
    let socket = home.join("run/broker.sock");
    let started = Instant::now();
    while socket.exists() && started.elapsed().as_secs() < 30 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (first_wall, first) = request(spawner, home, "caller", &call)?;
    let first_start_ms = first["tool_calls"][0]["start_ms"].as_f64().unwrap_or(0.0);

    // Interleaved: a request with one tool call, and a plain request of the same agent.
    let mut through = Vec::new();
    let mut plain = Vec::new();
    let mut in_broker = Vec::new();
    for _ in 0..reps {
        let (wall, record) = request(spawner, home, "caller", &call)?;
        through.push(wall);
        in_broker.push(
            record["tool_calls"][0]["duration_ms"]
                .as_f64()
                .context("the run has no tool call")?,
        );
        plain.push(request(spawner, home, "caller", "hello")?.0);
    }

    // The same server, called directly from one long-lived process.
    let out = Command::new("python3")
        .env("PYTHONPATH", &python)
        .arg(root.join("benches/mcp_direct.py"))
        .arg(reps.to_string())
        .arg("get_current_time")
        .arg(ARGUMENTS)
        .arg("python3")
        .args(server_args)
        .output()
        .context("cannot run benches/mcp_direct.py")?;
    if !out.status.success() {
        bail!("mcp_direct.py: {}", String::from_utf8_lossy(&out.stderr));
    }
    let direct: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let direct_start_ms = direct["start_ms"].as_f64().context("start_ms")?;
    let direct_calls: Vec<f64> = direct["calls_ms"]
        .as_array()
        .context("calls_ms")?
        .iter()
        .filter_map(serde_json::Value::as_f64)
        .collect();

    // A whole agent loop: the tool agent on the embedded model.
    crate::install_llm(root, home)?;
    crate::install_agent(root, home, "tool-agent")?;
    request(spawner, home, "tool-agent", "What time is it in Tokyo?")?;
    let mut loop_walls = Vec::new();
    let mut loop_shares = Vec::new();
    for _ in 0..loops {
        let (wall, record) = request(spawner, home, "tool-agent", "What time is it in Tokyo?")?;
        let sum = |key: &str, field: &str| -> f64 {
            record[key]
                .as_array()
                .map(|calls| calls.iter().filter_map(|c| c[field].as_f64()).sum())
                .unwrap_or(0.0)
        };
        let host_calls = sum("llm_calls", "latency_ms") + sum("tool_calls", "duration_ms");
        loop_walls.push(wall);
        loop_shares.push((wall - host_calls) / wall * 100.0);
    }
    super::broker::stop_home_broker(home);

    let through = Stats::new("through".into(), through);
    let plain = Stats::new("plain".into(), plain);
    let in_broker = Stats::new("broker".into(), in_broker);
    let direct_calls = Stats::new("direct".into(), direct_calls);
    let loop_walls = Stats::new("loop".into(), loop_walls);
    let loop_shares = Stats::new("share".into(), loop_shares);

    report.heading(
        "Tools: MCP calls through the host",
        &format!(
            "mcp-server-time (PyPI, Python) over stdio, `get_current_time {ARGUMENTS}`. \
             Through the host: a whole `spawner run` of an agent (the testing component) that \
             makes one tool call, the server's session held warm by the broker; interleaved \
             with a plain request of the same agent (no tool call). Directly: the official \
             Python SDK's client (`mcp` 2.3) in one long-lived process calling the same \
             server (`benches/mcp_direct.py`), {reps} calls, run after the others."
        ),
    );
    report.text(&format!(
        "| what | median | p95 |\n|---|---:|---:|\n\
         | request with one tool call, through the host | {:.2} ms | {:.2} ms |\n\
         | plain request of the same agent | {:.2} ms | {:.2} ms |\n\
         | the call as the run record times it (agent-exec to broker to server and back) | {:.2} ms | {:.2} ms |\n\
         | the call, directly from a long-lived Python client | {:.2} ms | {:.2} ms |\n",
        through.median(),
        through.percentile(95.0),
        plain.median(),
        plain.percentile(95.0),
        in_broker.median(),
        in_broker.percentile(95.0),
        direct_calls.median(),
        direct_calls.percentile(95.0),
    ));
    report.text(&format!(
        "At the median, a tool call adds {:.2} ms to a request (with tool call minus plain); \
         within it, the host's path to the server and back takes {:.2} ms against {:.2} ms for \
         the direct client ({:+.2} ms). The first call after a cold start of the server (a \
         fresh broker): the request took {first_wall:.0} ms, of which {first_start_ms:.0} ms \
         starting the server and listing its tools (the direct client's start and list: \
         {direct_start_ms:.0} ms); every later request finds the session warm. A whole \
         tool-agent request on the embedded model (\"What time is it in Tokyo?\": a chat that \
         asks for the tool, the call, a chat that answers; {} runs): median {:.0} ms; the \
         cold start's share of it (everything but the LLM and tool calls the run record \
         times) median {:.2}%, p95 {:.2}%.",
        through.median() - plain.median(),
        in_broker.median(),
        direct_calls.median(),
        in_broker.median() - direct_calls.median(),
        loop_walls.times_ms.len(),
        loop_walls.median(),
        loop_shares.median(),
        loop_shares.percentile(95.0),
    ));
    report.value("tools.request_with_call_ms", through.median(), "ms");
    report.value("tools.plain_request_ms", plain.median(), "ms");
    report.value("tools.call_in_record_ms", in_broker.median(), "ms");
    report.value("tools.direct_call_ms", direct_calls.median(), "ms");
    report.value("tools.first_call_server_start_ms", first_start_ms, "ms");
    report.value("tools.agent_loop_ms", loop_walls.median(), "ms");
    report.value("tools.agent_loop_cold_share_pct", loop_shares.median(), "%");
    report.provenance(&format!(
        "{reps} requests of each kind, {reps} direct calls, {} tool-agent requests",
        loop_walls.times_ms.len()
    ));
    Ok(())
}
