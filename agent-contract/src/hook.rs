//! Hook calls in one normalized form: what `spawner hook` makes of a caller's wire format
//! (Claude Code's JSON, git's arguments and stdin) and what an agent decides.
//!
//! These mirror `hook-event` and `verdict` in `wit/agent.wit`; `spawner` builds a
//! [`HookEvent`] and sends it in the request header, `agent-exec` hands it to the agent as
//! the WIT type and returns the agent's [`Verdict`] in the run report.

use serde::{Deserialize, Serialize};

/// A hook call from a coding assistant or git.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum HookEvent {
    /// A coding assistant's hook event (Claude Code's protocol).
    Assistant(AssistantEvent),
    /// git pre-commit: the lines the commit would add.
    PreCommit {
        /// Added lines per staged file.
        files: Vec<FileChange>,
    },
    /// git commit-msg: the proposed message.
    CommitMsg {
        /// The message as git wrote it (comments included).
        message: String,
    },
    /// git pre-push.
    PrePush(Push),
    /// A plain hook: the input is all there is.
    Plain,
}

/// One event from a coding assistant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssistantEvent {
    /// The event's name as sent (`PreToolUse`, `UserPromptSubmit`, ...).
    pub event: String,
    /// The assistant's session.
    pub session_id: String,
    /// The assistant's working directory.
    pub cwd: String,
    /// Tool events: the tool's name.
    pub tool_name: Option<String>,
    /// Tool events: the tool's input, as JSON text.
    pub tool_input: Option<String>,
    /// Tool events: the text the tool would write or run, per file.
    pub writes: Vec<FileChange>,
    /// `UserPromptSubmit`: the prompt.
    pub prompt: Option<String>,
    /// The event's other documented fields (boxed: most events carry none of them).
    #[serde(default, skip_serializing_if = "no_details")]
    pub details: Box<AssistantDetails>,
}

/// The documented fields of a coding assistant's event beyond the normalized ones (Claude
/// Code's names in parentheses); each is absent when the event has none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssistantDetails {
    /// The session's permission mode (`permission_mode`: `default`, `plan`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permission_mode: Option<String>,
    /// The conversation's transcript file (`transcript_path`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transcript_path: Option<String>,
    /// Tool events: the call's id (`tool_use_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_use_id: Option<String>,
    /// `PostToolUse`: what the tool gave back, as JSON text (`tool_response`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_response: Option<String>,
    /// `Stop`, `SubagentStop`: a stop hook already made the assistant go on
    /// (`stop_hook_active`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stop_hook_active: bool,
    /// `Notification`: its text (`message`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `PreCompact`: `manual` or `auto` (`trigger`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    /// `PreCompact`: the user's instructions for it (`custom_instructions`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_instructions: Option<String>,
    /// `SessionStart`: `startup`, `resume`, `clear` or `compact` (`source`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// `SessionEnd`: why it ended (`reason`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

fn no_details(d: &AssistantDetails) -> bool {
    d.is_empty()
}

impl AssistantDetails {
    /// Whether it holds nothing (then it is left out of the request header).
    pub fn is_empty(&self) -> bool {
        *self == AssistantDetails::default()
    }
}

/// Lines a change adds to one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileChange {
    /// The file, relative to the repository root (or as the tool named it).
    pub path: String,
    /// The added lines, in order. On the wire as runs of consecutive lines
    /// (`[first_line, ["text", ...]]`), so that a file of many short lines costs three
    /// bytes a line in the request header rather than a record a line.
    #[serde(with = "line_runs")]
    pub added: Vec<AddedLine>,
}

/// [`FileChange::added`] on the wire: runs of consecutive line numbers, each
/// `[first_line, [texts]]`.
mod line_runs {
    use serde::ser::SerializeSeq;
    use serde::{Deserialize, Deserializer, Serializer};

    use super::AddedLine;

    pub fn serialize<S: Serializer>(lines: &[AddedLine], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(None)?;
        let mut rest = lines;
        while let Some(first) = rest.first() {
            let run = rest
                .windows(2)
                .take_while(|w| w[0].line.checked_add(1) == Some(w[1].line))
                .count()
                + 1;
            let texts: Vec<&str> = rest[..run].iter().map(|l| l.text.as_str()).collect();
            seq.serialize_element(&(first.line, texts))?;
            rest = &rest[run..];
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<AddedLine>, D::Error> {
        let runs = Vec::<(u32, Vec<String>)>::deserialize(d)?;
        let mut lines = Vec::with_capacity(runs.iter().map(|(_, t)| t.len()).sum());
        for (first, texts) in runs {
            for (text, line) in texts.into_iter().zip(first..) {
                lines.push(AddedLine { line, text });
            }
        }
        Ok(lines)
    }
}

/// One added line and its 1-based number in the new file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddedLine {
    /// 1-based line number in the new file.
    pub line: u32,
    /// The line's text, without its newline.
    pub text: String,
}

impl FileChange {
    /// Every line of `text` as added, numbered from `first_line`.
    pub fn whole_text(path: impl Into<String>, text: &str, first_line: u32) -> FileChange {
        FileChange {
            path: path.into(),
            added: text
                .lines()
                .zip(first_line..)
                .map(|(text, line)| AddedLine {
                    line,
                    text: text.to_owned(),
                })
                .collect(),
        }
    }
}

/// A git push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Push {
    /// The remote's name (or its URL when pushing to a URL).
    pub remote: String,
    /// The remote's URL.
    pub url: String,
    /// The refs being updated.
    pub refs: Vec<PushRef>,
}

/// One ref update of a push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushRef {
    /// The local ref (`refs/heads/main`), or `(delete)`.
    pub local_ref: String,
    /// The local object; all zeros when the remote ref is deleted.
    pub local_sha: String,
    /// The remote ref.
    pub remote_ref: String,
    /// The remote's current object; all zeros when the ref is new.
    pub remote_sha: String,
}

/// What a hook agent decides.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// No objection: the caller proceeds as it would without the hook.
    #[default]
    Pass,
    /// Explicit approval.
    Allow,
    /// Ask the user to confirm.
    Ask,
    /// Block the action.
    Deny,
}

impl Decision {
    /// Whether the action is stopped where the caller cannot ask the user (git, plain):
    /// `deny`, and `ask` too.
    pub fn blocks(self) -> bool {
        matches!(self, Decision::Deny | Decision::Ask)
    }
}

/// A hook's verdict, as the agent gave it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verdict {
    /// The decision.
    pub decision: Decision,
    /// Why; shown to the user, and to the assistant when it is blocked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A note shown to the user whatever the decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// commit-msg only: the message to commit instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<String>,
    /// Assistant hooks: text for the assistant's context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// Assistant hooks: the tool input to use instead (a JSON object as text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_input: Option<String>,
    /// Assistant hooks: stop the assistant, with this reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<String>,
    /// Assistant hooks: keep the hook's output out of the transcript.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suppress_output: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_json() {
        let events = [
            HookEvent::Assistant(AssistantEvent {
                event: "PreToolUse".into(),
                tool_name: Some("Write".into()),
                writes: vec![FileChange::whole_text("a.txt", "one\ntwo\n", 1)],
                ..AssistantEvent::default()
            }),
            HookEvent::PreCommit { files: vec![] },
            HookEvent::CommitMsg {
                message: "fix\n".into(),
            },
            HookEvent::PrePush(Push {
                remote: "origin".into(),
                url: "/tmp/r.git".into(),
                refs: vec![],
            }),
            HookEvent::Plain,
        ];
        for e in events {
            let json = serde_json::to_string(&e).expect("serialize");
            let back: HookEvent = serde_json::from_str(&json).expect("deserialize");
            assert_eq!(back, e);
        }
    }

    #[test]
    fn added_lines_travel_as_runs_of_consecutive_lines() {
        let mut change = FileChange::whole_text("f", "a\nb\nc", 1);
        change.added.push(AddedLine {
            line: 10,
            text: "d".into(),
        });
        let json = serde_json::to_string(&change).expect("serialize");
        assert_eq!(
            json,
            r#"{"path":"f","added":[[1,["a","b","c"]],[10,["d"]]]}"#
        );
        let back: FileChange = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, change);
    }

    #[test]
    fn whole_text_numbers_lines_from_the_given_start() {
        let c = FileChange::whole_text("f", "a\nb", 7);
        assert_eq!(
            c.added,
            vec![
                AddedLine {
                    line: 7,
                    text: "a".into()
                },
                AddedLine {
                    line: 8,
                    text: "b".into()
                }
            ]
        );
    }
}
