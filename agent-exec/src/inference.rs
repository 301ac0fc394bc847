//! Inference for agents: the host side of the `inference` interface, a client of the
//! gpu-broker. The broker is reached (or started, once, under its lock) on the run's first
//! call, and the connection serves the rest of the run.

use std::path::PathBuf;
use std::time::Duration;

use agent_contract::Home;
use broker_client::{Client, ClientError, Dtype, ErrorCode, Launch, Tensor};

use crate::host::bindings::spawner::agent::inference as wit;

/// Where inference requests go. The broker client in agent-exec; a double in unit tests.
pub trait Inference: Send {
    /// Run `model` on `inputs`.
    fn infer(&mut self, model: &str, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, ClientError>;
}

/// The gpu-broker of a home, connected on first use.
pub struct Broker {
    socket: PathBuf,
    launch: Launch,
    client: Option<Client>,
}

/// How long a starter waits for a new broker's `ready` line.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

impl Broker {
    /// The broker of `home`: the executable `$SPAWNER_GPU_BROKER`, else `gpu-broker` beside
    /// this one.
    pub fn for_home(home: &Home) -> Broker {
        let socket = home.broker_socket_path();
        let program = std::env::var_os("SPAWNER_GPU_BROKER")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::current_exe()
                    .ok()
                    .and_then(|e| e.parent().map(|d| d.join("gpu-broker")))
            })
            .unwrap_or_else(|| PathBuf::from("gpu-broker"));
        let launch = Launch {
            program,
            args: vec![
                "--home".into(),
                home.root().display().to_string(),
                "--socket".into(),
                socket.display().to_string(),
            ],
            log: socket.with_extension("log"),
            ready_timeout: READY_TIMEOUT,
        };
        Broker {
            socket,
            launch,
            client: None,
        }
    }
}

impl Inference for Broker {
    fn infer(&mut self, model: &str, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, ClientError> {
        let client = match &mut self.client {
            Some(client) => client,
            None => self
                .client
                .insert(Client::connect_or_start(&self.socket, &self.launch)?),
        };
        let answer = client.infer(model, inputs);
        if matches!(answer, Err(ClientError::Unavailable(_))) {
            // The connection is gone; a later call starts over.
            self.client = None;
        }
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
            ErrorCode::ShuttingDown => wit::InferenceError::Unavailable(message),
            ErrorCode::Malformed
            | ErrorCode::Version
            | ErrorCode::LoadFailed
            | ErrorCode::GpuRequired
            | ErrorCode::Failed => wit::InferenceError::Failed(message),
        },
    }
}
