//! gpu-broker: the long-lived process that keeps ONNX Runtime sessions warm and runs
//! models for agents, which reach it over a local socket (`broker-client`). It is the only
//! part of the workspace that uses `ort`, and it loads the ONNX Runtime library at run time.
//!
//! # Layout
//! - [`repo`]: the model repository (`<home>/models/<name>/model.toml` + `.onnx`).
//! - [`runtime`]: finding and loading the library; loading a model onto the provider it
//!   really runs on (CUDA only when the library has it and registration succeeds; a model
//!   that requires a GPU fails otherwise); running it on wire tensors.
//! - [`generate`]: generative models (tokenizer, chat template, KV cache, sampler) and
//!   the loop that answers a `chat` step by step on the model's device.
//! - [`remote`]: chats sent to an OpenAI-compatible provider of `providers.toml`.
//! - [`tools`]: MCP sessions with the tool servers of `tools.toml`, held warm.
//! - [`queue`]: one ordered queue per device, served by one thread; dynamic batching.
//! - [`stats`]: what `status` reports.
//! - [`Broker`] (here): connections (who may connect, how many, how long they may stall),
//!   the handshake, requests, idleness.
//!
//! # Data flow
//! connection thread: frame -> [`queue::Job`] on the model's device -> device thread
//! (load on first use, check, batch, run) -> reply channel -> frame.

pub mod generate;
pub mod queue;
pub mod remote;
pub mod repo;
pub mod runtime;
pub mod stats;
pub mod tools;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use broker_client::wire::{self, ErrorCode, Frame, WireError};
use interprocess::local_socket::Stream;
use interprocess::local_socket::traits::{Stream as _, StreamCommon as _};
use serde_json::json;

use queue::{Device, Job};
use repo::{Provider, Repo};
use stats::Stats;

/// The most connections served at once. Past it a new connection is answered `busy` and
/// closed, so that a flood of clients cannot exhaust the broker's threads or descriptors.
pub const MAX_CONNECTIONS: usize = 512;

/// How long a client may take, by default, to send a whole frame (its hello, or its next
/// request) or to read an answer. A client that stalls, or trickles a frame a byte at a
/// time, is closed when it runs out, so no client can hold the broker's idle TTL off
/// forever. (`gpu-broker --client-timeout`.)
pub const FRAME_DEADLINE: Duration = Duration::from_secs(120);

/// The broker's shared state.
pub struct Broker {
    repo: Repo,
    cpu: Device,
    cuda: Option<Device>,
    stats: Arc<Mutex<Stats>>,
    /// Which device each model's requests go to, decided on first sight.
    routes: Mutex<HashMap<String, &'static str>>,
    started: Instant,
    last_activity: Mutex<Instant>,
    connections: AtomicUsize,
    /// Chats being answered now.
    chats: AtomicUsize,
    /// The home (for `providers.toml` and key files).
    home: std::path::PathBuf,
    /// HTTP agents of the providers.
    remote: remote::Remote,
    /// Sessions with tool servers, started on first use (for the home, see `with_home`).
    tools: std::sync::OnceLock<Result<tools::Tools, String>>,
    library: String,
    idle_ttl: Option<Duration>,
    /// How long a client may take to send one frame ([`FRAME_DEADLINE`] by default).
    frame_deadline: Duration,
}

impl Broker {
    /// A broker serving `repo`, with ONNX Runtime already initialised from `library`.
    pub fn new(repo: Repo, library: String, idle_ttl: Option<Duration>) -> Broker {
        let stats = Arc::new(Mutex::new(Stats::default()));
        let home_of_repo = repo
            .dir()
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        let cuda =
            runtime::cuda_compiled_in().then(|| Device::start("cuda", repo.clone(), stats.clone()));
        Broker {
            cpu: Device::start("cpu", repo.clone(), stats.clone()),
            cuda,
            repo,
            stats,
            routes: Mutex::new(HashMap::new()),
            started: Instant::now(),
            last_activity: Mutex::new(Instant::now()),
            connections: AtomicUsize::new(0),
            chats: AtomicUsize::new(0),
            home: home_of_repo,
            remote: remote::Remote::default(),
            tools: std::sync::OnceLock::new(),
            library,
            idle_ttl,
            frame_deadline: FRAME_DEADLINE,
        }
    }

    /// The same broker, for the home at `home` (its `providers.toml` and key files).
    pub fn with_home(mut self, home: std::path::PathBuf) -> Broker {
        self.home = home;
        self
    }

    /// The same broker, giving each client `deadline` to send a frame.
    pub fn with_frame_deadline(mut self, deadline: Duration) -> Broker {
        self.frame_deadline = deadline;
        self
    }

    fn device(&self, model: &str) -> &Device {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let route = *routes.entry(model.to_owned()).or_insert_with(|| {
            let wants_gpu = self
                .repo
                .spec(model)
                .is_ok_and(|s| s.require_gpu || s.providers.first() == Some(&Provider::Cuda));
            if wants_gpu && self.cuda.is_some() {
                "cuda"
            } else {
                "cpu"
            }
        });
        match (&self.cuda, route) {
            (Some(cuda), "cuda") => cuda,
            _ => &self.cpu,
        }
    }

    /// Load the models whose manifests ask for warm-up; returns the failures.
    pub fn warm_up(&self) -> Vec<String> {
        self.repo
            .names()
            .into_iter()
            .filter(|name| self.repo.spec(name).is_ok_and(|s| s.warmup))
            .filter_map(|name| self.device(&name).warm_up(&name).err().map(|f| f.message))
            .collect()
    }

    /// How long the broker has had no connection and no request; None while a client is
    /// connected.
    pub fn idle_for(&self) -> Option<Duration> {
        if self.connections.load(Ordering::SeqCst) > 0 {
            return None;
        }
        Some(
            self.last_activity
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .elapsed(),
        )
    }

    fn touch(&self) {
        *self.last_activity.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    fn models_json(&self) -> serde_json::Value {
        self.repo
            .names()
            .into_iter()
            .map(|name| match self.repo.spec(&name) {
                Ok(s) => json!({
                    "name": name,
                    "inputs": s.inputs.iter().map(|t| json!({"name": t.name, "dtype": t.dtype, "shape": t.shape})).collect::<Vec<_>>(),
                    "outputs": s.outputs.iter().map(|t| json!({"name": t.name, "dtype": t.dtype, "shape": t.shape})).collect::<Vec<_>>(),
                    "providers": s.providers,
                    "require_gpu": s.require_gpu,
                    "warmup": s.warmup,
                    "max_batch": s.max_batch(),
                    "max_delay_us": s.batching.map_or(0, |b| b.max_delay_us),
                }),
                Err(e) => json!({"name": name, "error": e.to_string()}),
            })
            .collect::<Vec<_>>()
            .into()
    }

    fn status_json(&self) -> serde_json::Value {
        let stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        let mut devices = vec![json!({"name": "cpu", "queue_depth": self.cpu.depth()})];
        if let Some(cuda) = &self.cuda {
            devices.push(json!({"name": "cuda", "queue_depth": cuda.depth()}));
        }
        json!({
            "protocol": wire::PROTOCOL_VERSION,
            "pid": std::process::id(),
            "uptime_s": self.started.elapsed().as_secs_f64(),
            "library": self.library,
            "onnxruntime": runtime::ORT_VERSION,
            "cuda_in_library": self.cuda.is_some(),
            "devices": devices,
            "queue_depth": self.cpu.depth() + self.cuda.as_ref().map_or(0, Device::depth),
            "connections": self.connections.load(Ordering::SeqCst),
            "chats": self.chats.load(Ordering::SeqCst),
            "tool_servers": self.tools.get().and_then(|t| t.as_ref().ok()).map(tools::Tools::running).unwrap_or_default(),
            "served": stats.served_total(),
            "idle_ttl_s": self.idle_ttl.map(|d| d.as_secs()),
            "models": stats.models_json(),
        })
    }

    /// Take a new connection: refuse a peer running as another user (`SO_PEERCRED`, as
    /// the daemon does) and connections past [`MAX_CONNECTIONS`], each with an error frame
    /// that says why; serve the rest, each on a thread of its own.
    pub fn accept(self: &Arc<Self>, mut stream: Stream) {
        let _ = stream.set_send_timeout(Some(self.frame_deadline));
        let own = nix::unistd::geteuid().as_raw();
        let refuse = |stream: &mut Stream, code, message: String| {
            let _ = Frame::Error {
                id: 0,
                code,
                message,
            }
            .write_to(stream);
        };
        match stream.peer_creds().map(|c| c.euid()) {
            Ok(Some(uid)) if uid == own => {}
            Ok(Some(uid)) => {
                tracing::warn!("refused a connection from uid {uid}");
                return refuse(
                    &mut stream,
                    ErrorCode::Forbidden,
                    format!("this broker serves uid {own} only; uid {uid} is refused"),
                );
            }
            _ => {
                return refuse(
                    &mut stream,
                    ErrorCode::Forbidden,
                    "the peer's credentials cannot be read".into(),
                );
            }
        }
        if self.connections.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            self.connections.fetch_sub(1, Ordering::SeqCst);
            return refuse(
                &mut stream,
                ErrorCode::Busy,
                format!(
                    "the broker is serving its limit of {MAX_CONNECTIONS} connections; try again"
                ),
            );
        }
        let broker = self.clone();
        let spawned = std::thread::Builder::new()
            .name("connection".into())
            .spawn(move || broker.serve_counted(stream));
        if spawned.is_err() {
            // The stream went down with the closure: the client sees the connection close.
            self.connections.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Serve a connection already counted in `connections`; uncount it at the end.
    fn serve_counted(&self, stream: Stream) {
        self.touch();
        let _ = self.converse(&mut Deadlined::new(stream, self.frame_deadline));
        self.touch();
        self.connections.fetch_sub(1, Ordering::SeqCst);
    }

    fn converse(&self, stream: &mut Deadlined) -> Result<(), WireError> {
        let error = |id, code, message: String| Frame::Error { id, code, message };
        stream.start_frame();
        match Frame::read_from(stream) {
            Ok(Frame::Hello { version }) if version == wire::PROTOCOL_VERSION => {
                Frame::Welcome { version }.write_to(stream)?;
            }
            Ok(Frame::Hello { version }) => {
                return error(
                    0,
                    ErrorCode::Version,
                    format!(
                        "protocol version {version} is not supported; this broker speaks {}",
                        wire::PROTOCOL_VERSION
                    ),
                )
                .write_to(stream);
            }
            Ok(_) => {
                return error(
                    0,
                    ErrorCode::Malformed,
                    "a connection must start with a hello".into(),
                )
                .write_to(stream);
            }
            Err(e) => return error(0, e.code(), e.to_string()).write_to(stream),
        }
        loop {
            stream.start_frame();
            let frame = match Frame::read_from(stream) {
                Ok(frame) => frame,
                Err(WireError::Io(e)) => return Err(WireError::Io(e)),
                // The frame was consumed whole: answer and go on.
                Err(e) => {
                    error(0, e.code(), e.to_string()).write_to(stream)?;
                    continue;
                }
            };
            self.touch();
            let answer = match frame {
                Frame::Infer { id, model, inputs } => {
                    let (reply, answer) = mpsc::channel();
                    self.device(&model).submit(Job::infer(model, inputs, reply));
                    match answer.recv() {
                        Ok(Ok(outputs)) => Frame::Outputs { id, outputs },
                        Ok(Err(f)) => error(id, f.code, f.message),
                        Err(_) => {
                            error(id, ErrorCode::ShuttingDown, "the broker is stopping".into())
                        }
                    }
                }
                Frame::Chat { id, json } => {
                    let mut send = |text: &str| {
                        Frame::Token {
                            id,
                            text: text.to_owned(),
                        }
                        .write_to(stream)
                        .is_ok()
                    };
                    self.chats.fetch_add(1, Ordering::SeqCst);
                    let answered = generate::chat(
                        &json,
                        |model| self.device(model),
                        |request, send| self.remote.chat(&self.home, request, send),
                        &mut send,
                    );
                    self.chats.fetch_sub(1, Ordering::SeqCst);
                    match answered {
                        Ok(done) => Frame::Json {
                            id,
                            json: serde_json::to_string(&done).unwrap_or_default(),
                        },
                        Err(f) => error(id, f.code, f.message),
                    }
                }
                Frame::Tools { id, json } => {
                    let tools = self.tools.get_or_init(|| {
                        tools::Tools::new(self.home.clone())
                            .map_err(|e| format!("cannot start the tool runtime: {e}"))
                    });
                    match tools {
                        Ok(tools) => match tools.handle(&json, &|| stream.peer_gone()) {
                            Ok(json) => Frame::Json { id, json },
                            Err(f) => error(id, f.code, f.message),
                        },
                        Err(e) => error(id, ErrorCode::Failed, e.clone()),
                    }
                }
                Frame::ListModels { id } => Frame::Json {
                    id,
                    json: self.models_json().to_string(),
                },
                Frame::Status { id } => Frame::Json {
                    id,
                    json: self.status_json().to_string(),
                },
                other => error(0, ErrorCode::Malformed, format!("not a request: {other:?}")),
            };
            if let Err(WireError::TooLarge(n)) = answer.write_to(stream) {
                let id = match answer {
                    Frame::Outputs { id, .. } => id,
                    _ => 0,
                };
                error(
                    id,
                    ErrorCode::TooLarge,
                    format!(
                        "the answer of {n} bytes is over the frame limit of {} bytes",
                        wire::MAX_FRAME_BYTES
                    ),
                )
                .write_to(stream)?;
            }
        }
    }
}

/// A connection whose every frame must arrive within `allowed` of when the broker began
/// to wait for it: each read is given only the time left (`SO_RCVTIMEO`), so a client
/// that trickles bytes cannot stretch a frame forever.
struct Deadlined {
    stream: Stream,
    allowed: Duration,
    deadline: Instant,
}

impl Deadlined {
    fn new(stream: Stream, allowed: Duration) -> Deadlined {
        Deadlined {
            stream,
            allowed,
            deadline: Instant::now() + allowed,
        }
    }

    /// Whether the client has hung up (a zero-timeout poll and a peek; no read).
    fn peer_gone(&self) -> bool {
        use interprocess::local_socket::Stream as S;
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        use std::os::fd::AsFd;
        #[allow(unreachable_patterns)]
        let fd = match &self.stream {
            S::UdSocket(s) => s.as_fd(),
            _ => return false,
        };
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::ZERO) {
            Ok(0) | Err(_) => false,
            Ok(_) => {
                let events = fds[0].revents().unwrap_or(PollFlags::empty());
                if events.intersects(PollFlags::POLLHUP | PollFlags::POLLERR) {
                    return true;
                }
                let mut byte = [0u8; 1];
                matches!(
                    nix::sys::socket::recv(
                        std::os::fd::AsRawFd::as_raw_fd(&fd),
                        &mut byte,
                        nix::sys::socket::MsgFlags::MSG_PEEK
                            | nix::sys::socket::MsgFlags::MSG_DONTWAIT
                    ),
                    Ok(0)
                )
            }
        }
    }

    /// The broker now waits for a new frame.
    fn start_frame(&mut self) {
        self.deadline = Instant::now() + self.allowed;
    }
}

impl std::io::Read for Deadlined {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client took too long to send a frame",
            ));
        }
        self.stream.set_recv_timeout(Some(left))?;
        self.stream.read(buf)
    }
}

impl std::io::Write for Deadlined {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.stream.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.flush()
    }
}
