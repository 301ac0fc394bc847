//! Chat completions from OpenAI-compatible providers (`<home>/providers.toml`): the
//! broker makes the HTTP call for agents, which have no network, holding the API key the
//! agents never see. One blocking `ureq` agent per provider keeps its connections for
//! reuse; TLS with the system's roots, or the provider's own `ca_file`.
//!
//! The call is made only when agent-exec names the provider in the request: the choice of
//! a remote provider, and the consent it needs, are agent-exec's (see its `llm` module).
//! A provider that fails gives its error; nothing falls back to another one.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use agent_contract::providers::{Provider, Providers};
use broker_client::ErrorCode;
use broker_client::chat::{ChatRequest, Completion, FinishReason};
use serde_json::json;

use crate::runtime::Failure;

/// Largest answer body read from a provider.
const MAX_ANSWER_BYTES: u64 = 8 * 1024 * 1024;

/// The providers' HTTP agents, made on first use.
#[derive(Default)]
pub struct Remote {
    agents: Mutex<HashMap<String, ureq::Agent>>,
}

fn failed(provider: &str, what: impl std::fmt::Display) -> Failure {
    Failure::new(ErrorCode::Failed, format!("provider {provider:?}: {what}"))
}

/// The provider's API key: from the broker's environment (which it has from the spawner
/// whose run started it) or a 0600 file under the home.
fn api_key(home: &Path, p: &Provider) -> Result<Option<String>, Failure> {
    if let Some(var) = &p.api_key_env {
        return match std::env::var(var) {
            Ok(v) if !v.is_empty() => Ok(Some(v)),
            Err(std::env::VarError::NotUnicode(_)) => Err(failed(
                &p.name,
                format_args!(
                    "its API key ${var} is set but is not UTF-8 text, which no HTTP header can carry; set it to the key's text"
                ),
            )),
            _ => Err(Failure::new(
                ErrorCode::Failed,
                format!(
                    "provider {:?}: its API key is taken from ${var}, which this broker (pid {pid}) \
                     was started without; set it where `spawner` runs (the command line's or \
                     `spawner serve`'s environment): a broker started by a run has that \
                     spawner's keys. Then stop this broker (`kill {pid}`) so that the next \
                     run starts it again, or use api_key_file",
                    p.name,
                    pid = std::process::id()
                ),
            )),
        };
    }
    let Some(file) = &p.api_key_file else {
        return Ok(None);
    };
    let path = home.join(file);
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&path)
        .map_err(|e| failed(&p.name, format!("cannot read {}: {e}", path.display())))?;
    if meta.mode() & 0o077 != 0 {
        return Err(failed(
            &p.name,
            format!(
                "{} is readable by others (mode {:o}); `chmod 600` it",
                path.display(),
                meta.mode() & 0o777
            ),
        ));
    }
    let key = std::fs::read_to_string(&path)
        .map_err(|e| failed(&p.name, format!("cannot read {}: {e}", path.display())))?;
    Ok(Some(key.trim().to_owned()))
}

fn new_agent(home: &Path, p: &Provider) -> Result<ureq::Agent, Failure> {
    let roots = match &p.ca_file {
        None => ureq::tls::RootCerts::PlatformVerifier,
        Some(file) => {
            let path = home.join(file);
            let pem = std::fs::read(&path)
                .map_err(|e| failed(&p.name, format!("cannot read {}: {e}", path.display())))?;
            let certs = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect::<Vec<_>>();
            if certs.is_empty() {
                return Err(failed(
                    &p.name,
                    format!("{} holds no PEM certificate", path.display()),
                ));
            }
            ureq::tls::RootCerts::new_with_certs(&certs)
        }
    };
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(p.timeout()))
        .timeout_connect(Some(p.timeout().min(Duration::from_secs(10))))
        .tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build())
        .build();
    Ok(config.into())
}

impl Remote {
    /// Answer `request` with the provider it names.
    pub fn chat(&self, home: &Path, request: &ChatRequest) -> Result<Completion, Failure> {
        let started = Instant::now();
        let name = request.provider.as_deref().unwrap_or("");
        let providers =
            Providers::load(home).map_err(|e| Failure::new(ErrorCode::Failed, e.to_string()))?;
        let p = providers.get(name).ok_or_else(|| {
            Failure::new(
                ErrorCode::UnknownModel,
                format!(
                    "no provider {name:?} in {}",
                    home.join(agent_contract::providers::PROVIDERS_FILE)
                        .display()
                ),
            )
        })?;
        let key = api_key(home, p)?;
        let agent = {
            let mut agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
            match agents.get(name) {
                Some(a) => a.clone(),
                None => {
                    let a = new_agent(home, p)?;
                    agents.insert(name.to_owned(), a.clone());
                    a
                }
            }
        };
        let mut body = json!({
            "model": request.model,
            "messages": request.messages,
            "stream": false,
        });
        for (field, value) in [
            ("max_tokens", request.max_tokens.map(|v| json!(v))),
            ("temperature", request.temperature.map(|v| json!(v))),
            ("top_p", request.top_p.map(|v| json!(v))),
            ("seed", request.seed.map(|v| json!(v))),
            (
                "stop",
                (!request.stop.is_empty()).then(|| json!(request.stop)),
            ),
        ] {
            if let Some(v) = value {
                body[field] = v;
            }
        }
        let body = body.to_string();
        let url = format!("{}/chat/completions", p.url.trim_end_matches('/'));
        let mut call = agent.post(&url).header("content-type", "application/json");
        if let Some(key) = &key {
            call = call.header("authorization", &format!("Bearer {key}"));
        }
        let timeout = request
            .timeout_ms
            .map(Duration::from_millis)
            .map_or(p.timeout(), |t| t.min(p.timeout()));
        let call = call.config().timeout_global(Some(timeout)).build();
        let response = call.send(&body);
        let mut response = response.map_err(|e| match e {
            ureq::Error::Timeout(_) => Failure::new(
                ErrorCode::Timeout,
                format!(
                    "provider {name:?} ({}) did not answer within {} ms",
                    p.host(),
                    timeout.as_millis()
                ),
            ),
            e => Failure::new(
                ErrorCode::Unreachable,
                format!("provider {name:?} ({}) cannot be reached: {e}", p.host()),
            ),
        })?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
            .read_to_string()
            .map_err(|e| failed(name, format!("cannot read its answer: {e}")))?;
        if status != 200 {
            let excerpt: String = text.chars().take(300).collect();
            return Err(failed(name, format!("answered HTTP {status}: {excerpt}")));
        }
        let answer: serde_json::Value = serde_json::from_str(&text).map_err(|_| {
            failed(
                name,
                "its answer is not JSON (is the url an OpenAI-compatible API's base, ending in /v1?)",
            )
        })?;
        let choice = &answer["choices"][0];
        let content = choice["message"]["content"].as_str().ok_or_else(|| {
            failed(
                name,
                "its answer has no choices[0].message.content: not an OpenAI-compatible chat completion",
            )
        })?;
        let usage = &answer["usage"];
        let total_ms = started.elapsed().as_secs_f64() * 1000.0;
        Ok(Completion {
            text: content.to_owned(),
            finish_reason: match choice["finish_reason"].as_str() {
                Some("length") => FinishReason::Length,
                _ => FinishReason::Stop,
            },
            prompt_tokens: usage["prompt_tokens"].as_u64().unwrap_or(0) as u32,
            completion_tokens: usage["completion_tokens"].as_u64().unwrap_or(0) as u32,
            provider: name.to_owned(),
            model: answer["model"]
                .as_str()
                .unwrap_or(&request.model)
                .to_owned(),
            device: String::new(),
            first_token_ms: total_ms,
            total_ms,
            tokens: Vec::new(),
            remote: p.is_remote(),
            bytes_sent: body.len() as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    use super::*;

    /// A home whose `providers.toml` names `lab`, a server on a loopback port that answers
    /// one request with `answer` (a whole HTTP response), taken as it is written.
    fn lab_answering(answer: Vec<u8>, case: &str) -> PathBuf {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let mut reader = BufReader::new(stream);
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).expect("header");
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().expect("length");
                }
                if line == "\r\n" || line.is_empty() {
                    break;
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).expect("body");
            let mut stream = reader.into_inner();
            stream.write_all(&answer).expect("answer");
        });
        let home =
            std::env::temp_dir().join(format!("gpu-broker-remote-{}-{case}", std::process::id()));
        std::fs::create_dir_all(&home).expect("home");
        let file = home.join(agent_contract::providers::PROVIDERS_FILE);
        std::fs::write(
            &file,
            format!(
                "[[provider]]\nname = \"lab\"\nurl = \"http://127.0.0.1:{port}/v1\"\nmodels = [\"m\"]\ntimeout_s = 20\n"
            ),
        )
        .expect("providers.toml");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        home
    }

    fn http(status: &str, body: &[u8]) -> Vec<u8> {
        let mut answer = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        answer.extend_from_slice(body);
        answer
    }

    fn chat(home: &Path) -> Result<Completion, Failure> {
        let request = ChatRequest {
            model: "m".into(),
            messages: vec![broker_client::chat::Message {
                role: "user".into(),
                content: "héllo, 世界 🦀".into(),
            }],
            provider: Some("lab".into()),
            ..ChatRequest::default()
        };
        let answer = Remote::default().chat(home, &request);
        let _ = std::fs::remove_dir_all(home);
        answer
    }

    #[test]
    fn answers_that_are_not_chat_completions_fail_and_say_what_they_were() {
        let cases: [(&str, Vec<u8>, &str); 4] = [
            (
                "not-json",
                http("200 OK", b"<html>a login page</html>"),
                "its answer is not JSON",
            ),
            (
                "invalid-utf8",
                http("200 OK", b"{\"choices\": [\"\xff\xfe\"]}"),
                "cannot read its answer",
            ),
            (
                "no-content",
                http("200 OK", br#"{"object": "list", "data": []}"#),
                "has no choices[0].message.content",
            ),
            (
                "error-page",
                http("502 Bad Gateway", "ошибка 🦀 ".repeat(100).as_bytes()),
                "answered HTTP 502: ошибка 🦀",
            ),
        ];
        for (case, answer, says) in cases {
            let failure = chat(&lab_answering(answer, case)).expect_err(case);
            assert_eq!(failure.code, ErrorCode::Failed, "{case}");
            assert!(
                failure.message.starts_with("provider \"lab\": ") && failure.message.contains(says),
                "{case}: {}",
                failure.message
            );
        }
    }

    #[test]
    fn a_chat_completion_is_read_whole() {
        let body = r#"{"model": "m-7b", "choices": [{"message": {"role": "assistant", "content": "こんにちは 🦀"}, "finish_reason": "length"}], "usage": {"prompt_tokens": 9, "completion_tokens": 4}}"#;
        let answer = chat(&lab_answering(http("200 OK", body.as_bytes()), "ok")).expect("served");
        assert_eq!(answer.text, "こんにちは 🦀");
        assert_eq!(answer.finish_reason, FinishReason::Length);
        assert_eq!((answer.prompt_tokens, answer.completion_tokens), (9, 4));
        assert_eq!(answer.model, "m-7b");
        assert!(!answer.remote, "a loopback provider is local unless marked");
        assert!(answer.bytes_sent > 0);
    }
}
