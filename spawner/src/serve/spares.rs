//! Spare agent-execs: processes started ahead of requests (`agent-exec --prepare <home>`),
//! each with its engine, linker and store connection ready, waiting for exactly one
//! request. A run takes one instead of starting a process, which removes process start
//! and that set-up from its latency; a keeper thread starts the next. Each spare still
//! serves one request and exits: per-request isolation is unchanged.
//!
//! The replacement starts when a spare is taken, while its request runs. Starting it after
//! the reply instead was measured (BENCHMARKS.md, "A/B"): one client's back-to-back runs
//! got slower (p50 3.5-3.9 ms -> 4.9-5.1 ms), since on two cores the replacement then
//! competes with the next request instead of using the core the current one leaves idle.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

use crate::spawn::{SpawnPolicy, Started};

/// The pool.
pub struct Spares {
    target: usize,
    home: PathBuf,
    pool: Mutex<Vec<Started>>,
    taken: Condvar,
    stopping: AtomicBool,
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
            stopping: AtomicBool::new(false),
        }
    }

    /// A spare, when one is ready. The keeper starts its replacement.
    pub fn take(&self) -> Option<Started> {
        let spare = self
            .pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        self.taken.notify_one();
        spare
    }

    /// How many are ready.
    pub fn ready(&self) -> usize {
        self.pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// The keeper: keep the pool full until [`Spares::stop`]. Spares that died are
    /// dropped (and so reaped).
    pub fn keep(&self) {
        let mut warned = false;
        while !self.stopping.load(Ordering::SeqCst) {
            let missing = {
                let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
                pool.retain(Started::is_alive);
                self.target.saturating_sub(pool.len())
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
            // Woken when one is taken; every second anyway, to replace dead ones.
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
