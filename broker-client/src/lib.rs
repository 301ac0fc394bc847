//! broker-client: how agent-exec and spawner reach the inference broker (`gpu-broker`),
//! without linking ONNX Runtime.
//!
//! - [`wire`]: the length-prefixed binary frames both sides speak.
//! - [`Client`]: connect (starting the broker on demand, once, under a lock), handshake,
//!   then `infer`, `chat`, `tools`, `list_models` and `status` requests.
//! - [`chat`]: chat completion requests and answers.
//! - [`tools`]: tool (MCP) requests and answers.
//!
//! # Starting on demand
//! A client that finds no broker takes `<socket>.start` (flock), tries again (another
//! starter may have won), and otherwise spawns `gpu-broker` in its own process group with
//! its standard output on a pipe. The broker writes `ready` there once it listens (or
//! `error: ...` when it cannot start): the client waits for that line, never for a sleep.

pub mod chat;
pub mod tools;
pub mod wire;

use std::io::{BufRead, BufReader};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use interprocess::local_socket::prelude::*;
use interprocess::local_socket::{GenericFilePath, Stream};
use nix::fcntl::{Flock, FlockArg};

pub use wire::{Dtype, ErrorCode, Frame, Tensor};

/// Why a request did not get an answer from a model.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No broker could be reached or started.
    #[error("the inference broker is unavailable: {0}")]
    Unavailable(String),
    /// The broker answered with an error.
    #[error("{message}")]
    Broker {
        /// What kind of failure.
        code: ErrorCode,
        /// The broker's words.
        message: String,
    },
}

/// How to start the broker when none answers.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The gpu-broker executable.
    pub program: PathBuf,
    /// Its arguments (home, socket, ...).
    pub args: Vec<String>,
    /// Where its standard error goes (appended).
    pub log: PathBuf,
    /// How long to wait for its `ready` line.
    pub ready_timeout: Duration,
}

impl Launch {
    /// How a home's broker is started: `program --home <home> --socket <socket>`, its log
    /// beside the socket (`broker.log`), 20 s to get ready. The one place these agree.
    /// Paths are made absolute: the broker runs in `/`, not in its starter's directory.
    pub fn new(program: PathBuf, home: &Path, socket: &Path) -> Launch {
        let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
        Launch {
            program: absolute(&program),
            args: vec![
                "--home".into(),
                absolute(home).display().to_string(),
                "--socket".into(),
                absolute(socket).display().to_string(),
            ],
            log: socket.with_extension("log"),
            ready_timeout: Duration::from_secs(20),
        }
    }
}

/// A connection to the broker, past the handshake.
pub struct Client {
    stream: Stream,
    next_id: u64,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> ClientError {
    ClientError::Unavailable(format!("{what}: {e}"))
}

impl Client {
    /// Connect to a running broker at `socket`.
    pub fn connect(socket: &Path) -> Result<Client, ClientError> {
        let name = socket
            .to_fs_name::<GenericFilePath>()
            .map_err(|e| unavailable("bad socket path", e))?;
        let stream = Stream::connect(name)
            .map_err(|e| unavailable(&format!("cannot connect to {}", socket.display()), e))?;
        let mut client = Client { stream, next_id: 1 };
        client.send(&Frame::Hello {
            version: wire::PROTOCOL_VERSION,
        })?;
        match client.receive()? {
            Frame::Welcome { .. } => Ok(client),
            Frame::Error { message, code, .. } => Err(ClientError::Broker { code, message }),
            other => Err(unavailable("handshake", format!("unexpected {other:?}"))),
        }
    }

    /// Whether the broker has closed this connection (it closes one that stays quiet past
    /// its client timeout): a zero-timeout poll and a peek, no read.
    pub fn is_closed(&self) -> bool {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        #[allow(unreachable_patterns)]
        let fd = match &self.stream {
            Stream::UdSocket(s) => s.as_fd(),
            _ => return false,
        };
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::ZERO) {
            Ok(0) => false,
            Ok(_) => {
                let mut byte = [0u8; 1];
                let peeked = nix::sys::socket::recv(
                    std::os::fd::AsRawFd::as_raw_fd(&fd),
                    &mut byte,
                    nix::sys::socket::MsgFlags::MSG_PEEK | nix::sys::socket::MsgFlags::MSG_DONTWAIT,
                );
                // End of stream, or an error: nothing more will come on it.
                !matches!(peeked, Ok(n) if n > 0)
            }
            Err(_) => true,
        }
    }

    /// Connect to the broker at `socket`, starting it with `launch` when none answers.
    pub fn connect_or_start(socket: &Path, launch: &Launch) -> Result<Client, ClientError> {
        if let Some(answered) = Client::answered(socket) {
            return answered;
        }
        let dir = socket.parent().unwrap_or(Path::new("."));
        agent_contract::home::create_private_dir_all(dir)
            .map_err(|e| unavailable("cannot create the socket directory", e))?;
        let lock_path = socket.with_extension("start");
        let lock_file = agent_contract::home::open_private_append(&lock_path)
            .map_err(|e| unavailable(&format!("cannot open {}", lock_path.display()), e))?;
        let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
            .map_err(|(_, e)| unavailable("cannot lock the broker's start lock", e))?;
        // Another starter may have finished while this one waited for the lock.
        if let Some(answered) = Client::answered(socket) {
            return answered;
        }
        start(launch)?;
        Client::connect(socket)
    }

    /// What a broker at `socket` answered: a client, or its refusal (`busy`, `forbidden`:
    /// a running broker, so starting another would not help); `None` when none answered.
    fn answered(socket: &Path) -> Option<Result<Client, ClientError>> {
        match Client::connect(socket) {
            Ok(client) => Some(Ok(client)),
            Err(refused @ ClientError::Broker { .. }) => Some(Err(refused)),
            Err(_) => None,
        }
    }

    fn send(&mut self, frame: &Frame) -> Result<(), ClientError> {
        frame.write_to(&mut self.stream).map_err(|e| match e {
            wire::WireError::TooLarge(n) => ClientError::Broker {
                code: ErrorCode::TooLarge,
                message: format!(
                    "request of {n} bytes is over the broker's frame limit of {} bytes",
                    wire::MAX_FRAME_BYTES
                ),
            },
            e => unavailable("the connection to the broker broke", e),
        })
    }

    fn receive(&mut self) -> Result<Frame, ClientError> {
        Frame::read_from(&mut self.stream)
            .map_err(|e| unavailable("the broker did not answer (it may have stopped)", e))
    }

    fn request(&mut self, frame: impl FnOnce(u64) -> Frame) -> Result<Frame, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&frame(id))?;
        match self.receive()? {
            Frame::Error { code, message, .. } => Err(ClientError::Broker { code, message }),
            answer => Ok(answer),
        }
    }

    /// Run `model` on `inputs`.
    pub fn infer(&mut self, model: &str, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, ClientError> {
        match self.request(|id| Frame::Infer {
            id,
            model: model.to_owned(),
            inputs,
        })? {
            Frame::Outputs { outputs, .. } => Ok(outputs),
            other => Err(unavailable("infer", format!("unexpected {other:?}"))),
        }
    }

    /// Generate a chat completion; `on_text` gets each piece of the answer as it comes.
    pub fn chat(
        &mut self,
        request: &chat::ChatRequest,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<chat::Completion, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let json = serde_json::to_string(request).map_err(|e| unavailable("chat", e))?;
        self.send(&Frame::Chat { id, json })?;
        loop {
            match self.receive()? {
                Frame::Token { text, .. } => on_text(&text),
                Frame::Json { json, .. } => {
                    return serde_json::from_str(&json)
                        .map_err(|e| unavailable("bad completion from the broker", e));
                }
                Frame::Error { code, message, .. } => {
                    return Err(ClientError::Broker { code, message });
                }
                other => return Err(unavailable("chat", format!("unexpected {other:?}"))),
            }
        }
    }

    fn json(&mut self, frame: impl FnOnce(u64) -> Frame) -> Result<serde_json::Value, ClientError> {
        match self.request(frame)? {
            Frame::Json { json, .. } => {
                serde_json::from_str(&json).map_err(|e| unavailable("bad JSON from the broker", e))
            }
            other => Err(unavailable("request", format!("unexpected {other:?}"))),
        }
    }

    /// List or call tools; the answer is a [`tools::ToolList`] or [`tools::ToolOutput`]
    /// (`T`) according to the request.
    pub fn tools<T: serde::de::DeserializeOwned>(
        &mut self,
        request: &tools::ToolRequest,
    ) -> Result<T, ClientError> {
        let json = serde_json::to_string(request).map_err(|e| unavailable("tools", e))?;
        match self.request(|id| Frame::Tools { id, json })? {
            Frame::Json { json, .. } => serde_json::from_str(&json)
                .map_err(|e| unavailable("bad tool answer from the broker", e)),
            other => Err(unavailable("tools", format!("unexpected {other:?}"))),
        }
    }

    /// The models in the broker's repository.
    pub fn list_models(&mut self) -> Result<serde_json::Value, ClientError> {
        self.json(|id| Frame::ListModels { id })
    }

    /// The broker's status: providers, loaded models, queue depth, counts, latencies.
    pub fn status(&mut self) -> Result<serde_json::Value, ClientError> {
        self.json(|id| Frame::Status { id })
    }
}

/// Spawn the broker and wait for its `ready` line.
fn start(launch: &Launch) -> Result<(), ClientError> {
    let log = agent_contract::home::open_private_append(&launch.log)
        .map_err(|e| unavailable(&format!("cannot open {}", launch.log.display()), e))?;
    let mut child = Command::new(&launch.program)
        .args(&launch.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        // Its own process group: a run's deadline kills the run's group, not the broker.
        .process_group(0)
        // Not the starting request's working directory (a repository, a mount point): a
        // long-lived process must not pin it. Its paths are all absolute or its own.
        .current_dir("/")
        .spawn()
        .map_err(|e| unavailable(&format!("cannot start {}", launch.program.display()), e))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| unavailable("start", "no pipe"))?;
    let deadline = Instant::now() + launch.ready_timeout;
    let mut line = String::new();
    let mut reader = BufReader::new(stdout);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut fds = [nix::poll::PollFd::new(
            reader.get_ref().as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let ms = nix::poll::PollTimeout::try_from(left).unwrap_or(nix::poll::PollTimeout::MAX);
        match nix::poll::poll(&mut fds, ms) {
            Ok(0) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ClientError::Unavailable(format!(
                    "gpu-broker did not get ready within {:?} (see {})",
                    launch.ready_timeout,
                    launch.log.display()
                )));
            }
            Ok(_) => break,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(unavailable("waiting for the broker", e)),
        }
    }
    let _ = reader.read_line(&mut line);
    let line = line.trim();
    if line.starts_with("ready") {
        // The broker lives on (dropping a Child neither kills nor waits for it); it is
        // reaped by whoever inherits it.
        drop(child);
        Ok(())
    } else {
        let _ = child.wait();
        Err(ClientError::Unavailable(if line.is_empty() {
            format!(
                "gpu-broker exited before it was ready (see {})",
                launch.log.display()
            )
        } else {
            line.trim_start_matches("error: ").to_owned()
        }))
    }
}
