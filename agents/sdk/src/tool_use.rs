//! The glue between [`crate::tools`] and [`crate::llm`]: describe the tools to a model,
//! read the tool call it answers with, and feed the result back.
//!
//! The format is one JSON object on a line, `{"tool": "<name>", "arguments": {...}}`,
//! which every chat model can write; worked examples (few-shot turns) teach it to models
//! too small to follow a description alone (the embedded SmolLM2-135M among them).
//! [`parse_call`] is forgiving, as a small model's output needs: it finds the first JSON
//! object in the text that names a known tool (in prose, in a code fence, in OpenAI's
//! `{"function": {"name", "arguments"}}` shape, with `args` or `parameters`, with the
//! arguments as a JSON string, with `server/tool`, in another case), and takes a bare
//! argument object when there is only one tool it can be for, and drops arguments the
//! tool's schema does not declare. Anything else is an answer, not a call.
//!
//! ```ignore
//! let tools = agent_sdk::tools::list()?;
//! let mut talk = Conversation::new(&tools, &examples);
//! talk.task("What time is it in Tokyo?");
//! let text = llm::chat(model, talk.messages(), &params)?.text;
//! match parse_call(&text, &tools) {
//!     Some(call) => { let result = call.run(); talk.called(&text, &call, &result); }
//!     None => return Ok(Response::text(text)),
//! }
//! ```

use serde_json::{Map, Value};

use crate::chat::{assistant, system, user};
use crate::llm::Message;
use crate::tools::{Tool, ToolError, ToolResult};

/// A tool call read from a model's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The tool's server.
    pub server: String,
    /// The tool's name there.
    pub tool: String,
    /// Its arguments, a JSON object as text.
    pub arguments: String,
}

impl Call {
    /// Make the call through the host.
    pub fn run(&self) -> Result<ToolResult, ToolError> {
        crate::tools::call(&self.server, &self.tool, &self.arguments)
    }
}

/// A worked example: a task, the call that serves it, what the tool returned, and the
/// answer. Given to the model as earlier turns of the conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// What was asked.
    pub task: String,
    /// The call, as the model should write it (one JSON line).
    pub call: String,
    /// What the tool returned.
    pub result: String,
    /// The answer made of it.
    pub answer: String,
}

impl Example {
    /// Examples from a JSON array of `{"task", "call", "result", "answer"}` objects (as
    /// an agent keeps them in its `[config]`); `call` may be an object or its text.
    pub fn parse_list(json: &str) -> Result<Vec<Example>, String> {
        let list: Vec<Value> = serde_json::from_str(json)
            .map_err(|e| format!("examples are not a JSON array: {e}"))?;
        list.iter()
            .enumerate()
            .map(|(i, item)| {
                let field = |name: &str| match item.get(name) {
                    Some(Value::String(s)) => Ok(s.clone()),
                    Some(v @ Value::Object(_)) => Ok(v.to_string()),
                    _ => Err(format!("example {i} has no text {name:?}")),
                };
                Ok(Example {
                    task: field("task")?,
                    call: field("call")?,
                    result: field("result")?,
                    answer: field("answer")?,
                })
            })
            .collect()
    }
}

/// The longest tool result fed back to the model, in characters (a small model's context
/// is short); the rest is cut with a note.
pub const MAX_RESULT_CHARS: usize = 2000;

/// The name a model should use for `tool`: its own, or `server/name` when another server
/// has a tool of that name.
pub fn name_for(tool: &Tool, tools: &[Tool]) -> String {
    if tools
        .iter()
        .any(|t| t.name == tool.name && t.server != tool.server)
    {
        format!("{}/{}", tool.server, tool.name)
    } else {
        tool.name.clone()
    }
}

/// One line for a tool: its name, its arguments with their types, and the first sentence
/// of its description. `get_current_time {"timezone": string} - Get current time...`
pub fn signature(tool: &Tool, tools: &[Tool]) -> String {
    let schema: Value = serde_json::from_str(&tool.input_schema).unwrap_or(Value::Null);
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let arguments = schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|properties| {
            properties
                .iter()
                .map(|(name, p)| {
                    let kind = match p.get("type") {
                        Some(Value::String(t)) => t.clone(),
                        Some(Value::Array(ts)) => ts
                            .iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join("|"),
                        _ => "any".into(),
                    };
                    let optional = if required.contains(&name.as_str()) {
                        ""
                    } else {
                        " (optional)"
                    };
                    format!("\"{name}\": {kind}{optional}")
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let description = first_sentence(&tool.description);
    let mut line = format!("{} {{{arguments}}}", name_for(tool, tools));
    if !description.is_empty() {
        line.push_str(" - ");
        line.push_str(description);
    }
    line
}

/// The first sentence (or line) of `text`, at most 160 characters.
fn first_sentence(text: &str) -> &str {
    let text = text.trim();
    let mut end = text.len();
    for (i, c) in text.char_indices() {
        if c == '\n' || (c == '.' && text[i + 1..].starts_with([' ', '\n'])) {
            end = i;
            break;
        }
    }
    let sentence = &text[..end];
    match sentence.char_indices().nth(160) {
        Some((i, _)) => &sentence[..i],
        None => sentence,
    }
}

/// `text` cut to `max` characters, with a note of how much was left out.
pub fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some((i, _)) => format!(
            "{} [... {} more characters]",
            &text[..i],
            text[i..].chars().count()
        ),
    }
}

/// A tool error's kind and message, in one line for a model or a person.
pub fn describe_error(e: &ToolError) -> String {
    let (kind, message) = match e {
        ToolError::NotAllowed(m) => ("not allowed", m),
        ToolError::Unavailable(m) => ("unavailable", m),
        ToolError::InvalidArguments(m) => ("invalid arguments", m),
        ToolError::ConsentRequired(m) => ("consent required", m),
        ToolError::Failed(m) => ("failed", m),
        ToolError::Timeout(m) => ("timeout", m),
    };
    format!("{kind}: {message}")
}

/// A conversation in which a model may call tools.
#[derive(Debug, Clone)]
pub struct Conversation {
    catalog: String,
    messages: Vec<Message>,
}

const INSTRUCTION: &str = "You answer a task. To use a tool, answer with only one line of JSON: \
    {\"tool\": \"<name>\", \"arguments\": {...}}. When a tool's result is given, answer the task \
    in one sentence from it, or call another tool.";

const AFTER_RESULT: &str = "Answer the task in one sentence, or call another tool.";

impl Conversation {
    /// A conversation offering `tools`, with `examples` as its earlier turns.
    pub fn new(tools: &[Tool], examples: &[Example]) -> Conversation {
        let catalog = tools
            .iter()
            .map(|t| signature(t, tools))
            .collect::<Vec<_>>()
            .join("\n");
        let mut talk = Conversation {
            catalog,
            messages: vec![system(INSTRUCTION)],
        };
        for example in examples {
            talk.task(&example.task);
            talk.messages.push(assistant(example.call.clone()));
            talk.messages.push(user(format!(
                "Result: {}\n\n{AFTER_RESULT}",
                example.result
            )));
            talk.messages.push(assistant(example.answer.clone()));
        }
        talk
    }

    /// Ask `task`.
    pub fn task(&mut self, task: &str) {
        self.messages
            .push(user(format!("Tools:\n{}\n\nTask: {task}", self.catalog)));
    }

    /// The model answered `said`, which asked for `call`, and the host returned `result`.
    pub fn called(&mut self, said: &str, call: &Call, result: &Result<ToolResult, ToolError>) {
        self.messages.push(assistant(said.trim().to_owned()));
        let fed = match result {
            Ok(r) => format!(
                "Result: {}",
                truncate(r.structured.as_deref().unwrap_or(&r.text), MAX_RESULT_CHARS)
            ),
            Err(e) => format!(
                "Error from {}: {}",
                call.tool,
                truncate(&describe_error(e), MAX_RESULT_CHARS)
            ),
        };
        self.messages.push(user(format!("{fed}\n\n{AFTER_RESULT}")));
    }

    /// Ask once more, after an answer that was neither a call nor usable.
    pub fn remind(&mut self, said: &str) {
        self.messages.push(assistant(said.trim().to_owned()));
        self.messages.push(user(AFTER_RESULT.to_owned()));
    }

    /// The messages to send.
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }
}

/// The first tool call in a model's answer, or `None` when it is an answer.
pub fn parse_call(text: &str, tools: &[Tool]) -> Option<Call> {
    for (at, c) in text.char_indices() {
        if c != '{' {
            continue;
        }
        let mut values = serde_json::Deserializer::from_str(&text[at..]).into_iter::<Value>();
        if let Some(Ok(Value::Object(object))) = values.next()
            && let Some(call) = from_object(&object, tools)
        {
            return Some(call);
        }
    }
    None
}

fn from_object(object: &Map<String, Value>, tools: &[Tool]) -> Option<Call> {
    // {"tool_calls": [{...}]}: the first of them.
    if let Some(Value::Array(calls)) = object.get("tool_calls") {
        return calls.iter().find_map(|c| match c {
            Value::Object(o) => from_object(o, tools),
            _ => None,
        });
    }
    // {"function": {"name": ..., "arguments": ...}} (OpenAI's shape).
    if let Some(Value::Object(function)) = object.get("function") {
        return from_object(function, tools);
    }
    let name = ["tool", "name", "tool_name", "function"]
        .iter()
        .find_map(|key| object.get(*key).and_then(Value::as_str));
    let arguments = ["arguments", "args", "parameters", "input", "params"]
        .iter()
        .find_map(|key| object.get(*key));
    let arguments = match arguments {
        None => Map::new(),
        Some(Value::Object(a)) => a.clone(),
        Some(Value::String(s)) => match serde_json::from_str(s) {
            Ok(Value::Object(a)) => a,
            _ => return None,
        },
        Some(Value::Null) => Map::new(),
        Some(_) => return None,
    };
    let tool = match name {
        Some(name) => find(name, tools)?,
        // A bare argument object: the one tool whose arguments these are.
        None => {
            let mut fits = tools.iter().filter(|t| takes(t, object));
            match (fits.next(), fits.next()) {
                (Some(only), None) if !object.is_empty() => {
                    return Some(Call {
                        server: only.server.clone(),
                        tool: only.name.clone(),
                        arguments: Value::Object(object.clone()).to_string(),
                    });
                }
                _ => return None,
            }
        }
    };
    Some(Call {
        server: tool.server.clone(),
        tool: tool.name.clone(),
        arguments: Value::Object(declared_only(tool, arguments)).to_string(),
    })
}

/// The arguments the tool's schema declares, when it declares any and takes no others: a
/// small model adds keys of its own invention, which a strict server would refuse.
fn declared_only(tool: &Tool, mut arguments: Map<String, Value>) -> Map<String, Value> {
    let schema: Value = serde_json::from_str(&tool.input_schema).unwrap_or(Value::Null);
    let open = schema
        .get("additionalProperties")
        .is_some_and(|a| a != &Value::Bool(false));
    if let Some(properties) = schema.get("properties").and_then(Value::as_object)
        && !properties.is_empty()
        && !open
    {
        arguments.retain(|key, _| properties.contains_key(key));
    }
    arguments
}

/// The tool a model meant by `name`: exact, `server/name` (or `.`, `__`), then ignoring
/// case and `-` against `_`.
fn find<'a>(name: &str, tools: &'a [Tool]) -> Option<&'a Tool> {
    let name = name.trim();
    let split = ["/", ".", "__", ":"]
        .iter()
        .find_map(|sep| name.split_once(sep));
    let loose = |s: &str| s.to_lowercase().replace('-', "_");
    tools
        .iter()
        .find(|t| t.name == name)
        .or_else(|| {
            split.and_then(|(server, tool)| {
                tools.iter().find(|t| t.server == server && t.name == tool)
            })
        })
        .or_else(|| tools.iter().find(|t| loose(&t.name) == loose(name)))
        .or_else(|| {
            split.and_then(|(_, tool)| tools.iter().find(|t| loose(&t.name) == loose(tool)))
        })
}

/// Whether every key of `arguments` is a property of `tool`'s schema and its required
/// ones are there.
fn takes(tool: &Tool, arguments: &Map<String, Value>) -> bool {
    let schema: Value = serde_json::from_str(&tool.input_schema).unwrap_or(Value::Null);
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
        return false;
    };
    let required_present = schema
        .get("required")
        .and_then(Value::as_array)
        .is_none_or(|r| {
            r.iter()
                .filter_map(Value::as_str)
                .all(|k| arguments.contains_key(k))
        });
    required_present && arguments.keys().all(|k| properties.contains_key(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(server: &str, name: &str, schema: &str) -> Tool {
        Tool {
            server: server.into(),
            name: name.into(),
            description: "Get current time in a specific timezone. Uses IANA names.".into(),
            input_schema: schema.into(),
        }
    }

    fn tools() -> Vec<Tool> {
        vec![
            tool(
                "time",
                "get_current_time",
                r#"{"type":"object","properties":{"timezone":{"type":"string"}},"required":["timezone"]}"#,
            ),
            tool(
                "time",
                "convert_time",
                r#"{"type":"object","properties":{"source_timezone":{"type":"string"},"time":{"type":"string"},"target_timezone":{"type":"string"}},"required":["source_timezone","time","target_timezone"]}"#,
            ),
            tool(
                "git",
                "git_log",
                r#"{"type":"object","properties":{"repo_path":{"type":"string"},"max_count":{"type":"integer"}},"required":["repo_path"]}"#,
            ),
        ]
    }

    fn call(text: &str) -> Option<(String, String, Value)> {
        parse_call(text, &tools()).map(|c| {
            let args = serde_json::from_str(&c.arguments).expect("arguments are JSON");
            (c.server, c.tool, args)
        })
    }

    #[test]
    fn calls_are_found_in_the_shapes_weak_models_write() {
        let tokyo = Some((
            "time".to_owned(),
            "get_current_time".to_owned(),
            serde_json::json!({"timezone": "Asia/Tokyo"}),
        ));
        for text in [
            r#"{"tool": "get_current_time", "arguments": {"timezone": "Asia/Tokyo"}}"#,
            "Sure! Here is the call:\n```json\n{\"tool\": \"get_current_time\", \"arguments\": {\"timezone\": \"Asia/Tokyo\"}}\n```",
            r#"{"name": "time/get_current_time", "parameters": {"timezone": "Asia/Tokyo"}}"#,
            r#"{"function": {"name": "Get-Current-Time", "arguments": "{\"timezone\": \"Asia/Tokyo\"}"}}"#,
            r#"{"tool_calls": [{"function": {"name": "get_current_time", "arguments": {"timezone": "Asia/Tokyo"}}}]}"#,
            r#"I will use {"timezone": "Asia/Tokyo"}"#,
            r#"{"broken": } then {"tool": "time.get_current_time", "args": {"timezone": "Asia/Tokyo"}}"#,
            // Keys the schema does not declare are dropped.
            r#"{"tool": "get_current_time", "arguments": {"timezone": "Asia/Tokyo", "is_dst": false}}"#,
        ] {
            assert_eq!(call(text), tokyo, "{text}");
        }
    }

    #[test]
    fn answers_and_unknown_tools_are_not_calls() {
        for text in [
            "It is 13:10 in Tokyo.",
            r#"{"tool": "launch_rockets", "arguments": {}}"#,
            r#"{"tool": "get_current_time", "arguments": [1, 2]}"#,
            // Fits no single tool: `time` alone is convert_time's, but its required
            // arguments are missing.
            r#"{"time": "12:00"}"#,
            "{ not json at all",
            "東京は今 {午後} です",
            "",
        ] {
            assert_eq!(call(text), None, "{text}");
        }
    }

    #[test]
    fn signatures_name_arguments_types_and_the_first_sentence() {
        let all = tools();
        assert_eq!(
            signature(&all[2], &all),
            "git_log {\"max_count\": integer (optional), \"repo_path\": string} - Get current time in a specific timezone"
        );
        // A name two servers share is given with its server.
        let mut twice = all.clone();
        twice.push(tool("clock", "get_current_time", "{}"));
        assert_eq!(name_for(&twice[0], &twice), "time/get_current_time");
    }

    #[test]
    fn examples_parse_and_results_are_cut_on_character_boundaries() {
        let examples = Example::parse_list(
            r#"[{"task": "Time in Berlin?", "call": {"tool": "get_current_time", "arguments": {"timezone": "Europe/Berlin"}}, "result": "{}", "answer": "05:10."}]"#,
        )
        .expect("valid");
        assert_eq!(examples.len(), 1);
        assert!(examples[0].call.contains("Europe/Berlin"));
        assert!(Example::parse_list(r#"[{"task": "x"}]"#).is_err());
        let cut = truncate("日本語のテキスト", 3);
        assert_eq!(cut, "日本語 [... 5 more characters]");
        assert_eq!(truncate("short", 10), "short");
    }
}
