//! Language models: the broker's generation loop against the Python onnxruntime loop
//! (models/llm/reference.py) on the same ONNX file, prompt and thread count, interleaved;
//! the cold start's share of a whole LLM request (`spawner run` of an agent that asks for
//! 64 tokens); the broker's RSS with the model loaded; what the setup's model step costs.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail};
use broker_client::chat::{ChatRequest, Message};
use broker_client::{Client, Launch};

use super::daemon::{mib, rss_kib};
use super::measure::Stats;
use super::report::{Report, Target};

/// The design's criterion: cold start under 5% of an LLM request's time, at p95.
const COLD_SHARE_TARGET: f64 = 5.0;

const PROMPT: &str = "Write a short story about a robot who learns to paint.";

fn du_mib(path: &Path) -> f64 {
    fn walk(p: &Path) -> u64 {
        match std::fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => std::fs::read_dir(p)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| walk(&e.path()))
                .sum(),
            Ok(m) => m.len(),
            Err(_) => 0,
        }
    }
    walk(path) as f64 / (1024.0 * 1024.0)
}

/// Measure; `reps` generations each way, `tokens` tokens each.
pub fn measure(
    report: &mut Report,
    root: &Path,
    bin: &Path,
    spawner: &Path,
    home: &Path,
    reps: usize,
    tokens: u32,
) -> anyhow::Result<()> {
    let model_dir = crate::fetch_llm(root)?;
    crate::install_llm(root, home)?;
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let socket = home.join("run/broker.sock");
    agent_contract::home::create_private_dir_all(&home.join("run"))?;
    let launch = Launch::new(bin.join("gpu-broker"), home, &socket);
    let mut client = Client::connect_or_start(&socket, &launch)?;
    let request = ChatRequest {
        model: crate::LLM.into(),
        messages: vec![Message {
            role: "user".into(),
            content: PROMPT.into(),
        }],
        max_tokens: Some(tokens),
        // Never comes: every generation is `tokens` long.
        stop: vec!["\u{0}never".into()],
        ..ChatRequest::default()
    };
    let load_started = Instant::now();
    client.chat(
        &ChatRequest {
            max_tokens: Some(1),
            ..request.clone()
        },
        &mut |_| {},
    )?;
    let first_call_ms = load_started.elapsed().as_secs_f64() * 1000.0;

    let mut broker_ttft = Vec::new();
    let mut broker_rate = Vec::new();
    let mut python_ttft = Vec::new();
    let mut python_rate = Vec::new();
    let mut prompt_tokens = 0;
    for _ in 0..reps {
        let c = client.chat(&request, &mut |_| {})?;
        prompt_tokens = c.prompt_tokens;
        let n = c.completion_tokens as f64;
        broker_ttft.push(c.first_token_ms);
        broker_rate.push((n - 1.0) / ((c.total_ms - c.first_token_ms) / 1000.0));
        let out = crate::llm_python(root)?
            .arg(root.join("models/llm/reference.py"))
            .arg(&model_dir)
            .arg(PROMPT)
            .arg(tokens.to_string())
            .arg(threads.to_string())
            .output()
            .context("cannot run models/llm/reference.py")?;
        if !out.status.success() {
            bail!("reference.py: {}", String::from_utf8_lossy(&out.stderr));
        }
        let r: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        python_ttft.push(r["ttft_ms"].as_f64().context("ttft_ms")?);
        python_rate.push(r["decode_tokens_per_s"].as_f64().unwrap_or(f64::NAN));
    }
    let status = client.status()?;
    let device = status["models"][crate::LLM]["provider"]
        .as_str()
        .unwrap_or("?")
        .to_owned();
    let rss = status["pid"].as_u64().and_then(|p| rss_kib(p as u32));

    // Whole requests: an agent asking for `tokens` tokens, through `spawner run`.
    let agent = "talker";
    let dir = home.join("agents").join(agent);
    agent_contract::home::create_private_dir_all(&dir)?;
    std::fs::copy(
        crate::agent_artifacts(root).join("testing.wasm"),
        dir.join("talker.wasm"),
    )?;
    std::fs::write(
        dir.join("agent.toml"),
        format!(
            "name = \"talker\"\nversion = \"0.1.0\"\ncomponent = \"talker.wasm\"\n\
             [limits]\ntimeout_ms = 120000\n[llm]\nmodels = [\"{}\"]\n",
            crate::LLM
        ),
    )?;
    let input = format!(
        "chat\nmodel {}\nmax_tokens {tokens}\nstop ZZZZ-never\nmsg user {PROMPT}",
        crate::LLM
    );
    let mut shares = Vec::new();
    let mut walls = Vec::new();
    for i in 0..reps + 1 {
        let (wall, record) = super::tools::request(spawner, home, agent, &input)?;
        let llm_ms = record["llm_calls"][0]["latency_ms"]
            .as_f64()
            .context("the run has no llm call")?;
        // The first run compiles the component: not a cold start to measure.
        if i > 0 {
            shares.push((wall - llm_ms) / wall * 100.0);
            walls.push(wall);
        }
    }
    super::broker::stop_home_broker(home);

    let broker_ttft = Stats::new("broker".into(), broker_ttft);
    let python_ttft = Stats::new("python".into(), python_ttft);
    let broker_rate = Stats::new("broker".into(), broker_rate);
    let python_rate = Stats::new("python".into(), python_rate);
    let shares = Stats::new("share".into(), shares);
    let walls = Stats::new("wall".into(), walls);

    report.heading(
        "Language model: generation in the broker",
        &format!(
            "SmolLM2-135M-Instruct as setup converts it ({:.0} MB ONNX, weights as the GGUF \
             holds them: 4-bit MatMulNBits plus remainders, 8-bit head), provider reported: \
             **{device}**, {threads} threads. Greedy, {tokens} tokens for the same prompt, \
             {reps} generations each way, interleaved: the broker's Rust loop (`ort` + \
             `tokenizers`, through broker-client from xtask) and the Python onnxruntime loop \
             (`models/llm/reference.py`) on the same file. Time to first token includes the \
             prompt's prefill ({} tokens with the chat template); tokens/s is the decoding \
             rate after the first token. No GPU on this machine: the CUDA path is not measured.",
            du_mib(&model_dir.join(format!("{}.onnx", crate::LLM))),
            prompt_tokens
        ),
    );
    let mut table = String::from(
        "| loop | time to first token, median | p95 | decode tokens/s, median | min |\n\
         |---|---:|---:|---:|---:|\n",
    );
    for (name, ttft, rate) in [
        ("broker (Rust, ort)", &broker_ttft, &broker_rate),
        ("Python onnxruntime", &python_ttft, &python_rate),
    ] {
        table.push_str(&format!(
            "| {name} | {:.1} ms | {:.1} ms | {:.1} | {:.1} |\n",
            ttft.median(),
            ttft.percentile(95.0),
            rate.median(),
            rate.min()
        ));
    }
    report.text(&table);
    report.text(&format!(
        "Broker over Python, decode rate at the median: {:.2}×. Model load on first use (the \
         first chat, one token): {first_call_ms:.0} ms. Broker RSS with the model loaded: {}. \
         A whole request (`spawner run` of an agent asking for {tokens} tokens, {} runs): \
         median {:.0} ms; the cold start's share of it (everything but the LLM call the run \
         record times) median {:.2}%, p95 {:.2}%. Setup's model step: {:.0} MB in \
         `target/llm` (wheel, GGUF, converted model) and {:.0} MB of Python packages in \
         `target/tools/llm-python`; the conversion itself takes about 10 s here (the first \
         setup also downloads about 150 MB from PyPI).",
        broker_rate.median() / python_rate.median(),
        rss.map_or_else(|| "unknown".into(), mib),
        walls.times_ms.len(),
        walls.median(),
        shares.median(),
        shares.percentile(95.0),
        du_mib(&crate::target_dir(root).join("llm")),
        du_mib(&crate::target_dir(root).join("tools/llm-python")),
    ));
    report.value(
        "llm.broker_decode_tokens_per_s",
        broker_rate.median(),
        "tokens/s",
    );
    report.value(
        "llm.python_decode_tokens_per_s",
        python_rate.median(),
        "tokens/s",
    );
    report.value("llm.broker_ttft_ms", broker_ttft.median(), "ms");
    report.value("llm.python_ttft_ms", python_ttft.median(), "ms");
    if let Some(kib) = rss {
        report.value("memory.broker_rss_llm_loaded", kib as f64, "KiB");
    }
    report.check(
        "cold start's share of an LLM request, p95",
        shares.percentile(95.0),
        "%",
        Target::Below(COLD_SHARE_TARGET),
    );
    report.provenance(&format!(
        "{reps} generations of {tokens} tokens each way; {} whole requests",
        walls.times_ms.len()
    ));
    Ok(())
}
