//! Tools for agents: the host side of the `tools` interface. A call is checked against the
//! agent's `[tools]` first (a server or tool not listed is refused before any connection),
//! then against `tools.toml` (the server must be configured; a remote one needs the user's
//! live consent), and only then sent to the broker, which holds the servers' sessions.
//! Every call, made or refused, leaves a [`ToolCall`] as evidence for the run record.

use std::time::Instant;

use agent_contract::manifest::ToolPolicy;
use agent_contract::tools::ToolServers;
use broker_client::tools::{ToolList, ToolOutput, ToolRequest};
use broker_client::{ClientError, ErrorCode};
use memory_store::ToolCall;

use crate::host::bindings::spawner::agent::tools as wit;

/// Where tool requests go: the broker client in agent-exec; a trait so that a test double
/// can stand in for it.
pub trait Tools: Send {
    /// List the tools of some servers.
    fn list(&mut self, request: &ToolRequest) -> Result<ToolList, ClientError>;
    /// Call one tool.
    fn call(&mut self, request: &ToolRequest) -> Result<ToolOutput, ClientError>;
}

impl Tools for crate::inference::Broker {
    fn list(&mut self, request: &ToolRequest) -> Result<ToolList, ClientError> {
        let answer = self.client()?.tools(request);
        self.failed(&answer);
        answer
    }

    fn call(&mut self, request: &ToolRequest) -> Result<ToolOutput, ClientError> {
        let answer = self.client()?.tools(request);
        self.failed(&answer);
        answer
    }
}

/// What the host needs to make one call for an agent.
pub struct Policy<'a> {
    /// The agent's name, for messages.
    pub agent: &'a str,
    /// Its `[tools]`.
    pub tools: &'a ToolPolicy,
    /// When the run's deadline falls.
    pub deadline: Option<Instant>,
    /// The home (its `tools.toml`).
    pub home: &'a std::path::Path,
    /// The live consent of the user to this agent's use of a server, if any.
    pub consent: &'a dyn Fn(&str) -> Result<Option<memory_store::Consent>, String>,
}

impl Policy<'_> {
    /// The time the broker may take ([`crate::deadline::host_call_timeout_ms`]).
    fn timeout_ms(&self) -> Option<u64> {
        crate::deadline::host_call_timeout_ms(self.deadline)
    }

    /// Check that `server` is configured and, when remote, consented to; the consent it
    /// relies on, if any, and whether it is remote.
    fn admit(
        &self,
        servers: &ToolServers,
        server: &str,
    ) -> Result<(bool, Option<String>), wit::ToolError> {
        let Some(config) = servers.get(server) else {
            return Err(wit::ToolError::Unavailable(format!(
                "no tool server {server:?} in {} (add a [[server]] named so)",
                self.home.join(agent_contract::tools::TOOLS_FILE).display()
            )));
        };
        if !config.is_remote() {
            return Ok((false, None));
        }
        // A consent names a provider or a tool server: one name must not be both, or a
        // consent to one would cover the other.
        let providers = agent_contract::providers::Providers::load(self.home)
            .map_err(|e| wit::ToolError::Unavailable(e.to_string()))?;
        if providers.get(server).is_some() {
            return Err(wit::ToolError::Unavailable(format!(
                "{server:?} names both a provider (providers.toml) and a remote tool server (tools.toml), so a consent to one would cover the other; rename one of them"
            )));
        }
        match (self.consent)(server).map_err(wit::ToolError::Unavailable)? {
            Some(c) => Ok((
                true,
                Some(format!(
                    "consent {} granted {} UTC",
                    c.id,
                    agent_contract::report::utc(c.granted_at_ms)
                )),
            )),
            None => Err(wit::ToolError::ConsentRequired(format!(
                "tool server {server:?} ({}) is remote: the arguments of this call would leave this machine, and the user has not consented to agent {:?} using it; to allow it, run `spawner consent grant {} {server}`",
                config.endpoint(),
                self.agent,
                self.agent
            ))),
        }
    }

    fn servers(&self) -> Result<ToolServers, wit::ToolError> {
        ToolServers::load(self.home).map_err(|e| wit::ToolError::Unavailable(e.to_string()))
    }
}

/// The tools the agent may use, of every server its `[tools]` lists.
pub fn list(broker: &mut dyn Tools, policy: &Policy<'_>) -> Result<Vec<wit::Tool>, wit::ToolError> {
    if policy.tools.servers.is_empty() {
        return Ok(Vec::new());
    }
    let servers = policy.servers()?;
    for server in &policy.tools.servers {
        policy.admit(&servers, server)?;
    }
    let request = ToolRequest::List {
        servers: policy.tools.servers.clone(),
        timeout_ms: policy.timeout_ms(),
    };
    let list = broker.list(&request).map_err(to_wit_error)?;
    Ok(list
        .tools
        .into_iter()
        .filter(|t| policy.tools.allows(&t.server, &t.name))
        .map(|t| wit::Tool {
            server: t.server,
            name: t.name,
            description: t.description,
            input_schema: t.input_schema,
        })
        .collect())
}

/// Make one call: check it, send it, and return the result with its evidence.
pub fn call(
    broker: &mut dyn Tools,
    policy: &Policy<'_>,
    server: String,
    tool: String,
    arguments: String,
    idempotency_key: Option<String>,
) -> (Result<wit::ToolResult, wit::ToolError>, ToolCall) {
    let started = Instant::now();
    let mut evidence = ToolCall {
        server: server.clone(),
        tool: tool.clone(),
        remote: false,
        outcome: String::new(),
        error: None,
        duration_ms: 0.0,
        start_ms: 0.0,
        bytes_in: arguments.len() as u64,
        bytes_out: 0,
        consent: None,
        arguments: policy.tools.retain.then(|| arguments.clone()),
        result: None,
    };
    let answer = if !policy.tools.allows(&server, &tool) {
        Err(wit::ToolError::NotAllowed(format!(
            "tool {server}/{tool} is not allowed by [tools] of agent {:?} (list the server in `servers`{} in its agent.toml to use it)",
            policy.agent,
            if policy.tools.allow.is_some() {
                " and the tool in `allow`"
            } else {
                ""
            }
        )))
    } else {
        policy
            .servers()
            .and_then(|servers| {
                evidence.remote = servers.get(&server).is_some_and(|s| s.is_remote());
                policy.admit(&servers, &server)
            })
            .and_then(|(remote, consent)| {
                evidence.remote = remote;
                evidence.consent = consent;
                let request = ToolRequest::Call {
                    server,
                    tool,
                    arguments,
                    idempotency_key,
                    timeout_ms: policy.timeout_ms(),
                };
                broker.call(&request).map_err(to_wit_error)
            })
            .map(|output| {
                evidence.bytes_out = output.bytes_out;
                evidence.start_ms = output.start_ms;
                if policy.tools.retain {
                    evidence.result = Some(output.text.clone());
                }
                wit::ToolResult {
                    text: output.text,
                    structured: output.structured,
                }
            })
    };
    evidence.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    match &answer {
        Ok(_) => evidence.outcome = "ok".into(),
        Err(e) => {
            let (kind, message) = kind(e);
            evidence.outcome = kind.into();
            // A tool's own error carries its output: kept whole only with retain.
            evidence.error = Some(if policy.tools.retain {
                message.to_owned()
            } else {
                cut(message, MAX_ERROR_CHARS)
            });
        }
    }
    (answer, evidence)
}

/// The longest error message kept with a call's evidence without `[tools] retain`.
const MAX_ERROR_CHARS: usize = 300;

/// `text` cut to `max` characters, with an ellipsis when cut.
fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// An error's kind, as the WIT names it, and its message.
pub fn kind(e: &wit::ToolError) -> (&'static str, &str) {
    match e {
        wit::ToolError::NotAllowed(m) => ("not-allowed", m),
        wit::ToolError::Unavailable(m) => ("unavailable", m),
        wit::ToolError::InvalidArguments(m) => ("invalid-arguments", m),
        wit::ToolError::ConsentRequired(m) => ("consent-required", m),
        wit::ToolError::Failed(m) => ("failed", m),
        wit::ToolError::Timeout(m) => ("timeout", m),
    }
}

/// The agent's view of a client error.
fn to_wit_error(e: ClientError) -> wit::ToolError {
    match e {
        e @ ClientError::Unavailable(_) => wit::ToolError::Unavailable(e.to_string()),
        ClientError::Broker { code, message } => match code {
            // A broker started by an older build knows no Tools frame.
            ErrorCode::Malformed if message.contains("unknown frame kind") => {
                wit::ToolError::Unavailable(format!(
                    "{message}: the running gpu-broker predates tools; stop it (`spawner doctor` shows its pid) and the next call starts a current one"
                ))
            }
            ErrorCode::InvalidInput => wit::ToolError::InvalidArguments(message),
            ErrorCode::Timeout => wit::ToolError::Timeout(message),
            ErrorCode::Failed | ErrorCode::TooLarge => wit::ToolError::Failed(message),
            ErrorCode::UnknownServer
            | ErrorCode::Unreachable
            | ErrorCode::UnknownModel
            | ErrorCode::ShuttingDown
            | ErrorCode::Busy
            | ErrorCode::Forbidden
            | ErrorCode::GpuRequired
            | ErrorCode::LoadFailed
            | ErrorCode::ContextTooLong
            | ErrorCode::Malformed
            | ErrorCode::Version => wit::ToolError::Unavailable(message),
        },
    }
}
