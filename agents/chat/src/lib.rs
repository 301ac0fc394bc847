//! chat: a multi-turn assistant. Every turn is a fresh process, so the conversation comes
//! back from the memory store: each question and answer is stored under `turn/<n>`, and
//! the last `turns` of them (agent.toml `[config]`) are sent with the next question.
//!
//! - `<question>`: answer it, in the context of the conversation so far
//! - `/history`: the conversation so far
//! - `/reset`: forget it
//!
//! `[config]`: `model` (which of `[llm] models`), `max_tokens`, `turns`, `system` (a
//! system message; the model's own default when absent).

use agent_sdk::llm::{self, Message};
use agent_sdk::{Agent, AgentError, Request, Response, chat, config, memory};

struct Chat;

const TURN: &str = "turn/";
/// Turns are numbered with zero padding so that key order is turn order.
const WIDTH: usize = 8;

/// One stored turn: the question, a NUL, the answer (neither contains NUL: questions are
/// refused with one, and models do not write it).
fn turns() -> Result<Vec<(String, String)>, AgentError> {
    let mut all = Vec::new();
    for entry in memory::entries(TURN, u32::MAX)? {
        let text = String::from_utf8_lossy(&entry.value).into_owned();
        let (question, answer) = text.split_once('\0').unwrap_or((text.as_str(), ""));
        all.push((question.to_owned(), answer.to_owned()));
    }
    Ok(all)
}

fn number(key: &str) -> u64 {
    key.get(TURN.len()..)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn setting(key: &str, default: u32) -> Result<u32, AgentError> {
    match config::get(key) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| {
            AgentError::Failed(format!(
                "[config] {key} = {v:?} is not a whole number; fix the agent's agent.toml"
            ))
        }),
    }
}

impl Agent for Chat {
    fn handle(request: Request) -> Result<Response, AgentError> {
        let question = request.text()?.trim();
        match question {
            "" => {
                return Err(AgentError::InvalidInput(
                    "ask something: `spawner run chat <question>` (`/history`, `/reset`)".into(),
                ));
            }
            "/reset" => {
                let old = memory::entries(TURN, u32::MAX)?;
                for entry in &old {
                    memory::delete(&entry.key)?;
                }
                return Ok(Response::text(format!(
                    "forgot {} turns; the next question starts a new conversation\n",
                    old.len()
                )));
            }
            "/history" => {
                let mut out = String::new();
                for (q, a) in turns()? {
                    out.push_str(&format!("> {q}\n{a}\n\n"));
                }
                if out.is_empty() {
                    out.push_str("no conversation yet\n");
                }
                return Ok(Response::text(out));
            }
            q if q.contains('\0') => {
                return Err(AgentError::InvalidInput(
                    "a question may not contain NUL characters".into(),
                ));
            }
            _ => {}
        }
        let model = config::get("model").unwrap_or_else(|| "smollm2-135m".into());
        let keep = setting("turns", 6)? as usize;
        let mut messages: Vec<Message> = Vec::new();
        if let Some(system) = config::get("system") {
            messages.push(chat::system(system));
        }
        let history = turns()?;
        for (q, a) in &history[history.len().saturating_sub(keep)..] {
            messages.push(chat::user(q.as_str()));
            messages.push(chat::assistant(a.as_str()));
        }
        messages.push(chat::user(question));
        let mut params = chat::params();
        params.max_tokens = Some(setting("max_tokens", 160)?);
        let completion = llm::chat(&model, &messages, &params)?;
        let answer = completion.text.trim();

        let next = memory::entries(TURN, u32::MAX)?
            .last()
            .map_or(1, |e| number(&e.key) + 1);
        memory::put(
            &format!("{TURN}{next:0WIDTH$}"),
            format!("{question}\0{answer}").as_bytes(),
        )?;
        Ok(Response::text(format!("{answer}\n")))
    }
}

agent_sdk::export!(Chat);
