//! Spare agent-execs: processes started ahead of requests (`agent-exec --prepare <home>`),
//! each with its engine and linker ready, waiting for exactly one request. A run takes one
//! instead of starting a process, which removes process start and that set-up from its
//! latency; a keeper thread starts the next. Each spare still serves one request and
//! exits: per-request isolation is unchanged.
//!
//! A spare opens the store's connection ahead too (`--with-store`) only where it is likely
//! to be used. Opening it parses the schema anew, about a third of a millisecond of CPU,
//! which on two cores is taken from the requests in flight: measured side by side
//! (BENCHMARKS.md, "A/B"), spares that never open it served `echo` at p50 1.3-1.9 ms
//! instead of 2.1-2.8 ms and 520-620 runs/s at 8 clients instead of 380-430, while a run of
//! an agent that reads memory took 0.3-0.5 ms longer without it. So the pool learns, per
//! agent, whether its last run used the store ([`Spares::learn`], from the run's report),
//! hands a run a spare of the kind its agent needs where one is ready
//! ([`Spares::take_for`]), and starts replacements of the kind the last run taken asked
//! for. Any spare serves any request: a spare without the connection opens it on first
//! use, one with it closes it unused; the kind is about cost, never correctness.
//!
//! The replacement starts when a spare is taken, while its request runs. Starting it after
//! the reply instead was measured (BENCHMARKS.md, "A/B"): one client's back-to-back runs
//! got slower (p50 3.5-3.9 ms -> 4.9-5.1 ms), since on two cores the replacement then
//! competes with the next request instead of using the core the current one leaves idle.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

use crate::spawn::{SpawnPolicy, Started};

/// Agents whose store use the pool remembers; past this many it forgets them all (each is
/// relearned by its next run).
const MAX_LEARNED: usize = 4096;

/// One spare and whether it opened the store ahead.
struct Spare {
    started: Started,
    with_store: bool,
}

/// The pool.
pub struct Spares {
    target: usize,
    home: PathBuf,
    pool: Mutex<Vec<Spare>>,
    taken: Condvar,
    stopping: AtomicBool,
    /// The kind the keeper starts: the kind the last run taken needed (at first, with the
    /// store, as before the pool learned).
    with_store: AtomicBool,
    /// Per agent: whether its last run used the store.
    uses_store: Mutex<HashMap<String, bool>>,
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
            with_store: AtomicBool::new(true),
            uses_store: Mutex::new(HashMap::new()),
        }
    }

    /// A spare for a run of `agent`, when one is ready: one of the kind the agent's last
    /// run needed if there is one, else any. The keeper starts its replacement, of that
    /// kind. An agent not yet learned takes any and changes nothing.
    pub fn take_for(&self, agent: &str) -> Option<Started> {
        let wants = self
            .uses_store
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(agent)
            .copied();
        if let Some(with_store) = wants {
            self.with_store.store(with_store, Ordering::SeqCst);
        }
        let spare = {
            let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
            let at = wants
                .and_then(|w| pool.iter().rposition(|s| s.with_store == w))
                .or_else(|| pool.len().checked_sub(1));
            at.map(|i| pool.remove(i).started)
        };
        self.taken.notify_one();
        spare
    }

    /// Remember whether the run of `agent` that just ended used the store.
    pub fn learn(&self, agent: &str, used_store: bool) {
        let mut learned = self
            .uses_store
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if learned.get(agent) == Some(&used_store) {
            return;
        }
        if learned.len() >= MAX_LEARNED {
            learned.clear();
        }
        learned.insert(agent.to_owned(), used_store);
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
                pool.retain(|s| s.started.is_alive());
                self.target.saturating_sub(pool.len())
            };
            for _ in 0..missing {
                let with_store = self.with_store.load(Ordering::SeqCst);
                let started = crate::request::agent_exec_path().and_then(|program| {
                    Ok(crate::spawn::start(
                        &SpawnPolicy::spare(program, &self.home, with_store),
                        true,
                        true,
                    )?)
                });
                match started {
                    Ok(started) => {
                        warned = false;
                        self.pool
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(Spare {
                                started,
                                with_store,
                            });
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
