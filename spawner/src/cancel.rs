//! What stops a run early, besides its deadline: a [`CancelToken`] that whoever may stop
//! the run cancels with a reason (the daemon's `runs.cancel`, a parent run that ended, the
//! spawn loop itself when the caller's signal or hang-up arrives), and the [`Stop`] a run
//! is given: its token, and what else the spawn loop should watch on the token's behalf.
//!
//! The first reason wins and stays: whoever waits on the run (the spawn loop, the pause
//! between retries, a sub-run waiting for a slot) reads why from the token, not from
//! which descriptor woke it.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::OnceLock;

use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::signal::Signal;

/// Why a run was stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The spawner received this signal.
    Signal(Signal),
    /// A client cancelled it.
    Cancelled,
    /// The client that asked for it disconnected.
    ClientGone,
}

impl StopReason {
    /// What the run record says.
    pub fn describe(self) -> String {
        match self {
            StopReason::Signal(sig) => format!("the run was killed because spawner received {sig}"),
            StopReason::Cancelled => "the run was cancelled".to_owned(),
            StopReason::ClientGone => {
                "the client disconnected, so its run was cancelled".to_owned()
            }
        }
    }
}

/// A run's cancellation: set once, with a reason, from any thread; readable (as an
/// eventfd) for whoever polls, from then on.
#[derive(Debug)]
pub struct CancelToken {
    /// Readable once cancelled (it is never read, so it stays so).
    fd: EventFd,
    reason: OnceLock<StopReason>,
}

impl CancelToken {
    /// A token not cancelled yet.
    pub fn new() -> std::io::Result<CancelToken> {
        Ok(CancelToken {
            fd: EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?,
            reason: OnceLock::new(),
        })
    }

    /// Cancel, for `why` unless it was cancelled already (the first reason stays).
    /// Whoever polls the token wakes. Returns whether this call cancelled it.
    pub fn cancel(&self, why: StopReason) -> bool {
        let first = self.reason.set(why).is_ok();
        if first {
            // Cannot fail short of the counter overflowing, which one write never does.
            let _ = self.fd.write(1);
        }
        first
    }

    /// Why it was cancelled; `None` while it is not.
    pub fn reason(&self) -> Option<StopReason> {
        self.reason.get().copied()
    }

    /// Whether it was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.reason.get().is_some()
    }

    /// Readable (`POLLIN`) once cancelled: for poll loops that wait on other things too.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// What stops one run early, besides its deadline.
#[derive(Debug, Clone, Copy)]
pub struct Stop<'a> {
    /// The run's token: cancelled by others, or by the spawn loop for the two below.
    pub token: &'a CancelToken,
    /// A connection whose hang-up cancels the run ([`StopReason::ClientGone`]): the
    /// daemon's client.
    pub client: Option<BorrowedFd<'a>>,
    /// SIGINT, SIGTERM or SIGHUP to this process cancel the run
    /// ([`StopReason::Signal`]): the command line.
    pub signals: bool,
}

impl<'a> Stop<'a> {
    /// The command line's: its signals stop the run.
    pub fn signals(token: &'a CancelToken) -> Stop<'a> {
        Stop {
            token,
            client: None,
            signals: true,
        }
    }

    /// Only the token stops the run (a sub-run, cancelled when its parent ends).
    pub fn token(token: &'a CancelToken) -> Stop<'a> {
        Stop {
            token,
            client: None,
            signals: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

    #[test]
    fn the_first_reason_stays_and_the_token_stays_readable() {
        let token = CancelToken::new().expect("token");
        let ready = |t: &CancelToken| {
            let mut fds = [PollFd::new(t.as_fd(), PollFlags::POLLIN)];
            poll(&mut fds, PollTimeout::ZERO).expect("poll") == 1
        };
        assert!(!token.is_cancelled());
        assert!(!ready(&token));
        assert!(token.cancel(StopReason::ClientGone));
        assert!(!token.cancel(StopReason::Cancelled));
        assert_eq!(token.reason(), Some(StopReason::ClientGone));
        assert!(ready(&token));
        assert!(ready(&token), "polling does not consume the cancellation");
    }
}
