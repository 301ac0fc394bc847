//! Claude Code hooks: a JSON event on stdin; exit 0 with a JSON decision on stdout, or
//! exit 2 with the reason on stderr to block.
//! <https://docs.anthropic.com/en/docs/claude-code/hooks>

use std::path::{Path, PathBuf};

use agent_contract::hook::{
    AssistantDetails, AssistantEvent, Decision, FileChange, HookEvent, Verdict,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{FailPolicy, HookResult, Reply};

/// Events whose hooks may block with `"decision": "block"`. (`PreToolUse` and
/// `PermissionRequest` have their own decisions; other events cannot be blocked.)
const BLOCKABLE: &[&str] = &["PostToolUse", "UserPromptSubmit", "Stop", "SubagentStop"];

/// Events whose hooks take a tool matcher in the settings (the others ignore one).
pub const TOOL_EVENTS: &[&str] = &["PreToolUse", "PostToolUse", "PermissionRequest"];

/// What the reply depends on besides the verdict: the event's name, and whether a Stop
/// hook is already continuing the conversation (`stop_hook_active`): blocking again
/// would keep Claude from ever stopping, the loop the hook documentation warns of.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFacts {
    /// `hook_event_name`.
    pub name: String,
    /// `stop_hook_active` (Stop and SubagentStop).
    pub stop_hook_active: bool,
}

/// The fields of a hook event this adapter reads; others are ignored, so events and
/// fields added by later versions pass through.
#[derive(Debug, Deserialize)]
struct WireEvent {
    hook_event_name: String,
    #[serde(default)]
    session_id: String,
    #[serde(default)]
    cwd: String,
    tool_name: Option<String>,
    tool_input: Option<Value>,
    prompt: Option<String>,
    #[serde(default)]
    stop_hook_active: bool,
    permission_mode: Option<String>,
    transcript_path: Option<String>,
    tool_use_id: Option<String>,
    tool_response: Option<Value>,
    message: Option<String>,
    trigger: Option<String>,
    custom_instructions: Option<String>,
    source: Option<String>,
    reason: Option<String>,
}

/// A Claude Code event, normalized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// The event for the agent (its `event` is `hook_event_name`).
    pub event: HookEvent,
    /// The event's `cwd`, when it names a directory.
    pub work_dir: Option<PathBuf>,
    /// What the reply depends on.
    pub facts: EventFacts,
}

/// Whether `input` looks like a Claude Code event (for `--protocol auto`).
pub fn looks_like_event(input: &[u8]) -> bool {
    serde_json::from_slice::<Value>(input)
        .ok()
        .is_some_and(|v| v.get("hook_event_name").is_some_and(Value::is_string))
}

/// Parse a hook event from `input`.
pub fn parse(input: &[u8]) -> Result<Parsed, String> {
    if input.iter().all(u8::is_ascii_whitespace) {
        return Err("no hook event on standard input (expected Claude Code's JSON)".into());
    }
    let wire: WireEvent = serde_json::from_slice(input).map_err(|e| {
        format!("standard input is not a Claude Code hook event: {e} (expected a JSON object with hook_event_name)")
    })?;
    let cwd = Path::new(&wire.cwd);
    let work_dir = (!wire.cwd.is_empty() && cwd.is_dir()).then(|| cwd.to_owned());
    let writes = match (&wire.tool_name, &wire.tool_input) {
        (Some(tool), Some(input)) => tool_writes(tool, input, cwd),
        _ => Vec::new(),
    };
    Ok(Parsed {
        work_dir,
        facts: EventFacts {
            name: wire.hook_event_name.clone(),
            stop_hook_active: wire.stop_hook_active,
        },
        event: HookEvent::Assistant(AssistantEvent {
            event: wire.hook_event_name,
            session_id: wire.session_id,
            cwd: wire.cwd,
            tool_name: wire.tool_name,
            tool_input: wire.tool_input.map(|v| v.to_string()),
            writes,
            prompt: wire.prompt,
            details: Box::new(AssistantDetails {
                permission_mode: wire.permission_mode,
                transcript_path: wire.transcript_path,
                tool_use_id: wire.tool_use_id,
                tool_response: wire.tool_response.map(|v| v.to_string()),
                stop_hook_active: wire.stop_hook_active,
                message: wire.message,
                trigger: wire.trigger,
                custom_instructions: wire.custom_instructions,
                source: wire.source,
                reason: wire.reason,
            }),
        }),
    })
}

/// What a tool call would write (or, for Bash, run), per file. Edits are numbered from
/// the line where their old text is found in the file, when it can be read.
fn tool_writes(tool: &str, input: &Value, cwd: &Path) -> Vec<FileChange> {
    let text = |key: &str| input.get(key).and_then(Value::as_str);
    let path = text("file_path")
        .or_else(|| text("notebook_path"))
        .unwrap_or("");
    let shown = shown_path(path, cwd);
    match tool {
        "Write" => text("content")
            .map(|c| vec![FileChange::whole_text(shown, c, 1)])
            .unwrap_or_default(),
        // An Edit is a MultiEdit of one; the file is read once for all of them.
        "Edit" | "MultiEdit" => {
            let edits = if tool == "Edit" {
                std::slice::from_ref(input)
            } else {
                input
                    .get("edits")
                    .and_then(Value::as_array)
                    .map_or(&[][..], Vec::as_slice)
            };
            let content = std::fs::read_to_string(cwd.join(path)).ok();
            edits
                .iter()
                .filter_map(|e| {
                    let new = e.get("new_string")?.as_str()?;
                    let old = e.get("old_string").and_then(Value::as_str).unwrap_or("");
                    Some(FileChange::whole_text(
                        shown.clone(),
                        new,
                        edit_line(content.as_deref(), old),
                    ))
                })
                .collect()
        }
        "NotebookEdit" => text("new_source")
            .map(|c| vec![FileChange::whole_text(shown, c, 1)])
            .unwrap_or_default(),
        "Bash" => text("command")
            .map(|c| vec![FileChange::whole_text("(command)", c, 1)])
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// `path` relative to `cwd` when it is inside it, as written otherwise.
fn shown_path(path: &str, cwd: &Path) -> String {
    Path::new(path)
        .strip_prefix(cwd)
        .ok()
        .filter(|p| !p.as_os_str().is_empty() && !cwd.as_os_str().is_empty())
        .map_or_else(|| path.to_owned(), |p| p.display().to_string())
}

/// The line where `old` starts in the file's `content`, or 1.
fn edit_line(content: Option<&str>, old: &str) -> u32 {
    if old.is_empty() {
        return 1;
    }
    content
        .and_then(|content| {
            let at = content.find(old)?;
            u32::try_from(content[..at].matches('\n').count() + 1).ok()
        })
        .unwrap_or(1)
}

/// The reply for `facts`' event.
pub fn reply(facts: &EventFacts, agent: &str, result: HookResult, fail: FailPolicy) -> Reply {
    let event = facts.name.as_str();
    let event_shown = if event.is_empty() {
        "hook event"
    } else {
        event
    };
    let (verdict, output) = match result {
        HookResult::Failed { what, .. } => {
            return match fail {
                FailPolicy::Open => Reply {
                    stdout: json_line(json!({
                        "systemMessage": format!(
                            "spawner hook: {agent} failed, so this {event_shown} was allowed (fail-open): {what}"
                        )
                    })),
                    ..Reply::default()
                },
                FailPolicy::Closed => Reply {
                    stderr: format!(
                        "spawner hook: {agent} failed, so this {event_shown} was blocked (fail-closed): {what}\n"
                    ),
                    exit_code: 2,
                    ..Reply::default()
                },
            };
        }
        HookResult::Decided { verdict, output } => (verdict, output),
    };
    // The agent's output has no place in the protocol: standard output is the decision.
    drop(output);
    let mut answer = Map::new();
    let mut system_message = verdict.message.clone();
    let reason = verdict
        .reason
        .clone()
        .unwrap_or_else(|| format!("decided by {agent}"));
    match (event, verdict.decision) {
        (_, Decision::Pass) => {}
        ("PreToolUse", decision) => {
            let decision = match decision {
                Decision::Allow => "allow",
                Decision::Ask => "ask",
                _ => "deny",
            };
            answer.insert(
                "hookSpecificOutput".into(),
                json!({
                    "hookEventName": "PreToolUse",
                    "permissionDecision": decision,
                    "permissionDecisionReason": reason,
                }),
            );
        }
        // The permission dialog: allow or deny for the user; `ask` leaves the dialog.
        ("PermissionRequest", Decision::Allow | Decision::Deny) => {
            let decision = if verdict.decision == Decision::Allow {
                json!({"behavior": "allow"})
            } else {
                json!({"behavior": "deny", "message": reason})
            };
            answer.insert(
                "hookSpecificOutput".into(),
                json!({"hookEventName": "PermissionRequest", "decision": decision}),
            );
        }
        // The dialog itself asks the user.
        ("PermissionRequest", Decision::Ask) => {}
        (_, Decision::Allow) => {}
        // Claude is already continuing because of a Stop hook: another block would never
        // let it stop. Say what the agent objected to instead.
        ("Stop" | "SubagentStop", Decision::Deny | Decision::Ask) if facts.stop_hook_active => {
            let note = format!(
                "{agent} objected again, but {event_shown} is not blocked twice in a row (stop_hook_active): {reason}"
            );
            add_line(&mut system_message, note);
        }
        (e, Decision::Deny | Decision::Ask) if BLOCKABLE.contains(&e) => {
            answer.insert("decision".into(), "block".into());
            answer.insert("reason".into(), reason.into());
        }
        // This event cannot be blocked: say what the agent objected to.
        (_, Decision::Deny | Decision::Ask) => {
            let note = format!("{agent} objected ({event_shown} cannot be blocked): {reason}");
            add_line(&mut system_message, note);
        }
    }
    if let Some(note) = apply_advice(&mut answer, event, &verdict) {
        add_line(&mut system_message, note);
    }
    if let Some(m) = system_message {
        answer.insert("systemMessage".into(), m.into());
    }
    Reply {
        stdout: if answer.is_empty() {
            Vec::new()
        } else {
            json_line(Value::Object(answer))
        },
        ..Reply::default()
    }
}

/// Add `line` to the `systemMessage` being built.
fn add_line(message: &mut Option<String>, line: String) {
    *message = Some(match message.take() {
        Some(m) => format!("{m}\n{line}"),
        None => line,
    });
}

/// Events whose hooks may add to the assistant's context (`additionalContext`).
const CONTEXT_EVENTS: &[&str] = &[
    "UserPromptSubmit",
    "SessionStart",
    "PreToolUse",
    "PostToolUse",
];

/// Put the verdict's advice into `answer` where `event` takes it; a note when some of it
/// could not be used.
fn apply_advice(answer: &mut Map<String, Value>, event: &str, verdict: &Verdict) -> Option<String> {
    if let Some(reason) = &verdict.stop {
        answer.insert("continue".into(), false.into());
        answer.insert("stopReason".into(), reason.clone().into());
    }
    if verdict.suppress_output {
        answer.insert("suppressOutput".into(), true.into());
    }
    fn specific<'a>(answer: &'a mut Map<String, Value>, event: &str) -> &'a mut Value {
        answer
            .entry("hookSpecificOutput")
            .or_insert_with(|| json!({ "hookEventName": event }))
    }
    if let Some(context) = &verdict.context
        && CONTEXT_EVENTS.contains(&event)
    {
        specific(answer, event)["additionalContext"] = context.clone().into();
    }
    let text = verdict.updated_input.as_ref()?;
    let input = match serde_json::from_str::<Value>(text) {
        Ok(input @ Value::Object(_)) => input,
        _ => return Some("the hook's updated tool input is not a JSON object; ignored".into()),
    };
    match (event, verdict.decision) {
        ("PreToolUse", Decision::Allow | Decision::Ask) => {
            specific(answer, event)["updatedInput"] = input;
        }
        ("PermissionRequest", Decision::Allow) => {
            specific(answer, event)["decision"]["updatedInput"] = input;
        }
        _ => {}
    }
    None
}

fn json_line(value: Value) -> Vec<u8> {
    let mut out = value.to_string().into_bytes();
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_contract::Outcome;

    fn verdict(decision: Decision) -> HookResult {
        HookResult::Decided {
            verdict: Verdict {
                decision,
                reason: Some("why".into()),
                ..Verdict::default()
            },
            output: Vec::new(),
        }
    }

    fn named(name: &str) -> EventFacts {
        EventFacts {
            name: name.into(),
            stop_hook_active: false,
        }
    }

    #[test]
    fn permission_requests_are_decided_and_a_second_stop_block_is_not_made() {
        let v = stdout_json(&reply(
            &named("PermissionRequest"),
            "g",
            verdict(Decision::Deny),
            FailPolicy::Open,
        ));
        assert_eq!(
            v["hookSpecificOutput"],
            json!({"hookEventName": "PermissionRequest", "decision": {"behavior": "deny", "message": "why"}})
        );
        let v = stdout_json(&reply(
            &named("PermissionRequest"),
            "g",
            verdict(Decision::Allow),
            FailPolicy::Open,
        ));
        assert_eq!(v["hookSpecificOutput"]["decision"]["behavior"], "allow");
        let ask = reply(
            &named("PermissionRequest"),
            "g",
            verdict(Decision::Ask),
            FailPolicy::Open,
        );
        assert!(ask.stdout.is_empty(), "ask leaves the dialog to the user");

        let first = stdout_json(&reply(
            &named("Stop"),
            "g",
            verdict(Decision::Deny),
            FailPolicy::Open,
        ));
        assert_eq!(first["decision"], "block");
        let again = parse(br#"{"hook_event_name":"Stop","stop_hook_active":true}"#)
            .expect("parse")
            .facts;
        assert!(again.stop_hook_active);
        let v = stdout_json(&reply(
            &again,
            "g",
            verdict(Decision::Deny),
            FailPolicy::Open,
        ));
        assert!(v.get("decision").is_none(), "{v}");
        assert!(
            v["systemMessage"]
                .as_str()
                .unwrap_or("")
                .contains("stop_hook_active")
        );
    }

    fn stdout_json(r: &Reply) -> Value {
        serde_json::from_slice(&r.stdout).expect("json")
    }

    #[test]
    fn pre_tool_use_write_and_edit_become_numbered_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.rs"), "one\ntwo\nthree\n").expect("write");
        let cwd = dir.path().display().to_string();
        let input = json!({
            "session_id": "s", "transcript_path": "/t", "cwd": cwd,
            "hook_event_name": "PreToolUse", "tool_name": "Edit",
            "tool_input": {"file_path": format!("{cwd}/a.rs"), "old_string": "three", "new_string": "3\n4"},
            "permission_mode": "default"
        });
        let parsed = parse(input.to_string().as_bytes()).expect("parse");
        let HookEvent::Assistant(e) = parsed.event else {
            panic!("not an assistant event")
        };
        assert_eq!(e.writes.len(), 1);
        assert_eq!(e.writes[0].path, "a.rs");
        assert_eq!(
            e.writes[0].added.iter().map(|l| l.line).collect::<Vec<_>>(),
            [3, 4]
        );
        assert_eq!(parsed.work_dir.as_deref(), Some(dir.path()));
    }

    #[test]
    fn bad_input_is_an_error_naming_the_problem() {
        assert!(parse(b"").expect_err("empty").contains("no hook event"));
        assert!(
            parse(b"{not json")
                .expect_err("bad")
                .contains("not a Claude Code")
        );
        assert!(
            parse(b"{\"x\":1}")
                .expect_err("no name")
                .contains("hook_event_name")
        );
        assert!(!looks_like_event(b"{\"x\":1}"));
        assert!(looks_like_event(b"{\"hook_event_name\":\"Stop\"}"));
    }

    #[test]
    fn pre_tool_use_decisions_are_permission_decisions() {
        let r = reply(
            &named("PreToolUse"),
            "g",
            verdict(Decision::Deny),
            FailPolicy::Open,
        );
        assert_eq!(r.exit_code, 0);
        let v = stdout_json(&r);
        assert_eq!(v["hookSpecificOutput"]["permissionDecision"], "deny");
        assert_eq!(v["hookSpecificOutput"]["permissionDecisionReason"], "why");
        // No objection is no answer: the user's own permission settings apply.
        let r = reply(
            &named("PreToolUse"),
            "g",
            verdict(Decision::Pass),
            FailPolicy::Open,
        );
        assert!(r.stdout.is_empty() && r.exit_code == 0);
    }

    #[test]
    fn other_events_block_with_decision_or_note_when_they_cannot() {
        let v = stdout_json(&reply(
            &named("UserPromptSubmit"),
            "g",
            verdict(Decision::Deny),
            FailPolicy::Open,
        ));
        assert_eq!(
            (v["decision"].as_str(), v["reason"].as_str()),
            (Some("block"), Some("why"))
        );
        let v = stdout_json(&reply(
            &named("Notification"),
            "g",
            verdict(Decision::Deny),
            FailPolicy::Open,
        ));
        assert!(v.get("decision").is_none());
        assert!(
            v["systemMessage"]
                .as_str()
                .expect("message")
                .contains("why")
        );
    }

    #[test]
    fn a_failed_hook_is_open_or_closed_as_told() {
        let failed = HookResult::Failed {
            outcome: Outcome::Trap,
            what: "trap: boom".into(),
        };
        let open = reply(&named("PreToolUse"), "g", failed.clone(), FailPolicy::Open);
        assert_eq!(open.exit_code, 0);
        assert!(
            stdout_json(&open)["systemMessage"]
                .as_str()
                .expect("msg")
                .contains("boom")
        );
        let closed = reply(&named("PreToolUse"), "g", failed, FailPolicy::Closed);
        assert_eq!(closed.exit_code, 2);
        assert!(closed.stderr.contains("boom") && closed.stdout.is_empty());
    }
}
