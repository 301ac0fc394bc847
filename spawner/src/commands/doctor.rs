//! `spawner doctor`: what this installation has and whether its parts answer: the home,
//! the agents, the daemon's socket, the inference broker and its models.

use std::io::Write;

use agent_contract::{Home, Outcome};
use serde_json::{Value, json};

use crate::cli::DoctorArgs;

/// The broker's state, without starting it: its own `status` when it answers.
pub fn broker_status(home: &Home) -> Value {
    let socket = home.broker_socket_path();
    match broker_client::Client::connect(&socket) {
        Ok(mut client) => match client.status() {
            Ok(status) => json!({"status": "running", "socket": socket, "broker": status}),
            Err(e) => json!({"status": "broken", "socket": socket, "detail": e.to_string()}),
        },
        Err(_) => json!({
            "status": "not running",
            "socket": socket,
            "detail": "gpu-broker starts on the first inference call and exits when idle",
        }),
    }
}

/// The programs a request runs, where this spawner finds them, and whether they are there:
/// agent-exec (every request), agent-compile (a request whose component is not compiled
/// yet) and gpu-broker (the first inference, LLM or tool call).
fn programs(home: &Home) -> Value {
    let found = |path: &std::path::Path, what: &str| {
        if path.is_file() {
            json!({"path": path, "found": true})
        } else {
            json!({"path": path, "found": false, "detail": format!("missing: {what}; build it with `cargo xtask setup` (or `cargo build --release --workspace`)")})
        }
    };
    match crate::request::agent_exec_path() {
        Ok(exec) => {
            let layout = agent_contract::layout::BrokerLayout::beside(home, &exec);
            json!({
                "agent-exec": found(&exec, "no request can run"),
                "agent-compile": found(
                    &agent_contract::envelope::compile_program_beside(&exec),
                    "a component not compiled yet cannot run",
                ),
                "gpu-broker": found(&layout.program, "inference, LLM and tool calls fail"),
            })
        }
        Err(e) => json!({"agent-exec": {"found": false, "detail": format!("{e:#}")}}),
    }
}

/// Everything the report shows, as JSON.
pub fn report(home: &Home) -> anyhow::Result<Value> {
    let agents = crate::commands::agents::list(home)?;
    let daemon_socket = home.socket_path();
    let daemon = if std::os::unix::net::UnixStream::connect(&daemon_socket).is_ok() {
        "running"
    } else {
        "not running"
    };
    let mut models: Vec<String> = std::fs::read_dir(home.models_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("model.toml").is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    models.sort();
    let providers = match agent_contract::providers::Providers::load(home.root()) {
        Ok(p) => json!({
            "file": home.root().join(agent_contract::providers::PROVIDERS_FILE),
            "list": p.list.iter().map(|p| json!({
                "name": p.name,
                "host": p.host(),
                "remote": p.is_remote(),
                "models": p.models,
                // Where the key comes from, never the key.
                "api_key": match (&p.api_key_env, &p.api_key_file) {
                    // Whether this environment sets it: the broker a run starts from here
                    // has it then.
                    (Some(var), _) => format!(
                        "${var} of spawner's environment ({} here)",
                        if std::env::var_os(var).is_some_and(|v| !v.is_empty()) {
                            "set"
                        } else {
                            "not set"
                        }
                    ),
                    (_, Some(file)) => format!("file {}", file.display()),
                    _ => "none".to_owned(),
                },
            })).collect::<Vec<_>>(),
            "policy": "local first: a provider is used only for a model the broker does not serve (or one the agent names as provider/model), listed in the agent's [llm] escalate; a remote one only with the user's consent (spawner consent). What leaves the machine: the chat's messages and parameters, nothing of the agent's memory, config or input. A failed provider is never replaced by another.",
        }),
        Err(e) => json!({"error": e.to_string()}),
    };
    let tools = match agent_contract::tools::ToolServers::load(home.root()) {
        Ok(t) => json!({
            "file": home.root().join(agent_contract::tools::TOOLS_FILE),
            "list": t.list.iter().map(|s| json!({
                "name": s.name,
                "transport": if s.url.is_some() { "streamable-http" } else { "stdio" },
                "endpoint": s.endpoint(),
                "remote": s.is_remote(),
                "timeout_s": s.call_timeout().as_secs(),
                "max_result_kib": s.max_result_bytes() / 1024,
                "concurrency": s.concurrency(),
            })).collect::<Vec<_>>(),
            "policy": "an agent calls only the servers (and tools) its [tools] lists; the broker starts each server on first use and keeps its session warm; a remote one only with the user's consent (spawner consent). What reaches a server: the call's arguments, nothing of the agent's memory, config or input.",
        }),
        Err(e) => json!({"error": e.to_string()}),
    };
    Ok(json!({
        "providers": providers,
        "tools": tools,
        "home": home.root(),
        "programs": programs(home),
        "agents": agents.iter().map(|a| json!({"name": a.name, "status": a.status, "error": a.error})).collect::<Vec<_>>(),
        "daemon": {"status": daemon, "socket": daemon_socket},
        "broker": broker_status(home),
        "models": {"dir": home.models_dir(), "names": models},
    }))
}

/// Print the report.
pub fn execute(home: &Home, args: DoctorArgs) -> anyhow::Result<Outcome> {
    let report = report(home)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{report}")?;
        return Ok(Outcome::Ok);
    }
    let agents = report["agents"].as_array().map_or(&[][..], Vec::as_slice);
    let runnable = agents.iter().filter(|a| a["status"] == "ok").count();
    writeln!(out, "home     {}", report["home"].as_str().unwrap_or("?"))?;
    writeln!(
        out,
        "agents   {} installed, {runnable} runnable",
        agents.len()
    )?;
    for a in agents.iter().filter(|a| a["status"] != "ok") {
        writeln!(
            out,
            "         {}: {}",
            a["name"].as_str().unwrap_or("?"),
            a["error"].as_str().unwrap_or("")
        )?;
    }
    for (name, p) in report["programs"].as_object().into_iter().flatten() {
        match p["found"].as_bool() {
            Some(true) => writeln!(
                out,
                "program  {name}: {}",
                p["path"].as_str().unwrap_or("?")
            )?,
            _ => writeln!(
                out,
                "program  {name}: {} {}",
                p["path"].as_str().unwrap_or(""),
                p["detail"].as_str().unwrap_or("")
            )?,
        }
    }
    writeln!(
        out,
        "daemon   {} ({})",
        report["daemon"]["status"].as_str().unwrap_or("?"),
        report["daemon"]["socket"].as_str().unwrap_or("?")
    )?;
    let broker = &report["broker"];
    match broker["status"].as_str() {
        Some("running") => {
            let b = &broker["broker"];
            writeln!(
                out,
                "broker   running, pid {}, up {:.0} s, ONNX Runtime {} from {}; CUDA in the library: {}; queue {}, served {}",
                b["pid"],
                b["uptime_s"].as_f64().unwrap_or(0.0),
                b["onnxruntime"].as_str().unwrap_or("?"),
                b["library"].as_str().unwrap_or("?"),
                if b["cuda_in_library"] == true {
                    "yes"
                } else {
                    "no"
                },
                b["queue_depth"],
                b["served"]
            )?;
            for (name, m) in b["models"].as_object().into_iter().flatten() {
                match m["load_error"].as_str() {
                    Some(e) => writeln!(out, "         model {name}: failed to load: {e}")?,
                    None => writeln!(
                        out,
                        "         model {name}: on {}, served {}, p50 {} µs{}",
                        m["provider"].as_str().unwrap_or("?"),
                        m["served"],
                        m["latency_us"]["p50"],
                        m["fallback"]
                            .as_str()
                            .map(|f| format!(" (not on CUDA: {f})"))
                            .unwrap_or_default()
                    )?,
                }
            }
        }
        status => writeln!(
            out,
            "broker   {} ({}): {}",
            status.unwrap_or("?"),
            broker["socket"].as_str().unwrap_or("?"),
            broker["detail"].as_str().unwrap_or("")
        )?,
    }
    let names: Vec<&str> = report["models"]["names"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    writeln!(
        out,
        "models   {} in {}{}",
        names.len(),
        report["models"]["dir"].as_str().unwrap_or("?"),
        if names.is_empty() {
            String::new()
        } else {
            format!(": {}", names.join(", "))
        }
    )?;
    let providers = &report["providers"];
    if let Some(e) = providers["error"].as_str() {
        writeln!(out, "llm      providers: {e}")?;
    } else {
        let list = providers["list"].as_array().map_or(&[][..], Vec::as_slice);
        writeln!(
            out,
            "llm      {} provider(s) besides the broker's own models ({})",
            list.len(),
            providers["file"].as_str().unwrap_or("?")
        )?;
        for p in list {
            writeln!(
                out,
                "         {}: {} ({}), models {}, API key: {}",
                p["name"].as_str().unwrap_or("?"),
                p["host"].as_str().unwrap_or("?"),
                if p["remote"] == true {
                    "remote"
                } else {
                    "this machine"
                },
                p["models"],
                p["api_key"].as_str().unwrap_or("?")
            )?;
        }
        writeln!(
            out,
            "         policy: {}",
            providers["policy"].as_str().unwrap_or("")
        )?;
    }
    let tools = &report["tools"];
    if let Some(e) = tools["error"].as_str() {
        writeln!(out, "tools    servers: {e}")?;
    } else {
        let list = tools["list"].as_array().map_or(&[][..], Vec::as_slice);
        writeln!(
            out,
            "tools    {} server(s) ({})",
            list.len(),
            tools["file"].as_str().unwrap_or("?")
        )?;
        for s in list {
            writeln!(
                out,
                "         {}: {} {} ({}), timeout {} s, results up to {} KiB",
                s["name"].as_str().unwrap_or("?"),
                s["transport"].as_str().unwrap_or("?"),
                s["endpoint"].as_str().unwrap_or("?"),
                if s["remote"] == true {
                    "remote"
                } else {
                    "this machine"
                },
                s["timeout_s"],
                s["max_result_kib"]
            )?;
        }
        writeln!(
            out,
            "         policy: {}",
            tools["policy"].as_str().unwrap_or("")
        )?;
    }
    Ok(Outcome::Ok)
}
