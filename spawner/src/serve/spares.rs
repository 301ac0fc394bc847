//! Spare agent-execs: processes started ahead of requests (`agent-exec --prepare <home>`),
//! each with its engine, linker and store connection ready, waiting for exactly one
//! request. A run takes one instead of starting a process, which removes process start
//! and that set-up from its latency; a keeper thread starts the next. Each spare still
//! serves one request and exits: per-request isolation is unchanged.
//!
//! A replacement starts only once the request that took a spare has been answered (its
//! [`Taken`] token is dropped after the reply is written): starting a process costs a
//! core for a while, and on a small machine that core is the one the request was using.
//! Measured before this rule: a replacement started while a request was in flight
//! delayed the hand-off from 0.42 ms to 1.99 ms in 78% of back-to-back requests.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

use crate::spawn::{SpawnPolicy, Started};

/// The pool.
pub struct Spares {
    target: usize,
    home: PathBuf,
    pool: Mutex<Vec<Started>>,
    taken: Condvar,
    /// Spares taken by requests not answered yet: not to be replaced until they are.
    unanswered: AtomicUsize,
    stopping: AtomicBool,
}

/// A spare taken by a request that has not been answered yet. Dropped after the reply
/// (or with the connection), it lets the keeper start the spare's replacement.
pub struct Taken<'a> {
    spares: &'a Spares,
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        self.spares.unanswered.fetch_sub(1, Ordering::SeqCst);
        // Under the lock, so that the keeper cannot miss it between its count and its wait.
        let _pool = self
            .spares
            .pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.spares.taken.notify_one();
    }
}

impl Spares {
    /// A pool that keeps `target` spares for `home` (absolute). Empty until
    /// [`Spares::keep`] runs.
    pub fn new(home: &Path, target: usize) -> Spares {
        Spares {
            target,
            home: home.to_owned(),
            pool: Mutex::new(Vec::new()),
            taken: Condvar::new(),
            unanswered: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
        }
    }

    /// A spare, when one is ready, and the token to drop once its request is answered:
    /// the keeper starts its replacement then.
    pub fn take(&self) -> Option<(Started, Taken<'_>)> {
        let spare = self
            .pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()?;
        self.unanswered.fetch_add(1, Ordering::SeqCst);
        Some((spare, Taken { spares: self }))
    }

    /// How many are ready.
    pub fn ready(&self) -> usize {
        self.pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// The keeper: keep the pool full until [`Spares::stop`], less the spares whose
    /// requests are not answered yet. Spares that died are dropped (and so reaped).
    pub fn keep(&self) {
        let mut warned = false;
        while !self.stopping.load(Ordering::SeqCst) {
            let missing = {
                let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
                pool.retain(Started::is_alive);
                let unanswered = self.unanswered.load(Ordering::SeqCst);
                self.target.saturating_sub(pool.len() + unanswered)
            };
            for _ in 0..missing {
                let started = crate::request::agent_exec_path().and_then(|program| {
                    Ok(crate::spawn::start(
                        &SpawnPolicy::spare(program, &self.home),
                        true,
                        true,
                    )?)
                });
                match started {
                    Ok(spare) => {
                        warned = false;
                        self.pool
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(spare);
                    }
                    Err(e) => {
                        if !warned {
                            crate::say!("spawner serve: cannot start a spare agent-exec: {e:#}");
                            warned = true;
                        }
                        break;
                    }
                }
            }
            let pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
            if self.stopping.load(Ordering::SeqCst) {
                break;
            }
            // Woken when a request that took one is answered; every second anyway, to
            // replace dead ones.
            let _ = self
                .taken
                .wait_timeout(pool, Duration::from_secs(1))
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Stop the keeper and kill the spares.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.taken.notify_all();
        self.pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}
