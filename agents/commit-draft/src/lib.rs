//! commit-draft: drafts a one-line commit message from a unified diff (`git diff
//! --staged | spawner run commit-draft`), with the local language model. The diff is cut
//! to `max_diff_chars` (on a character boundary) and the files it touches are listed, so a
//! large change still fits the model's context; the answer is trimmed to its first line,
//! without quotes, at most 72 characters. When the model gives no usable line (the
//! embedded 135M model often does not), the draft is `Update <files>` and a warning says so.

use agent_sdk::llm;
use agent_sdk::{Agent, AgentError, Request, Response, chat, config};

struct CommitDraft;

/// The files a diff changes, from its `+++ b/<path>` lines.
fn files(diff: &str) -> Vec<&str> {
    diff.lines()
        .filter_map(|l| l.strip_prefix("+++ b/"))
        .collect()
}

/// At most `max` characters of `text`, cut on a character boundary.
fn head(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

/// The first line of the model's answer as a commit subject: no quotes or "Commit message:"
/// prefix, at most 72 characters.
fn subject(answer: &str) -> String {
    // A small model sometimes echoes the diff first: its lines are not a subject.
    let diff_line = |l: &str| {
        [
            "diff ",
            "index ",
            "--- ",
            "+++ ",
            "@@",
            "+",
            "-",
            "new file mode",
            "deleted file mode",
            "```",
        ]
        .iter()
        .any(|p| l.starts_with(p))
    };
    let line = answer
        .lines()
        .map(str::trim)
        // "Here's a concise commit message:" introduces the subject; it is not one.
        .find(|l| !l.is_empty() && !diff_line(l) && !l.ends_with(':'))
        .unwrap_or("");
    let line = line
        .strip_prefix("Commit message:")
        .unwrap_or(line)
        .trim()
        .trim_matches(|c| c == '"' || c == '`' || c == '\'');
    head(line, 72).trim_end().to_owned()
}

impl Agent for CommitDraft {
    fn handle(request: Request) -> Result<Response, AgentError> {
        let diff = request.text()?;
        let changed = files(diff);
        if diff.trim().is_empty() || changed.is_empty() {
            return Err(AgentError::InvalidInput(
                "no diff on standard input: pipe one in, e.g. `git diff --staged | spawner run commit-draft`"
                    .into(),
            ));
        }
        let model = config::get("model").unwrap_or_else(|| "smollm2-135m".into());
        let max: usize = config::get("max_diff_chars")
            .and_then(|v| v.parse().ok())
            .unwrap_or(6000);
        let shown = head(diff, max);
        let prompt = format!(
            "Here is a change to {}:\n\n{shown}{}\n\nWrite the git commit message for this \
             change: one line, imperative mood, at most 72 characters. Reply with the message \
             only.",
            changed.join(", "),
            if shown.len() < diff.len() {
                "\n[diff cut]"
            } else {
                ""
            }
        );
        let mut params = chat::params();
        params.max_tokens = Some(48);
        params.temperature = Some(0.0);
        let completion = llm::chat(
            &model,
            &[
                chat::system("You write concise git commit messages. You never repeat the diff."),
                chat::user(prompt),
            ],
            &params,
        )?;
        let mut line = subject(&completion.text);
        if line.is_empty() {
            // A small model may give nothing usable: a plain draft beats none.
            agent_sdk::log::warn(&format!(
                "the model gave no usable line ({:?}); drafting from the file names",
                completion.text
            ));
            line = head(&format!("Update {}", changed.join(", ")), 72).to_owned();
        }
        Ok(Response::text(format!("{line}\n")))
    }
}

agent_sdk::export!(CommitDraft);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_one_trimmed_line_cut_on_a_character_boundary() {
        assert_eq!(subject("\n  \"Fix the parser\"\nmore"), "Fix the parser");
        assert_eq!(subject("Here's a message:\n\nAdd greet()"), "Add greet()");
        assert_eq!(subject("diff --git a/x b/x\n+++ b/x\nAdd x"), "Add x");
        assert_eq!(subject("Commit message: Add naïve café"), "Add naïve café");
        let long = "é".repeat(100);
        assert_eq!(subject(&long).chars().count(), 72);
        assert_eq!(
            files("+++ b/src/a.rs\n+x\n+++ b/b.md\n"),
            ["src/a.rs", "b.md"]
        );
        assert_eq!(head("日本語", 2), "日本");
    }
}
