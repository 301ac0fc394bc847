//! The journal of a durable run (`[durable] journal = true`): every host call whose result
//! comes from outside the component, in order, with a hash of what it asked and the
//! result the guest got (memory-store's `journal` table).
//!
//! # How a run uses it
//!
//! - **Record** (a new run): each call is made, then journaled. Calls that cost or act
//!   (chats, tool calls, inference) are written to the store before their result reaches
//!   the guest; reads (memory, clocks) wait in memory for the next such write or the
//!   run's end, since nothing outside depends on them until then.
//! - **Resume** (`spawner runs resume`): a call whose step is journaled is served from the
//!   journal, provided it asks what it asked then (same kind, same request hash); past
//!   the journal's end the run goes on live, journaling as it goes. A step that asks
//!   otherwise is a divergence: the run fails `diverged`, naming the step.
//! - **Replay** (`spawner runs replay`): every call is served from the journal; one past
//!   its end diverges; nothing is written.
//!
//! A call that failed for a reason that may pass (the broker or a server unavailable, a
//! timeout, no consent yet, not allowed by the manifest) is not journaled: a resume makes
//! it again. The first step is the component itself: a resume of a run whose component
//! has changed since diverges there, unless told to accept it.
//!
//! Random numbers and clocks: the guest's random sources are seeded from the run id and
//! a secret of the home (`random.key`), so a re-run draws the same numbers and nobody
//! without the home can predict them; clock reads are journaled like other calls.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use agent_contract::envelope::JournalMode;
use agent_contract::manifest::to_hex;
use memory_store::JournalEntry;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

/// What each journaled call is, in its entry's `kind`.
pub mod kind {
    /// The component that runs (step 0).
    pub const COMPONENT: &str = "component";
    /// `llm.chat`.
    pub const LLM: &str = "llm";
    /// `tools.call`.
    pub const TOOL: &str = "tool";
    /// `tools.list`.
    pub const TOOLS: &str = "tools";
    /// `inference.infer`.
    pub const INFERENCE: &str = "inference";
    /// A memory read (`get`, `entries`, `read-events`, `delete`'s answer).
    pub const MEMORY: &str = "memory";
    /// A clock read.
    pub const CLOCK: &str = "clock";
    /// `runs.join`: a sub-run's result.
    pub const SUB_RUN: &str = "sub-run";
}

/// A run's journal, shared by the host and the guest's clocks.
pub type Shared = Arc<Mutex<Journal>>;

/// The journal of one run as it goes.
pub struct Journal {
    mode: JournalMode,
    /// Steps journaled by earlier attempts, served in order.
    recorded: Vec<JournalEntry>,
    /// Steps this attempt made and has not written yet.
    pending: Vec<JournalEntry>,
    /// The next step's number.
    next: u32,
    /// Why the run diverged from its journal, once it has.
    diverged: Option<String>,
}

/// What the journal says about the next call.
pub enum Step<T> {
    /// Its result, from the journal.
    Served(T),
    /// Make it, then [`Journal::record`] its result.
    Call(Call),
}

/// A call being made live, to be journaled once it returns.
pub struct Call {
    seq: u32,
    kind: &'static str,
    request_hash: Vec<u8>,
    started: Instant,
    at_ms: u64,
}

impl Call {
    /// The step's sequence number in its run's journal.
    pub fn seq(&self) -> u32 {
        self.seq
    }
}

impl Journal {
    /// A run's journal: `recorded` holds what earlier attempts journaled (empty for a new
    /// run).
    pub fn new(mode: JournalMode, recorded: Vec<JournalEntry>) -> Journal {
        Journal {
            mode,
            recorded,
            pending: Vec::new(),
            next: 0,
            diverged: None,
        }
    }

    /// Share it with the guest's clocks.
    pub fn shared(self) -> Shared {
        Arc::new(Mutex::new(self))
    }

    /// The next step, a call of `kind` asking `request`: served from the journal, or to
    /// be made. An error is a divergence (also kept, see [`Journal::diverged`]).
    pub fn begin<T: DeserializeOwned>(
        &mut self,
        kind: &'static str,
        request: &impl Serialize,
    ) -> Result<Step<T>, String> {
        if let Some(why) = &self.diverged {
            return Err(why.clone());
        }
        let seq = self.next;
        let request_hash = request_hash(kind, request);
        match self.recorded.get(seq as usize) {
            Some(entry) if entry.kind == kind && entry.request_hash == request_hash => {
                self.next += 1;
                match serde_json::from_slice(&entry.result) {
                    Ok(result) => Ok(Step::Served(result)),
                    Err(e) => Err(self.diverge(format!(
                        "step {seq} ({kind}): its journaled result does not decode: {e}"
                    ))),
                }
            }
            Some(entry) if entry.kind == kind => Err(self.diverge(format!(
                "step {seq} ({kind}) asked otherwise than when it was journaled (request hash {} there, {} now)",
                to_hex(&entry.request_hash[..6.min(entry.request_hash.len())]),
                to_hex(&request_hash[..6])
            ))),
            Some(entry) => Err(self.diverge(format!(
                "step {seq} is a {kind} call, where the journal has a {} call",
                entry.kind
            ))),
            None if self.mode == JournalMode::Replay => Err(self.diverge(format!(
                "step {seq} ({kind}) is past the journal's end: the run made {} calls, the replay asks for more",
                self.recorded.len()
            ))),
            None => Ok(Step::Call(Call {
                seq,
                kind,
                request_hash,
                started: Instant::now(),
                at_ms: memory_store::now_ms(),
            })),
        }
    }

    /// Journal the result of a call made live (kept in memory until [`Journal::take_pending`]).
    pub fn record(&mut self, call: Call, result: &impl Serialize) {
        debug_assert_eq!(call.seq, self.next, "one call at a time");
        let result = serde_json::to_vec(result).unwrap_or_default();
        self.pending.push(JournalEntry {
            seq: call.seq,
            kind: call.kind.to_owned(),
            request_hash: call.request_hash,
            result,
            duration_us: u64::try_from(call.started.elapsed().as_micros()).unwrap_or(u64::MAX),
            at_ms: call.at_ms,
        });
        self.next += 1;
    }

    /// Forget a call made live whose failure may pass: it is made again on a resume.
    pub fn skip(&mut self, call: Call) {
        debug_assert_eq!(call.seq, self.next, "one call at a time");
    }

    /// The step 0 of a durable run: the component, by its SHA-256. A resume of a run whose
    /// component has changed diverges here unless `mode` accepts it.
    pub fn component(&mut self, sha256_hex: &str) -> Result<(), String> {
        let accept_changed = self.mode == JournalMode::ResumeChanged;
        if accept_changed
            && let Some(first) = self.recorded.first_mut()
            && first.kind == kind::COMPONENT
        {
            // Served as it was recorded: the old hash stays in the journal.
            first.request_hash = request_hash(kind::COMPONENT, &sha256_hex);
            first.result = serde_json::to_vec(sha256_hex).unwrap_or_default();
        }
        match self.begin::<String>(kind::COMPONENT, &sha256_hex) {
            Ok(Step::Served(_)) => Ok(()),
            Ok(Step::Call(call)) => {
                self.record(call, &sha256_hex);
                Ok(())
            }
            Err(_) => {
                let was = self
                    .recorded
                    .first()
                    .and_then(|e| serde_json::from_slice::<String>(&e.result).ok())
                    .unwrap_or_default();
                let why = format!(
                    "the component has changed since this run was journaled (sha256 {was} then, {sha256_hex} now): resume it with --allow-changed to run the new component against the old journal"
                );
                self.diverged = Some(why.clone());
                Err(why)
            }
        }
    }

    /// Steps made live and not yet written, to be written now.
    pub fn take_pending(&mut self) -> Vec<JournalEntry> {
        std::mem::take(&mut self.pending)
    }

    /// Why the run diverged from its journal, if it has.
    pub fn diverged(&self) -> Option<&str> {
        self.diverged.as_deref()
    }

    /// How the journal serves this run.
    pub fn mode(&self) -> JournalMode {
        self.mode
    }

    fn diverge(&mut self, why: String) -> String {
        self.diverged.get_or_insert(why).clone()
    }
}

/// Lock a shared journal; a panic elsewhere while it was held leaves it usable.
pub fn lock(journal: &Shared) -> MutexGuard<'_, Journal> {
    journal
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// SHA-256 of `kind` and the request's JSON.
fn request_hash(kind: &str, request: &impl Serialize) -> Vec<u8> {
    let mut hash = Sha256::new();
    hash.update(kind.as_bytes());
    hash.update([0]);
    // A request that cannot be serialized hashes as its kind alone; none of ours fails.
    hash.update(serde_json::to_vec(request).unwrap_or_default());
    hash.finalize().to_vec()
}

/// The guest's wall clock: the host's, journaled.
pub struct WallClock(pub Shared);

impl wasmtime_wasi::HostWallClock for WallClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }

    fn now(&self) -> Duration {
        let nanos = clock_read(&self.0, "wall", || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        });
        Duration::from_nanos(nanos)
    }
}

/// The guest's monotonic clock: nanoseconds since the process started, journaled.
pub struct MonotonicClock {
    /// The journal.
    pub journal: Shared,
    /// Time zero.
    pub origin: Instant,
}

impl wasmtime_wasi::HostMonotonicClock for MonotonicClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        let origin = self.origin;
        clock_read(&self.journal, "monotonic", || {
            u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
        })
    }
}

/// A clock read through the journal. A divergence reads 0: the run fails `diverged`
/// once the guest returns.
fn clock_read(journal: &Shared, which: &str, now: impl FnOnce() -> u64) -> u64 {
    let mut journal = lock(journal);
    match journal.begin::<u64>(kind::CLOCK, &which) {
        Ok(Step::Served(nanos)) => nanos,
        Ok(Step::Call(call)) => {
            let nanos = now();
            journal.record(call, &nanos);
            nanos
        }
        Err(_) => 0,
    }
}

/// A random source the same on every attempt of a run: SHA-256 in counter mode over a
/// seed drawn from the home's secret, the run id and the stream's name. Without the
/// secret, knowing the run id does not tell the numbers.
pub struct SeededRandom {
    seed: [u8; 32],
    counter: u64,
    block: [u8; 32],
    used: usize,
}

impl SeededRandom {
    /// The stream `name` of run `run_id`, keyed by `secret`.
    pub fn new(secret: &[u8], run_id: &str, name: &str) -> SeededRandom {
        let mut seed = Sha256::new();
        seed.update(b"spawner durable random\0");
        seed.update(secret);
        seed.update(run_id.as_bytes());
        seed.update([0]);
        seed.update(name.as_bytes());
        SeededRandom {
            seed: seed.finalize().into(),
            counter: 0,
            block: [0; 32],
            used: 32,
        }
    }

    /// A seed for `wasi:random/insecure-seed`.
    pub fn seed_u128(&mut self) -> u128 {
        let mut bytes = [0; 16];
        self.fill(&mut bytes);
        u128::from_le_bytes(bytes)
    }

    fn fill(&mut self, out: &mut [u8]) {
        for b in out {
            if self.used == self.block.len() {
                let mut h = Sha256::new();
                h.update(self.seed);
                h.update(self.counter.to_le_bytes());
                self.block = h.finalize().into();
                self.counter += 1;
                self.used = 0;
            }
            *b = self.block[self.used];
            self.used += 1;
        }
    }
}

impl rand_core::TryRng for SeededRandom {
    type Error = std::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut b = [0; 4];
        self.fill(&mut b);
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut b = [0; 8];
        self.fill(&mut b);
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        self.fill(dst);
        Ok(())
    }
}

/// The home's random secret (`random.key`), made now (0600, from the OS's random
/// source) if there is none.
pub fn random_secret(home: &agent_contract::Home) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let path = home.random_key_path();
    match std::fs::read(&path) {
        Ok(key) if key.len() == 32 => return Ok(key),
        Ok(_) => {
            return Err(std::io::Error::other(format!(
                "{} is not 32 bytes long; delete it to make a new one (the runs journaled with it then replay with other random numbers)",
                path.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut key = vec![0; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
    // Made under another name and linked into place, so that two first runs agree on one.
    let tmp = path.with_extension(format!("key.{}", std::process::id()));
    let mut file = std::fs::File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(&key)?;
    file.sync_all()?;
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(key),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::fs::read(&path),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(
        mode: JournalMode,
        recorded: Vec<JournalEntry>,
        calls: &[(&'static str, u32)],
    ) -> (Journal, Vec<Result<u32, String>>) {
        let mut j = Journal::new(mode, recorded);
        let mut out = Vec::new();
        for (kind, request) in calls {
            out.push(match j.begin::<u32>(kind, request) {
                Ok(Step::Served(v)) => Ok(v),
                Ok(Step::Call(call)) => {
                    j.record(call, &(request * 10));
                    Ok(request * 10 + 1)
                }
                Err(e) => Err(e),
            });
        }
        (j, out)
    }

    #[test]
    fn a_resume_is_served_what_was_journaled_then_goes_on_live() {
        let (mut first, out) = entries(JournalMode::Record, vec![], &[("tool", 1), ("llm", 2)]);
        assert_eq!(out, [Ok(11), Ok(21)]);
        let recorded = first.take_pending();
        assert_eq!(recorded.len(), 2);
        let (mut resumed, out) = entries(
            JournalMode::Resume,
            recorded,
            &[("tool", 1), ("llm", 2), ("tool", 3)],
        );
        // The journaled results (request x 10), then a live call (x 10 + 1).
        assert_eq!(out, [Ok(10), Ok(20), Ok(31)]);
        let new = resumed.take_pending();
        assert_eq!(new.iter().map(|e| e.seq).collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn asking_otherwise_diverges_and_names_the_step() {
        let (mut first, _) = entries(JournalMode::Record, vec![], &[("tool", 1), ("llm", 2)]);
        let recorded = first.take_pending();
        let (j, out) = entries(
            JournalMode::Resume,
            recorded.clone(),
            &[("tool", 1), ("llm", 3), ("tool", 1)],
        );
        assert!(
            out[1]
                .as_ref()
                .is_err_and(|e| e.contains("step 1 (llm) asked otherwise")),
            "{out:?}"
        );
        // After a divergence, every call fails the same way.
        assert_eq!(out[2], out[1]);
        assert!(j.diverged().is_some());
        let (_, out) = entries(JournalMode::Resume, recorded.clone(), &[("llm", 1)]);
        assert!(
            out[0].as_ref().is_err_and(
                |e| e.contains("step 0 is a llm call, where the journal has a tool call")
            ),
            "{out:?}"
        );
        let (_, out) = entries(
            JournalMode::Replay,
            recorded,
            &[("tool", 1), ("llm", 2), ("tool", 3)],
        );
        assert!(
            out[2]
                .as_ref()
                .is_err_and(|e| e.contains("past the journal's end")),
            "{out:?}"
        );
    }

    #[test]
    fn a_changed_component_diverges_unless_accepted() {
        let mut first = Journal::new(JournalMode::Record, vec![]);
        first.component("aaaa").expect("recorded");
        let recorded = first.take_pending();
        let mut same = Journal::new(JournalMode::Resume, recorded.clone());
        assert!(same.component("aaaa").is_ok());
        let mut changed = Journal::new(JournalMode::Resume, recorded.clone());
        let e = changed.component("bbbb").expect_err("changed");
        assert!(
            e.contains("aaaa then, bbbb now") && e.contains("--allow-changed"),
            "{e}"
        );
        let mut accepted = Journal::new(JournalMode::ResumeChanged, recorded);
        assert!(accepted.component("bbbb").is_ok());
        assert!(
            accepted.take_pending().is_empty(),
            "step 0 stays as journaled"
        );
    }

    #[test]
    fn seeded_random_is_the_same_per_run_and_differs_between_runs_and_secrets() {
        let draw = |secret: &[u8], run: &str| {
            let mut r = SeededRandom::new(secret, run, "secure");
            let mut b = [0u8; 40];
            r.fill(&mut b);
            b
        };
        assert_eq!(draw(b"k", "run-1"), draw(b"k", "run-1"));
        assert_ne!(draw(b"k", "run-1"), draw(b"k", "run-2"));
        assert_ne!(draw(b"k", "run-1"), draw(b"other", "run-1"));
    }
}
