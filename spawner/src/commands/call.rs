//! `spawner call`: one JSON-RPC call to `spawner serve`, and `spawner run --daemon`.

use std::io::Write;

use agent_contract::{Home, Outcome, RunReport};
use anyhow::Context;
use serde_json::{Value, json};

use crate::cli::{CallArgs, RunArgs};
use crate::client::{CallError, call};
use crate::exit::UsageError;

/// Call a method and print its result (the `metrics` text as is, anything else as JSON).
pub fn execute(home: &Home, args: CallArgs) -> anyhow::Result<u8> {
    let params: Value = match &args.params {
        Some(text) => serde_json::from_str(text)
            .map_err(|e| UsageError(format!("params are not JSON: {e}")))?,
        None => json!({}),
    };
    let socket = args.socket.clone().unwrap_or_else(|| home.socket_path());
    let mut stdout = std::io::stdout().lock();
    let answer = call(&socket, &args.method, params, |n| {
        let _ = writeln!(std::io::stderr(), "{n}");
    })?;
    match answer {
        Ok(result) => {
            match (
                args.method.as_str(),
                result.get("text").and_then(Value::as_str),
            ) {
                ("metrics", Some(text)) => stdout.write_all(text.as_bytes())?,
                _ => writeln!(stdout, "{}", serde_json::to_string_pretty(&result)?)?,
            }
            Ok(0)
        }
        Err(e) => {
            crate::say!("spawner: error {}: {}", e.code, e.message);
            Ok(exit_code_of(&e))
        }
    }
}

/// The exit code a daemon error stands for: its outcome's, else internal error.
fn exit_code_of(e: &CallError) -> u8 {
    e.data
        .as_ref()
        .and_then(|d| d["exit_code"].as_u64())
        .and_then(|c| u8::try_from(c).ok())
        .unwrap_or(Outcome::Internal.exit_code())
}

/// `spawner run --daemon`: the same request through the daemon, answered as `spawner run`
/// answers it (output on stdout, error on stderr, the outcome's exit code).
pub fn run_through_daemon(home: &Home, args: &RunArgs, input: Vec<u8>) -> anyhow::Result<u8> {
    use base64::Engine as _;
    let mut params = json!({ "agent": args.agent });
    match String::from_utf8(input) {
        Ok(text) => params["input"] = text.into(),
        Err(e) => {
            params["input_base64"] = base64::engine::general_purpose::STANDARD
                .encode(e.as_bytes())
                .into();
        }
    }
    if let Some(t) = args.timeout {
        params["timeout_ms"] = u64::try_from(t.as_millis()).unwrap_or(u64::MAX).into();
    }
    let socket = args.socket.clone().unwrap_or_else(|| home.socket_path());
    let answer = call(&socket, "run", params, |_| {})?;
    let result = match answer {
        Ok(result) => result,
        Err(e) => {
            crate::say!("spawner: error: {}", e.message);
            return Ok(exit_code_of(&e));
        }
    };
    let logs = result.get("logs").cloned();
    let report: RunReport =
        serde_json::from_value(result).context("the daemon's run report is not valid")?;
    if let Some(Value::Array(lines)) = logs
        && args.log_level.is_some()
    {
        for line in lines {
            crate::say!("{line}");
        }
    }
    let mut stdout = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut stdout, &report)?;
        stdout.write_all(b"\n")?;
        return Ok(report.exit_code);
    }
    if let Some(bytes) = report
        .output_bytes()
        .context("the daemon's output is not valid base64")?
    {
        stdout.write_all(&bytes)?;
    }
    if let Some(error) = &report.error {
        crate::say!("error: {}: {error}", report.agent);
    }
    Ok(report.exit_code)
}
