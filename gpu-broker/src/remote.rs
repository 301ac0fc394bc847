//! Chat completions from OpenAI-compatible providers (`<home>/providers.toml`): the
//! broker makes the HTTP call for agents, which have no network, holding the API key the
//! agents never see. One blocking `ureq` agent per provider keeps its connections for
//! reuse; TLS with the system's roots, or the provider's own `ca_file`.
//!
//! The call is made only when agent-exec names the provider in the request: the choice of
//! a remote provider, and the consent it needs, are agent-exec's (see its `llm` module).
//! A provider that fails gives its error; nothing falls back to another one.
//!
//! When the caller takes the answer as it comes (`ChatRequest::stream`), the provider is
//! asked to stream it (server-sent events, with the token counts asked for in the last
//! one) and each piece is passed on as it arrives; a provider that answers whole anyway
//! is read whole.

use std::collections::HashMap;
use std::io::BufRead;
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
    /// Answer `request` with the provider it names; `send` gets the answer's text, piece
    /// by piece where it is streamed, else whole, and says whether the client still
    /// listens.
    pub fn chat(
        &self,
        home: &Path,
        request: &ChatRequest,
        send: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Completion, Failure> {
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
            "stream": request.stream,
        });
        if request.stream {
            body["stream_options"] = json!({ "include_usage": true });
        }
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
        let timed_out = || {
            Failure::new(
                ErrorCode::Timeout,
                format!(
                    "provider {name:?} ({}) did not answer within {} ms",
                    p.host(),
                    timeout.as_millis()
                ),
            )
        };
        let mut response = call.send(&body).map_err(|e| match e {
            ureq::Error::Timeout(_) => timed_out(),
            e => Failure::new(
                ErrorCode::Unreachable,
                format!("provider {name:?} ({}) cannot be reached: {e}", p.host()),
            ),
        })?;
        let status = response.status().as_u16();
        let streamed = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.to_ascii_lowercase().starts_with("text/event-stream"));
        let reader = response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
            .reader();
        let unreadable = |e: std::io::Error| match ureq::Error::from(e) {
            ureq::Error::Timeout(_) => timed_out(),
            e => failed(name, format!("cannot read its answer: {e}")),
        };
        let answer = if status != 200 {
            let text = std::io::read_to_string(reader).map_err(unreadable)?;
            let excerpt: String = text.chars().take(300).collect();
            return Err(failed(name, format!("answered HTTP {status}: {excerpt}")));
        } else if streamed {
            read_stream(name, std::io::BufReader::new(reader), started, send)
                .map_err(|e| e.into_failure(unreadable))?
        } else {
            let text = std::io::read_to_string(reader).map_err(unreadable)?;
            let answer = read_whole(name, &text, started)?;
            if !send(&answer.text) {
                return Err(client_gone());
            }
            answer
        };
        Ok(Completion {
            finish_reason: answer.finish_reason,
            prompt_tokens: answer.usage.map_or(0, |u| u.0),
            completion_tokens: answer.usage.map_or(answer.pieces, |u| u.1),
            uncounted: answer.usage.is_none(),
            provider: name.to_owned(),
            model: answer.model.unwrap_or_else(|| request.model.clone()),
            device: String::new(),
            first_token_ms: answer.first_token_ms,
            total_ms: started.elapsed().as_secs_f64() * 1000.0,
            tokens: Vec::new(),
            remote: p.is_remote(),
            bytes_sent: body.len() as u64,
            text: answer.text,
        })
    }
}

/// The failure when the client stops listening.
fn client_gone() -> Failure {
    Failure::new(ErrorCode::Failed, "the client went away")
}

/// A provider's answer, as read.
struct Answer {
    text: String,
    finish_reason: FinishReason,
    /// Prompt and completion tokens, where the provider said.
    usage: Option<(u32, u32)>,
    /// The model the provider says served it.
    model: Option<String>,
    /// Pieces of text received in a stream (0 for an answer read whole).
    pieces: u32,
    first_token_ms: f64,
}

/// Why a streamed answer could not be read.
enum StreamError {
    /// Reading it failed (a timeout, a connection lost, text that is not UTF-8).
    Read(std::io::Error),
    /// What was read is not a streamed chat completion, or the client went away.
    Failed(Failure),
}

impl StreamError {
    fn into_failure(self, unreadable: impl FnOnce(std::io::Error) -> Failure) -> Failure {
        match self {
            StreamError::Read(e) => unreadable(e),
            StreamError::Failed(f) => f,
        }
    }
}

/// The error a piece of a streamed answer carries, in any of the shapes servers use:
/// `{"error": {"message": ...}}`, `{"error": "..."}`, `{"object": "error", "message": ...}`.
fn stream_error(chunk: &serde_json::Value) -> Option<String> {
    let error = &chunk["error"];
    if let Some(message) = error["message"].as_str().or(error.as_str()) {
        return Some(message.to_owned());
    }
    if !error.is_null() {
        return Some(error.to_string().chars().take(300).collect());
    }
    (chunk["object"].as_str() == Some("error")).then(|| {
        chunk["message"]
            .as_str()
            .unwrap_or("(no message)")
            .to_owned()
    })
}

/// The usage object of an answer or of a streamed answer's last piece, if it has one.
fn usage(value: &serde_json::Value) -> Option<(u32, u32)> {
    let count = |field: &str| value[field].as_u64().map(|n| n.min(u32::MAX as u64) as u32);
    Some((count("prompt_tokens")?, count("completion_tokens")?))
}

fn finish_reason(value: &serde_json::Value) -> Option<FinishReason> {
    value.as_str().map(|reason| match reason {
        "length" => FinishReason::Length,
        _ => FinishReason::Stop,
    })
}

/// An answer sent whole: a chat completion object.
fn read_whole(name: &str, text: &str, started: Instant) -> Result<Answer, Failure> {
    let answer: serde_json::Value = serde_json::from_str(text).map_err(|_| {
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
    Ok(Answer {
        text: content.to_owned(),
        finish_reason: finish_reason(&choice["finish_reason"]).unwrap_or(FinishReason::Stop),
        usage: usage(&answer["usage"]),
        model: answer["model"].as_str().map(str::to_owned),
        // Nothing to count in an answer sent whole: without usage, its counts are unknown.
        pieces: 0,
        first_token_ms: started.elapsed().as_secs_f64() * 1000.0,
    })
}

/// An answer streamed as server-sent events: `data: <chunk>` lines, each chunk's
/// `choices[0].delta.content` a piece of the text, until `data: [DONE]`. Each piece goes
/// to `send` as it arrives.
fn read_stream(
    name: &str,
    mut reader: impl BufRead,
    started: Instant,
    send: &mut dyn FnMut(&str) -> bool,
) -> Result<Answer, StreamError> {
    let mut answer = Answer {
        text: String::new(),
        finish_reason: FinishReason::Stop,
        usage: None,
        model: None,
        pieces: 0,
        first_token_ms: 0.0,
    };
    let mut finished = false;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).map_err(StreamError::Read)? == 0 {
            break;
        }
        let line = line.trim_end();
        // Some servers end a failed stream with an `error:` line of their own.
        if let Some(error) = line.strip_prefix("error:") {
            let excerpt: String = error.trim().chars().take(300).collect();
            return Err(StreamError::Failed(failed(
                name,
                format!("its streamed answer ended in an error: {excerpt}"),
            )));
        }
        // Comments, event names and the blank lines between events carry nothing here.
        let Some(data) = line.strip_prefix("data:").map(str::trim_start) else {
            continue;
        };
        if data == "[DONE]" {
            finished = true;
            break;
        }
        let chunk: serde_json::Value = serde_json::from_str(data).map_err(|_| {
            let excerpt: String = data.chars().take(100).collect();
            StreamError::Failed(failed(
                name,
                format!("a piece of its streamed answer is not JSON: {excerpt:?}"),
            ))
        })?;
        if let Some(message) = stream_error(&chunk) {
            return Err(StreamError::Failed(failed(
                name,
                format!("its streamed answer ended in an error: {message}"),
            )));
        }
        if let Some(counts) = usage(&chunk["usage"]) {
            answer.usage = Some(counts);
        }
        if let Some(model) = chunk["model"].as_str() {
            answer.model = Some(model.to_owned());
        }
        let choice = &chunk["choices"][0];
        if let Some(reason) = finish_reason(&choice["finish_reason"]) {
            answer.finish_reason = reason;
            finished = true;
        }
        let piece = choice["delta"]["content"].as_str().unwrap_or("");
        if piece.is_empty() {
            continue;
        }
        if answer.pieces == 0 {
            answer.first_token_ms = started.elapsed().as_secs_f64() * 1000.0;
        }
        answer.pieces += 1;
        answer.text.push_str(piece);
        if !send(piece) {
            return Err(StreamError::Failed(client_gone()));
        }
    }
    if answer.pieces == 0 {
        answer.first_token_ms = started.elapsed().as_secs_f64() * 1000.0;
    }
    if !finished {
        return Err(StreamError::Failed(failed(
            name,
            "its streamed answer ended before it did (no finish reason, no [DONE])",
        )));
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    use super::*;

    /// A home of its own whose `providers.toml` names `lab`, a server on a loopback port that
    /// answers one request with `answer` (a whole HTTP response), taken as it is written.
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
        // Tests run in parallel in one process and share case names ("not-json"), and each
        // chat removes its home when it ends: a counter keeps every home its own.
        static HOMES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = HOMES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let home = std::env::temp_dir().join(format!(
            "gpu-broker-remote-{}-{n}-{case}",
            std::process::id()
        ));
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

    /// A streamed answer: server-sent events, one `data:` line each, then the connection
    /// closes.
    fn sse(events: &[&str]) -> Vec<u8> {
        let mut answer =
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
                .to_vec();
        for event in events {
            answer.extend_from_slice(format!("data: {event}\r\n\r\n").as_bytes());
        }
        answer
    }

    /// One chat to `lab` of `home`, streamed if `stream`; `send` gets the text.
    fn chat_with(
        home: &Path,
        stream: bool,
        send: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Completion, Failure> {
        let request = ChatRequest {
            model: "m".into(),
            messages: vec![broker_client::chat::Message {
                role: "user".into(),
                content: "héllo, 世界 🦀".into(),
            }],
            provider: Some("lab".into()),
            stream,
            ..ChatRequest::default()
        };
        let answer = Remote::default().chat(home, &request, send);
        let _ = std::fs::remove_dir_all(home);
        answer
    }

    fn chat(home: &Path) -> Result<Completion, Failure> {
        chat_with(home, false, &mut |_| true)
    }

    /// A piece of a streamed answer carrying `text`.
    fn piece(text: &str) -> String {
        serde_json::json!({
            "model": "m-7b",
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}],
        })
        .to_string()
    }

    /// The last piece, with a finish reason.
    const END: &str =
        r#"{"model": "m-7b", "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}"#;

    #[test]
    fn a_streamed_answer_is_passed_on_piece_by_piece() {
        let pieces = ["こん", "にちは", " 🦀", " cafe\u{301}"];
        let mut events: Vec<String> = pieces.iter().map(|p| piece(p)).collect();
        events.push(END.into());
        let with_usage = r#"{"model": "m-7b", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4}}"#;
        for (case, usage) in [("counted", Some(with_usage)), ("uncounted", None)] {
            let mut events: Vec<&str> = events.iter().map(String::as_str).collect();
            events.extend(usage);
            events.push("[DONE]");
            let mut got = Vec::new();
            let answer = chat_with(&lab_answering(sse(&events), case), true, &mut |p| {
                got.push(p.to_owned());
                true
            })
            .expect(case);
            assert_eq!(got, pieces, "{case}");
            assert_eq!(answer.text, pieces.concat(), "{case}");
            assert_eq!(answer.finish_reason, FinishReason::Length, "{case}");
            assert_eq!(answer.model, "m-7b", "{case}");
            let counts = (
                answer.prompt_tokens,
                answer.completion_tokens,
                answer.uncounted,
            );
            match usage {
                Some(_) => assert_eq!(counts, (9, 4, false)),
                // Without usage, the pieces are counted, and the answer says so.
                None => assert_eq!(counts, (0, 4, true)),
            }
        }
    }

    #[test]
    fn streams_that_are_not_chat_completions_fail_and_say_what_they_were() {
        let first = piece("un");
        let cases: [(&str, Vec<u8>, &str); 7] = [
            (
                "not-json",
                sse(&[&first, "<html>"]),
                "is not JSON: \"<html>\"",
            ),
            (
                "error-object",
                sse(&[
                    &first,
                    r#"{"object": "error", "message": "model overloaded"}"#,
                    "[DONE]",
                ]),
                "ended in an error: model overloaded",
            ),
            (
                "error-string",
                sse(&[&first, r#"{"error": "context exceeded"}"#, "[DONE]"]),
                "ended in an error: context exceeded",
            ),
            (
                "error-line",
                [sse(&[&first]), b"error: {\"code\": 500}\r\n\r\n".to_vec()].concat(),
                "ended in an error: {\"code\": 500}",
            ),
            (
                "error",
                sse(&[&first, r#"{"error": {"message": "out of memory 🦀"}}"#]),
                "ended in an error: out of memory 🦀",
            ),
            ("cut-short", sse(&[&first]), "ended before it did"),
            (
                "invalid-utf8",
                [sse(&[&first]), b"data: {\"x\": \"\xff\"}\r\n\r\n".to_vec()].concat(),
                "cannot read its answer",
            ),
        ];
        for (case, answer, says) in cases {
            let failure =
                chat_with(&lab_answering(answer, case), true, &mut |_| true).expect_err(case);
            assert_eq!(failure.code, ErrorCode::Failed, "{case}");
            assert!(
                failure.message.contains(says),
                "{case}: {}",
                failure.message
            );
        }
    }

    #[test]
    fn a_client_that_stops_listening_ends_the_stream() {
        let events = [piece("one"), piece("two"), END.into(), "[DONE]".into()];
        let events: Vec<&str> = events.iter().map(String::as_str).collect();
        let mut got = 0;
        let failure = chat_with(&lab_answering(sse(&events), "gone"), true, &mut |_| {
            got += 1;
            false
        })
        .expect_err("the client went away");
        assert_eq!((got, failure.message.as_str()), (1, "the client went away"));
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
