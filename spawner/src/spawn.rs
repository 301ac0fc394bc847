//! The spawn policy, in one place: how a request's `agent-exec` is started, limited,
//! timed out, killed and reaped.
//!
//! - **posix_spawn**: the child is started with `std::process::Command` and no `pre_exec`
//!   closure, so std uses `posix_spawn` (vfork semantics) rather than fork: the cost does
//!   not grow with the spawner's size. std resets the child's signal mask and SIGPIPE.
//! - **Process group**: the child leads a new group (`POSIX_SPAWN_SETPGROUP`), so a kill
//!   reaches everything it may have started.
//! - **Resource limits**: applied to the child with `prlimit(2)` right after spawn; since
//!   posix_spawn returns only once the child has exec'd, they are in place while
//!   agent-exec is still starting, long before it runs any agent code. No core dumps, a
//!   bounded number of open files, and a CPU-time backstop behind the wall deadline.
//! - **Environment**: cleared; agent-exec needs none and agents must not see it.
//! - **Deadline, signals, reaping**: once the child runs, SIGCHLD, SIGINT, SIGTERM and
//!   SIGHUP are blocked in the spawner and taken synchronously with `sigtimedwait`, so
//!   there is no handler and no extra thread. (They are blocked only after the spawn,
//!   because the child inherits the mask.) At the deadline, or when the spawner itself is told to stop, the
//!   child's whole group gets SIGKILL; the child is always reaped before returning.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::libc;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, killpg};
use nix::unistd::Pid;
use std::os::unix::process::{CommandExt, ExitStatusExt};

/// Extra time past the agent's own deadline before the spawner kills the group: agent-exec
/// enforces the deadline itself (epoch interruption) and records the run; this is the
/// backstop for when it cannot.
pub const KILL_GRACE: Duration = Duration::from_secs(2);

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
    /// Kill the whole group when the child is still running this long after spawn.
    pub kill_after: Duration,
    /// Limits applied to the child.
    pub limits: ResourceLimits,
}

impl SpawnPolicy {
    /// The policy for a request whose agent deadline is `timeout`.
    pub fn for_request(program: PathBuf, timeout: Duration) -> SpawnPolicy {
        let kill_after = timeout.saturating_add(KILL_GRACE);
        SpawnPolicy {
            program,
            kill_after,
            limits: ResourceLimits {
                cpu_seconds: kill_after.as_secs().saturating_add(1),
                open_files: 256,
                core_bytes: 0,
            },
        }
    }
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    /// It exited with this code.
    Exited(i32),
    /// It died from this signal, not sent by the spawner.
    Signaled(i32),
    /// It was still running at `kill_after`; its group was killed.
    DeadlineKilled,
    /// The spawner was told to stop (SIGINT, SIGTERM, SIGHUP); the group was killed.
    Interrupted(Signal),
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

/// Start a child under `policy`, hand it `stdin_bytes`, and wait for it to end. The child
/// writes to this process's standard output.
pub fn run(policy: &SpawnPolicy, stdin_bytes: &[u8]) -> Result<Termination, SpawnError> {
    spawn_and_watch(policy, stdin_bytes, Stdio::inherit())
}

/// Largest standard output [`run_captured`] keeps.
pub const MAX_CAPTURED_BYTES: u64 = 128 * 1024 * 1024;

/// Like [`run`], but the child's standard output is captured and returned. It goes to an
/// anonymous in-memory file, not a pipe: no reader thread, and a child that writes a lot
/// cannot block on a full pipe while the spawner waits for it.
pub fn run_captured(
    policy: &SpawnPolicy,
    stdin_bytes: &[u8],
) -> Result<(Termination, Vec<u8>), SpawnError> {
    use nix::sys::memfd::{MFdFlags, memfd_create};
    use std::io::{Read, Seek};

    let memfd = memfd_create("agent-exec-stdout", MFdFlags::MFD_CLOEXEC)
        .map_err(|e| os("create the output buffer")(e.into()))?;
    let mut file = std::fs::File::from(memfd);
    let child_end = file.try_clone().map_err(os("share the output buffer"))?;
    let termination = spawn_and_watch(policy, stdin_bytes, Stdio::from(child_end))?;
    let mut out = Vec::new();
    file.rewind()
        .and_then(|()| (&mut file).take(MAX_CAPTURED_BYTES).read_to_end(&mut out))
        .map_err(os("read agent-exec's output"))?;
    Ok((termination, out))
}

fn spawn_and_watch(
    policy: &SpawnPolicy,
    stdin_bytes: &[u8],
    stdout: Stdio,
) -> Result<Termination, SpawnError> {
    let started = Instant::now();
    // Spawned before the signals are blocked: posix_spawn hands the parent's signal mask
    // to the child, and agent-exec must not start with SIGTERM or SIGINT blocked.
    let mut child = Command::new(&policy.program)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(stdout)
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .map_err(|source| SpawnError::Start {
            program: policy.program.clone(),
            source,
        })?;
    let pid = child.id() as libc::pid_t;
    apply_limits(pid, &policy.limits);

    let mut watched = SigSet::empty();
    for sig in [
        Signal::SIGCHLD,
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
    ] {
        watched.add(sig);
    }
    // A SIGCHLD that arrived before this point is not lost: the loop looks at the child
    // before every wait.
    let previous = match watched.thread_swap_mask(SigmaskHow::SIG_BLOCK) {
        Ok(previous) => previous,
        Err(e) => {
            kill_group(pid);
            let _ = child.wait();
            return Err(os("block signals")(e.into()));
        }
    };
    let result = watch(child, pid, started, policy, stdin_bytes, &watched);
    let _ = previous.thread_set_mask();
    result
}

/// Feed the child its input, then wait for it under the deadline, with `watched` blocked.
fn watch(
    mut child: std::process::Child,
    pid: libc::pid_t,
    started: Instant,
    policy: &SpawnPolicy,
    stdin_bytes: &[u8],
    watched: &SigSet,
) -> Result<Termination, SpawnError> {
    if let Some(mut stdin) = child.stdin.take() {
        // A child that exits without reading (a bad envelope) closes the pipe: not our
        // error to report, its exit status says what happened.
        let _ = stdin.write_all(stdin_bytes);
    }

    let deadline = started + policy.kill_after;
    loop {
        if let Some(status) = child.try_wait().map_err(os("wait for agent-exec"))? {
            return Ok(termination(status));
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            kill_group(pid);
            child.wait().map_err(os("reap agent-exec"))?;
            return Ok(Termination::DeadlineKilled);
        }
        // SIGCHLD, a timeout or an interrupted wait: loop and look at the child again.
        if let Some(sig @ (Signal::SIGINT | Signal::SIGTERM | Signal::SIGHUP)) =
            wait_for_signal(watched, remaining)
        {
            kill_group(pid);
            child.wait().map_err(os("reap agent-exec"))?;
            return Ok(Termination::Interrupted(sig));
        }
    }
}

fn termination(status: ExitStatus) -> Termination {
    match (status.code(), status.signal()) {
        (Some(code), _) => Termination::Exited(code),
        (None, Some(sig)) => Termination::Signaled(sig),
        (None, None) => Termination::Exited(-1),
    }
}

/// SIGKILL the child's whole process group (its pgid is its pid).
fn kill_group(pid: libc::pid_t) {
    // ESRCH (the group is already gone) is fine.
    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
}

/// Wait up to `timeout` for one of the blocked signals in `set`.
fn wait_for_signal(set: &SigSet, timeout: Duration) -> Option<Signal> {
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: `set` is a valid, initialised sigset; `ts` lives across the call; a null
    // siginfo pointer is allowed.
    let sig = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &ts) };
    if sig < 0 {
        None
    } else {
        Signal::try_from(sig).ok()
    }
}

/// Apply `limits` to the running child `pid`.
fn apply_limits(pid: libc::pid_t, limits: &ResourceLimits) {
    for (resource, value) in [
        (libc::RLIMIT_CORE, limits.core_bytes),
        (libc::RLIMIT_NOFILE, limits.open_files),
        (libc::RLIMIT_CPU, limits.cpu_seconds),
    ] {
        let limit = libc::rlimit {
            rlim_cur: value as libc::rlim_t,
            rlim_max: value as libc::rlim_t,
        };
        // SAFETY: prlimit reads `limit`, which outlives the call, and is given a null
        // old-limit pointer, which it allows. It acts only on our own child.
        let rc = unsafe { libc::prlimit(pid, resource, &limit, std::ptr::null_mut()) };
        if rc != 0 {
            // ESRCH: the child already exited, nothing left to limit.
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ESRCH) {
                eprintln!("spawner: warning: cannot limit agent-exec: {err}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(program: &str, kill_after: Duration) -> SpawnPolicy {
        SpawnPolicy {
            program: program.into(),
            kill_after,
            limits: ResourceLimits {
                cpu_seconds: 10,
                open_files: 64,
                core_bytes: 0,
            },
        }
    }

    #[test]
    fn exit_codes_pass_through() {
        assert_eq!(
            run(&policy("/bin/true", Duration::from_secs(5)), b"").expect("run"),
            Termination::Exited(0)
        );
        assert_eq!(
            run(&policy("/bin/false", Duration::from_secs(5)), b"").expect("run"),
            Termination::Exited(1)
        );
    }

    /// Run `script` with /bin/sh (reading it from standard input, so that no freshly
    /// written file is exec'd) under a policy that kills after `kill_after`.
    fn run_script(script: &str, kill_after: Duration) -> Termination {
        run(&policy("/bin/sh", kill_after), script.as_bytes()).expect("run")
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
    fn captured_output_is_returned_whole() {
        let script = "head -c 300000 /dev/zero | tr '\\0' x; echo; exit 4";
        let (t, out) = run_captured(
            &policy("/bin/sh", Duration::from_secs(5)),
            script.as_bytes(),
        )
        .expect("run");
        assert_eq!(t, Termination::Exited(4));
        assert_eq!(out.len(), 300_001);
        assert!(out[..300_000].iter().all(|b| *b == b'x'));
    }

    #[test]
    fn a_missing_program_is_a_start_error() {
        let err = run(
            &policy("/nonexistent/agent-exec", Duration::from_secs(1)),
            b"",
        )
        .expect_err("must fail");
        assert!(matches!(err, SpawnError::Start { .. }));
    }
}
