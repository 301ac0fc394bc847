//! Inference for agents: the host side of the `inference` interface, a client of the
//! gpu-broker. The broker is reached (or started, once, under its lock) on the run's first
//! call, and the connection serves the rest of the run.

use agent_contract::Home;
use agent_contract::layout::BrokerLayout;
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
    layout: BrokerLayout,
    home: Home,
    client: Option<Client>,
}

impl Broker {
    /// The broker at `layout` (as the front resolved it), else as this process resolves
    /// it: `$SPAWNER_GPU_BROKER`, else `gpu-broker` beside this executable.
    pub fn new(home: Home, layout: Option<BrokerLayout>) -> Broker {
        let layout = layout.unwrap_or_else(|| {
            BrokerLayout::beside(&home, &std::env::current_exe().unwrap_or_default())
        });
        Broker {
            layout,
            home,
            client: None,
        }
    }

    /// Connect, starting the broker when none answers.
    fn connect(&self) -> Result<Client, ClientError> {
        let mut launch = Launch::new(
            self.layout.program.clone(),
            self.home.root(),
            &self.layout.socket,
        );
        if let Some(library) = &self.layout.ort_library {
            launch.args.push("--ort-lib".into());
            launch.args.push(library.display().to_string());
        }
        Client::connect_or_start(&self.layout.socket, &launch)
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
            | ErrorCode::Unreachable
            | ErrorCode::UnknownServer
            | ErrorCode::Failed => wit::InferenceError::Failed(message),
        },
    }
}
