//! secret-guard: blocks commits and coding-assistant tool calls that would write secrets
//! (private key blocks, cloud access keys, common token formats, random-looking values
//! assigned to names like `password` or `token`), naming the file and line of each.
//!
//! As a hook (`spawner hook secret-guard`):
//! - git pre-commit: scans the lines the commit adds; a finding blocks the commit.
//! - git commit-msg: a secret in the message is redacted (the message is rewritten);
//!   `on_commit_msg = "deny"` in `[config]` blocks the commit instead.
//! - Claude Code `PreToolUse`: scans what Write, Edit and MultiEdit would write and what
//!   Bash would run; `UserPromptSubmit`: scans the prompt. A finding denies it.
//! - Any other event passes.
//!
//! Without a hook (`spawner run secret-guard < file`), or as a plain hook, it scans its
//! input and answers `rejected` (exit code 7) when it finds a secret.
//!
//! Allowlist in `[config]`: `allow_paths` (one glob per line, `*` matches any text),
//! `allow_values` (one per line: a finding containing it is ignored, e.g. a documented
//! example key), and the marker `secret-guard: allow` on a line. Reasons show only the
//! first characters of a secret, so the secret does not spread into logs and transcripts.

mod scan;

use agent_sdk::{
    Agent, AgentError, Decision, FileChange, HookEvent, Request, Response, Verdict, config, memory,
};

struct SecretGuard;

/// The most findings listed in one reason; the rest are counted.
const MAX_LISTED: usize = 20;

/// The allowlist from `[config]`.
struct Allowlist {
    paths: Vec<String>,
    values: Vec<String>,
}

impl Allowlist {
    fn from_config() -> Allowlist {
        let lines = |key: &str| -> Vec<String> {
            config::get(key)
                .unwrap_or_default()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned)
                .collect()
        };
        Allowlist {
            paths: lines("allow_paths"),
            values: lines("allow_values"),
        }
    }

    fn path_allowed(&self, path: &str) -> bool {
        self.paths.iter().any(|p| scan::glob_match(p, path))
    }

    fn value_allowed(&self, secret: &str) -> bool {
        self.values.iter().any(|v| secret.contains(v.as_str()))
    }
}

/// One reportable finding.
struct Reported {
    path: String,
    line: u32,
    kind: &'static str,
    preview: String,
}

impl Reported {
    fn describe(&self) -> String {
        if self.preview.is_empty() {
            format!("{}:{}: {}", self.path, self.line, self.kind)
        } else {
            format!(
                "{}:{}: {} ({})",
                self.path, self.line, self.kind, self.preview
            )
        }
    }
}

fn scan_files(files: &[FileChange], allow: &Allowlist) -> Vec<Reported> {
    let mut out = Vec::new();
    for file in files.iter().filter(|f| !allow.path_allowed(&f.path)) {
        for added in &file.added {
            for f in scan::scan_line(&added.text) {
                let secret = &added.text[f.start..f.end];
                if !allow.value_allowed(secret) {
                    out.push(Reported {
                        path: file.path.clone(),
                        line: added.line,
                        kind: f.kind,
                        preview: scan::preview(&f, secret),
                    });
                }
            }
        }
    }
    out
}

/// The reason text for `found`, and an audit event recording it (without the secrets).
fn deny(found: &[Reported], what: &str) -> Result<Verdict, AgentError> {
    let mut reason = format!(
        "{} possible secret{} in {what}:\n",
        found.len(),
        if found.len() == 1 { "" } else { "s" }
    );
    for f in found.iter().take(MAX_LISTED) {
        reason.push_str(&format!("  {}\n", f.describe()));
    }
    if found.len() > MAX_LISTED {
        reason.push_str(&format!("  ... and {} more\n", found.len() - MAX_LISTED));
    }
    reason.push_str(
        "Remove the secret (use an environment variable or a secrets manager), or allow it: \
         `allow_paths`/`allow_values` in secret-guard's agent.toml, or `secret-guard: allow` \
         on the line.",
    );
    let audit: Vec<String> = found
        .iter()
        .map(|f| format!("{}:{}: {}", f.path, f.line, f.kind))
        .collect();
    memory::append_event("blocked", audit.join("\n").as_bytes())?;
    Ok(Verdict::deny(reason))
}

/// A commit message with its secrets redacted, or a denial, as `[config]` says.
fn commit_msg(message: &str, allow: &Allowlist) -> Result<Verdict, AgentError> {
    let mut found = Vec::new();
    let mut rewritten = String::with_capacity(message.len());
    for (line, n) in message.split_inclusive('\n').zip(1u32..) {
        let text = line.trim_end_matches('\n');
        let findings: Vec<scan::Finding> = if text.starts_with('#') {
            Vec::new()
        } else {
            scan::scan_line(text)
                .into_iter()
                .filter(|f| !allow.value_allowed(&text[f.start..f.end]))
                .collect()
        };
        for f in &findings {
            found.push(Reported {
                path: "commit message".into(),
                line: n,
                kind: f.kind,
                preview: scan::preview(f, &text[f.start..f.end]),
            });
        }
        rewritten.push_str(&scan::redact(text, &findings));
        rewritten.push_str(&line[text.len()..]);
    }
    if found.is_empty() {
        return Ok(Verdict::pass());
    }
    if config::get("on_commit_msg").as_deref() == Some("deny") {
        return deny(&found, "the commit message");
    }
    let mut kinds: Vec<&str> = found.iter().map(|f| f.kind).collect();
    kinds.dedup();
    memory::append_event("redacted", kinds.join("\n").as_bytes())?;
    let redacted = found.len();
    Ok(Verdict {
        decision: Decision::Pass,
        reason: None,
        message: Some(format!(
            "redacted {redacted} secret{} from the commit message ({})",
            if redacted == 1 { "" } else { "s" },
            kinds.join(", ")
        )),
        rewrite: Some(rewritten),
    })
}

/// Pass `files` when they hold no secret; deny `what` otherwise.
fn scan_verdict(
    files: &[FileChange],
    allow: &Allowlist,
    what: &str,
) -> Result<Verdict, AgentError> {
    let found = scan_files(files, allow);
    if found.is_empty() {
        Ok(Verdict::pass())
    } else {
        deny(&found, what)
    }
}

fn hook(event: &HookEvent, allow: &Allowlist) -> Result<Verdict, AgentError> {
    match event {
        HookEvent::PreCommit(files) => scan_verdict(files, allow, "this commit"),
        HookEvent::CommitMsg(message) => commit_msg(message, allow),
        HookEvent::Assistant(e) if e.event == "PreToolUse" => {
            let tool = e.tool_name.as_deref().unwrap_or("tool");
            scan_verdict(&e.writes, allow, &format!("this {tool} call"))
        }
        HookEvent::Assistant(e) if e.event == "UserPromptSubmit" => {
            let prompt = FileChange::whole_text("prompt", e.prompt.as_deref().unwrap_or(""));
            scan_verdict(&[prompt], allow, "this prompt")
        }
        // Pushes were checked commit by commit; other events carry nothing to scan.
        _ => Ok(Verdict::pass()),
    }
}

impl Agent for SecretGuard {
    fn handle(request: Request) -> Result<Response, AgentError> {
        let allow = Allowlist::from_config();
        match agent_sdk::hooks::event() {
            // A plain hook is its input, as without a hook.
            None | Some(HookEvent::Plain) => {}
            Some(event) => return hook(&event, &allow).map(Response::verdict),
        }
        let input = FileChange::whole_text("(input)", request.text()?);
        let found = scan_files(&[input], &allow);
        if found.is_empty() {
            return Ok(Response::text("no secrets found\n"));
        }
        let verdict = deny(&found, "the input")?;
        Err(AgentError::Rejected(verdict.reason.unwrap_or_default()))
    }
}

agent_sdk::export!(SecretGuard);
