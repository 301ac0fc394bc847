//! `spawner serve`: a small daemon on a local socket that runs agents on request, each in
//! a fresh agent-exec (the same spawn policy as `spawner run`: [`crate::request`]), and
//! answers JSON-RPC 2.0, one object per line.
//!
//! - **Socket**: a Unix stream socket, mode 0600, in a 0700 directory; peers running as
//!   another user are refused (`SO_PEERCRED`). Or the socket systemd hands over
//!   (`LISTEN_FDS`, socket activation). A lock file beside the socket makes one daemon per
//!   socket: a live daemon's socket is never taken over, a crashed one's is replaced.
//! - **Threads**: one per connection, requests on a connection answered in order (open
//!   more connections for more concurrency). Each run waits on its child with
//!   [`crate::spawn`]'s poll loop, which also watches the client's socket (a client that
//!   disconnects has its run's process group killed) and the run's cancel token.
//! - **Admission**: [`crate::admission`] bounds runs in flight and waiting; beyond, `busy`.
//! - **Spares**: [`spares`] keeps a few agent-execs started ahead (`--prepare`), each
//!   taking exactly one request, so that a run does not wait for a process to start; with
//!   the store opened ahead only for agents whose last run used it.
//! - **Store**: the daemon keeps one connection to the memory store open for its life (a
//!   "keeper"), so no agent-exec is ever the last connection that checkpoints on close.
//! - **Shutdown**: SIGTERM or SIGINT stops accepting and removes the socket, lets runs in
//!   flight finish for up to the grace period, cancels the rest, and exits 0.
//!
//! Methods: [`methods`]. Wire format and error codes: [`rpc`].

mod methods;
pub mod metrics;
pub mod rpc;
mod spares;

use std::collections::HashMap;
use std::io::{BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use agent_contract::Home;
use anyhow::{Context, bail};
use memory_store::Store;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use self::metrics::Metrics;
use self::rpc::{Line, RpcError};
use crate::admission::Admission;
use crate::cancel::{CancelToken, StopReason};

/// How the daemon runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where to listen (ignored under socket activation).
    pub socket: PathBuf,
    /// Runs in flight at most.
    pub max_running: usize,
    /// Runs waiting for a slot at most.
    pub max_queued: usize,
    /// How long in-flight runs may go on after SIGTERM before they are killed.
    pub grace: Duration,
    /// A connection that sends nothing for this long is closed, and so is one that does not
    /// finish a line within this long of its first byte (however its bytes trickle in).
    pub client_timeout: Duration,
    /// Spare agent-execs kept started ahead of requests (0: none).
    pub spares: usize,
}

/// One run in flight, as `runs.active` and `runs.cancel` see it.
struct ActiveRun {
    agent: String,
    /// Set for a sub-run: the run that started it.
    parent_run_id: Option<String>,
    started_at_ms: u64,
    cancel: Arc<CancelToken>,
}

/// The daemon's shared state.
struct Daemon {
    home: Home,
    options: Options,
    admission: Admission,
    metrics: Metrics,
    active: Mutex<HashMap<String, ActiveRun>>,
    /// Open connections (clones), so that shutdown can end their reads.
    connections: Mutex<HashMap<u64, UnixStream>>,
    /// How many may be open at once ([`connection_bound`]).
    max_connections: usize,
    next_connection: AtomicU64,
    shutting_down: AtomicBool,
    /// What the unfinished request lines of all connections hold together.
    pending: rpc::LineBudget,
    /// The keeper connection; also answers `runs.list` and `runs.get`.
    store: Mutex<Store>,
    /// agent-execs started ahead of requests.
    spares: spares::Spares,
    started: Instant,
}

impl crate::request::ActiveRuns for Daemon {
    fn enter(
        &self,
        run_id: &str,
        agent: &str,
        parent: Option<&str>,
        cancel: Arc<CancelToken>,
    ) -> bool {
        let mut active = self.lock_active();
        if active.contains_key(run_id) {
            return false;
        }
        active.insert(
            run_id.to_owned(),
            ActiveRun {
                agent: agent.to_owned(),
                parent_run_id: parent.map(str::to_owned),
                started_at_ms: memory_store::now_ms(),
                cancel,
            },
        );
        true
    }

    fn leave(&self, run_id: &str) {
        self.lock_active().remove(run_id);
    }
}

impl Daemon {
    fn lock_active(&self) -> std::sync::MutexGuard<'_, HashMap<String, ActiveRun>> {
        self.active.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The keeper connection, with the run log imported, for reading runs.
    fn lock_store(&self) -> std::sync::MutexGuard<'_, Store> {
        let mut store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = store.import_run_log() {
            crate::say!("spawner serve: warning: could not import the run log: {e}");
        }
        store
    }
}

/// Most connections open at once; more are answered `busy` and closed. Fewer when the
/// open-file limit is too low to serve that many (see [`connection_bound`]).
const MAX_CONNECTIONS: usize = 1024;

/// Descriptors one connection may hold: its socket, the clone its reader uses, and a run's
/// pidfd, pipes and cancel eventfd while one is in flight.
const FDS_PER_CONNECTION: u64 = 8;

/// Descriptors kept for everything else: the listener, the store, spares, logs.
const FDS_RESERVED: u64 = 64;

/// Raise the soft open-file limit to the hard one (the default soft limit of 1,024 is too
/// low for a daemon that holds a few descriptors a connection), and return how many
/// connections fit in what there is, so that the one past it is answered `busy` rather
/// than dropped for want of a descriptor.
fn connection_bound() -> usize {
    let (soft, error) =
        agent_contract::service::raise_soft_limit(nix::sys::resource::Resource::RLIMIT_NOFILE);
    if let Some(e) = error {
        crate::say!("spawner serve: cannot raise the open-file limit to its hard limit: {e}");
    }
    let fit = soft.saturating_sub(FDS_RESERVED) / FDS_PER_CONNECTION;
    usize::try_from(fit)
        .unwrap_or(usize::MAX)
        .clamp(1, MAX_CONNECTIONS)
}

/// Serve large allocations (request lines, captured output) from their own mappings, so
/// that freeing one gives its memory back to the system. glibc otherwise raises its mmap
/// threshold after the first such free, and later ones stay resident in its heaps after a
/// burst of large requests is over. (Linked against musl, the spawner allocates with
/// mimalloc, which gives freed memory back itself.)
fn keep_large_buffers_returnable() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets a tunable of the allocator; called before other threads.
    unsafe {
        nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// Environment variables of systemd socket activation.
const LISTEN_PID: &str = "LISTEN_PID";
const LISTEN_FDS: &str = "LISTEN_FDS";
/// The first descriptor systemd passes.
const SD_LISTEN_FDS_START: i32 = 3;

/// Run the daemon until SIGTERM or SIGINT.
pub fn serve(home: Home, options: Options) -> anyhow::Result<()> {
    let (listener, bound) = match activated_listener()? {
        Some(listener) => (listener, None),
        None => {
            let (listener, bound) = bind(&home, &options.socket)?;
            (listener, Some(bound))
        }
    };
    listener.set_nonblocking(true)?;
    keep_large_buffers_returnable();
    let stop = StopSignals::install()?;
    // The keeper: open for the daemon's life (created with the schema if new), in a home
    // that the store's open makes private whoever made it.
    let store = Store::open(&home.store_path())?;
    if let Some(old) = store.made_private() {
        crate::say!(
            "spawner serve: {}",
            agent_contract::home::made_private_notice(home.root(), old)
        );
    }
    let absolute_home = std::path::absolute(home.root())
        .with_context(|| format!("cannot resolve {}", home.root().display()))?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let max_connections = connection_bound();
    let admission = Admission::for_home(&home, options.max_running, options.max_queued);
    if let Some(Err(e)) = admission.home_slots().map(|slots| slots.open_all()) {
        crate::say!("spawner serve: warning: cannot open the home's run slots: {e}");
    }
    let daemon = Arc::new(Daemon {
        max_connections,
        home,
        admission,
        metrics: Metrics::default(),
        active: Mutex::new(HashMap::new()),
        connections: Mutex::new(HashMap::new()),
        next_connection: AtomicU64::new(0),
        pending: rpc::LineBudget::new(rpc::MAX_PENDING_BYTES),
        shutting_down: AtomicBool::new(false),
        store: Mutex::new(store),
        spares: spares::Spares::new(&absolute_home, options.spares),
        started: Instant::now(),
        options,
    });
    let keeper = {
        let daemon = Arc::clone(&daemon);
        std::thread::Builder::new()
            .name("spares".into())
            .spawn(move || daemon.spares.keep())
            .context("cannot start the spare keeper")?
    };
    crate::say!(
        "spawner serve: listening on {} (pid {}, {} cores, at most {} runs in flight and {} queued, {} connections)",
        bound.as_ref().map_or_else(
            || "a socket from systemd".to_owned(),
            |b| b.path.display().to_string()
        ),
        std::process::id(),
        cores,
        daemon.admission.limits().0,
        daemon.admission.limits().1,
        daemon.max_connections,
    );

    let mut workers: Vec<std::thread::JoinHandle<()>> = Vec::new();
    loop {
        let mut fds = [
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.read_end.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => bail!("poll: {e}"),
        }
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            break;
        }
        workers.retain(|w| !w.is_finished());
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    if let Some(worker) = accept(&daemon, stream) {
                        workers.push(worker);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE and friends: say so, and try again on the next wakeup.
                    crate::say!("spawner serve: accept: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                    break;
                }
            }
        }
    }
    let signal = stop.received();
    crate::say!("spawner serve: {signal} received, shutting down");
    drop(listener);
    if let Some(bound) = bound {
        bound.remove();
    }
    daemon.spares.stop();
    let _ = keeper.join();
    shut_down(&daemon, workers);
    crate::say!("spawner serve: stopped");
    Ok(())
}

/// Let runs in flight finish within the grace period, cancel the rest, end every
/// connection, and wait for the workers.
fn shut_down(daemon: &Daemon, workers: Vec<std::thread::JoinHandle<()>>) {
    daemon.shutting_down.store(true, Ordering::SeqCst);
    // Idle connections end now (their reads see end of file); a connection with a run in
    // flight still gets its answer.
    for conn in daemon
        .connections
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .values()
    {
        let _ = conn.shutdown(std::net::Shutdown::Read);
    }
    let deadline = Instant::now() + daemon.options.grace;
    while !daemon.lock_active().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let left: Vec<Arc<CancelToken>> = daemon
        .lock_active()
        .values()
        .map(|r| Arc::clone(&r.cancel))
        .collect();
    if !left.is_empty() {
        crate::say!(
            "spawner serve: grace period over, killing {} run(s)",
            left.len()
        );
    }
    for cancel in left {
        cancel.cancel(StopReason::Cancelled);
    }
    for worker in workers {
        let _ = worker.join();
    }
}

/// Check the peer and start a worker for the connection.
fn accept(daemon: &Arc<Daemon>, stream: UnixStream) -> Option<std::thread::JoinHandle<()>> {
    daemon.metrics.connections.fetch_add(1, Ordering::Relaxed);
    let refuse = |mut stream: UnixStream, error: RpcError| {
        daemon.metrics.rpc_errors.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
        let _ = stream.write_all(&rpc::response(&serde_json::Value::Null, Err(error)));
    };
    match peer_uid(&stream) {
        Ok(uid) if uid == nix::unistd::geteuid().as_raw() => {}
        Ok(uid) => {
            daemon.metrics.forbidden.fetch_add(1, Ordering::Relaxed);
            refuse(
                stream,
                RpcError::new(
                    rpc::FORBIDDEN,
                    format!(
                        "connections from uid {uid} are refused: this daemon serves only its own user"
                    ),
                ),
            );
            return None;
        }
        Err(e) => {
            crate::say!("spawner serve: cannot read the peer's credentials: {e}");
            return None;
        }
    }
    let id = daemon.next_connection.fetch_add(1, Ordering::Relaxed);
    {
        let mut conns = daemon
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if conns.len() >= daemon.max_connections {
            drop(conns);
            refuse(
                stream,
                RpcError::new(
                    rpc::BUSY,
                    format!(
                        "too many connections (at most {}); retry later",
                        daemon.max_connections
                    ),
                ),
            );
            return None;
        }
        match stream.try_clone() {
            Ok(clone) => {
                conns.insert(id, clone);
            }
            Err(e) => {
                crate::say!("spawner serve: cannot register a connection: {e}");
                return None;
            }
        }
    }
    let daemon = Arc::clone(daemon);
    let spawned = std::thread::Builder::new()
        .name(format!("conn-{id}"))
        .stack_size(256 * 1024)
        .spawn(move || {
            serve_connection(&daemon, stream);
            daemon
                .connections
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id);
        });
    match spawned {
        Ok(handle) => Some(handle),
        Err(e) => {
            crate::say!("spawner serve: cannot start a connection thread: {e}");
            None
        }
    }
}

/// Read requests from one connection and answer them, in order, until it closes.
fn serve_connection(daemon: &Daemon, stream: UnixStream) {
    if stream.set_nonblocking(false).is_err() {
        return;
    }
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::with_capacity(64 * 1024, read_half);
    let mut conn = methods::Connection { stream };
    loop {
        let timeout = daemon.options.client_timeout;
        let read = rpc::read_line(&mut reader, rpc::MAX_LINE_BYTES, timeout, &daemon.pending);
        let (code, message) = match read {
            Ok(Line::Complete(line)) => {
                if answer_line(daemon, &mut conn, line).is_err() {
                    return;
                }
                continue;
            }
            Ok(Line::TooLong) => (
                rpc::TOO_LARGE,
                format!(
                    "request line over the limit of {} bytes (its id could not be read)",
                    rpc::MAX_LINE_BYTES
                ),
            ),
            Ok(Line::Stalled) => (
                rpc::CLIENT_TIMEOUT,
                format!(
                    "the request line was not finished within {timeout:?} of its first byte (--client-timeout); closing the connection"
                ),
            ),
            Ok(Line::OverBudget) => (
                rpc::BUSY,
                format!(
                    "busy: unfinished requests of all connections hold the daemon's {} MiB for them; closing the connection, retry later",
                    rpc::MAX_PENDING_BYTES >> 20
                ),
            ),
            Ok(Line::Closed | Line::Idle) | Err(_) => return,
        };
        daemon.metrics.rpc_errors.fetch_add(1, Ordering::Relaxed);
        let sent = conn.send(&rpc::response(
            &serde_json::Value::Null,
            Err(RpcError::new(code, message)),
        ));
        // After a line too long the stream is still in step; after the others it is not.
        if sent.is_err() || code != rpc::TOO_LARGE {
            return;
        }
    }
}

/// Answer one complete request line; an error when the answer cannot be sent.
fn answer_line(
    daemon: &Daemon,
    conn: &mut methods::Connection,
    line: Vec<u8>,
) -> std::io::Result<()> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let parsed = rpc::parse_line(&line);
    // The parsed request is all the run needs: the line's bytes go now, not after it.
    drop(line);
    let answer = match parsed {
        Ok(rpc::Incoming::Single(message)) => {
            answer_one(daemon, conn, message).map(|a| rpc::line_of(&a))
        }
        Ok(rpc::Incoming::Batch(messages)) if messages.is_empty() => {
            daemon.metrics.rpc_errors.fetch_add(1, Ordering::Relaxed);
            let error = RpcError::new(rpc::INVALID_REQUEST, "an empty batch");
            Some(rpc::response(&serde_json::Value::Null, Err(error)))
        }
        // Each in order, one array of answers for them all.
        Ok(rpc::Incoming::Batch(messages)) => {
            let answers: Vec<serde_json::Value> = messages
                .into_iter()
                .filter_map(|m| answer_one(daemon, conn, m))
                .collect();
            rpc::batch_response(answers)
        }
        Err(error) => {
            daemon.metrics.rpc_errors.fetch_add(1, Ordering::Relaxed);
            Some(rpc::response(&serde_json::Value::Null, Err(error)))
        }
    };
    match answer {
        Some(answer) => conn.send(&answer),
        None => Ok(()),
    }
}

/// Answer one message (alone on its line or in a batch): the response object, or none for
/// a notification.
fn answer_one(
    daemon: &Daemon,
    conn: &mut methods::Connection,
    message: serde_json::Value,
) -> Option<serde_json::Value> {
    match rpc::request(message) {
        Ok(request) => {
            let result = methods::dispatch(daemon, conn, &request);
            if result.is_err() {
                daemon.metrics.rpc_errors.fetch_add(1, Ordering::Relaxed);
            }
            // A notification gets no answer.
            request.id.map(|id| rpc::response_value(&id, result))
        }
        Err((id, error)) => {
            daemon.metrics.rpc_errors.fetch_add(1, Ordering::Relaxed);
            Some(rpc::response_value(&id, Err(error)))
        }
    }
}

/// The uid of the process at the other end of `stream`.
fn peer_uid(stream: &UnixStream) -> nix::Result<u32> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    getsockopt(stream, PeerCredentials).map(|c| c.uid())
}

/// The listener systemd passed, if this process was socket-activated.
fn activated_listener() -> anyhow::Result<Option<UnixListener>> {
    let pid_matches = std::env::var(LISTEN_PID)
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    let count: i32 = std::env::var(LISTEN_FDS)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    if !pid_matches || count < 1 {
        return Ok(None);
    }
    if count > 1 {
        bail!("systemd passed {count} sockets; spawner serve takes exactly one (ListenStream=)");
    }
    // SAFETY: under socket activation, descriptor 3 is ours and open (LISTEN_PID names
    // this process); nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(SD_LISTEN_FDS_START) };
    nix::fcntl::fcntl(
        fd.as_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .context("the socket from systemd is not a valid descriptor")?;
    Ok(Some(UnixListener::from(fd)))
}

/// A socket file this daemon bound, with the lock that makes it the only one.
struct Bound {
    path: PathBuf,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl Bound {
    /// Remove the socket file (while still holding the lock).
    fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Longest socket path the kernel accepts (`sun_path` less its terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Bind `path`: directory 0700, socket 0600, one daemon per socket.
fn bind(home: &Home, path: &Path) -> anyhow::Result<(UnixListener, Bound)> {
    use nix::fcntl::{Flock, FlockArg};
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        bail!(
            "socket path {} is longer than {MAX_SOCKET_PATH} bytes; choose a shorter one with --socket",
            path.display()
        );
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if let Some(old) = home
        .prepare_socket_dir(path)
        .with_context(|| format!("cannot create {}", dir.display()))?
    {
        crate::say!(
            "spawner serve: {}",
            agent_contract::home::made_private_notice(dir, old)
        );
    }
    let lock_path = path.with_extension("lock");
    let lock_file = agent_contract::home::open_private_append(&lock_path)
        .with_context(|| format!("cannot open {}", lock_path.display()))?;
    let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|_| {
        anyhow::anyhow!(
            "another spawner serve is running on {} (it holds {}); stop it first",
            path.display(),
            lock_path.display()
        )
    })?;
    if path.exists() {
        // Holding the lock, no spawner daemon owns this socket; but if something answers
        // on it, it is not ours to take.
        if UnixStream::connect(path).is_ok() {
            bail!(
                "{} is in use by another process; not taking it over",
                path.display()
            );
        }
        crate::say!(
            "spawner serve: replacing the stale socket {} of a daemon that did not exit cleanly",
            path.display()
        );
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    // The directory is 0700 already; the socket's own mode is the second fence.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    Ok((
        listener,
        Bound {
            path: path.to_owned(),
            _lock: lock,
        },
    ))
}

/// The write end of the self-pipe the SIGTERM/SIGINT handler writes to.
static STOP_PIPE: AtomicI32 = AtomicI32::new(-1);
/// The last stop signal received.
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop_signal(sig: nix::libc::c_int) {
    STOP_SIGNAL.store(sig, Ordering::SeqCst);
    let fd = STOP_PIPE.load(Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: write(2) is async-signal-safe; the byte's address is valid.
        unsafe {
            nix::libc::write(fd, [1u8].as_ptr().cast(), 1);
        }
    }
}

/// SIGTERM and SIGINT, turned into a readable pipe for the accept loop. A handler rather
/// than blocked signals: children inherit a blocked mask, not a handler (exec resets it).
struct StopSignals {
    read_end: OwnedFd,
    _write_end: OwnedFd,
}

impl StopSignals {
    fn install() -> anyhow::Result<StopSignals> {
        use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
        let (read_end, write_end) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .context("cannot create the signal pipe")?;
        STOP_PIPE.store(write_end.as_raw_fd(), Ordering::SeqCst);
        let action = SigAction::new(
            SigHandler::Handler(on_stop_signal),
            SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        for sig in [Signal::SIGTERM, Signal::SIGINT] {
            // SAFETY: the handler only stores an integer and calls write(2).
            unsafe { sigaction(sig, &action) }.context("cannot install the signal handler")?;
        }
        Ok(StopSignals {
            read_end,
            _write_end: write_end,
        })
    }

    fn received(&self) -> String {
        nix::sys::signal::Signal::try_from(STOP_SIGNAL.load(Ordering::SeqCst))
            .map_or_else(|_| "a signal".to_owned(), |s| s.to_string())
    }
}
