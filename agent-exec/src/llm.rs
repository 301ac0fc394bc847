//! Language models for agents: the host side of the `llm` interface. A chat is checked
//! against the agent's `[llm] models` first (a model not listed is refused before any
//! connection), then placed ([`place`]): local first; a provider of `providers.toml` only
//! when the model is not served locally (or the agent names the provider, `lab/model`, or
//! the conversation does not fit the local model's context, or a GPU is required (by the
//! agent's `[placement] requires_gpu` or the model's model.toml) and the local model does
//! not run on one),
//! the agent's `[llm] escalate` lists it, and, for a remote one, the user's consent is in
//! the store. The broker makes the call either way. Every call, served or not, leaves an
//! [`LlmCall`] as evidence for the run record.

use std::time::Instant;

use broker_client::chat::{ChatRequest, Completion, FinishReason, Message};
use broker_client::{ClientError, ErrorCode};
use memory_store::LlmCall;

use crate::host::bindings::spawner::agent::llm as wit;

/// Where chats go: the broker client in agent-exec; a trait so that a test double can
/// stand in for it.
pub trait Llm: Send {
    /// Answer `request`; `on_text` gets each piece of the answer as it is generated.
    fn chat(
        &mut self,
        request: &ChatRequest,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Completion, ClientError>;
}

impl Llm for crate::inference::Broker {
    fn chat(
        &mut self,
        request: &ChatRequest,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Completion, ClientError> {
        let answer = self.client()?.chat(request, on_text);
        self.failed(&answer);
        answer
    }
}

/// What the host needs to make one call for an agent.
pub struct Policy<'a> {
    /// The agent's name, for messages.
    pub agent: &'a str,
    /// Its `[llm]`.
    pub llm: &'a agent_contract::manifest::LlmPolicy,
    /// When the run's deadline falls.
    pub deadline: Option<Instant>,
    /// The home (its model repository and `providers.toml`).
    pub home: &'a std::path::Path,
    /// The live consent of the user to this agent's use of a provider, if any.
    pub consent: &'a dyn Fn(&str) -> Result<Option<memory_store::Consent>, String>,
    /// Show the answer's text on standard error as it comes, in this log format.
    pub stream: Option<agent_contract::LogFormat>,
    /// The agent's `[placement] requires_gpu`: the local model serves its chats only on
    /// a GPU, and where it has none they go to a provider, as escalations.
    pub requires_gpu: bool,
}

/// Write a piece of streamed text to standard error: raw, or as a JSON line.
fn show(format: agent_contract::LogFormat, text: &str) {
    use std::io::Write;
    let mut err = std::io::stderr().lock();
    let _ = match format {
        agent_contract::LogFormat::Json => {
            writeln!(err, "{}", serde_json::json!({ "llm_text": text }))
        }
        agent_contract::LogFormat::Human => write!(err, "{text}").and_then(|()| err.flush()),
    };
}

/// Where a chat goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The broker's own model.
    Local,
    /// A provider of `providers.toml`.
    Provider {
        /// Its name.
        name: String,
        /// The model's name there.
        model: String,
        /// Whether the call leaves the machine.
        remote: bool,
        /// Why not locally.
        reason: String,
        /// The consent it relies on, for a remote one.
        consent: Option<String>,
    },
}

/// Place a chat with `model`; see the module docs for the rules.
pub fn place(policy: &Policy<'_>, model: &str) -> Result<Route, wit::LlmError> {
    // The broker's own model, without reading providers.toml (a repository name has no '/').
    if !model.contains('/')
        && policy
            .home
            .join("models")
            .join(model)
            .join("model.toml")
            .is_file()
    {
        return Ok(Route::Local);
    }
    let providers = agent_contract::providers::Providers::load(policy.home)
        .map_err(|e| wit::LlmError::Unavailable(e.to_string()))?;
    let explicit = model
        .split_once('/')
        .filter(|(p, _)| providers.get(p).is_some());
    let (provider, remote_model, reason) = match explicit {
        Some((p, m)) => (
            p.to_owned(),
            m.to_owned(),
            "the agent asked for this provider",
        ),
        None => {
            let serving = policy.llm.escalate.iter().find(|name| {
                providers
                    .get(name)
                    .is_some_and(|p| p.models.iter().any(|m| m == model))
            });
            match serving {
                Some(name) => (
                    name.clone(),
                    model.to_owned(),
                    "the model is not served locally",
                ),
                None => {
                    return Err(wit::LlmError::Unavailable(format!(
                        "model {model:?} is not in the local model repository ({}), and no provider in [llm] escalate of agent {:?} serves it",
                        policy.home.join("models").display(),
                        policy.agent
                    )));
                }
            }
        }
    };
    route_to(policy, &providers, &provider, remote_model, reason)
}

/// The route to `provider` (of `providers`) for `model` there: refused unless the agent's
/// `[llm] escalate` lists it and, for a remote one, the user consented.
fn route_to(
    policy: &Policy<'_>,
    providers: &agent_contract::providers::Providers,
    provider: &str,
    remote_model: String,
    reason: &str,
) -> Result<Route, wit::LlmError> {
    if !policy.llm.escalate.iter().any(|e| e == provider) {
        return Err(wit::LlmError::NotAllowed(format!(
            "provider {provider:?} is not in [llm] escalate of agent {:?} (add it to its agent.toml to use it)",
            policy.agent
        )));
    }
    let p = providers
        .get(provider)
        .ok_or_else(|| wit::LlmError::Unavailable(format!("no provider {provider:?}")))?;
    let consent = if p.is_remote() {
        match (policy.consent)(provider).map_err(wit::LlmError::Unavailable)? {
            Some(c) => Some(format!(
                "consent {} granted {} UTC{}",
                c.id,
                agent_contract::report::utc(c.granted_at_ms),
                c.expires_at_ms
                    .map(|e| format!(", until {} UTC", agent_contract::report::utc(e)))
                    .unwrap_or_default()
            )),
            None => {
                return Err(wit::LlmError::ConsentRequired(format!(
                    "provider {provider:?} ({}) is remote: the messages of this chat would leave this machine, and the user has not consented to agent {:?} using it; to allow it, run `spawner consent grant {} {provider}`",
                    p.host(),
                    policy.agent,
                    policy.agent
                )));
            }
        }
    } else {
        None
    };
    Ok(Route::Provider {
        name: provider.to_owned(),
        model: remote_model,
        remote: p.is_remote(),
        reason: reason.to_owned(),
        consent,
    })
}

/// Where a chat goes that the local model declined (`reason`: why, for the evidence):
/// the first provider of the agent's `[llm] escalate` that serves the model, under the
/// same rules as any escalation; `None` when none does.
fn escalation_route(
    policy: &Policy<'_>,
    model: &str,
    reason: &str,
) -> Result<Option<Route>, wit::LlmError> {
    let providers = agent_contract::providers::Providers::load(policy.home)
        .map_err(|e| wit::LlmError::Unavailable(e.to_string()))?;
    let Some(name) = policy.llm.escalate.iter().find(|name| {
        providers
            .get(name)
            .is_some_and(|p| p.models.iter().any(|m| m == model))
    }) else {
        return Ok(None);
    };
    route_to(policy, &providers, name, model.to_owned(), reason).map(Some)
}

/// Why the local model declined a chat that a provider may take instead: the reason for
/// the evidence, and the agent's error when no provider takes it. `None` for any other
/// answer.
fn declined_locally(
    policy: &Policy<'_>,
    model: &str,
    answer: &Result<Completion, ClientError>,
) -> Option<(String, wit::LlmError)> {
    let Err(ClientError::Broker { code, message }) = answer else {
        return None;
    };
    match code {
        ErrorCode::ContextTooLong => Some((
            format!("the conversation does not fit the local model's context ({message})"),
            wit::LlmError::ContextTooLong(message.clone()),
        )),
        // The agent asked for a GPU, or the model's own model.toml requires one.
        ErrorCode::GpuRequired => {
            let who = if policy.requires_gpu {
                "the agent requires a GPU ([placement] requires_gpu)"
            } else {
                "the local model requires a GPU (require_gpu in its model.toml)"
            };
            Some((
                format!("{who}: {message}"),
                wit::LlmError::Unavailable(format!(
                    "{message}; {who}, and no provider in [llm] escalate of agent {:?} \
                     serves model {model:?}: add one that does, or run it where the broker \
                     has a GPU",
                    policy.agent
                )),
            ))
        }
        _ => None,
    }
}

/// Make one call: check it, send it, and return the answer with its evidence.
pub fn chat(
    provider: &mut dyn Llm,
    policy: &Policy<'_>,
    model: String,
    messages: Vec<wit::Message>,
    params: wit::Params,
) -> (Result<wit::Completion, wit::LlmError>, LlmCall) {
    let started = Instant::now();
    let messages: Vec<Message> = messages
        .into_iter()
        .map(|m| Message {
            role: m.role,
            content: m.content,
        })
        .collect();
    let mut call = LlmCall {
        provider: "local".into(),
        remote: false,
        model: model.clone(),
        device: None,
        outcome: String::new(),
        error: None,
        prompt_tokens: None,
        completion_tokens: None,
        bytes_sent: 0,
        escalation: None,
        consent: None,
        latency_ms: 0.0,
        first_token_ms: None,
        prompt: policy
            .llm
            .retain
            .then(|| serde_json::to_string(&messages).unwrap_or_default()),
        answer: None,
    };
    let answer = if !policy.llm.models.contains(&model) {
        Err(wit::LlmError::NotAllowed(format!(
            "model {model:?} is not in [llm] models of agent {:?} (add it to its agent.toml to use it)",
            policy.agent
        )))
    } else {
        match place(policy, &model) {
            Err(e) => Err(e),
            Ok(first) => {
                let mut route = first;
                loop {
                    let answer = send(
                        provider, policy, &mut call, &route, &model, &messages, &params,
                    );
                    // What the local model cannot take (too long, or not on a GPU), a
                    // provider that serves the model may, under the escalation rules.
                    let declined = match route {
                        Route::Local => declined_locally(policy, &model, &answer),
                        Route::Provider { .. } => None,
                    };
                    let Some((reason, refusal)) = declined else {
                        break answer.map_err(to_wit_error);
                    };
                    match escalation_route(policy, &model, &reason) {
                        Ok(Some(next)) => route = next,
                        Ok(None) => break Err(refusal),
                        Err(e) => break Err(e),
                    }
                }
            }
        }
    };
    finish(call, started, policy, answer)
}

/// Send the chat along `route`, noting the route in `call`.
fn send(
    provider: &mut dyn Llm,
    policy: &Policy<'_>,
    call: &mut LlmCall,
    route: &Route,
    model: &str,
    messages: &[Message],
    params: &wit::Params,
) -> Result<Completion, ClientError> {
    let (provider_name, model) = match route {
        Route::Local => (None, model.to_owned()),
        Route::Provider {
            name,
            model: there,
            remote,
            reason,
            consent,
        } => {
            call.provider = name.clone();
            call.remote = *remote;
            call.escalation = Some(reason.clone());
            call.consent = consent.clone();
            (Some(name.clone()), there.clone())
        }
    };
    let request = ChatRequest {
        require_gpu: policy.requires_gpu && provider_name.is_none(),
        provider: provider_name,
        model,
        messages: messages.to_vec(),
        max_tokens: params.max_tokens,
        temperature: params.temperature,
        top_p: params.top_p,
        stop: params.stop.clone(),
        seed: params.seed,
        stream: policy.stream.is_some(),
        // A little before the run's own deadline, so that the agent is told `timeout`
        // and can still answer (with what it has, or a message of its own).
        timeout_ms: crate::deadline::host_call_timeout_ms(policy.deadline),
    };
    let mut streamed = false;
    let mut on_text = |text: &str| {
        if let Some(format) = policy.stream {
            streamed = true;
            show(format, text);
        }
    };
    let answer = provider.chat(&request, &mut on_text);
    if streamed && policy.stream == Some(agent_contract::LogFormat::Human) {
        show(agent_contract::LogFormat::Human, "\n");
    }
    answer
}

/// Complete the call's evidence with its answer.
fn finish(
    mut call: LlmCall,
    started: Instant,
    policy: &Policy<'_>,
    answer: Result<Completion, wit::LlmError>,
) -> (Result<wit::Completion, wit::LlmError>, LlmCall) {
    call.latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let answer = answer.map(|c| {
        call.device = (!c.device.is_empty()).then(|| c.device.clone());
        // Counts the provider did not give are not guessed in the evidence.
        call.prompt_tokens = (!c.uncounted).then_some(c.prompt_tokens);
        call.completion_tokens = (!c.uncounted).then_some(c.completion_tokens);
        call.first_token_ms = Some(c.first_token_ms);
        call.provider = c.provider.clone();
        call.remote = c.remote;
        call.bytes_sent = c.bytes_sent;
        if policy.llm.retain {
            call.answer = Some(c.text.clone());
        }
        wit::Completion {
            text: c.text,
            finish_reason: match c.finish_reason {
                FinishReason::Stop => wit::FinishReason::Stop,
                FinishReason::Length => wit::FinishReason::Length,
            },
            prompt_tokens: c.prompt_tokens,
            completion_tokens: c.completion_tokens,
            provider: c.provider,
            model: c.model,
        }
    });
    match &answer {
        Ok(c) => {
            call.outcome = match c.finish_reason {
                wit::FinishReason::Stop => "stop",
                wit::FinishReason::Length => "length",
            }
            .into();
        }
        Err(e) => {
            let (kind, message) = kind(e);
            call.outcome = kind.into();
            call.error = Some(message.to_owned());
        }
    }
    (answer, call)
}

/// An error's kind, as the WIT names it, and its message.
pub fn kind(e: &wit::LlmError) -> (&'static str, &str) {
    match e {
        wit::LlmError::NotAllowed(m) => ("not-allowed", m),
        wit::LlmError::Unavailable(m) => ("unavailable", m),
        wit::LlmError::ContextTooLong(m) => ("context-too-long", m),
        wit::LlmError::ConsentRequired(m) => ("consent-required", m),
        wit::LlmError::Timeout(m) => ("timeout", m),
        wit::LlmError::InvalidInput(m) => ("invalid-input", m),
        wit::LlmError::Failed(m) => ("failed", m),
    }
}

/// The agent's view of a client error.
fn to_wit_error(e: ClientError) -> wit::LlmError {
    match e {
        e @ ClientError::Unavailable(_) => wit::LlmError::Unavailable(e.to_string()),
        ClientError::Broker { code, message } => match code {
            ErrorCode::UnknownModel
            | ErrorCode::ShuttingDown
            | ErrorCode::Busy
            | ErrorCode::Forbidden
            | ErrorCode::GpuRequired
            | ErrorCode::Unreachable
            | ErrorCode::UnknownServer
            | ErrorCode::LoadFailed => wit::LlmError::Unavailable(message),
            ErrorCode::ContextTooLong => wit::LlmError::ContextTooLong(message),
            ErrorCode::Timeout => wit::LlmError::Timeout(message),
            ErrorCode::InvalidInput | ErrorCode::TooLarge => wit::LlmError::InvalidInput(message),
            ErrorCode::Malformed | ErrorCode::Version | ErrorCode::Failed => {
                wit::LlmError::Failed(message)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// The broker, as a CPU-only machine's: its own model refuses a chat that must run on a
    /// GPU (the request says so, or `model_requires_gpu`: the model's own model.toml); a
    /// provider answers anything. Keeps every request it was sent.
    #[derive(Default)]
    struct CpuOnly {
        sent: Vec<ChatRequest>,
        model_requires_gpu: bool,
    }

    impl Llm for CpuOnly {
        fn chat(
            &mut self,
            request: &ChatRequest,
            _: &mut dyn FnMut(&str),
        ) -> Result<Completion, ClientError> {
            self.sent.push(request.clone());
            if request.provider.is_none() && (request.require_gpu || self.model_requires_gpu) {
                return Err(ClientError::Broker {
                    code: ErrorCode::GpuRequired,
                    message: "model \"m\" requires a GPU and runs on the cpu here".into(),
                });
            }
            Ok(Completion {
                text: "hello".into(),
                finish_reason: FinishReason::Stop,
                prompt_tokens: 3,
                completion_tokens: 1,
                provider: request.provider.clone().unwrap_or_else(|| "local".into()),
                model: request.model.clone(),
                device: "cpu".into(),
                first_token_ms: 1.0,
                total_ms: 2.0,
                tokens: Vec::new(),
                remote: false,
                bytes_sent: 0,
                uncounted: false,
            })
        }
    }

    /// A home whose repository has model `m`, with a loopback provider `near` serving it.
    fn home() -> tempfile::TempDir {
        let home = tempfile::tempdir().expect("tempdir");
        let model = home.path().join("models/m");
        std::fs::create_dir_all(&model).expect("mkdir");
        std::fs::write(model.join("model.toml"), "name = \"m\"\n").expect("model.toml");
        std::fs::write(
            home.path().join("providers.toml"),
            "[[provider]]\nname = \"near\"\nurl = \"http://127.0.0.1:9/v1\"\nmodels = [\"m\"]\n",
        )
        .expect("providers.toml");
        home
    }

    /// Text in several scripts, with an emoji and a combining mark.
    const QUESTION: &str = "héllo, 世界, Привет 🦀 cafe\u{301}?";

    fn ask(
        broker: &mut dyn Llm,
        home: &Path,
        escalate: &[&str],
        requires_gpu: bool,
    ) -> (Result<wit::Completion, wit::LlmError>, LlmCall) {
        let llm = agent_contract::manifest::LlmPolicy {
            models: vec!["m".into()],
            escalate: escalate.iter().map(|e| (*e).to_owned()).collect(),
            ..Default::default()
        };
        let policy = Policy {
            agent: "a",
            llm: &llm,
            deadline: None,
            home,
            consent: &|_| Ok(None),
            stream: None,
            requires_gpu,
        };
        let messages = vec![wit::Message {
            role: "user".into(),
            content: QUESTION.into(),
        }];
        let params = wit::Params {
            max_tokens: Some(4),
            temperature: None,
            top_p: None,
            stop: Vec::new(),
            seed: None,
        };
        chat(broker, &policy, "m".into(), messages, params)
    }

    #[test]
    fn an_agent_that_needs_no_gpu_is_served_by_the_local_model_on_the_cpu() {
        let home = home();
        let mut broker = CpuOnly::default();
        let (answer, call) = ask(&mut broker, home.path(), &["near"], false);
        assert_eq!(answer.expect("served").provider, "local");
        assert_eq!(broker.sent.len(), 1);
        assert!(!broker.sent[0].require_gpu);
        assert_eq!(call.escalation, None);
    }

    #[test]
    fn a_chat_that_requires_a_gpu_goes_to_a_provider_where_the_local_model_has_none() {
        let home = home();
        let mut broker = CpuOnly::default();
        let (answer, call) = ask(&mut broker, home.path(), &["near"], true);
        assert_eq!(answer.expect("served").provider, "near");
        // The local model was asked first, on a GPU only; the provider without the flag.
        let asked: Vec<_> = broker
            .sent
            .iter()
            .map(|r| (r.provider.clone(), r.require_gpu))
            .collect();
        assert_eq!(asked, [(None, true), (Some("near".into()), false)]);
        // The provider gets the conversation whole.
        assert_eq!(broker.sent[1].messages[0].content, QUESTION);
        assert_eq!(call.provider, "near");
        assert!(
            call.escalation
                .as_deref()
                .is_some_and(|e| e.starts_with("the agent requires a GPU")),
            "{call:?}"
        );
    }

    #[test]
    fn a_local_model_that_requires_a_gpu_it_lacks_escalates_for_any_agent() {
        let home = home();
        // The broker refuses whatever the request says: the model's own manifest asks.
        let mut broker = CpuOnly {
            model_requires_gpu: true,
            ..CpuOnly::default()
        };
        let (answer, call) = ask(&mut broker, home.path(), &["near"], false);
        assert_eq!(answer.expect("served").provider, "near");
        assert!(
            call.escalation
                .as_deref()
                .is_some_and(|e| e.starts_with("the local model requires a GPU")),
            "{call:?}"
        );
        let (answer, _) = ask(&mut broker, home.path(), &[], false);
        match answer {
            Err(wit::LlmError::Unavailable(m)) => {
                assert!(m.contains("require_gpu in its model.toml"), "{m}")
            }
            other => panic!("not unavailable: {other:?}"),
        }
    }

    #[test]
    fn a_chat_that_requires_a_gpu_fails_unavailable_when_no_provider_may_take_it() {
        let home = home();
        let mut broker = CpuOnly::default();
        let (answer, call) = ask(&mut broker, home.path(), &[], true);
        match answer {
            Err(wit::LlmError::Unavailable(m)) => {
                assert!(m.contains("[placement] requires_gpu"), "{m}");
                assert!(m.contains("[llm] escalate"), "{m}");
            }
            other => panic!("not unavailable: {other:?}"),
        }
        assert_eq!(broker.sent.len(), 1, "nothing after the local refusal");
        assert_eq!(call.outcome, "unavailable");
        assert_eq!(call.provider, "local");
    }
}
