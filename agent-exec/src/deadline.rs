//! The wall-clock deadline, without a thread: a one-shot `ITIMER_REAL` whose SIGALRM
//! handler bumps the engine's epoch, which traps the running agent at its next epoch check.
//! (`Engine::increment_epoch` is documented as signal-safe: one atomic add, no syscalls.)
//! A timer thread did the same job but cost more to start than the whole handler call.

use std::sync::OnceLock;
use std::time::Duration;

use nix::libc;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use wasmtime::Engine;

/// The engine the handler bumps; set once, before the timer is armed.
static ENGINE: OnceLock<Engine> = OnceLock::new();

extern "C" fn on_alarm(_signal: libc::c_int) {
    // An atomic load and an atomic add: both async-signal-safe.
    if let Some(engine) = ENGINE.get() {
        engine.increment_epoch();
    }
}

/// Arm the deadline: `timeout` from now, `engine`'s epoch is incremented once.
/// One deadline per process; a second call is refused.
pub fn arm(engine: &Engine, timeout: Duration) -> std::io::Result<()> {
    ENGINE
        .set(engine.clone())
        .map_err(|_| std::io::Error::other("the deadline is already armed"))?;
    let action = SigAction::new(
        SigHandler::Handler(on_alarm),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: the handler only does an atomic load and `increment_epoch`, which are
    // async-signal-safe, and it is installed before the timer can fire.
    unsafe { sigaction(Signal::SIGALRM, &action) }.map_err(std::io::Error::from)?;
    let timer = libc::itimerval {
        it_interval: libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
        it_value: libc::timeval {
            // (The C types are not named: the libc crate deprecates musl's, which change
            // width in later musl versions.) A deadline past 68 years is 68 years.
            tv_sec: timeout.as_secs().try_into().unwrap_or(i32::MAX.into()),
            // A zero timeval disarms the timer; the smallest deadline is one microsecond.
            tv_usec: timeout.subsec_micros().max(1).into(),
        },
    };
    // SAFETY: `timer` is a valid itimerval that outlives the call; the old value is not
    // requested.
    let rc = unsafe { libc::setitimer(libc::ITIMER_REAL, &timer, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The time a host call made for the agent (a chat, a tool call) may take: a little less
/// than the run has left before `deadline` (a quarter of it, at most a second), so that the
/// agent hears `timeout` and can still answer. `None` without a deadline.
pub fn host_call_timeout_ms(deadline: Option<std::time::Instant>) -> Option<u64> {
    deadline.map(|d| {
        let left = d.saturating_duration_since(std::time::Instant::now());
        let margin = (left / 4).min(Duration::from_secs(1));
        (left - margin).as_millis() as u64
    })
}
