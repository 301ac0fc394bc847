//! tool-agent: a real agent loop. Given a task, it asks the LLM with the allowed tools
//! described (`agent_sdk::tool_use`), runs the tool calls the model asks for through the
//! host, feeds the results back, and answers, within `max_steps` chats. Its answer ends
//! with a line per tool call made (what was called, and what it returned), so that an
//! answer can be checked against the tool even when a small model garbles it.
//!
//! The loop is correct with any model: what is not a tool call is the answer, an unknown
//! tool or bad arguments come back to the model as the tool's error, a call repeated
//! verbatim ends the loop, and a run out of steps answers with the tools' results.

use agent_sdk::chat;
use agent_sdk::tool_use::{self, Call, Conversation, Example};
use agent_sdk::tools::{ToolError, ToolResult};
use agent_sdk::{Agent, AgentError, Request, Response, config, llm, tools};

struct ToolAgent;

/// The longest tool result shown in the answer's evidence lines, in characters.
const SHOWN_RESULT_CHARS: usize = 300;

fn number(key: &str, default: u32) -> Result<u32, AgentError> {
    match config::get(key) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| AgentError::Failed(format!("config.{key} = {v:?} is not a number"))),
    }
}

/// One line of evidence for a call.
fn evidence(call: &Call, result: &Result<ToolResult, ToolError>) -> String {
    let outcome = match result {
        Ok(r) => tool_use::truncate(
            r.structured.as_deref().unwrap_or(&r.text),
            SHOWN_RESULT_CHARS,
        ),
        Err(e) => tool_use::describe_error(e),
    };
    format!(
        "[{}/{} {} -> {}]",
        call.server,
        call.tool,
        call.arguments,
        outcome.replace('\n', " ")
    )
}

impl Agent for ToolAgent {
    fn handle(request: Request) -> Result<Response, AgentError> {
        let task = request.text()?.trim();
        if task.is_empty() {
            return Err(AgentError::InvalidInput(
                "give a task, e.g. `What time is it in Tokyo?`".into(),
            ));
        }
        let model = config::get("model").unwrap_or_else(|| "smollm2-135m".into());
        let max_steps = number("max_steps", 4)?.max(1);
        let examples = match config::get("examples") {
            Some(json) => Example::parse_list(&json)
                .map_err(|e| AgentError::Failed(format!("config.examples: {e}")))?,
            None => Vec::new(),
        };
        let offered = tools::list()?;
        let mut params = chat::params();
        params.max_tokens = Some(number("max_tokens", 120)?);

        let mut talk = Conversation::new(&offered, &examples);
        talk.task(task);
        let mut made: Vec<(Call, Result<ToolResult, ToolError>)> = Vec::new();
        let mut answer = None;
        for _ in 0..max_steps {
            let said = llm::chat(&model, talk.messages(), &params)?.text;
            match tool_use::parse_call(&said, &offered) {
                Some(call) if made.iter().any(|(c, _)| *c == call) => break,
                Some(call) => {
                    let result = call.run();
                    talk.called(&said, &call, &result);
                    made.push((call, result));
                }
                None if said.trim().is_empty() => talk.remind(&said),
                None => {
                    answer = Some(said.trim().to_owned());
                    break;
                }
            }
        }
        let mut out = answer.unwrap_or_else(|| {
            if made.is_empty() {
                format!("No answer within {max_steps} steps.")
            } else {
                format!("No answer within {max_steps} steps; the tools returned:")
            }
        });
        for (call, result) in &made {
            out.push('\n');
            out.push_str(&evidence(call, result));
        }
        Ok(Response::text(out))
    }
}

agent_sdk::export!(ToolAgent);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evidence_lines_show_the_call_and_a_cut_result_on_one_line() {
        let call = Call {
            server: "time".into(),
            tool: "get_current_time".into(),
            arguments: r#"{"timezone":"Asia/Tokyo"}"#.into(),
        };
        let long = format!("line one\n{}", "時".repeat(400));
        let line = evidence(
            &call,
            &Ok(ToolResult {
                text: long,
                structured: None,
            }),
        );
        assert!(
            line.starts_with(r#"[time/get_current_time {"timezone":"Asia/Tokyo"} -> line one "#)
        );
        assert!(line.contains("more characters]") && !line.contains('\n'));
        let failed = evidence(&call, &Err(ToolError::Timeout("no answer".into())));
        assert!(failed.ends_with("-> timeout: no answer]"), "{failed}");
    }
}
