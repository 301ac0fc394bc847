//! notes: remembers notes across runs. Each run is a fresh process, so the notes can only
//! come back from the memory store.
//!
//! - `add <text>` (or just `<text>`): append a note
//! - `list`: every note, numbered, oldest first
//! - `count`: how many notes there are

use agent_sdk::{Agent, AgentError, Request, Response, memory};

struct Notes;

const KIND: &str = "note";
const PAGE: u32 = 500;

fn all_notes() -> Result<Vec<String>, AgentError> {
    let mut notes = Vec::new();
    let mut after = 0;
    loop {
        let page = memory::read_events(after, PAGE)?;
        let full = page.len() == PAGE as usize;
        for event in page {
            if let Some(seq) = event.seq {
                after = seq;
            }
            if event.kind == KIND {
                notes.push(String::from_utf8_lossy(&event.payload).into_owned());
            }
        }
        if !full {
            return Ok(notes);
        }
    }
}

impl Agent for Notes {
    fn handle(request: Request) -> Result<Response, AgentError> {
        let text = request.text()?.trim();
        match text {
            "" => Err(AgentError::InvalidInput(
                "nothing to do: send `add <text>`, `list` or `count`".into(),
            )),
            "list" => {
                let notes = all_notes()?;
                let mut out = String::new();
                for (i, note) in notes.iter().enumerate() {
                    out.push_str(&format!("{}. {note}\n", i + 1));
                }
                Ok(Response::text(out))
            }
            "count" => Ok(Response::text(format!("{}\n", all_notes()?.len()))),
            _ => {
                let note = text.strip_prefix("add ").unwrap_or(text).trim();
                memory::append_event(KIND, note.as_bytes())?;
                agent_sdk::log::info(&format!("noted {} bytes", note.len()));
                Ok(Response::text(format!("noted: {note}\n")))
            }
        }
    }
}

agent_sdk::export!(Notes);
