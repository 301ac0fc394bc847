//! testing: an agent that misbehaves on request, for the runtime's fault tests. Not
//! installed by setup. The input picks the behaviour:
//!
//! - `panic`, `unreachable`: trap
//! - `loop`: run forever (the deadline must stop it)
//! - `alloc`: allocate without bound (the memory cap must stop it)
//! - `put <key> <value>` then answer `ok`; `put-then-loop <key> <value>`: write, then hang
//! - `get <key>`: the stored value, or `(none)`
//! - `config <key>`: a `[config]` value, or `(none)`
//! - `env`: how many environment variables and arguments the agent can see
//! - `read <path>`: read a file through WASI (only preopens are visible)
//! - `write <path> <text>`: write a file through WASI
//! - `connect <addr>`: open a TCP connection (the sandbox has no network)
//! - `fail`, `reject`: return those errors after a `put` of key `attempt`
//! - `infer <model>`: call inference with no inputs
//! - `infer <model> <input> <dtype> <d1,d2,..> <value>`: call inference with one input of
//!   that dtype and shape, every element `value` (a number; `+i` adds the element's index);
//!   answers each output as `<name> <dtype> <shape> <values, comma-separated>`
//! - `infer-bytes <model> <input> <megabytes>`: one uint8 input of that size
//! - `chat` then lines `model <name>`, `max_tokens <n>`, `temperature <t>`, `top_p <p>`,
//!   `seed <n>`, `stop <text>` (each may repeat) and `msg <role> <content>`: one llm chat;
//!   answers `finish <stop|length> prompt <n> completion <n> provider <p> model <m>` on
//!   the first line and the text after it; an error fails with its Debug form
//! - `steps <n> <server> <path> [<hang at>]`: a multi-step run for the durable tests:
//!   reads memory key `steps`, then `n` tool calls `record` of `<server>` (each appends a
//!   line to `path`, at the server), before step `<hang at>` a call `gate` that marks
//!   `<path>.hang` and waits while `<path>.gate` exists, then a random number and the wall
//!   clock; answers each step's result, then the random number and the time, and puts
//!   `steps`
//! - anything else: echoed back
//!
//! As a hook (`spawner hook testing`), it describes the normalized event it received, one
//! item per line, and answers with the verdict its `[config]` asks for: `hook_decision`
//! (pass, allow, ask, deny), `hook_reason`, `hook_message`, `hook_rewrite` (commit-msg),
//! `hook_fault` (`panic` or `loop`), `hook_read` (a path to read and describe too),
//! `hook_write` (a path to try to write). `hook_message = "describe"` puts the description
//! in the verdict's message too, for protocols that show no output (Claude Code).

use agent_sdk::{
    Advice, Agent, AgentError, Decision, FileChange, HookEvent, Request, Response, Verdict, config,
    hooks, inference, memory,
};

struct Testing;

fn describe_files(out: &mut String, prefix: &str, files: &[FileChange]) {
    for f in files {
        for l in &f.added {
            out.push_str(&format!("{prefix} {}:{}:{}\n", f.path, l.line, l.text));
        }
    }
}

/// One line per item of `event`.
fn describe(event: &HookEvent) -> String {
    let mut out = String::new();
    match event {
        HookEvent::Assistant(e) => {
            out.push_str(&format!(
                "assistant event={} session={} cwd={} tool={}\n",
                e.event,
                e.session_id,
                e.cwd,
                e.tool_name.as_deref().unwrap_or("-")
            ));
            if let Some(prompt) = &e.prompt {
                out.push_str(&format!("prompt {prompt}\n"));
            }
            describe_files(&mut out, "write", &e.writes);
            if let Some(d) = hooks::details() {
                for (name, value) in [
                    ("permission_mode", &d.permission_mode),
                    ("transcript_path", &d.transcript_path),
                    ("tool_use_id", &d.tool_use_id),
                    ("tool_response", &d.tool_response),
                    ("message", &d.message),
                    ("trigger", &d.trigger),
                    ("custom_instructions", &d.custom_instructions),
                    ("source", &d.source),
                    ("reason", &d.reason),
                ] {
                    if let Some(v) = value {
                        out.push_str(&format!("detail {name}={v}\n"));
                    }
                }
                if d.stop_hook_active {
                    out.push_str("detail stop_hook_active\n");
                }
            }
        }
        HookEvent::PreCommit(files) => {
            out.push_str("pre-commit\n");
            describe_files(&mut out, "add", files);
        }
        HookEvent::CommitMsg(message) => {
            out.push_str(&format!(
                "commit-msg {}\n",
                message.lines().next().unwrap_or("")
            ));
        }
        HookEvent::PrePush(push) => {
            out.push_str(&format!(
                "pre-push remote={} url={}\n",
                push.remote, push.url
            ));
            for r in &push.refs {
                out.push_str(&format!(
                    "ref {} {} {} {}\n",
                    r.local_ref, r.local_sha, r.remote_ref, r.remote_sha
                ));
            }
        }
        HookEvent::Plain => out.push_str("plain\n"),
    }
    out
}

/// The hook mode: describe the event, then answer as `[config]` says.
fn hook(event: &HookEvent) -> Result<Response, AgentError> {
    match config::get("hook_fault").as_deref() {
        Some("panic") => panic!("testing agent was asked to panic in a hook"),
        Some("loop") => loop {
            std::hint::black_box(());
        },
        _ => {}
    }
    let mut output = describe(event);
    if let Some(path) = config::get("hook_read") {
        match std::fs::read_to_string(&path) {
            Ok(text) => output.push_str(&format!("read {path}: {}\n", text.trim_end())),
            Err(e) => output.push_str(&format!("cannot read {path}: {e}\n")),
        }
    }
    if let Some(path) = config::get("hook_write") {
        match std::fs::write(&path, "written by a hook") {
            Ok(()) => output.push_str(&format!("wrote {path}\n")),
            Err(e) => output.push_str(&format!("cannot write {path}: {e}\n")),
        }
    }
    let decision = match config::get("hook_decision").as_deref() {
        None | Some("pass") => Decision::Pass,
        Some("allow") => Decision::Allow,
        Some("ask") => Decision::Ask,
        Some("deny") => Decision::Deny,
        Some(other) => {
            return Err(AgentError::InvalidInput(format!(
                "hook_decision {other:?} is not pass, allow, ask or deny"
            )));
        }
    };
    let message = match config::get("hook_message") {
        Some(m) if m == "describe" => Some(output.clone()),
        other => other,
    };
    let advice = Advice {
        context: config::get("hook_context"),
        updated_input: config::get("hook_updated_input"),
        stop: config::get("hook_stop"),
        suppress_output: config::get("hook_suppress_output").is_some(),
    };
    if advice.context.is_some()
        || advice.updated_input.is_some()
        || advice.stop.is_some()
        || advice.suppress_output
    {
        hooks::advise(&advice);
    }
    hooks::decide(&Verdict {
        decision,
        reason: config::get("hook_reason"),
        message,
        rewrite: config::get("hook_rewrite"),
    });
    Ok(Response::text(output))
}

/// Start `n` sub-runs of `agent`, each with `input` (`{i}` replaced by its number), then
/// join them in order: a line per child, `<n> <run id> <status> <answer or error>`; the
/// run fails, with those lines, when a child did not end `ok`.
fn fan_out(agent: &str, n: &str, input: &str) -> Result<Response, AgentError> {
    use agent_sdk::runs;
    let n: u32 = n
        .parse()
        .map_err(|_| AgentError::InvalidInput("bad count".into()))?;
    let failed = |e: runs::RunError| AgentError::Failed(format!("{e:?}"));
    let mut children = Vec::new();
    for i in 0..n {
        let input = input.replace("{i}", &i.to_string());
        children.push(runs::start(agent, input.as_bytes()).map_err(failed)?);
    }
    let mut out = String::new();
    let mut all_ok = true;
    for child in children {
        let done = runs::join(child).map_err(failed)?;
        let said = match &done.error {
            Some(e) => e.clone(),
            None => String::from_utf8_lossy(&done.output).into_owned(),
        };
        out.push_str(&format!("{child} {} {} {said}\n", done.run_id, done.status));
        all_ok &= done.status == "ok";
    }
    if all_ok {
        Ok(Response::text(out))
    } else {
        Err(AgentError::Failed(format!(
            "not every sub-run ended ok:\n{out}"
        )))
    }
}

fn words(input: &str) -> (&str, Vec<&str>) {
    let mut it = input.split_whitespace();
    (it.next().unwrap_or(""), it.collect())
}

impl Agent for Testing {
    fn handle(request: Request) -> Result<Response, AgentError> {
        if let Some(event) = hooks::event() {
            return hook(&event);
        }
        let text = request.text()?.to_owned();
        if let Some(lines) = text.strip_prefix("chat\n") {
            return chat(lines);
        }
        if let Some(call) = text.strip_prefix("tool ") {
            return tool(call);
        }
        if text.trim() == "tools" {
            return Ok(Response::text(match agent_sdk::tools::list() {
                Ok(list) => list
                    .iter()
                    .map(|t| format!("{}/{} {}\n", t.server, t.name, t.input_schema))
                    .collect::<String>(),
                Err(e) => format!("error {}\n", agent_sdk::tool_use::describe_error(&e)),
            }));
        }
        let (command, args) = words(&text);
        match (command, args.as_slice()) {
            ("panic", _) => panic!("testing agent was asked to panic"),
            ("unreachable", _) => core::arch::wasm32::unreachable(),
            ("steps", [n, server, path]) => steps(n, server, path, None),
            ("steps", [n, server, path, hang_at]) => steps(n, server, path, Some(hang_at)),
            ("loop", _) => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            ("alloc", _) => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            ("put", [key, value]) => {
                memory::put(key, value.as_bytes())?;
                Ok(Response::text("ok"))
            }
            ("fan-out", [agent, n, input @ ..]) => fan_out(agent, n, &input.join(" ")),
            ("fail-once-at", [i, at]) => {
                // Child `at` of a fan-out fails on its first attempt (the mark it leaves is
                // committed with the failure) and succeeds on the next; the others succeed.
                if i == at && memory::get("failed-once")?.is_none() {
                    memory::put("failed-once", b"1")?;
                    return Err(AgentError::Failed(format!("child {i} fails once")));
                }
                Ok(Response::text(format!("child {i} done")))
            }
            ("busy", [ms]) => {
                // Wall-clock readings around a spin, for tests that check how many runs
                // overlapped.
                let ms: u64 = ms
                    .parse()
                    .map_err(|_| AgentError::InvalidInput("bad ms".into()))?;
                let now = || {
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos())
                };
                let started = now();
                let spin = std::time::Instant::now();
                while spin.elapsed() < std::time::Duration::from_millis(ms) {
                    std::hint::black_box(());
                }
                Ok(Response::text(format!("{started} {}", now())))
            }
            ("put-then-loop", [key, value]) => {
                memory::put(key, value.as_bytes())?;
                memory::append_event("partial", value.as_bytes())?;
                // The readiness signal tests wait for before killing the process.
                agent_sdk::log::info("wrote, now looping");
                loop {
                    std::hint::black_box(());
                }
            }
            ("get", [key]) => Ok(Response::bytes(
                memory::get(key)?.unwrap_or_else(|| b"(none)".to_vec()),
            )),
            ("put-bytes", [key, count]) => {
                // A write committed with the run, then an answer too big for a pipe's
                // buffer: the process blocks writing it after the commit.
                let count: usize = count
                    .parse()
                    .map_err(|_| AgentError::InvalidInput("bad count".into()))?;
                memory::put(key, b"1")?;
                Ok(Response::bytes(vec![b'x'; count]))
            }
            ("bytes", [count, value]) => {
                let bad = |what: &str| AgentError::InvalidInput(format!("bad {what}"));
                let count: usize = count.parse().map_err(|_| bad("count"))?;
                let value: u8 = value.parse().map_err(|_| bad("byte value"))?;
                Ok(Response::bytes(vec![value; count]))
            }
            ("config", [key]) => Ok(Response::text(
                config::get(key).unwrap_or_else(|| "(none)".into()),
            )),
            ("env", _) => Ok(Response::text(format!(
                "vars={} args={}",
                std::env::vars().count(),
                std::env::args().count()
            ))),
            ("read", [path]) => match std::fs::read_to_string(path) {
                Ok(text) => Ok(Response::text(text)),
                Err(e) => Err(AgentError::Failed(format!("cannot read {path}: {e}"))),
            },
            ("write", [path, text]) => match std::fs::write(path, text) {
                Ok(()) => Ok(Response::text("written")),
                Err(e) => Err(AgentError::Failed(format!("cannot write {path}: {e}"))),
            },
            ("connect", [addr]) => match std::net::TcpStream::connect(addr) {
                Ok(_) => Ok(Response::text("connected")),
                Err(e) => Err(AgentError::Failed(format!("cannot connect to {addr}: {e}"))),
            },
            ("fail", _) => {
                memory::put("attempt", b"failed")?;
                Err(AgentError::Failed("asked to fail".into()))
            }
            ("reject", _) => {
                memory::put("attempt", b"rejected")?;
                Err(AgentError::Rejected("asked to reject".into()))
            }
            ("infer", [model]) => match inference::infer(model, &[]) {
                Ok(_) => Ok(Response::text("inferred")),
                Err(e) => Err(AgentError::Failed(format!("{e:?}"))),
            },
            ("infer", [model, input, dtype, shape, value]) => {
                let tensor = fill(input, dtype, shape, value)?;
                let outputs = inference::infer(model, &[tensor])
                    .map_err(|e| AgentError::Failed(format!("{e:?}")))?;
                Ok(Response::text(
                    outputs.iter().map(describe_tensor).collect::<String>(),
                ))
            }
            ("infer-bytes", [model, input, megabytes]) => {
                let mb: usize = megabytes
                    .parse()
                    .map_err(|_| AgentError::InvalidInput("megabytes".into()))?;
                let tensor = inference::Tensor {
                    name: (*input).into(),
                    dtype: inference::Dtype::Uint8,
                    shape: vec![(mb * 1024 * 1024) as u64],
                    data: vec![0; mb * 1024 * 1024],
                };
                match inference::infer(model, &[tensor]) {
                    Ok(_) => Ok(Response::text("inferred")),
                    Err(e) => Err(AgentError::Failed(format!("{e:?}"))),
                }
            }
            _ => Ok(Response::text(text)),
        }
    }
}

/// `steps <n> <server> <path>` (see the crate's docs).
fn steps(n: &str, server: &str, path: &str, hang_at: Option<&str>) -> Result<Response, AgentError> {
    use std::hash::{BuildHasher, Hasher};
    let number = |v: &str| {
        v.parse::<u32>()
            .map_err(|_| AgentError::InvalidInput(format!("not a count: {v}")))
    };
    let n = number(n)?;
    let hang_at = hang_at.map(number).transpose()?;
    let before = memory::get("steps")
        .map_err(|e| AgentError::Failed(format!("{e:?}")))?
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .unwrap_or_else(|| "(none)".into());
    let mut out = format!("before {before}\n");
    for i in 0..n {
        if hang_at == Some(i) {
            let arguments = format!(r#"{{"mark": "{path}.hang", "gate": "{path}.gate"}}"#);
            agent_sdk::tools::call(server, "gate", &arguments).map_err(|e| {
                AgentError::Failed(format!("gate: {}", agent_sdk::tool_use::describe_error(&e)))
            })?;
        }
        let arguments = format!(r#"{{"path": "{path}", "line": "step {i}"}}"#);
        match agent_sdk::tools::call(server, "record", &arguments) {
            Ok(r) => out.push_str(&format!("step {i}: {}\n", r.text)),
            Err(e) => {
                return Err(AgentError::Failed(format!(
                    "step {i}: {}",
                    agent_sdk::tool_use::describe_error(&e)
                )));
            }
        }
    }
    // std's hash keys come from the host's random source.
    let mut random = std::collections::hash_map::RandomState::new().build_hasher();
    random.write_u32(n);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    out.push_str(&format!("random {}\ntime {now}\n", random.finish()));
    memory::put("steps", format!("{n} steps").as_bytes())
        .map_err(|e| AgentError::Failed(format!("{e:?}")))?;
    Ok(Response::text(out))
}

/// One tool call, `<server> <tool> <arguments as JSON, to the end>`: its result's text
/// (and structured result), or the error's kind and message, as the answer.
fn tool(call: &str) -> Result<Response, AgentError> {
    let mut parts = call.splitn(3, ' ');
    let (Some(server), Some(name)) = (parts.next(), parts.next()) else {
        return Err(AgentError::InvalidInput(
            "tool <server> <tool> [json]".into(),
        ));
    };
    let arguments = parts.next().unwrap_or("{}");
    Ok(Response::text(
        match agent_sdk::tools::call(server, name.trim(), arguments) {
            Ok(r) => format!(
                "ok\n{}{}",
                r.text,
                r.structured
                    .map(|s| format!("\nstructured {s}"))
                    .unwrap_or_default()
            ),
            Err(e) => format!("error {}", agent_sdk::tool_use::describe_error(&e)),
        },
    ))
}

/// One llm chat from the lines of a `chat` request.
fn chat(lines: &str) -> Result<Response, AgentError> {
    let mut model = String::new();
    let mut messages = Vec::new();
    let mut params = agent_sdk::chat::params();
    let number = |v: &str| -> Result<f64, AgentError> {
        v.parse()
            .map_err(|_| AgentError::InvalidInput(format!("not a number: {v}")))
    };
    for line in lines.lines() {
        let (key, value) = line.split_once(' ').unwrap_or((line, ""));
        match key {
            "model" => model = value.into(),
            "max_tokens" => params.max_tokens = Some(number(value)? as u32),
            "temperature" => params.temperature = Some(number(value)? as f32),
            "top_p" => params.top_p = Some(number(value)? as f32),
            "seed" => params.seed = Some(number(value)? as u64),
            "stop" => params.stop.push(value.replace("\\n", "\n")),
            "msg" => {
                let (role, content) = value.split_once(' ').unwrap_or((value, ""));
                messages.push(agent_sdk::chat::message(role, content.replace("\\n", "\n")));
            }
            "" => {}
            other => {
                return Err(AgentError::InvalidInput(format!(
                    "unknown chat line {other}"
                )));
            }
        }
    }
    match agent_sdk::llm::chat(&model, &messages, &params) {
        Ok(c) => Ok(Response::text(format!(
            "finish {} prompt {} completion {} provider {} model {}\n{}",
            match c.finish_reason {
                agent_sdk::llm::FinishReason::Stop => "stop",
                agent_sdk::llm::FinishReason::Length => "length",
            },
            c.prompt_tokens,
            c.completion_tokens,
            c.provider,
            c.model,
            c.text
        ))),
        Err(e) => Err(AgentError::Failed(format!("{e:?}"))),
    }
}

/// A tensor of `shape` (comma-separated) with every element `value`, `+i`: plus its index.
fn fill(
    input: &str,
    dtype: &str,
    shape: &str,
    value: &str,
) -> Result<inference::Tensor, AgentError> {
    let bad = |what: &str| AgentError::InvalidInput(format!("bad {what}"));
    let shape: Vec<u64> = shape
        .split(',')
        .map(|d| d.parse().map_err(|_| bad("shape")))
        .collect::<Result<_, _>>()?;
    let (value, plus_index) = match value.strip_suffix("+i") {
        Some(v) => (v, true),
        None => (value, false),
    };
    let value: f64 = value.parse().map_err(|_| bad("value"))?;
    let n = shape.iter().product::<u64>() as usize;
    let at = |i: usize| if plus_index { value + i as f64 } else { value };
    let (dtype, data): (inference::Dtype, Vec<u8>) = match dtype {
        "float32" => (
            inference::Dtype::Float32,
            (0..n).flat_map(|i| (at(i) as f32).to_le_bytes()).collect(),
        ),
        "float64" => (
            inference::Dtype::Float64,
            (0..n).flat_map(|i| at(i).to_le_bytes()).collect(),
        ),
        "int32" => (
            inference::Dtype::Int32,
            (0..n).flat_map(|i| (at(i) as i32).to_le_bytes()).collect(),
        ),
        "int64" => (
            inference::Dtype::Int64,
            (0..n).flat_map(|i| (at(i) as i64).to_le_bytes()).collect(),
        ),
        "uint8" => (
            inference::Dtype::Uint8,
            (0..n).map(|i| at(i) as u8).collect(),
        ),
        _ => return Err(bad("dtype")),
    };
    Ok(inference::Tensor {
        name: input.into(),
        dtype,
        shape,
        data,
    })
}

/// `<name> <dtype> <shape> <values>`: values exactly (shortest round-trip form).
fn describe_tensor(t: &inference::Tensor) -> String {
    let shape = t
        .shape
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let values: Vec<String> = match t.dtype {
        inference::Dtype::Float32 => t
            .data
            .chunks_exact(4)
            .map(|c| format!("{:?}", f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        inference::Dtype::Int64 => t
            .data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap_or_default()).to_string())
            .collect(),
        _ => t.data.iter().map(u8::to_string).collect(),
    };
    format!("{} {:?} {shape} {}\n", t.name, t.dtype, values.join(","))
}

agent_sdk::export!(Testing);
