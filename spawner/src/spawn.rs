//! The spawn policy, in one place: how a request's `agent-exec` is started, limited,
//! fed, watched, timed out, killed and reaped. `spawner run`, `spawner hook` and the
//! `spawner serve` daemon all go through [`run`].
//!
//! - **posix_spawn**: the child is started with `std::process::Command` and no `pre_exec`
//!   closure, so std uses `posix_spawn` (vfork semantics) rather than fork: the cost does
//!   not grow with the spawner's size, and it is safe from a threaded daemon. The child
//!   inherits the signal mask, so no caller may have signals blocked when it spawns.
//! - **Process group**: the child leads a new group (`POSIX_SPAWN_SETPGROUP`), so a kill
//!   reaches everything it may have started.
//! - **Resource limits**: applied to the child with `prlimit(2)` right after spawn; since
//!   posix_spawn returns only once the child has exec'd, they are in place while
//!   agent-exec is still starting, long before it runs any agent code. No core dumps (soft
//!   and hard), a bounded number of open files, and a CPU-time backstop behind the wall
//!   deadline (soft limits: the hard ones stay, so an inference broker that a request
//!   starts can raise its own limits back, as a long-lived service must).
//! - **Environment**: cleared; agent-exec needs none and agents must not see it. The one
//!   exception is [`ProviderKeys`]: the providers' API keys, for an agent-exec that may
//!   start the broker, which inherits them (agent-exec gives its component no environment).
//! - **Watching**: one `poll(2)` loop, no extra thread, no signal handler: a pidfd tells
//!   when the child exits; the envelope goes to its standard input as the pipe accepts it
//!   (a child that never reads cannot block the spawner past the deadline); its standard
//!   error can be read as it comes (the daemon streams log lines); and the run's
//!   [`Stop`] stops it: its cancel token, the client's socket hanging up (the daemon),
//!   or, on the command line, SIGINT, SIGTERM and SIGHUP, read from a signalfd (blocked
//!   only once the child runs, because posix_spawn hands the parent's signal mask to the
//!   child). A hang-up or a signal cancels the token with its reason, so that whoever
//!   waits on the run reads why from the token.
//! - **Deadline and kill**: at the deadline, or when the run is stopped, the child's
//!   whole group gets SIGKILL; the child is always reaped, before [`run`] returns or,
//!   when asked ([`Spawn::reap_after_answer`]), after its answer is taken.
//! - **Answer before exit**: agent-exec closes its standard output once its answer is
//!   written and its record committed, and then still spends a good part of a millisecond
//!   exiting (the kernel tears down its engine's mappings before the pidfd is ready). A
//!   caller that captures the output and may take the answer then (the daemon) is given
//!   it at the end of the output, with an [`Exiting`] child that is reaped later, under
//!   the same deadline.

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};

use std::time::{Duration, Instant};

use nix::libc;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::cancel::{Stop, StopReason};

/// Extra time past the agent's own deadline before the spawner kills the group: agent-exec
/// enforces the deadline itself (epoch interruption) and records the run; this is the
/// backstop for when it cannot.
pub const KILL_GRACE: Duration = Duration::from_secs(2);

/// How long compiling one component may take (`agent-compile`).
pub const COMPILE_DEADLINE: Duration = Duration::from_secs(600);

/// Largest standard output kept when it is captured: a JSON report, which agent-exec keeps
/// within this by refusing answers over the output limit. More is an error, not a
/// truncated report.
pub const MAX_CAPTURED_BYTES: u64 = agent_contract::envelope::MAX_REPORT_BYTES;

/// Resource limits for a child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceLimits {
    /// RLIMIT_CPU, seconds.
    pub cpu_seconds: u64,
    /// RLIMIT_NOFILE.
    pub open_files: u64,
    /// RLIMIT_CORE, bytes (0: no core dumps).
    pub core_bytes: u64,
}

/// How to run one request's process.
#[derive(Debug, Clone)]
pub struct SpawnPolicy {
    /// The `agent-exec` binary.
    pub program: PathBuf,
    /// Its arguments (none for a request; `--prepare <home>` for a spare).
    pub args: Vec<std::ffi::OsString>,
    /// Kill the whole group when the child is still running this long after spawn.
    pub kill_after: Duration,
    /// Limits applied to the child.
    pub limits: ResourceLimits,
    /// Its whole environment: none, or the providers' keys.
    pub keys: ProviderKeys,
}

/// The API keys that `<home>/providers.toml` says are in the environment (`api_key_env`),
/// as this process's environment has them: given to an agent-exec that may start the
/// broker, since a broker started on demand has its starter's environment, and
/// agent-exec's is otherwise empty. `Debug` names the variables, never their values.
#[derive(Clone, Default)]
pub struct ProviderKeys(Vec<(String, std::ffi::OsString)>);

impl ProviderKeys {
    /// The keys of `home`'s providers that this process's environment sets. A providers
    /// file that cannot be read gives none: the broker says what is wrong with it when a
    /// chat needs a provider.
    pub fn from_env(home: &std::path::Path) -> ProviderKeys {
        ProviderKeys::from_lookup(home, |var| std::env::var_os(var))
    }

    /// The keys of `home`'s providers that `lookup` gives a non-empty value for.
    fn from_lookup(
        home: &std::path::Path,
        lookup: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> ProviderKeys {
        let Ok(providers) = agent_contract::providers::Providers::load(home) else {
            return ProviderKeys::default();
        };
        ProviderKeys(
            providers
                .key_vars()
                .filter_map(|var| {
                    let value = lookup(var).filter(|v| !v.is_empty())?;
                    Some((var.to_owned(), value))
                })
                .collect(),
        )
    }
}

impl std::fmt::Debug for ProviderKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(var, _)| var))
            .finish()
    }
}

impl SpawnPolicy {
    /// The policy for a spare `agent-exec --prepare <home> [--with-store]`: the CPU limit
    /// is a day (it can only be lowered later, to the request's, not raised), no deadline
    /// until it is fed. It is given the providers' keys: which agent it will run is not
    /// known yet.
    pub fn spare(program: PathBuf, home: &std::path::Path, with_store: bool) -> SpawnPolicy {
        let mut args = vec!["--prepare".into(), home.as_os_str().to_owned()];
        if with_store {
            args.push("--with-store".into());
        }
        SpawnPolicy {
            program,
            args,
            kill_after: Duration::MAX,
            limits: ResourceLimits {
                cpu_seconds: 86_400,
                open_files: 256,
                core_bytes: 0,
            },
            keys: ProviderKeys::from_env(home),
        }
    }

    /// The policy for `agent-compile <home> <agent>` (`program`): compiling a large component
    /// (a Python or JavaScript agent carries its language runtime: 12-18 MB) takes seconds
    /// of several cores, which no request's deadline should pay. Bounded by its own, long
    /// deadline and CPU limit.
    pub fn for_compile(program: PathBuf, home: &std::path::Path, agent: &str) -> SpawnPolicy {
        SpawnPolicy {
            program,
            args: vec![home.as_os_str().to_owned(), agent.into()],
            kill_after: COMPILE_DEADLINE,
            limits: ResourceLimits {
                cpu_seconds: COMPILE_DEADLINE.as_secs().saturating_mul(4),
                open_files: 256,
                core_bytes: 0,
            },
            keys: ProviderKeys::default(),
        }
    }

    /// The policy for a request whose agent deadline is `timeout`.
    pub fn for_request(program: PathBuf, timeout: Duration) -> SpawnPolicy {
        let kill_after = timeout.saturating_add(KILL_GRACE);
        SpawnPolicy {
            program,
            args: Vec::new(),
            kill_after,
            limits: ResourceLimits {
                cpu_seconds: kill_after.as_secs().saturating_add(1),
                open_files: 256,
                core_bytes: 0,
            },
            keys: ProviderKeys::default(),
        }
    }
}

/// A descriptor that stops the run when it shows one of `events`; `why` says what it
/// stands for.
#[derive(Debug, Clone, Copy)]
struct StopOn<'a> {
    fd: BorrowedFd<'a>,
    /// `POLLIN` for a signalfd or an eventfd; `POLLHUP` (always reported) for a socket
    /// whose peer went away.
    events: PollFlags,
    why: Watched,
}

/// What a [`StopOn`] stands for.
#[derive(Debug, Clone, Copy)]
enum Watched {
    /// The cancel token: already cancelled, with its reason.
    Token,
    /// The client's socket.
    Client,
    /// The signalfd.
    Signals,
}

/// The descriptors that stand for `stop`, the signalfd's among them when there is one.
fn stop_fds<'a>(stop: &Stop<'a>, signals: Option<&'a InterruptSignals>) -> Vec<StopOn<'a>> {
    let mut fds = vec![StopOn {
        fd: stop.token.as_fd(),
        events: PollFlags::POLLIN,
        why: Watched::Token,
    }];
    fds.extend(stop.client.map(|fd| StopOn {
        fd,
        events: PollFlags::POLLHUP,
        why: Watched::Client,
    }));
    fds.extend(signals.map(InterruptSignals::stop_on));
    fds
}

/// `fired` stopped the run: make sure the token says why.
fn cancel_for(stop: &Stop<'_>, fired: Watched, signals: Option<&InterruptSignals>) {
    let why = match fired {
        Watched::Token => return,
        Watched::Client => StopReason::ClientGone,
        Watched::Signals => StopReason::Signal(
            signals
                .and_then(InterruptSignals::received)
                .unwrap_or(Signal::SIGTERM),
        ),
    };
    stop.token.cancel(why);
}

/// One child to run.
pub struct Spawn<'a, 's> {
    /// How.
    pub policy: &'a SpawnPolicy,
    /// Written to its standard input, which is then closed.
    pub stdin: &'a [u8],
    /// Capture its standard output (returned in [`Exit::stdout`]) instead of letting it
    /// write to ours.
    pub capture_stdout: bool,
    /// Called with each chunk of its standard error as it comes; `None` lets it write to
    /// ours.
    pub on_stderr: Option<StderrSink<'s>>,
    /// What stops the run early.
    pub stop: Stop<'a>,
    /// With `capture_stdout`: when the child closes its standard output before it exits,
    /// end the watch there ([`Termination::Answered`]) and leave the child in
    /// [`Exit::exiting`].
    pub reap_after_answer: bool,
}

/// Where a child's standard error goes, chunk by chunk.
pub type StderrSink<'s> = &'s mut (dyn FnMut(&[u8]) + 's);

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    /// It exited with this code.
    Exited(i32),
    /// It died from this signal, not sent by the spawner.
    Signaled(i32),
    /// It was still running at `kill_after`; its group was killed.
    DeadlineKilled,
    /// The run was stopped (its token says why); the group was killed.
    Stopped,
    /// It closed its standard output and is still exiting: [`Exit::exiting`] reaps it.
    /// Only when [`Spawn::reap_after_answer`] asked for it.
    Answered,
}

/// A finished child, or one whose answer is whole ([`Termination::Answered`]).
#[derive(Debug)]
pub struct Exit {
    /// How it ended.
    pub termination: Termination,
    /// Its standard output, when captured.
    pub stdout: Vec<u8>,
    /// The child, still exiting, when it answered before it exited.
    pub exiting: Option<Exiting>,
}

/// A child that has closed its output but not yet exited. Reaped by [`Exiting::wait`], by
/// [`Exiting::reap_in_background`], or when dropped (which waits); killed with its group
/// if it is still there at its deadline. What it writes to its standard error from now on
/// is not read.
pub struct Exiting {
    child: Child,
    pidfd: OwnedFd,
    deadline: Instant,
    /// Kept open until it is reaped, so that a late write finds a pipe, not EPIPE.
    _stderr: Option<std::process::ChildStderr>,
}

impl std::fmt::Debug for Exiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exiting")
            .field("pid", &self.child.id())
            .finish_non_exhaustive()
    }
}

impl Exiting {
    /// Wait until it exits, or kill its group at its deadline, and say how it ended.
    pub fn wait(mut self) -> Result<Termination, SpawnError> {
        self.reap()
    }

    /// Leave it to a thread of this process that reaps exiting children one after the
    /// other (started on first use; its signals blocked).
    pub fn reap_in_background(self) {
        type Reaper = std::sync::mpsc::Sender<Exiting>;
        static REAPER: std::sync::OnceLock<Option<Reaper>> = std::sync::OnceLock::new();
        let reaper = REAPER.get_or_init(|| {
            let (send, receive) = std::sync::mpsc::channel::<Exiting>();
            let started = with_stop_signals_blocked(|| {
                std::thread::Builder::new()
                    .name("reaper".into())
                    .spawn(move || {
                        for exiting in receive {
                            drop(exiting);
                        }
                    })
            });
            started.ok().map(|_| send)
        });
        let sent = match reaper {
            Some(send) => send.send(self).map_err(|e| e.0),
            None => Err(self),
        };
        // No reaper thread: reap it here (its drop waits).
        drop(sent);
    }

    fn reap(&mut self) -> Result<Termination, SpawnError> {
        let pid = self.child.id() as libc::pid_t;
        loop {
            if let Some(status) = self.child.try_wait().map_err(os("reap agent-exec"))? {
                return Ok(termination(status));
            }
            let remaining = self.deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                kill_group(pid);
                self.child.wait().map_err(os("reap agent-exec"))?;
                return Ok(Termination::DeadlineKilled);
            }
            let mut fds = [PollFd::new(self.pidfd.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, poll_timeout(remaining)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    kill_group(pid);
                    self.child.wait().map_err(os("reap agent-exec"))?;
                    return Err(os("wait for agent-exec")(e.into()));
                }
            }
        }
    }
}

impl Drop for Exiting {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.reap();
        }
    }
}

/// What went wrong starting or watching a child.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The program could not be started.
    #[error("cannot start {}: {source}", program.display())]
    Start {
        /// The program.
        program: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A system call around the child failed.
    #[error("{what}: {source}")]
    Os {
        /// Which call.
        what: &'static str,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
}

fn os(what: &'static str) -> impl FnOnce(std::io::Error) -> SpawnError {
    move |source| SpawnError::Os { what, source }
}

/// A child started but not yet given its input: what [`start`] returns and [`feed`]
/// takes. The daemon keeps a few as spares (`agent-exec --prepare`), so that a request
/// does not wait for a process to start. Dropped unfed, it is killed and reaped.
pub struct Started {
    inner: Option<StartedChild>,
}

struct StartedChild {
    child: Child,
    pidfd: OwnedFd,
    /// Whether its standard output is a pipe to us.
    captured: bool,
    /// Whether its standard error is a pipe to us.
    stderr_piped: bool,
    /// The limits [`start`] applied: [`feed`] applies its own only when they differ (a
    /// spare started ahead of the request it serves), not a second time for a plain run.
    limits: ResourceLimits,
}

impl Started {
    /// Whether the child is still running (a spare may have died while it waited).
    pub fn is_alive(&self) -> bool {
        self.inner.as_ref().is_some_and(|c| {
            let mut fds = [PollFd::new(c.pidfd.as_fd(), PollFlags::POLLIN)];
            matches!(poll(&mut fds, PollTimeout::ZERO), Ok(0))
        })
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        if let Some(mut c) = self.inner.take() {
            kill_group(c.child.id() as libc::pid_t);
            let _ = c.child.wait();
        }
    }
}

/// Start a child under `policy`, with its standard output captured or ours, and its
/// standard error a pipe to us or ours. It waits for its input.
pub fn start(
    policy: &SpawnPolicy,
    capture_stdout: bool,
    pipe_stderr: bool,
) -> Result<Started, SpawnError> {
    // The captured output is a pipe, read as it comes (so a child that writes a lot does
    // not stall on a full pipe): its end tells that the answer is whole.
    let stdout = if capture_stdout {
        Stdio::piped()
    } else {
        Stdio::inherit()
    };
    let mut child = Command::new(&policy.program)
        .args(&policy.args)
        .env_clear()
        .envs(policy.keys.0.iter().map(|(var, value)| (var, value)))
        .stdin(Stdio::piped())
        .stdout(stdout)
        .stderr(if pipe_stderr {
            Stdio::piped()
        } else {
            Stdio::inherit()
        })
        .process_group(0)
        .spawn()
        .map_err(|source| SpawnError::Start {
            program: policy.program.clone(),
            source,
        })?;
    let pid = child.id() as libc::pid_t;
    apply_limits(pid, &policy.limits);
    match pidfd_open(pid) {
        Ok(pidfd) => Ok(Started {
            inner: Some(StartedChild {
                child,
                pidfd,
                captured: capture_stdout,
                stderr_piped: pipe_stderr,
                limits: policy.limits,
            }),
        }),
        Err(e) => {
            kill_group(pid);
            let _ = child.wait();
            Err(e)
        }
    }
}

/// Start the child, feed it, watch it until it ends (or is killed), reap it.
pub fn run(spawn: Spawn<'_, '_>) -> Result<Exit, SpawnError> {
    let started = start(
        spawn.policy,
        spawn.capture_stdout,
        spawn.on_stderr.is_some(),
    )?;
    feed(started, spawn)
}

/// Give a started child its input under `spawn`'s policy (its limits applied now when they
/// differ from those [`start`] applied, its deadline counted from now), watch it until it
/// ends (or is killed), reap it. The child's output goes where [`start`] sent it;
/// `spawn.on_stderr` gets its standard error only when that is a pipe.
pub fn feed(mut started: Started, spawn: Spawn<'_, '_>) -> Result<Exit, SpawnError> {
    let Spawn {
        policy,
        stdin,
        capture_stdout: _,
        on_stderr,
        stop,
        reap_after_answer,
    } = spawn;
    let Some(StartedChild {
        mut child,
        pidfd,
        captured,
        stderr_piped,
        limits,
    }) = started.inner.take()
    else {
        return Err(os("feed agent-exec")(std::io::Error::other(
            "the child was already fed",
        )));
    };
    let now = Instant::now();
    let deadline = now
        .checked_add(policy.kill_after)
        .unwrap_or(now + Duration::from_secs(365 * 86_400));
    let pid = child.id() as libc::pid_t;
    if limits != policy.limits {
        apply_limits(pid, &policy.limits);
    }
    // Blocked only now that the child runs (it inherits the mask).
    let signals = if stop.signals {
        match InterruptSignals::block() {
            Ok(s) => Some(s),
            Err(e) => {
                kill_group(pid);
                let _ = child.wait();
                return Err(e);
            }
        }
    } else {
        None
    };
    let watched = stop_fds(&stop, signals.as_ref());
    let mut stdout = Vec::new();
    let watching = Watching {
        deadline,
        stdin,
        stdout: captured.then_some(&mut stdout),
        on_stderr: on_stderr.filter(|_| stderr_piped),
        stop_on: &watched,
        reap_after_answer,
    };
    let termination = watch(&mut child, &pidfd, watching);
    if let Ok(Stopped(fired)) = termination {
        cancel_for(&stop, fired, signals.as_ref());
    }
    drop(watched);
    drop(signals);
    let termination = match termination {
        Ok(t) => t,
        Err(e) => {
            kill_group(pid);
            let _ = child.wait();
            return Err(e);
        }
    };
    let (termination, exiting) = match termination {
        Stopped(_) => (Termination::Stopped, None),
        Ended(t) => (t, None),
        Answered => {
            let stderr = child.stderr.take();
            let exiting = Exiting {
                child,
                pidfd,
                deadline,
                _stderr: stderr,
            };
            (Termination::Answered, Some(exiting))
        }
    };
    Ok(Exit {
        termination,
        stdout,
        exiting,
    })
}

/// How [`watch`] ended.
enum Watch {
    /// The child ended (or was killed at its deadline).
    Ended(Termination),
    /// This stop descriptor fired; the group was killed.
    Stopped(Watched),
    /// The child closed its output and is still running; it is not reaped.
    Answered,
}
use Watch::{Answered, Ended, Stopped};

/// What [`watch`] does around the child.
struct Watching<'w, 's> {
    deadline: Instant,
    stdin: &'w [u8],
    /// Where its captured output goes.
    stdout: Option<&'w mut Vec<u8>>,
    on_stderr: Option<StderrSink<'s>>,
    stop_on: &'w [StopOn<'w>],
    /// End the watch when the captured output ends before the child does.
    reap_after_answer: bool,
}

/// Read what `pipe` has into `out` (at most [`MAX_CAPTURED_BYTES`]) without blocking;
/// whether it has ended. More than the limit is an error.
fn read_output(
    pipe: &mut std::process::ChildStdout,
    out: &mut Vec<u8>,
    buf: &mut [u8],
) -> Result<bool, SpawnError> {
    loop {
        match pipe.read(buf) {
            Ok(0) => return Ok(true),
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.len() as u64 > MAX_CAPTURED_BYTES {
                    return Err(os("read agent-exec's output")(std::io::Error::other(
                        format!("its report is over {MAX_CAPTURED_BYTES} bytes"),
                    )));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(os("read agent-exec's output")(e)),
        }
    }
}

/// The poll loop: feed stdin, read the captured output, pass stderr on, and wait for the
/// exit, the deadline, a stop descriptor, or (when asked) the end of the output. Reaps the
/// child, unless it answered.
fn watch(child: &mut Child, pidfd: &OwnedFd, w: Watching<'_, '_>) -> Result<Watch, SpawnError> {
    let Watching {
        deadline,
        stdin: stdin_bytes,
        stdout: mut out,
        mut on_stderr,
        stop_on,
        reap_after_answer,
    } = w;
    let pid = child.id() as libc::pid_t;
    let mut stdin = child.stdin.take();
    let mut stdout = child.stdout.take().filter(|_| out.is_some());
    let mut stderr = child.stderr.take();
    for fd in stdin
        .iter()
        .map(AsFd::as_fd)
        .chain(stdout.iter().map(AsFd::as_fd))
        .chain(stderr.iter().map(AsFd::as_fd))
    {
        set_nonblocking(fd).map_err(os("configure agent-exec's pipes"))?;
    }
    let mut written = 0;
    if stdin_bytes.is_empty() {
        stdin = None;
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            kill_group(pid);
            child.wait().map_err(os("reap agent-exec"))?;
            return Ok(Ended(Termination::DeadlineKilled));
        }
        // Fixed slots: 0 the child, 1 its stdin, 2 its stderr, 3 its stdout, then the stop
        // descriptors. An unused slot polls the pidfd for nothing.
        let mut fds = Vec::with_capacity(4 + stop_on.len());
        fds.push(PollFd::new(pidfd.as_fd(), PollFlags::POLLIN));
        fds.push(match &stdin {
            Some(s) => PollFd::new(s.as_fd(), PollFlags::POLLOUT),
            None => PollFd::new(pidfd.as_fd(), PollFlags::empty()),
        });
        fds.push(match &stderr {
            Some(s) => PollFd::new(s.as_fd(), PollFlags::POLLIN),
            None => PollFd::new(pidfd.as_fd(), PollFlags::empty()),
        });
        fds.push(match &stdout {
            Some(s) => PollFd::new(s.as_fd(), PollFlags::POLLIN),
            None => PollFd::new(pidfd.as_fd(), PollFlags::empty()),
        });
        fds.extend(stop_on.iter().map(|s| PollFd::new(s.fd, s.events)));
        match poll(&mut fds, poll_timeout(remaining)) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(os("wait for agent-exec")(e.into())),
        }
        let fired = |i: usize| fds[i].revents().is_some_and(|r| !r.is_empty());
        let child_done = fired(0);
        let stdin_ready = fired(1);
        let stderr_ready = fired(2);
        let stdout_ready = fired(3);
        let stopped = (0..stop_on.len()).find(|i| fired(4 + i));
        drop(fds);
        if let Some(i) = stopped {
            kill_group(pid);
            child.wait().map_err(os("reap agent-exec"))?;
            return Ok(Stopped(stop_on[i].why));
        }
        if stdin_ready && let Some(pipe) = &mut stdin {
            match pipe.write(&stdin_bytes[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                // A child that exits without reading (a bad envelope) closes the pipe: not
                // our error to report, its exit status says what happened.
                Err(_) => written = stdin_bytes.len(),
            }
            if written >= stdin_bytes.len() {
                stdin = None;
            }
        }
        if (stderr_ready || child_done)
            && let (Some(pipe), Some(sink)) = (&mut stderr, on_stderr.as_deref_mut())
            && pass_on(pipe, sink, &mut buf, child_done)
        {
            stderr = None;
        }
        // After the exit too: what it wrote is in the pipe (a grandchild that holds it
        // open does not make us wait, as for stderr).
        if (stdout_ready || child_done)
            && let (Some(pipe), Some(out)) = (&mut stdout, out.as_deref_mut())
        {
            let ended = read_output(pipe, out, &mut buf).inspect_err(|_| {
                kill_group(pid);
                let _ = child.wait();
            })?;
            if ended {
                stdout = None;
                // No output is no answer (agent-exec asking for a compile first, or
                // failing before it could report): its exit says what happened.
                if reap_after_answer && !child_done && !out.is_empty() {
                    // Whatever stderr holds now came before the answer's end.
                    if let (Some(pipe), Some(sink)) = (&mut stderr, on_stderr.as_deref_mut()) {
                        pass_on(pipe, sink, &mut buf, true);
                    }
                    child.stderr = stderr;
                    return Ok(Answered);
                }
            }
        }
        if child_done {
            let status = child.wait().map_err(os("reap agent-exec"))?;
            return Ok(Ended(termination(status)));
        }
    }
}

/// Pass what the child's standard error holds to `sink`: one read, or (`drain`) every
/// read until it is empty, never waiting (a grandchild may hold the pipe open). Whether
/// the pipe has ended.
fn pass_on(
    pipe: &mut std::process::ChildStderr,
    sink: &mut dyn FnMut(&[u8]),
    buf: &mut [u8],
    drain: bool,
) -> bool {
    loop {
        match pipe.read(buf) {
            Ok(0) => return true,
            Ok(n) => sink(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
        if !drain {
            return false;
        }
    }
}

/// A poll timeout for what is left before a deadline: at least 1 ms (never a busy loop),
/// at most a minute (the loop looks at the clock again).
fn poll_timeout(remaining: Duration) -> PollTimeout {
    PollTimeout::try_from(remaining.as_millis().clamp(1, 60_000) as i32).unwrap_or(PollTimeout::MAX)
}

fn termination(status: ExitStatus) -> Termination {
    match (status.code(), status.signal()) {
        (Some(code), _) => Termination::Exited(code),
        (None, Some(sig)) => Termination::Signaled(sig),
        (None, None) => Termination::Exited(-1),
    }
}

/// A pidfd for `pid` (Linux 5.3 or later).
fn pidfd_open(pid: libc::pid_t) -> Result<OwnedFd, SpawnError> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(os("pidfd_open (needs Linux 5.3 or later)")(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: the descriptor was just created and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = fcntl(fd, FcntlArg::F_GETFL)?;
    fcntl(
        fd,
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )?;
    Ok(())
}

/// SIGKILL the child's whole process group (its pgid is its pid).
fn kill_group(pid: libc::pid_t) {
    // ESRCH (the group is already gone) is fine.
    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
}

/// This process's hard limits for CPU time and open files, read once: a child inherits
/// them, so they are the child's hard limits too, and a daemon need not ask per run.
/// `None` where one cannot be read (then the child's hard limit is set to its soft one).
fn own_hard_limits() -> (Option<libc::rlim_t>, Option<libc::rlim_t>) {
    type Hard = (Option<libc::rlim_t>, Option<libc::rlim_t>);
    static HARD: std::sync::OnceLock<Hard> = std::sync::OnceLock::new();
    *HARD.get_or_init(|| {
        let hard = |resource| {
            nix::sys::resource::getrlimit(resource)
                .ok()
                .map(|(_, hard)| hard)
        };
        (
            hard(nix::sys::resource::Resource::RLIMIT_CPU),
            hard(nix::sys::resource::Resource::RLIMIT_NOFILE),
        )
    })
}

/// Apply `limits` to the running child `pid`. The core limit is set soft and hard (no core
/// dumps, ever); CPU time and open files only soft, under the inherited hard limits:
/// agent-exec is ours and agents cannot change limits from inside the sandbox, while a
/// long-lived broker that a request starts must be able to raise its own back.
fn apply_limits(pid: libc::pid_t, limits: &ResourceLimits) {
    let (cpu_hard, files_hard) = own_hard_limits();
    for (resource, value, hard) in [
        (libc::RLIMIT_CORE, limits.core_bytes, None),
        (libc::RLIMIT_NOFILE, limits.open_files, files_hard),
        (libc::RLIMIT_CPU, limits.cpu_seconds, cpu_hard),
    ] {
        let value = value as libc::rlim_t;
        let limit = libc::rlimit {
            rlim_cur: hard.map_or(value, |hard| value.min(hard)),
            rlim_max: hard.unwrap_or(value),
        };
        // SAFETY: prlimit reads `limit`, which outlives the call, and is given a null
        // old-limit pointer, which it allows. It acts only on our own child.
        let rc = unsafe { libc::prlimit(pid, resource, &limit, std::ptr::null_mut()) };
        if rc != 0 {
            // ESRCH: the child already exited, nothing left to limit.
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ESRCH) {
                crate::say!("spawner: warning: cannot limit agent-exec: {err}");
            }
        }
    }
}

/// Wait `wait` (between a durable run's attempts), or less: until `stop` stops the run,
/// as it would stop a running one. Returns whether it did (its token then says why).
pub fn pause(wait: Duration, stop: Stop<'_>) -> Result<bool, SpawnError> {
    let signals = if stop.signals {
        Some(InterruptSignals::block()?)
    } else {
        None
    };
    let watched = stop_fds(&stop, signals.as_ref());
    let mut fds: Vec<PollFd<'_>> = watched
        .iter()
        .map(|s| PollFd::new(s.fd, s.events))
        .collect();
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => {}
            Ok(_) => {
                let ready = fds
                    .iter()
                    .position(|f| f.any().unwrap_or(false))
                    .unwrap_or(0);
                cancel_for(&stop, watched[ready].why, signals.as_ref());
                return Ok(true);
            }
            Err(e) => return Err(os("wait between attempts")(e.into())),
        }
    }
}

/// Run `f` with the signals the command line stops runs on (SIGINT, SIGTERM, SIGHUP)
/// blocked in this thread, then put the mask back: a thread `f` spawns keeps them blocked,
/// so that they reach the signalfd of the thread that waits on the run instead of ending
/// the process. (A child spawned from such a thread gets an empty mask from
/// `std::process::Command`.)
pub fn with_stop_signals_blocked<T>(f: impl FnOnce() -> T) -> T {
    use nix::sys::signal::SigmaskHow;
    let previous = InterruptSignals::set().thread_swap_mask(SigmaskHow::SIG_BLOCK);
    let result = f();
    if let Ok(previous) = previous {
        let _ = previous.thread_set_mask();
    }
    result
}

/// What the command line stops a run on: SIGINT, SIGTERM and SIGHUP, blocked in this
/// thread and read from a signalfd, so that the spawner kills the run's group and records
/// it before exiting. The previous mask comes back on drop.
struct InterruptSignals {
    fd: nix::sys::signalfd::SignalFd,
    previous: nix::sys::signal::SigSet,
}

impl InterruptSignals {
    /// The signals an interactive caller uses to stop a run.
    fn set() -> nix::sys::signal::SigSet {
        let mut set = nix::sys::signal::SigSet::empty();
        for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
            set.add(sig);
        }
        set
    }

    /// Block the signals in this thread and open a signalfd for them.
    fn block() -> Result<InterruptSignals, SpawnError> {
        use nix::sys::signal::SigmaskHow;
        use nix::sys::signalfd::{SfdFlags, SignalFd};
        let set = Self::set();
        let previous = set
            .thread_swap_mask(SigmaskHow::SIG_BLOCK)
            .map_err(|e| os("block signals")(e.into()))?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .map_err(|e| os("signalfd")(e.into()))?;
        Ok(InterruptSignals { fd, previous })
    }

    /// What [`watch`] should watch.
    fn stop_on(&self) -> StopOn<'_> {
        StopOn {
            fd: self.fd.as_fd(),
            events: PollFlags::POLLIN,
            why: Watched::Signals,
        }
    }

    /// The signal that arrived, if any.
    fn received(&self) -> Option<Signal> {
        self.fd
            .read_signal()
            .ok()
            .flatten()
            .and_then(|info| Signal::try_from(info.ssi_signo as i32).ok())
    }
}

impl Drop for InterruptSignals {
    fn drop(&mut self) {
        let _ = self.previous.thread_set_mask();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cancel::CancelToken;

    fn policy(program: &str, kill_after: Duration) -> SpawnPolicy {
        SpawnPolicy {
            program: program.into(),
            args: Vec::new(),
            kill_after,
            limits: ResourceLimits {
                cpu_seconds: 10,
                open_files: 64,
                core_bytes: 0,
            },
            keys: ProviderKeys::default(),
        }
    }

    /// A token nobody cancels, for the runs that only their signals may stop.
    fn never() -> &'static CancelToken {
        static NEVER: std::sync::OnceLock<CancelToken> = std::sync::OnceLock::new();
        NEVER.get_or_init(|| CancelToken::new().expect("token"))
    }

    fn spawn<'a>(policy: &'a SpawnPolicy, stdin: &'a [u8]) -> Spawn<'a, 'a> {
        Spawn {
            policy,
            stdin,
            capture_stdout: false,
            on_stderr: None,
            stop: Stop::signals(never()),
            reap_after_answer: false,
        }
    }

    fn termination_of(program: &str, stdin: &[u8], kill_after: Duration) -> Termination {
        let p = policy(program, kill_after);
        run(spawn(&p, stdin)).expect("run").termination
    }

    #[test]
    fn exit_codes_pass_through() {
        let t = termination_of("/bin/true", b"", Duration::from_secs(5));
        assert_eq!(t, Termination::Exited(0));
        let t = termination_of("/bin/false", b"", Duration::from_secs(5));
        assert_eq!(t, Termination::Exited(1));
    }

    /// Run `script` with /bin/sh (reading it from standard input, so that no freshly
    /// written file is exec'd) under a policy that kills after `kill_after`.
    fn run_script(script: &str, kill_after: Duration) -> Termination {
        termination_of("/bin/sh", script.as_bytes(), kill_after)
    }

    /// True while `pid` exists and is not a zombie.
    fn alive(pid: &str) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| {
                !stat
                    .rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(false)
    }

    #[test]
    fn a_child_past_its_deadline_is_killed_with_its_whole_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pidfile = dir.path().join("grandchild.pid");
        let script = format!("sleep 30 &\necho $! > {}\nsleep 30", pidfile.display());
        let started = Instant::now();
        let t = run_script(&script, Duration::from_millis(300));
        assert_eq!(t, Termination::DeadlineKilled);
        assert!(started.elapsed() < Duration::from_secs(10));
        let grandchild = std::fs::read_to_string(&pidfile).expect("pidfile");
        let grandchild = grandchild.trim();
        let gone = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            !alive(grandchild)
        });
        assert!(gone, "grandchild {grandchild} outlived the kill");
    }

    #[test]
    fn the_child_starts_with_no_signals_blocked() {
        let script = "mask=$(grep SigBlk /proc/$$/status | cut -f2)\n\
                      [ \"$mask\" = 0000000000000000 ] && exit 0 || exit 3";
        assert_eq!(
            run_script(script, Duration::from_secs(5)),
            Termination::Exited(0)
        );
    }

    #[test]
    fn a_child_killed_by_a_signal_is_reported_as_such() {
        let t = run_script("kill -9 $$", Duration::from_secs(5));
        assert_eq!(t, Termination::Signaled(9));
    }

    #[test]
    fn a_missing_program_is_a_start_error() {
        let p = policy("/nonexistent/agent-exec", Duration::from_secs(1));
        let err = run(spawn(&p, b"")).expect_err("must fail");
        assert!(matches!(err, SpawnError::Start { .. }));
    }

    #[test]
    fn the_child_gets_no_environment_but_the_keys_it_is_given() {
        let env_of = |p: &SpawnPolicy| {
            let exit = run(Spawn {
                capture_stdout: true,
                ..spawn(p, b"")
            })
            .expect("run");
            assert_eq!(exit.termination, Termination::Exited(0));
            String::from_utf8(exit.stdout).expect("utf-8")
        };
        // This test process's environment (PATH, HOME, ...) does not reach the child.
        assert_eq!(env_of(&policy("/usr/bin/env", Duration::from_secs(5))), "");
        let p = SpawnPolicy {
            keys: ProviderKeys(vec![("LAB_KEY".into(), "sk-7f3a".into())]),
            ..policy("/usr/bin/env", Duration::from_secs(5))
        };
        assert_eq!(env_of(&p), "LAB_KEY=sk-7f3a\n");
        assert_eq!(format!("{p:?}").matches("sk-7f3a").count(), 0, "{p:?}");
        assert!(format!("{p:?}").contains("LAB_KEY"));
    }

    #[test]
    fn the_keys_are_the_providers_variables_this_environment_sets() {
        let home = tempfile::tempdir().expect("tempdir");
        let providers = home.path().join(agent_contract::providers::PROVIDERS_FILE);
        // The environment sets A_KEY, sets B_KEY empty, and lacks C_KEY.
        let lookup = |var: &str| match var {
            "A_KEY" => Some("sk-a".into()),
            "B_KEY" => Some("".into()),
            _ => None,
        };
        std::fs::write(
            &providers,
            "[[provider]]\nname = \"a\"\nurl = \"http://x\"\napi_key_env = \"A_KEY\"\n\
             [[provider]]\nname = \"b\"\nurl = \"http://y\"\napi_key_env = \"B_KEY\"\n\
             [[provider]]\nname = \"c\"\nurl = \"http://z\"\napi_key_env = \"C_KEY\"\n",
        )
        .expect("providers");
        let keys = ProviderKeys::from_lookup(home.path(), lookup);
        assert_eq!(keys.0, [("A_KEY".to_owned(), "sk-a".into())]);
        // A file naming a variable programs read (PATH) is refused whole: no keys at all.
        std::fs::write(
            &providers,
            "[[provider]]\nname = \"a\"\nurl = \"http://x\"\napi_key_env = \"A_KEY\"\n\
             [[provider]]\nname = \"p\"\nurl = \"http://y\"\napi_key_env = \"PATH\"\n",
        )
        .expect("providers");
        assert!(
            ProviderKeys::from_lookup(home.path(), |_| Some("v".into()))
                .0
                .is_empty()
        );
        // No file, or one that is not valid: none.
        assert!(
            ProviderKeys::from_env(&home.path().join("nowhere"))
                .0
                .is_empty()
        );
        std::fs::write(
            home.path().join(agent_contract::providers::PROVIDERS_FILE),
            "[[provider]]\nname = 1\n",
        )
        .expect("providers");
        assert!(ProviderKeys::from_env(home.path()).0.is_empty());
    }

    #[test]
    fn output_is_captured_whole_and_stderr_streamed() {
        let p = policy("/bin/sh", Duration::from_secs(5));
        let script = "head -c 300000 /dev/zero | tr '\\0' x; echo; echo to-stderr >&2; exit 4";
        let mut err = Vec::new();
        let mut sink = |chunk: &[u8]| err.extend_from_slice(chunk);
        let exit = run(Spawn {
            capture_stdout: true,
            on_stderr: Some(&mut sink),
            ..spawn(&p, script.as_bytes())
        })
        .expect("run");
        assert_eq!(exit.termination, Termination::Exited(4));
        assert_eq!(exit.stdout.len(), 300_001);
        assert!(exit.stdout[..300_000].iter().all(|b| *b == b'x'));
        assert_eq!(err, b"to-stderr\n");
    }

    fn answering(script: &str, kill_after: Duration, reap_after_answer: bool) -> Exit {
        let p = policy("/bin/sh", kill_after);
        run(Spawn {
            capture_stdout: true,
            reap_after_answer,
            ..spawn(&p, script.as_bytes())
        })
        .expect("run")
    }

    #[test]
    fn an_answer_is_taken_when_the_output_closes_and_the_child_is_reaped_after() {
        // It closes its output, then waits for ever (its sleep has no standard output).
        let exit = answering(
            "printf answer; exec >&-; sleep 60",
            Duration::from_secs(120),
            true,
        );
        assert_eq!(exit.termination, Termination::Answered);
        assert_eq!(exit.stdout, b"answer");
        let mut exiting = exit.exiting.expect("exiting");
        assert!(
            matches!(exiting.child.try_wait(), Ok(None)),
            "still running"
        );
        kill_group(exiting.child.id() as libc::pid_t);
        assert_eq!(
            exiting.wait().expect("wait"),
            Termination::Signaled(libc::SIGKILL)
        );
        // Not asked: the watch lasts until the exit, output and all.
        let exit = answering(
            "printf answer; exec >&-; exit 3",
            Duration::from_secs(60),
            false,
        );
        assert_eq!(exit.termination, Termination::Exited(3));
        assert_eq!(exit.stdout, b"answer");
        assert!(exit.exiting.is_none());
    }

    #[test]
    fn a_child_that_answered_is_still_killed_at_its_deadline() {
        // Answered well before a long deadline, however slow the machine; then its
        // deadline is brought to now.
        let exit = answering(
            "printf a; exec >&-; sleep 60",
            Duration::from_secs(120),
            true,
        );
        assert_eq!(exit.termination, Termination::Answered);
        let mut exiting = exit.exiting.expect("exiting");
        exiting.deadline = Instant::now();
        assert_eq!(exiting.wait().expect("wait"), Termination::DeadlineKilled);
    }

    #[test]
    fn a_child_left_to_the_reaper_is_reaped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let go = dir.path().join("go");
        // It answers, then exits once told to (it cannot exit before we look).
        let script = format!(
            "printf a; exec >&-; while [ ! -e '{}' ]; do sleep 0.01; done",
            go.display()
        );
        let exit = answering(&script, Duration::from_secs(60), true);
        let exiting = exit.exiting.expect("exiting");
        let pid = Pid::from_raw(exiting.child.id() as libc::pid_t);
        exiting.reap_in_background();
        std::fs::write(&go, "").expect("go");
        // A zombie still takes a signal; a reaped child is gone (ESRCH).
        let waited = Instant::now();
        while nix::sys::signal::kill(pid, None).is_ok() {
            assert!(waited.elapsed() < Duration::from_secs(30), "never reaped");
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_large_input_to_a_child_that_never_reads_cannot_outlast_the_deadline() {
        let p = policy("/bin/sleep", Duration::from_millis(300));
        let input = vec![b'x'; 4 << 20];
        let exit = run(spawn(&p, &input));
        // sleep without an argument exits at once; with a pipe it never reads, the
        // spawner must not hang writing. Either way, it returns promptly.
        assert!(exit.is_ok());
        let p = policy("/bin/sh", Duration::from_millis(300));
        let mut script = b"sleep 30\n".to_vec();
        script.extend(std::iter::repeat_n(b'#', 4 << 20));
        let started = Instant::now();
        let t = run(spawn(&p, &script)).expect("run").termination;
        assert_eq!(t, Termination::DeadlineKilled);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_cancelled_token_kills_the_run() {
        let token = CancelToken::new().expect("token");
        let p = policy("/bin/sh", Duration::from_secs(30));
        std::thread::scope(|scope| {
            scope.spawn(|| {
                std::thread::sleep(Duration::from_millis(200));
                token.cancel(StopReason::Cancelled);
            });
            let started = Instant::now();
            let exit = run(Spawn {
                stop: Stop::token(&token),
                ..spawn(&p, b"sleep 30")
            })
            .expect("run");
            assert_eq!(exit.termination, Termination::Stopped);
            assert_eq!(token.reason(), Some(StopReason::Cancelled));
            assert!(started.elapsed() < Duration::from_secs(10));
        });
    }

    #[test]
    fn a_client_hanging_up_kills_the_run_and_says_so_in_its_token() {
        let token = CancelToken::new().expect("token");
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("pair");
        let p = policy("/bin/sh", Duration::from_secs(30));
        std::thread::scope(|scope| {
            scope.spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                drop(theirs);
            });
            let exit = run(Spawn {
                stop: Stop {
                    client: Some(ours.as_fd()),
                    ..Stop::token(&token)
                },
                ..spawn(&p, b"sleep 30")
            })
            .expect("run");
            assert_eq!(exit.termination, Termination::Stopped);
            assert_eq!(token.reason(), Some(StopReason::ClientGone));
        });
    }

    #[test]
    fn a_pause_ends_early_when_the_token_is_cancelled() {
        let token = CancelToken::new().expect("token");
        assert!(!pause(Duration::from_millis(1), Stop::token(&token)).expect("pause"));
        token.cancel(StopReason::Cancelled);
        let started = Instant::now();
        assert!(pause(Duration::from_secs(30), Stop::token(&token)).expect("pause"));
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
