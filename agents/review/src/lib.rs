//! review: reviews a unified diff (`git diff | spawner run review`) by fanning out one
//! sub-run per changed file to secret-guard (a scan of the lines the change adds) and,
//! with `notes = true`, one to itself in file mode (a one-sentence note from the local
//! language model), then joins them in file order and summarizes. A finding makes the
//! review `rejected` (exit code 7), like secret-guard's own.
//!
//! The sub-runs run in parallel, as many at once as `[runs] parallel` allows, each a fresh
//! process with its own run record under this one (`spawner runs show <run>`). The review
//! is durable: killed midway, `spawner runs resume <run>` hands it the sub-runs that had
//! ended and runs only the others.
//!
//! File mode (a sub-run): the input is `review-file\n<path>\n<added lines>`.

use agent_sdk::runs::{self, Finished};
use agent_sdk::{Agent, AgentError, Request, Response, chat, config, llm};

struct Review;

/// What a sub-run's input starts with in file mode.
const FILE_MODE: &str = "review-file\n";

/// One changed file of a diff: its path and the lines the change adds.
struct Changed {
    path: String,
    added: String,
}

/// The files a unified diff changes, with their added lines; deleted files are left out.
fn changed_files(diff: &str) -> Vec<Changed> {
    let mut files: Vec<Changed> = Vec::new();
    for line in diff.lines() {
        if let Some(path) = line.strip_prefix("+++ ") {
            let path = path.strip_prefix("b/").unwrap_or(path);
            if path != "/dev/null" {
                files.push(Changed {
                    path: path.to_owned(),
                    added: String::new(),
                });
            }
        } else if line.starts_with("--- ") || line.starts_with("diff ") {
            // The next file's header; a deleted file gets no `+++ b/` entry.
        } else if let Some(added) = line.strip_prefix('+')
            && let Some(file) = files.last_mut()
        {
            file.added.push_str(added);
            file.added.push('\n');
        }
    }
    files.retain(|f| !f.added.is_empty());
    files
}

/// At most `max` characters of `text`, cut on a character boundary.
fn head(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

fn config_number(key: &str, default: u32) -> u32 {
    config::get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// File mode: a one-sentence note on one file's added lines, from the model.
fn note(input: &str) -> Result<Response, AgentError> {
    let (path, added) = input.split_once('\n').unwrap_or((input, ""));
    let model = config::get("model").unwrap_or_else(|| "smollm2-135m".into());
    let shown = head(added, config_number("max_file_chars", 1500) as usize);
    let messages = [
        chat::system(
            "You review code changes. In one short sentence, say what the change does or name its most important problem.",
        ),
        chat::user(format!("File {path}, added lines:\n{shown}")),
    ];
    let params = llm::Params {
        max_tokens: Some(config_number("max_tokens", 48)),
        ..chat::params()
    };
    let answer = llm::chat(&model, &messages, &params)
        .map_err(|e| AgentError::Failed(format!("the model gave no note: {e:?}")))?;
    let line = answer
        .text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("(the model said nothing)");
    Ok(Response::text(line))
}

/// What one file's secret-guard run found.
fn scan_result(path: &str, done: &Finished) -> (bool, String) {
    match done.status.as_str() {
        "ok" => (false, "no secrets found".into()),
        "rejected" => (
            true,
            done.error
                .as_deref()
                .unwrap_or("a secret")
                .trim_start_matches("rejected: ")
                .replace("(input)", path)
                .trim_end()
                .to_owned(),
        ),
        other => (
            false,
            format!(
                "secret scan {other}: {}",
                done.error.as_deref().unwrap_or("no reason given")
            ),
        ),
    }
}

fn failed(e: runs::RunError) -> AgentError {
    AgentError::Failed(format!("a sub-run could not be started or joined: {e:?}"))
}

impl Agent for Review {
    fn handle(request: Request) -> Result<Response, AgentError> {
        let text = request.text()?;
        if let Some(file) = text.strip_prefix(FILE_MODE) {
            return note(file);
        }
        let files = changed_files(text);
        if files.is_empty() {
            return Err(AgentError::InvalidInput(
                "no added lines in the input: pipe a unified diff into it (`git diff | spawner run review`)"
                    .into(),
            ));
        }
        let notes = config::get("notes").is_none_or(|v| v != "false");
        // Every sub-run is started before any is joined, so that they run in parallel.
        let mut started = Vec::with_capacity(files.len());
        for f in &files {
            let scan = runs::start("secret-guard", f.added.as_bytes()).map_err(failed)?;
            let note = if notes {
                let input = format!("{FILE_MODE}{}\n{}", f.path, f.added);
                Some(runs::start("review", input.as_bytes()).map_err(failed)?)
            } else {
                None
            };
            started.push((scan, note));
        }
        let mut summary = String::new();
        let mut with_secrets = 0;
        for (f, (scan, note)) in files.iter().zip(started) {
            let (secret, found) = scan_result(&f.path, &runs::join(scan).map_err(failed)?);
            with_secrets += usize::from(secret);
            summary.push_str(&format!("{}:\n  secrets: {found}\n", f.path));
            if let Some(note) = note {
                let done = runs::join(note).map_err(failed)?;
                let said = match done.status.as_str() {
                    "ok" => String::from_utf8_lossy(&done.output).into_owned(),
                    other => format!(
                        "(no note: {other}: {})",
                        done.error.as_deref().unwrap_or("no reason given")
                    ),
                };
                summary.push_str(&format!("  note: {said}\n"));
            }
        }
        summary.push_str(&format!(
            "{} file(s) reviewed, {with_secrets} with secrets\n",
            files.len()
        ));
        if with_secrets > 0 {
            Err(AgentError::Rejected(summary))
        } else {
            Ok(Response::text(summary))
        }
    }
}

agent_sdk::export!(Review);
