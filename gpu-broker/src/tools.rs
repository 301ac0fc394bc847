//! Tool servers: MCP sessions held warm for agents, with the official Rust SDK (`rmcp`).
//!
//! A server of `tools.toml` is started on the first call that needs it (a stdio child of
//! the broker, or a session with a streamable-HTTP endpoint), initialized, and its tool
//! list kept. Later calls reuse the session, so a server's start (a second or more for a
//! Python one) is paid once per broker, not per request. The rules:
//!
//! - **Order**: calls to one server are sent `concurrency` at a time (default 1: the MCP
//!   spec says nothing of a server's parallelism); the rest wait their turn, in the
//!   order they came, within their own timeout.
//! - **Timeouts**: each call has the shorter of the server's `timeout_s` and the time its
//!   caller has left. A call that runs out its server's `timeout_s` stops the server (it
//!   may be stuck: its state is unknown), and the next call starts it again; one that runs
//!   out its caller's time is cancelled, and the server stays.
//! - **Death**: a server found dead before a call is restarted for it; one that dies
//!   during a call fails that call with a message that says so, and is restarted by the
//!   next.
//! - **Size**: a result larger than `max_result_kib` is refused whole.
//! - **Environment**: a stdio server gets `PATH`, `HOME` and its configured `env`, and
//!   nothing else; its working directory is its `cwd` (default: the home).
//! - **Changes**: a server whose entry in `tools.toml` changed is restarted with the new
//!   one at its next call. (A server removed from the file runs until the broker exits.)

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_contract::tools::{ToolServer, ToolServers};
use broker_client::tools::{IDEMPOTENCY_KEY, ToolInfo, ToolList, ToolOutput, ToolRequest};
use broker_client::wire::ErrorCode;
use rmcp::model::{CallToolRequestParams, ContentBlock, Tool};
use rmcp::service::RunningService;
use rmcp::{RoleClient, ServiceError, ServiceExt};

use crate::runtime::Failure;

/// Room for a message's JSON-RPC envelope around a result of `max_result_kib`: a stdio
/// message longer than both is dropped unread by the transport, and its call fails as too
/// large at once.
const MESSAGE_OVERHEAD: usize = 64 << 10;

/// How often a waiting call checks that its caller is still there.
const GONE_POLL: Duration = Duration::from_millis(50);

/// The servers' sessions.
pub struct Tools {
    /// Where the sessions' work runs: its one worker thread starts the stdio servers, so
    /// that their parent-death signal is tied to the broker's life, not to a connection's.
    runtime: tokio::runtime::Runtime,
    inner: Arc<Inner>,
}

struct Inner {
    home: PathBuf,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

/// One server: the calls it may take at once, and its session when started.
struct Slot {
    /// The `concurrency` its gate was made for.
    concurrency: usize,
    gate: Arc<tokio::sync::Semaphore>,
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
}

/// A started, initialized server.
struct Session {
    service: RunningService<RoleClient, ()>,
    tools: Vec<Tool>,
    /// The entry it was started with.
    config: ToolServer,
    /// A stdio server's process (killed when the session is dropped).
    child: Option<tokio::sync::Mutex<tokio::process::Child>>,
    /// Told when a stdio server writes a message over `max_result_kib` (which the
    /// transport then drops unread).
    oversized: Arc<tokio::sync::Notify>,
}

impl Session {
    /// Whether the server can take a call.
    async fn alive(&self) -> bool {
        if self.service.is_closed() {
            return false;
        }
        match &self.child {
            Some(child) => matches!(child.lock().await.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// How the server ended, for a message, after its transport failed with `error`: a
    /// stdio server that closed its output is given a moment to exit, so that its status
    /// can be told.
    async fn exit(&self, error: &ServiceError) -> String {
        match &self.child {
            Some(child) => {
                let mut child = child.lock().await;
                match tokio::time::timeout(Duration::from_secs(1), child.wait()).await {
                    Ok(Ok(status)) => format!("it exited ({status})"),
                    _ => format!("{error} (the server is still running)"),
                }
            }
            None => error.to_string(),
        }
    }

    /// Stop the server now and reap it.
    async fn stop(&self) {
        if let Some(child) = &self.child {
            let mut child = child.lock().await;
            if let Some(pid) = child.id() {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
}

fn failure(code: ErrorCode, message: impl Into<String>) -> Failure {
    Failure::new(code, message)
}

impl Tools {
    /// The tool servers of the home at `home`; nothing is started yet.
    pub fn new(home: PathBuf) -> std::io::Result<Tools> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tools")
            .enable_all()
            .build()?;
        Ok(Tools {
            runtime,
            inner: Arc::new(Inner {
                home,
                slots: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Answer one `Tools` request (its JSON); the answer's JSON. `gone` says whether the
    /// caller has gone away: its call is then cancelled (the server is sent MCP's
    /// cancellation, and the call's turn at the server is given up), and the session
    /// stays for the next.
    pub fn handle(&self, json: &str, gone: &dyn Fn() -> bool) -> Result<String, Failure> {
        let request: ToolRequest = serde_json::from_str(json)
            .map_err(|e| failure(ErrorCode::Malformed, format!("bad tool request: {e}")))?;
        let started = Instant::now();
        let answer = match request {
            ToolRequest::List {
                servers,
                timeout_ms,
            } => {
                let deadline = timeout_ms.map(|ms| started + Duration::from_millis(ms));
                let inner = self.inner.clone();
                let list =
                    self.on_runtime(async move { inner.list(&servers, deadline).await }, gone)?;
                serde_json::to_string(&list)
            }
            ToolRequest::Call {
                server,
                tool,
                arguments,
                idempotency_key,
                timeout_ms,
            } => {
                let deadline = timeout_ms.map(|ms| started + Duration::from_millis(ms));
                let inner = self.inner.clone();
                let output = self.on_runtime(
                    async move {
                        inner
                            .call(&server, &tool, &arguments, idempotency_key, deadline)
                            .await
                    },
                    gone,
                )?;
                serde_json::to_string(&output)
            }
        };
        answer.map_err(|e| failure(ErrorCode::Failed, e.to_string()))
    }

    /// Run `work` on the runtime's worker and wait for it, giving it up (dropping it,
    /// which cancels its MCP request) when `gone` says the caller went away.
    fn on_runtime<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T, Failure>> + Send + 'static,
        gone: &dyn Fn() -> bool,
    ) -> Result<T, Failure> {
        let mut task = self.runtime.spawn(work);
        self.runtime.block_on(async {
            loop {
                tokio::select! {
                    done = &mut task => {
                        return done.unwrap_or_else(|e| {
                            Err(failure(ErrorCode::Failed, format!("the tool call failed: {e}")))
                        });
                    }
                    () = tokio::time::sleep(GONE_POLL) => {
                        if gone() {
                            task.abort();
                            return Err(failure(
                                ErrorCode::Failed,
                                "the caller went away; its call was cancelled",
                            ));
                        }
                    }
                }
            }
        })
    }

    /// The servers started now (for `status`).
    pub fn running(&self) -> Vec<String> {
        let slots = self.inner.slots.lock().unwrap_or_else(|p| p.into_inner());
        let mut names: Vec<String> = slots
            .iter()
            .filter(|(_, slot)| slot.session.try_lock().is_ok_and(|s| s.is_some()))
            .map(|(name, _)| name.clone())
            .collect();
        names.sort();
        names
    }
}

impl Inner {
    fn config(&self, server: &str) -> Result<ToolServer, Failure> {
        let servers = ToolServers::load(&self.home)
            .map_err(|e| failure(ErrorCode::UnknownServer, e.to_string()))?;
        servers.get(server).cloned().ok_or_else(|| {
            failure(
                ErrorCode::UnknownServer,
                format!(
                    "no tool server {server:?} in {} (add a [[server]] named so)",
                    self.home.join(agent_contract::tools::TOOLS_FILE).display()
                ),
            )
        })
    }

    /// The server's slot; a new one when its `concurrency` changed (the old one's session
    /// stops when its last call ends and the slot is dropped).
    fn slot(&self, config: &ToolServer) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = || {
            Arc::new(Slot {
                concurrency: config.concurrency(),
                gate: Arc::new(tokio::sync::Semaphore::new(config.concurrency())),
                session: tokio::sync::Mutex::new(None),
            })
        };
        let slot = slots.entry(config.name.clone()).or_insert_with(fresh);
        if slot.concurrency != config.concurrency() {
            *slot = fresh();
        }
        slot.clone()
    }

    async fn list(
        &self,
        servers: &[String],
        deadline: Option<Instant>,
    ) -> Result<ToolList, Failure> {
        let mut list = ToolList::default();
        for server in servers {
            let config = self.config(server)?;
            let slot = self.slot(&config);
            let (session, _) = self.session(&slot, &config, deadline).await?;
            list.tools.extend(session.tools.iter().map(|t| ToolInfo {
                server: server.clone(),
                name: t.name.to_string(),
                description: t.description.as_deref().unwrap_or("").to_owned(),
                input_schema: serde_json::to_string(&*t.input_schema).unwrap_or_default(),
            }));
        }
        Ok(list)
    }

    /// The server's session: the running one, or a new one started now (once, however
    /// many calls wait for it); with the milliseconds spent starting it.
    async fn session(
        &self,
        slot: &Slot,
        config: &ToolServer,
        deadline: Option<Instant>,
    ) -> Result<(Arc<Session>, f64), Failure> {
        let waited = left(deadline, config.start_timeout());
        let mut current = tokio::time::timeout(waited, slot.session.lock())
            .await
            .map_err(|_| {
                failure(
                    ErrorCode::Timeout,
                    format!(
                        "tool server {:?} was still being started for another call after {} ms",
                        config.name,
                        waited.as_millis()
                    ),
                )
            })?;
        if let Some(session) = current.as_ref() {
            if session.config == *config && session.alive().await {
                return Ok((session.clone(), 0.0));
            }
            session.stop().await;
            *current = None;
        }
        let started = Instant::now();
        let limit = left(deadline, config.start_timeout());
        let session = match tokio::time::timeout(limit, start(&self.home, config)).await {
            Ok(started) => started?,
            Err(_) => {
                return Err(failure(
                    ErrorCode::Timeout,
                    format!(
                        "tool server {:?} did not start and list its tools within {} ms{}",
                        config.name,
                        limit.as_millis(),
                        if limit < config.start_timeout() {
                            " (the time the run had left)"
                        } else {
                            " (its start_timeout_s in tools.toml)"
                        }
                    ),
                ));
            }
        };
        let session = Arc::new(session);
        *current = Some(session.clone());
        Ok((session, started.elapsed().as_secs_f64() * 1000.0))
    }

    /// Forget the server's session (stopping it) if it is still `session`.
    async fn discard(&self, slot: &Slot, session: &Arc<Session>) {
        session.stop().await;
        let mut current = slot.session.lock().await;
        if current.as_ref().is_some_and(|s| Arc::ptr_eq(s, session)) {
            *current = None;
        }
    }

    async fn call(
        &self,
        server: &str,
        tool: &str,
        arguments: &str,
        idempotency_key: Option<String>,
        deadline: Option<Instant>,
    ) -> Result<ToolOutput, Failure> {
        let config = self.config(server)?;
        let arguments: serde_json::Map<String, serde_json::Value> =
            match serde_json::from_str(if arguments.trim().is_empty() {
                "{}"
            } else {
                arguments
            }) {
                Ok(serde_json::Value::Object(map)) => map,
                Ok(other) => {
                    return Err(failure(
                        ErrorCode::InvalidInput,
                        format!(
                            "the arguments of {server}/{tool} must be a JSON object, not {}",
                            kind_of(&other)
                        ),
                    ));
                }
                Err(e) => {
                    return Err(failure(
                        ErrorCode::InvalidInput,
                        format!("the arguments of {server}/{tool} are not JSON: {e}"),
                    ));
                }
            };
        let slot = self.slot(&config);
        // Its turn at the server: within its own timeout and the caller's deadline.
        let limit = left(deadline, config.call_timeout());
        let _permit = tokio::time::timeout(limit, slot.gate.clone().acquire_owned())
            .await
            .map_err(|_| {
                failure(
                    ErrorCode::Timeout,
                    format!(
                        "tool server {server:?} was busy with other calls for the whole {} ms this call had",
                        limit.as_millis()
                    ),
                )
            })?
            .map_err(|_| failure(ErrorCode::ShuttingDown, "the broker is stopping"))?;
        let (session, start_ms) = self.session(&slot, &config, deadline).await?;
        let Some(found) = session.tools.iter().find(|t| t.name == tool) else {
            return Err(failure(
                ErrorCode::UnknownServer,
                format!(
                    "tool server {server:?} has no tool {tool:?}; it has: {}",
                    session
                        .tools
                        .iter()
                        .map(|t| t.name.as_ref())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        };
        if let Err(problem) = check_arguments(&found.input_schema, &arguments) {
            return Err(failure(
                ErrorCode::InvalidInput,
                format!(
                    "the arguments of {server}/{tool} do not match its input schema: {problem}"
                ),
            ));
        }
        // The call itself: its server's timeout from when it is sent (a start has its own
        // start_timeout_s), or the caller's deadline.
        let own_end = Instant::now() + config.call_timeout();
        let end = deadline.map_or(own_end, |d| d.min(own_end));
        let limit = end.saturating_duration_since(Instant::now());
        let mut params = CallToolRequestParams::new(tool.to_owned()).with_arguments(arguments);
        if let Some(key) = idempotency_key {
            let mut meta = rmcp::model::RequestMetaObject::new();
            meta.insert(IDEMPOTENCY_KEY.to_owned(), key.into());
            params.meta = Some(meta);
        }
        let oversized = session.oversized.notified();
        let answer = tokio::select! {
            answer = tokio::time::timeout(limit, session.service.call_tool(params)) => answer,
            () = oversized => {
                return Err(failure(
                    ErrorCode::TooLarge,
                    format!(
                        "the result of {server}/{tool} is over the server's limit of {} bytes (max_result_kib in tools.toml); it was dropped unread",
                        config.max_result_bytes()
                    ),
                ));
            }
        };
        let result = match answer {
            // The server's own timeout: it may be stuck, so it is stopped.
            Err(_) if end == own_end => {
                self.discard(&slot, &session).await;
                return Err(failure(
                    ErrorCode::Timeout,
                    format!(
                        "{server}/{tool} did not answer within its timeout_s of {} s; the server was stopped and will be started again by the next call",
                        config.call_timeout().as_secs()
                    ),
                ));
            }
            // The caller's deadline: the call is cancelled (dropping it sends MCP's
            // cancellation), and the server, which may be healthy, stays.
            Err(_) => {
                return Err(failure(
                    ErrorCode::Timeout,
                    format!(
                        "{server}/{tool} did not answer within the {} ms the run had left; the call was cancelled",
                        limit.as_millis()
                    ),
                ));
            }
            Ok(Err(ServiceError::McpError(e))) => {
                let code = if e.code == rmcp::model::ErrorCode::INVALID_PARAMS {
                    ErrorCode::InvalidInput
                } else {
                    ErrorCode::Failed
                };
                return Err(failure(
                    code,
                    format!("{server}/{tool} failed: {}", e.message),
                ));
            }
            Ok(Err(e)) if format!("{e:?}").contains("TooLarge") => {
                return Err(failure(
                    ErrorCode::TooLarge,
                    format!(
                        "the result of {server}/{tool} is over the server's limit of {} bytes (max_result_kib in tools.toml)",
                        config.max_result_bytes()
                    ),
                ));
            }
            Ok(Err(e)) => {
                let how = scrub(&session.exit(&e).await, &config);
                self.discard(&slot, &session).await;
                return Err(failure(
                    ErrorCode::Unreachable,
                    format!(
                        "tool server {server:?} failed during the call to {tool:?}: {how}; it will be started again by the next call"
                    ),
                ));
            }
            Ok(Ok(result)) => result,
        };
        let bytes_out = serde_json::to_vec(&result).map_or(0, |v| v.len());
        if bytes_out > config.max_result_bytes() {
            return Err(failure(
                ErrorCode::TooLarge,
                format!(
                    "the result of {server}/{tool} is {bytes_out} bytes, over the server's limit of {} bytes (max_result_kib in tools.toml)",
                    config.max_result_bytes()
                ),
            ));
        }
        let text = text_of(&result.content);
        if result.is_error == Some(true) {
            return Err(failure(
                ErrorCode::Failed,
                format!("{server}/{tool} failed: {text}"),
            ));
        }
        Ok(ToolOutput {
            text,
            structured: result
                .structured_content
                .as_ref()
                .map(|v| serde_json::to_string(v).unwrap_or_default()),
            bytes_out: bytes_out as u64,
            start_ms,
        })
    }
}

impl Drop for Tools {
    fn drop(&mut self) {
        // Kill and reap the stdio servers before the runtime goes.
        let slots: Vec<Arc<Slot>> = self
            .inner
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let _ = self.on_runtime(
            async move {
                for slot in slots {
                    if let Some(session) = slot.session.lock().await.take() {
                        session.stop().await;
                    }
                }
                Ok(())
            },
            &|| false,
        );
    }
}

/// The shorter of `own` and the time left before `deadline`.
fn left(deadline: Option<Instant>, own: Duration) -> Duration {
    deadline.map_or(own, |d| {
        own.min(d.saturating_duration_since(Instant::now()))
    })
}

/// Start the server of `config` and list its tools.
async fn start(home: &Path, config: &ToolServer) -> Result<Session, Failure> {
    let unreachable = |what: String| {
        failure(
            ErrorCode::Unreachable,
            format!("tool server {:?}: {what}", config.name),
        )
    };
    let oversized = Arc::new(tokio::sync::Notify::new());
    let (service, child) = match (&config.command, &config.url) {
        (Some(command), _) => {
            let mut cmd = tokio::process::Command::new(command);
            cmd.args(&config.args)
                .env_clear()
                .env(
                    "PATH",
                    std::env::var_os("PATH")
                        .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
                )
                .envs(std::env::var_os("HOME").map(|h| ("HOME", h)))
                .envs(&config.env)
                .current_dir(match &config.cwd {
                    Some(cwd) => home.join(cwd),
                    None => home.to_owned(),
                })
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                // The broker's own log.
                .stderr(std::process::Stdio::inherit())
                // Its own process group, so that stopping it stops what it started too (a
                // launcher such as npx or uvx runs the server as its child).
                .process_group(0)
                .kill_on_drop(true);
            // SAFETY: only async-signal-safe calls between fork and exec: the server is
            // killed if the broker dies, so no server outlives its broker.
            unsafe {
                cmd.pre_exec(|| {
                    if nix::libc::prctl(nix::libc::PR_SET_PDEATHSIG, nix::libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let mut child = cmd
                .spawn()
                .map_err(|e| unreachable(format!("cannot start {command:?}: {e}")))?;
            let (Some(stdout), Some(stdin)) = (child.stdout.take(), child.stdin.take()) else {
                return Err(unreachable(
                    "its standard input and output are not pipes".into(),
                ));
            };
            let meter = LineMeter {
                inner: stdout,
                limit: config.max_result_bytes() + MESSAGE_OVERHEAD,
                line: 0,
                over: oversized.clone(),
            };
            let transport = rmcp::transport::async_rw::AsyncRwTransport::new_client(meter, stdin)
                .with_max_line_length(config.max_result_bytes() + MESSAGE_OVERHEAD);
            match ().serve(transport).await {
                Ok(service) => (service, Some(tokio::sync::Mutex::new(child))),
                Err(e) => {
                    let _ = child.start_kill();
                    let status = child.wait().await;
                    return Err(unreachable(format!(
                        "it did not complete the MCP handshake ({e}){}",
                        status
                            .map(|s| format!("; it exited ({s})"))
                            .unwrap_or_default()
                    )));
                }
            }
        }
        (None, Some(url)) => {
            use rmcp::transport::StreamableHttpClientTransport;
            use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
            let headers = headers(home, config).map_err(unreachable)?;
            let transport = StreamableHttpClientTransport::from_config(
                StreamableHttpClientTransportConfig::with_uri(url.as_str())
                    .custom_headers(headers)
                    .max_json_response_size(config.max_result_bytes() + (64 << 10))
                    .max_sse_event_size(config.max_result_bytes() + (64 << 10)),
            );
            let service = ().serve(transport).await.map_err(|e| {
                unreachable(scrub(
                    &format!("cannot open an MCP session with {}: {e}", config.endpoint()),
                    config,
                ))
            })?;
            (service, None)
        }
        (None, None) => return Err(unreachable("has neither command nor url".into())),
    };
    let tools = match service.list_all_tools().await {
        Ok(tools) => tools,
        Err(e) => {
            let session = Session {
                service,
                tools: Vec::new(),
                config: config.clone(),
                child,
                oversized,
            };
            session.stop().await;
            return Err(unreachable(format!("cannot list its tools: {e}")));
        }
    };
    Ok(Session {
        service,
        tools,
        config: config.clone(),
        child,
        oversized,
    })
}

/// A stdio server's output, measured line by line (a line is one JSON-RPC message): a
/// line longer than `limit` tells `over` once, as its bytes pass.
struct LineMeter<R> {
    inner: R,
    limit: usize,
    line: usize,
    over: Arc<tokio::sync::Notify>,
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for LineMeter<R> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
        for &byte in &buf.filled()[before..] {
            if byte == b'\n' {
                this.line = 0;
            } else {
                this.line += 1;
                // The transport drops a line of `limit` bytes or more (with its newline).
                if this.line == this.limit {
                    this.over.notify_waiters();
                }
            }
        }
        polled
    }
}

/// `message` without the server's URL (it may carry a token in its query): its host only.
fn scrub(message: &str, config: &ToolServer) -> String {
    match &config.url {
        Some(url) => message.replace(url.as_str(), &config.endpoint()),
        None => message.to_owned(),
    }
}

/// The headers of an HTTP server, from its 0600 `headers_file` (`Name: value` lines).
fn headers(
    home: &Path,
    config: &ToolServer,
) -> Result<HashMap<http::HeaderName, http::HeaderValue>, String> {
    let mut headers = HashMap::new();
    let Some(file) = &config.headers_file else {
        return Ok(headers);
    };
    let path = home.join(file);
    use std::os::unix::fs::MetadataExt;
    let meta =
        std::fs::metadata(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "{} is readable by others (mode {:o}); `chmod 600` it",
            path.display(),
            meta.mode() & 0o777
        ));
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // Never the value in a message: it is a secret.
        let bad = || format!("{} line {}: expected `Name: value`", path.display(), n + 1);
        let (name, value) = line.split_once(':').ok_or_else(bad)?;
        let name = http::HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| bad())?;
        let mut value = http::HeaderValue::from_str(value.trim()).map_err(|_| bad())?;
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    Ok(headers)
}

/// The text of a result's content: text parts as they are, other parts in a line each.
fn text_of(content: &[ContentBlock]) -> String {
    content
        .iter()
        .map(|part| match part {
            ContentBlock::Text(t) => t.text.clone(),
            ContentBlock::Image(i) => format!("[image {}]", i.mime_type),
            ContentBlock::Audio(a) => format!("[audio {}]", a.mime_type),
            ContentBlock::Resource(_) => "[embedded resource]".into(),
            ContentBlock::ResourceLink(r) => format!("[resource {}]", r.uri),
            _ => "[content of another kind]".into(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn kind_of(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Check `arguments` against the top level of a tool's JSON Schema: required properties
/// present, declared ones of their declared type, no others where
/// `additionalProperties` is false. (Deeper checks are the server's: it answers with an
/// invalid-params error, which reaches the agent as the same kind.)
pub fn check_arguments(
    schema: &serde_json::Map<String, serde_json::Value>,
    arguments: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), String> {
    let properties = schema.get("properties").and_then(|p| p.as_object());
    if let Some(required) = schema.get("required").and_then(|r| r.as_array()) {
        let missing: Vec<&str> = required
            .iter()
            .filter_map(|r| r.as_str())
            .filter(|r| !arguments.contains_key(*r))
            .collect();
        if !missing.is_empty() {
            return Err(format!("missing required {}", missing.join(", ")));
        }
    }
    for (name, value) in arguments {
        match properties.and_then(|p| p.get(name)) {
            None if schema.get("additionalProperties") == Some(&serde_json::Value::Bool(false)) => {
                return Err(format!(
                    "no argument {name:?} (it takes: {})",
                    properties
                        .map(|p| p.keys().cloned().collect::<Vec<_>>().join(", "))
                        .unwrap_or_default()
                ));
            }
            None => {}
            Some(declared) => {
                let types: Vec<&str> = match declared.get("type") {
                    Some(serde_json::Value::String(t)) => vec![t.as_str()],
                    Some(serde_json::Value::Array(ts)) => {
                        ts.iter().filter_map(|t| t.as_str()).collect()
                    }
                    _ => continue,
                };
                if !types.iter().any(|t| has_type(value, t)) {
                    return Err(format!(
                        "{name:?} must be {}, not {}",
                        types.join(" or "),
                        kind_of(value)
                    ));
                }
            }
        }
    }
    Ok(())
}

fn has_type(value: &serde_json::Value, t: &str) -> bool {
    match t {
        "string" => value.is_string(),
        "number" => value.is_number(),
        "integer" => value.is_i64() || value.is_u64(),
        "boolean" => value.is_boolean(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        "null" => value.is_null(),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(text: &str) -> serde_json::Map<String, serde_json::Value> {
        match serde_json::from_str(text) {
            Ok(serde_json::Value::Object(map)) => map,
            other => panic!("not an object: {other:?}"),
        }
    }

    #[test]
    fn arguments_are_checked_against_the_top_of_the_schema() {
        let schema = object(
            r#"{"type":"object","properties":{"timezone":{"type":"string"},"n":{"type":["integer","null"]}},"required":["timezone"],"additionalProperties":false}"#,
        );
        assert!(check_arguments(&schema, &object(r#"{"timezone":"Asia/Tokyo"}"#)).is_ok());
        assert!(check_arguments(&schema, &object(r#"{"timezone":"Asia/Tokyo","n":null}"#)).is_ok());
        let err = |args: &str| check_arguments(&schema, &object(args)).expect_err(args);
        assert!(err("{}").contains("missing required timezone"));
        assert!(err(r#"{"timezone":3}"#).contains("must be string, not a number"));
        assert!(err(r#"{"timezone":"x","n":1.5}"#).contains("integer or null"));
        assert!(err(r#"{"timezone":"x","tz":"y"}"#).contains("no argument \"tz\""));
        // An open schema takes what it does not declare.
        let open = object(r#"{"type":"object","properties":{}}"#);
        assert!(check_arguments(&open, &object(r#"{"anything":[1]}"#)).is_ok());
    }

    #[test]
    fn content_parts_become_text_lines() {
        let text = text_of(&[
            ContentBlock::text("first"),
            ContentBlock::text("second ✓ 第二"),
        ]);
        assert_eq!(text, "first\nsecond ✓ 第二");
    }
}
