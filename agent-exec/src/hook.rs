//! Hook events and verdicts between their domain types ([`agent_contract::hook`], which
//! travel in the request header and the run report) and the WIT types the agent sees.

use agent_contract::hook::{
    AddedLine, AssistantEvent, Decision, FileChange, HookEvent, Push, PushRef, Verdict,
};

use crate::host::bindings::spawner::agent::hooks as wit;

/// The agent's view of a hook event.
pub fn to_wit(event: HookEvent) -> wit::HookEvent {
    match event {
        HookEvent::Assistant(AssistantEvent {
            event,
            session_id,
            cwd,
            tool_name,
            tool_input,
            writes,
            prompt,
            details: _,
        }) => wit::HookEvent::Assistant(wit::AssistantEvent {
            event,
            session_id,
            cwd,
            tool_name,
            tool_input,
            writes: files(writes),
            prompt,
        }),
        HookEvent::PreCommit { files: changes } => wit::HookEvent::PreCommit(files(changes)),
        HookEvent::CommitMsg { message } => wit::HookEvent::CommitMsg(message),
        HookEvent::PrePush(Push { remote, url, refs }) => wit::HookEvent::PrePush(wit::Push {
            remote,
            url,
            refs: refs
                .into_iter()
                .map(|r: PushRef| wit::PushRef {
                    local_ref: r.local_ref,
                    local_sha: r.local_sha,
                    remote_ref: r.remote_ref,
                    remote_sha: r.remote_sha,
                })
                .collect(),
        }),
        HookEvent::Plain => wit::HookEvent::Plain,
    }
}

fn files(changes: Vec<FileChange>) -> Vec<wit::FileChange> {
    changes
        .into_iter()
        .map(|c| wit::FileChange {
            path: c.path,
            added: c
                .added
                .into_iter()
                .map(|AddedLine { line, text }| wit::AddedLine { line, text })
                .collect(),
        })
        .collect()
}

/// The agent's verdict, for the run report.
pub fn from_wit(v: wit::Verdict) -> Verdict {
    Verdict {
        decision: match v.decision {
            wit::Decision::Pass => Decision::Pass,
            wit::Decision::Allow => Decision::Allow,
            wit::Decision::Ask => Decision::Ask,
            wit::Decision::Deny => Decision::Deny,
        },
        reason: v.reason,
        message: v.message,
        rewrite: v.rewrite,
        ..Verdict::default()
    }
}

/// Put the agent's advice into `verdict` (a `pass` one when it has not decided yet).
pub fn advise(verdict: &mut Option<Verdict>, advice: wit::Advice) {
    let v = verdict.get_or_insert_with(Verdict::default);
    v.context = advice.context;
    v.updated_input = advice.updated_input;
    v.stop = advice.stop;
    v.suppress_output = advice.suppress_output;
}

/// A new decision, keeping the advice given before it.
pub fn decide(verdict: &mut Option<Verdict>, decided: wit::Verdict) {
    let new = from_wit(decided);
    *verdict = Some(match verdict.take() {
        // The decision's own fields are new; the rest (the advice) stays.
        Some(old) => Verdict {
            decision: new.decision,
            reason: new.reason,
            message: new.message,
            rewrite: new.rewrite,
            ..old
        },
        None => new,
    });
}

/// The agent's view of an assistant event's other fields.
pub fn details(event: &HookEvent) -> Option<wit::AssistantDetails> {
    let HookEvent::Assistant(e) = event else {
        return None;
    };
    let d = (*e.details).clone();
    Some(wit::AssistantDetails {
        permission_mode: d.permission_mode,
        transcript_path: d.transcript_path,
        tool_use_id: d.tool_use_id,
        tool_response: d.tool_response,
        stop_hook_active: d.stop_hook_active,
        message: d.message,
        trigger: d.trigger,
        custom_instructions: d.custom_instructions,
        source: d.source,
        reason: d.reason,
    })
}
