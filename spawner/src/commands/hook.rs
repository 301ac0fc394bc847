//! `spawner hook`: run an agent as a hook in the caller's protocol ([`crate::hook`]), and
//! `spawner hook install|uninstall`.

use std::io::Write;
use std::path::{Path, PathBuf};

use agent_contract::hook::HookEvent;
use agent_contract::{Home, LogFormat, OutputFormat};
use anyhow::Context;

use crate::cancel::StopReason;
use crate::cli::{HookAction, HookArgs, HookInstallArgs, HookProtocol, HookUninstallArgs};
use crate::exit::{Interrupted, UsageError};
use crate::hook::{HookResult, Protocol, Reply, claude, git};
use crate::request::Request;

/// Run the hook (or install/uninstall one); returns the exit code for the caller.
pub fn execute(home: &Home, args: HookArgs) -> anyhow::Result<u8> {
    match args.action {
        Some(HookAction::Install(install_args)) => return install(home, install_args),
        Some(HookAction::Uninstall(uninstall_args)) => return uninstall(uninstall_args),
        None => {}
    }
    let agent = args
        .agent
        .clone()
        .ok_or_else(|| UsageError("name the agent: spawner hook <agent>".into()))?;
    let stdin = super::run::read_stdin();
    let protocol = match (args.protocol, &stdin) {
        (HookProtocol::Auto, Ok(input)) if claude::looks_like_event(input) => Protocol::ClaudeCode,
        (HookProtocol::Auto, _) | (HookProtocol::Plain, _) => Protocol::Plain,
        (HookProtocol::ClaudeCode, _) => Protocol::ClaudeCode,
        // A merge's commit is checked as any commit: by what it stages.
        (HookProtocol::PreCommit | HookProtocol::PreMergeCommit, _) => Protocol::PreCommit,
        (HookProtocol::CommitMsg, _) => Protocol::CommitMsg,
        (HookProtocol::PrePush, _) => Protocol::PrePush,
    };
    let fail = args.fail.unwrap_or(protocol.default_fail_policy());
    let cwd = std::env::current_dir().context("cannot read the current directory")?;

    let call = stdin
        .map_err(|e| format!("{e:#}"))
        .and_then(|input| normalize(protocol, input, &args.hook_args, &cwd));
    // Claude Code's reply depends on the event's name (and, for Stop, on whether a
    // Stop hook is already at work).
    let facts = match &call {
        Ok(c) => c.facts.clone(),
        Err(_) => claude::EventFacts::default(),
    };
    let mut message_file = None;
    let result = match call {
        Err(what) => HookResult::Failed {
            outcome: agent_contract::Outcome::Usage,
            what,
        },
        Ok(Call {
            event,
            input,
            work_dir,
            message_file: file,
            ..
        }) => {
            message_file = file;
            let request = Request {
                run_id: crate::run_id::new_run_id(),
                agent: agent.clone(),
                input,
                timeout: args.timeout,
                output: OutputFormat::Json,
                log_format: LogFormat::Human,
                log_level: crate::request::log_level_from_env(),
                work_dir: Some(work_dir),
                hook: Some(event),
                capture_stdout: true,
                stream_llm: false,
                journal: agent_contract::envelope::JournalMode::Record,
                attempt: 1,
                parent_run_id: None,
            };
            match crate::request::execute_from_command_line(home, &request, None) {
                Ok(finished) => {
                    if let Some(StopReason::Signal(sig)) = finished.stopped {
                        return Err(Interrupted(sig).into());
                    }
                    let lost = finished.answer_lost();
                    match finished.into_report() {
                        // Its verdict never arrived: not a pass, a failed hook.
                        Ok(_) if lost => HookResult::Failed {
                            outcome: agent_contract::Outcome::Killed,
                            what: "the agent finished but was killed before its verdict arrived"
                                .into(),
                        },
                        Ok(report) => HookResult::from_report(report),
                        Err(e) => HookResult::Failed {
                            outcome: agent_contract::Outcome::Internal,
                            what: format!("{e:#}"),
                        },
                    }
                }
                Err(e) => HookResult::Failed {
                    outcome: crate::exit::outcome(&e),
                    what: format!("{e:#}"),
                },
            }
        }
    };
    let result = apply_rewrite(result, message_file.as_deref());
    let reply = crate::hook::reply(protocol, &facts, &agent, result, fail);
    answer(&reply)?;
    Ok(reply.exit_code)
}

/// A caller's call in normalized form.
struct Call {
    event: HookEvent,
    /// The payload as the caller sent it, for agents that read `input`.
    input: Vec<u8>,
    work_dir: PathBuf,
    /// commit-msg: the file to rewrite.
    message_file: Option<PathBuf>,
    /// Claude Code: what its reply depends on besides the verdict.
    facts: claude::EventFacts,
}

fn normalize(
    protocol: Protocol,
    input: Vec<u8>,
    hook_args: &[String],
    cwd: &Path,
) -> Result<Call, String> {
    let call = |event, input| Call {
        event,
        input,
        work_dir: cwd.to_owned(),
        message_file: None,
        facts: claude::EventFacts::default(),
    };
    match protocol {
        Protocol::ClaudeCode => {
            let parsed = claude::parse(&input)?;
            Ok(Call {
                event: parsed.event,
                input,
                work_dir: parsed.work_dir.unwrap_or_else(|| cwd.to_owned()),
                message_file: None,
                facts: parsed.facts,
            })
        }
        Protocol::PreCommit => {
            let (files, diff) = git::staged_changes(cwd)?;
            Ok(call(HookEvent::PreCommit { files }, diff))
        }
        Protocol::CommitMsg => {
            let file = git::message_file(hook_args, cwd)?;
            let message = std::fs::read_to_string(&file).map_err(|e| {
                format!(
                    "cannot read the commit message file {}: {e}",
                    file.display()
                )
            })?;
            let input = message.clone().into_bytes();
            Ok(Call {
                message_file: Some(file),
                ..call(HookEvent::CommitMsg { message }, input)
            })
        }
        Protocol::PrePush => {
            let push = git::parse_push(hook_args, &String::from_utf8_lossy(&input))?;
            Ok(call(HookEvent::PrePush(push), input))
        }
        Protocol::Plain => Ok(call(HookEvent::Plain, input)),
    }
}

/// commit-msg: write the agent's rewrite of the message, unless it also blocked the
/// commit. A failed write is a failed hook.
fn apply_rewrite(result: HookResult, message_file: Option<&Path>) -> HookResult {
    let (HookResult::Decided { verdict, .. }, Some(file)) = (&result, message_file) else {
        return result;
    };
    let Some(message) = &verdict.rewrite else {
        return result;
    };
    if verdict.decision.blocks() {
        return result;
    }
    match git::replace_file(file, message.as_bytes(), None) {
        Ok(()) => result,
        Err(e) => HookResult::Failed {
            outcome: agent_contract::Outcome::Internal,
            what: format!("cannot rewrite the commit message {}: {e}", file.display()),
        },
    }
}

fn answer(reply: &Reply) -> anyhow::Result<()> {
    if !reply.stderr.is_empty() {
        crate::say_text!("{}", reply.stderr);
    }
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&reply.stdout)?;
    stdout.flush()?;
    Ok(())
}

/// `spawner hook install`.
fn install(home: &Home, args: HookInstallArgs) -> anyhow::Result<u8> {
    // The agent must exist, so that a typo does not install a hook that always fails.
    home.agent_manifest(&args.agent)?;
    let spawner = std::env::current_exe().context("cannot locate the spawner executable")?;
    let home_dir = std::path::absolute(home.root()).context("cannot resolve the home")?;
    if args.claude_code {
        let command = format!(
            "{} --home {} hook {} --protocol claude-code",
            git::shell_quote(&spawner.display().to_string()),
            git::shell_quote(&home_dir.display().to_string()),
            git::shell_quote(&args.agent)
        );
        let mut entry = serde_json::json!({
            "hooks": [{ "type": "command", "command": command }]
        });
        // Only tool events take a tool matcher; for the others one would mean nothing.
        let matcher = match (
            &args.matcher,
            claude::TOOL_EVENTS.contains(&args.event.as_str()),
        ) {
            (Some(m), _) => Some(m.clone()),
            (None, true) => Some(crate::cli::DEFAULT_TOOL_MATCHER.to_owned()),
            (None, false) => None,
        };
        if let Some(matcher) = matcher {
            entry["matcher"] = matcher.into();
        }
        let snippet = serde_json::json!({ "hooks": { args.event.clone(): [entry] } });
        println!("{}", serde_json::to_string_pretty(&snippet)?);
        crate::say!(
            "spawner: merge this into .claude/settings.json (this project) or ~/.claude/settings.json \
             (all projects); remove the entry to uninstall."
        );
        return Ok(0);
    }
    let hook = args
        .git
        .ok_or_else(|| UsageError("say which hook: --git <hook> or --claude-code".into()))?;
    let repo = repo_dir(args.repo)?;
    let dir = git::hooks_dir(&repo).map_err(UsageError)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(hook.file_name());
    if path.exists() && !git::is_ours(&path) {
        if !args.force {
            return Err(UsageError(format!(
                "{} already exists and was not installed by spawner; pass --force to replace it \
                 (it is kept as {}{} and restored by uninstall)",
                path.display(),
                hook.file_name(),
                git::BACKUP_SUFFIX
            ))
            .into());
        }
        let backup = dir.join(format!("{}{}", hook.file_name(), git::BACKUP_SUFFIX));
        std::fs::rename(&path, &backup)
            .with_context(|| format!("cannot move {} aside", path.display()))?;
        crate::say!("spawner: kept the previous hook as {}", backup.display());
    }
    let script = git::hook_script(&spawner, &home_dir, &args.agent, hook);
    git::replace_file(&path, script.as_bytes(), Some(0o755))
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("installed {} (runs agent {})", path.display(), args.agent);
    Ok(0)
}

/// `spawner hook uninstall`.
fn uninstall(args: HookUninstallArgs) -> anyhow::Result<u8> {
    let repo = repo_dir(args.repo)?;
    let dir = git::hooks_dir(&repo).map_err(UsageError)?;
    let path = dir.join(args.git.file_name());
    if !path.exists() {
        println!("no {} hook in {}", args.git.file_name(), dir.display());
        return Ok(0);
    }
    if !git::is_ours(&path) {
        return Err(UsageError(format!(
            "{} was not installed by spawner; left alone",
            path.display()
        ))
        .into());
    }
    let backup = dir.join(format!("{}{}", args.git.file_name(), git::BACKUP_SUFFIX));
    if backup.exists() {
        std::fs::rename(&backup, &path)
            .with_context(|| format!("cannot restore {}", backup.display()))?;
        println!(
            "removed the spawner hook; restored the previous {}",
            path.display()
        );
    } else {
        std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        println!("removed {}", path.display());
    }
    Ok(0)
}

fn repo_dir(repo: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match repo {
        Some(dir) => Ok(dir),
        None => std::env::current_dir().context("cannot read the current directory"),
    }
}
