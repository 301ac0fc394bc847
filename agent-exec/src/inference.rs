//! Inference for agents: the host side of the `inference` interface, a client of the
//! gpu-broker. The broker is reached (or started, once, under its lock) on the run's first
//! call, and the connection serves the rest of the run.

use std::path::PathBuf;

use agent_contract::Home;
use broker_client::{Client, ClientError, Dtype, ErrorCode, Launch, Tensor};

use crate::host::bindings::spawner::agent::inference as wit;

/// Where inference requests go: the broker client in agent-exec; a trait so that a test
/// double can stand in for it.
pub trait Inference: Send {
    /// Run `model` on `inputs`.
    fn infer(&mut self, model: &str, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, ClientError>;
}

/// The gpu-broker of a home, connected on first use. Made for every run, so it does
/// nothing until an agent calls a model: most runs never do.
pub struct Broker {
    home: Home,
    client: Option<Client>,
}

impl Broker {
    /// The broker of `home`.
    pub fn for_home(home: Home) -> Broker {
        Broker { home, client: None }
    }

    /// Connect, starting the broker when none answers: the executable
    /// `$SPAWNER_GPU_BROKER`, else `gpu-broker` beside this one.
    fn connect(&self) -> Result<Client, ClientError> {
        let socket = self.home.broker_socket_path();
        let program = std::env::var_os("SPAWNER_GPU_BROKER")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::current_exe()
                    .ok()
                    .and_then(|e| e.parent().map(|d| d.join("gpu-broker")))
            })
            .unwrap_or_else(|| PathBuf::from("gpu-broker"));
        Client::connect_or_start(&socket, &Launch::new(program, self.home.root(), &socket))
    }
}

impl Broker {
    /// The connection, made (or made again) as needed.
    pub fn client(&mut self) -> Result<&mut Client, ClientError> {
        // A connection the broker closed while the agent was busy elsewhere (longer than
        // the broker's client timeout) is replaced, not failed on.
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
        }
        if self.client.is_none() {
            self.client = Some(self.connect()?);
        }
        self.client
            .as_mut()
            .ok_or_else(|| ClientError::Unavailable("no connection".into()))
    }

    /// Forget a connection that failed: a later call starts over.
    pub fn failed<T>(&mut self, answer: &Result<T, ClientError>) {
        if matches!(answer, Err(ClientError::Unavailable(_))) {
            self.client = None;
        }
    }
}

impl Inference for Broker {
    fn infer(&mut self, model: &str, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, ClientError> {
        let answer = self.client()?.infer(model, inputs);
        self.failed(&answer);
        answer
    }
}

/// A WIT tensor on the wire.
pub fn to_wire(t: wit::Tensor) -> Tensor {
    Tensor {
        name: t.name,
        dtype: match t.dtype {
            wit::Dtype::Float32 => Dtype::Float32,
            wit::Dtype::Float64 => Dtype::Float64,
            wit::Dtype::Int32 => Dtype::Int32,
            wit::Dtype::Int64 => Dtype::Int64,
            wit::Dtype::Uint8 => Dtype::Uint8,
            wit::Dtype::Boolean => Dtype::Bool,
        },
        shape: t.shape,
        data: t.data,
    }
}

/// A wire tensor for the agent.
pub fn from_wire(t: Tensor) -> wit::Tensor {
    wit::Tensor {
        name: t.name,
        dtype: match t.dtype {
            Dtype::Float32 => wit::Dtype::Float32,
            Dtype::Float64 => wit::Dtype::Float64,
            Dtype::Int32 => wit::Dtype::Int32,
            Dtype::Int64 => wit::Dtype::Int64,
            Dtype::Uint8 => wit::Dtype::Uint8,
            Dtype::Bool => wit::Dtype::Boolean,
        },
        shape: t.shape,
        data: t.data,
    }
}

/// The agent's view of a client error.
pub fn to_wit_error(e: ClientError) -> wit::InferenceError {
    match e {
        e @ ClientError::Unavailable(_) => wit::InferenceError::Unavailable(e.to_string()),
        ClientError::Broker { code, message } => match code {
            ErrorCode::UnknownModel => wit::InferenceError::UnknownModel(message),
            ErrorCode::InvalidInput | ErrorCode::TooLarge => {
                wit::InferenceError::InvalidInput(message)
            }
            ErrorCode::ShuttingDown | ErrorCode::Busy | ErrorCode::Forbidden => {
                wit::InferenceError::Unavailable(message)
            }
            ErrorCode::Malformed
            | ErrorCode::Version
            | ErrorCode::LoadFailed
            | ErrorCode::GpuRequired
            | ErrorCode::ContextTooLong
            | ErrorCode::Timeout
            | ErrorCode::Failed => wit::InferenceError::Failed(message),
        },
    }
}
