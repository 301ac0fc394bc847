//! Language models for agents: the host side of the `llm` interface. A chat is checked
//! against the agent's `[llm] models` first (a model not listed is refused before any
//! connection), then placed ([`place`]): local first; a provider of `providers.toml` only
//! when the model is not served locally (or the agent names the provider, `lab/model`, or
//! the conversation does not fit the local model's context),
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

/// Where a chat goes that the local model cannot take whole (`why`, the broker's words):
/// the first provider of the agent's `[llm] escalate` that serves the model, under the
/// same rules as any escalation; `None` when none does (the agent then hears
/// `context-too-long`).
fn too_long_route(
    policy: &Policy<'_>,
    model: &str,
    why: &str,
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
    route_to(
        policy,
        &providers,
        name,
        model.to_owned(),
        &format!("the conversation does not fit the local model's context ({why})"),
    )
    .map(Some)
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
                    match (&route, answer) {
                        // The local model cannot take it whole: a provider that serves the
                        // model may, under the escalation rules.
                        (Route::Local, Err(wit::LlmError::ContextTooLong(why))) => {
                            match too_long_route(policy, &model, &why) {
                                Ok(Some(next)) => route = next,
                                Ok(None) => break Err(wit::LlmError::ContextTooLong(why)),
                                Err(e) => break Err(e),
                            }
                        }
                        (_, answer) => break answer,
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
) -> Result<Completion, wit::LlmError> {
    {
        {
            {
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
                    provider: provider_name,
                    model,
                    messages: messages.to_vec(),
                    max_tokens: params.max_tokens,
                    temperature: params.temperature,
                    top_p: params.top_p,
                    stop: params.stop.clone(),
                    seed: params.seed,
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
                let answer = provider.chat(&request, &mut on_text).map_err(to_wit_error);
                if streamed && policy.stream == Some(agent_contract::LogFormat::Human) {
                    show(agent_contract::LogFormat::Human, "\n");
                }
                answer
            }
        }
    }
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
        call.prompt_tokens = Some(c.prompt_tokens);
        call.completion_tokens = Some(c.completion_tokens);
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
