//! Hook protocols: how a caller's wire format becomes one normalized
//! [`HookEvent`](agent_contract::hook::HookEvent), and how the agent's verdict becomes the
//! caller's answer (standard output, standard error, exit code).
//!
//! | protocol      | event from                              | blocks with            | fails by default |
//! |---------------|-----------------------------------------|------------------------|------------------|
//! | `claude-code` | JSON on stdin                           | JSON decision, exit 0  | open             |
//! | `pre-commit`  | `git diff --cached`                     | exit 1                 | closed           |
//! | `pre-merge-commit` | as `pre-commit` (the same [`Protocol::PreCommit`]) | exit 1       | closed           |
//! | `commit-msg`  | the message file (`$1`); may be rewritten | exit 1               | closed           |
//! | `pre-push`    | `$1` remote, `$2` URL, ref lines on stdin | exit 1               | closed           |
//! | `plain`       | stdin                                   | exit 7 (`rejected`)    | closed           |
//!
//! Why those defaults: a coding assistant calls its hooks on every tool call and offers
//! no per-call bypass, so a broken hook must not stop the user's work (the failure is
//! shown as a system message); git has `--no-verify`, and a guard that silently lets a
//! commit through when it breaks is worse than one that stops and says so.

pub mod claude;
pub mod git;

use agent_contract::hook::{Decision, Verdict};
use agent_contract::{Outcome, RunReport};

pub use crate::cli::FailPolicy;

/// A hook protocol, once `auto` has been resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Claude Code hooks.
    ClaudeCode,
    /// git pre-commit.
    PreCommit,
    /// git commit-msg.
    CommitMsg,
    /// git pre-push.
    PrePush,
    /// stdin in, stdout out, verdict as exit code.
    Plain,
}

impl Protocol {
    /// What a failing hook does when the command line does not say.
    pub fn default_fail_policy(self) -> FailPolicy {
        match self {
            Protocol::ClaudeCode => FailPolicy::Open,
            _ => FailPolicy::Closed,
        }
    }

    /// The caller's action, for messages.
    fn action(self) -> &'static str {
        match self {
            Protocol::ClaudeCode => "action",
            Protocol::PreCommit | Protocol::CommitMsg => "commit",
            Protocol::PrePush => "push",
            Protocol::Plain => "action",
        }
    }
}

/// How the hook's run came out, before it is put in the caller's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookResult {
    /// The agent decided (an `ok` answer, or `rejected`, which is a denial).
    Decided {
        /// Its verdict (`pass` when it gave none).
        verdict: Verdict,
        /// Its output.
        output: Vec<u8>,
    },
    /// The hook could not decide: bad input, a missing or broken agent, a crash, a
    /// timeout. The fail policy decides.
    Failed {
        /// The outcome (for the plain protocol's exit code).
        outcome: Outcome,
        /// What went wrong.
        what: String,
    },
}

impl HookResult {
    /// Read a run's report.
    pub fn from_report(report: RunReport) -> HookResult {
        match report.status {
            Outcome::Ok => HookResult::Decided {
                // (A report's base64 is agent-exec's own; invalid, the output is dropped.)
                output: report.output_bytes().ok().flatten().unwrap_or_default(),
                verdict: report.verdict.unwrap_or_default(),
            },
            // agent-exec reports a hook's `rejected` as a denial with the agent's reason.
            Outcome::Rejected => HookResult::Decided {
                verdict: report.verdict.unwrap_or(Verdict {
                    decision: Decision::Deny,
                    ..Verdict::default()
                }),
                output: Vec::new(),
            },
            status => HookResult::Failed {
                outcome: status,
                what: format!(
                    "{status}: {}",
                    report.error.unwrap_or_else(|| "no details".into())
                ),
            },
        }
    }
}

/// What the caller gets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reply {
    /// Written to standard output.
    pub stdout: Vec<u8>,
    /// Written to standard error.
    pub stderr: String,
    /// The exit code.
    pub exit_code: u8,
}

/// The caller's answer for `result` under `protocol`. `event` is Claude Code's event
/// name (ignored by the other protocols).
pub fn reply(
    protocol: Protocol,
    event: &claude::EventFacts,
    agent: &str,
    result: HookResult,
    fail: FailPolicy,
) -> Reply {
    if protocol == Protocol::ClaudeCode {
        return claude::reply(event, agent, result, fail);
    }
    let action = protocol.action();
    match result {
        HookResult::Failed { outcome, what } => match fail {
            FailPolicy::Open => Reply {
                stderr: format!(
                    "spawner hook: warning: {agent} failed, so the {action} proceeds (fail-open): {what}\n"
                ),
                ..Reply::default()
            },
            FailPolicy::Closed => Reply {
                stderr: format!(
                    "spawner hook: {agent} failed, so the {action} was stopped (fail-closed): {what}\n{}",
                    if protocol == Protocol::Plain {
                        String::new()
                    } else {
                        format!(
                            "Fix the hook, or bypass it once with `git {action} --no-verify`.\n"
                        )
                    }
                ),
                exit_code: if protocol == Protocol::Plain {
                    outcome.exit_code()
                } else {
                    1
                },
                ..Reply::default()
            },
        },
        HookResult::Decided { verdict, output } => {
            let mut reply = Reply::default();
            if protocol == Protocol::Plain {
                reply.stdout = output;
            } else {
                reply.stderr.push_str(&String::from_utf8_lossy(&output));
                if !reply.stderr.is_empty() && !reply.stderr.ends_with('\n') {
                    reply.stderr.push('\n');
                }
            }
            if let Some(message) = &verdict.message {
                reply.stderr.push_str(&format!("{agent}: {message}\n"));
            }
            if verdict.decision.blocks() {
                let reason = verdict.reason.as_deref().unwrap_or("no reason given");
                reply.stderr.push_str(&format!(
                    "spawner hook: {agent} blocked the {action}:\n{reason}\n"
                ));
                reply.exit_code = if protocol == Protocol::Plain {
                    Outcome::Rejected.exit_code()
                } else {
                    1
                };
            }
            reply
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decided(decision: Decision) -> HookResult {
        HookResult::Decided {
            verdict: Verdict {
                decision,
                reason: Some("because".into()),
                ..Verdict::default()
            },
            output: b"out\n".to_vec(),
        }
    }

    fn failed() -> HookResult {
        HookResult::Failed {
            outcome: Outcome::Timeout,
            what: "timeout: too slow".into(),
        }
    }

    #[test]
    fn git_blocks_with_exit_1_and_the_reason_on_stderr() {
        let r = reply(
            Protocol::PreCommit,
            &claude::EventFacts::default(),
            "g",
            decided(Decision::Deny),
            FailPolicy::Closed,
        );
        assert_eq!(r.exit_code, 1);
        assert!(
            r.stderr.contains("out\n") && r.stderr.contains("because"),
            "{}",
            r.stderr
        );
        assert!(r.stdout.is_empty());
        let r = reply(
            Protocol::PrePush,
            &claude::EventFacts::default(),
            "g",
            decided(Decision::Pass),
            FailPolicy::Closed,
        );
        assert_eq!(r.exit_code, 0);
    }

    #[test]
    fn plain_answers_on_stdout_and_uses_the_outcome_table() {
        let r = reply(
            Protocol::Plain,
            &claude::EventFacts::default(),
            "g",
            decided(Decision::Allow),
            FailPolicy::Closed,
        );
        assert_eq!((r.exit_code, r.stdout.as_slice()), (0, &b"out\n"[..]));
        let r = reply(
            Protocol::Plain,
            &claude::EventFacts::default(),
            "g",
            decided(Decision::Deny),
            FailPolicy::Closed,
        );
        assert_eq!(r.exit_code, Outcome::Rejected.exit_code());
        let r = reply(
            Protocol::Plain,
            &claude::EventFacts::default(),
            "g",
            failed(),
            FailPolicy::Closed,
        );
        assert_eq!(r.exit_code, Outcome::Timeout.exit_code());
    }

    #[test]
    fn fail_policy_decides_for_a_failed_hook() {
        for protocol in [Protocol::PreCommit, Protocol::CommitMsg, Protocol::PrePush] {
            let open = reply(
                protocol,
                &claude::EventFacts::default(),
                "g",
                failed(),
                FailPolicy::Open,
            );
            assert_eq!(open.exit_code, 0);
            assert!(open.stderr.contains("fail-open"));
            let closed = reply(
                protocol,
                &claude::EventFacts::default(),
                "g",
                failed(),
                FailPolicy::Closed,
            );
            assert_eq!(closed.exit_code, 1);
            assert!(closed.stderr.contains("--no-verify"), "{}", closed.stderr);
        }
    }

    #[test]
    fn a_rejection_is_a_denial_with_its_message() {
        let report = RunReport {
            run_id: "r".into(),
            agent: "a".into(),
            status: Outcome::Rejected,
            exit_code: 7,
            output: None,
            output_base64: None,
            error: Some("rejected: not today".into()),
            cache_hit: None,
            timings: Default::default(),
            used_store: false,
            // As agent-exec writes it for a hook call.
            verdict: Some(Verdict {
                decision: Decision::Deny,
                reason: Some("not today".into()),
                ..Verdict::default()
            }),
        };
        match HookResult::from_report(report) {
            HookResult::Decided { verdict, .. } => {
                assert_eq!(verdict.decision, Decision::Deny);
                assert_eq!(verdict.reason.as_deref(), Some("not today"));
            }
            other => panic!("{other:?}"),
        }
    }
}
