//! Runs in flight: one marker file per running run, beside the store, so that any process
//! can see what runs now, and a run whose processes all ended before it did is recorded
//! as `killed` (and so can be resumed), not lost.
//!
//! A run's record is written when it ends, by its agent-exec (atomically with its memory
//! writes) or, when agent-exec could not finish, by the process that owns the run (the
//! one that spawned it: `spawner run`, the daemon, a parent's spawner). Until then the run
//! exists only as its marker, `<store>-running/<run id>`: who started it, when, which
//! attempt, and the input a resume needs. Writing it costs the request a few file-system
//! calls and no SQLite (the lean path of a run that uses no memory stays lean).
//!
//! # Who holds a marker, and how a dead run is told from a live one
//!
//! The owner creates the marker holding a shared `flock` on it, and keeps the file open
//! until the run has ended; the run's agent-exec opens the same file and takes a shared
//! lock too ([`hold`]), before it does anything else. A lock ends with the process that
//! held it, however it ends, so a marker that nobody holds is a run whose owner and
//! agent-exec have both ended: no pid, no pid reuse, no clock. [`Store::settle_running`]
//! takes such a marker's lock exclusively, records the run `killed` unless a record of
//! its attempt stands already, and removes the marker while still holding the lock.
//!
//! An agent-exec that arrives late (its owner was killed between spawning it and its
//! lock) finds the marker gone, or, when it opened it before the settle removed it, a
//! file with no name left ([`Held::Settled`]): the run is recorded as killed already, so
//! it must not run on and commit writes under that record; it ends without recording.
//!
//! A marker is written whole under a temporary name (a dot file, which listings skip)
//! and renamed into place with its lock already held, so nobody ever reads half of one or
//! finds one unheld while its owner lives. A retry's attempt replaces it the same way.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use agent_contract::{Outcome, PhaseTimings};
use serde::{Deserialize, Serialize};

use crate::{RunRecord, Store, StoreError};

/// What a marker says about its run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    /// The run's id.
    pub run_id: String,
    /// The agent it runs.
    pub agent: String,
    /// When the run (its first attempt here) started, in Unix milliseconds.
    pub started_at_ms: u64,
    /// Which attempt of the run is in flight.
    pub attempt: u32,
    /// Set for a sub-run: the run that started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_run_id: Option<String>,
    /// The process that owns the run (shown; liveness is told by the lock, not by it).
    pub owner_pid: u32,
    /// The agent's `memory.keep_runs`, for the record of a run settled as killed.
    pub keep_runs: u32,
    /// The input, kept when the agent's record keeps it (a durable run, for its resume).
    /// Stored after the marker's JSON line, as it is.
    #[serde(skip)]
    pub input: Option<Vec<u8>>,
}

/// The marker's JSON line: [`Started`] and whether raw input bytes follow it.
#[derive(Serialize, Deserialize)]
struct Header {
    #[serde(flatten)]
    started: Started,
    #[serde(default)]
    has_input: bool,
}

/// The directory of markers beside the store file at `store_path`.
pub fn dir(store_path: &Path) -> PathBuf {
    let mut path = store_path.as_os_str().to_owned();
    path.push("-running");
    PathBuf::from(path)
}

/// The marker of `run_id`, refused for an id that could name anything but a file in
/// [`dir`] (run ids are hex digits and dots).
fn marker_path(store_path: &Path, run_id: &str) -> Result<PathBuf, StoreError> {
    let fits = !run_id.is_empty()
        && run_id.len() <= 200
        && !run_id.starts_with('.')
        && run_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
    if !fits {
        return Err(StoreError::BadRunId(run_id.to_owned()));
    }
    Ok(dir(store_path).join(run_id))
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Open {
        path: path.to_owned(),
        source: source.into(),
    }
}

/// The owner's hold on a running run: the marker stays while this lives, and is removed
/// when it is dropped (the run has ended, recorded by whoever could).
#[derive(Debug)]
pub struct Marker {
    path: PathBuf,
    started: Started,
    _held: File,
}

impl Marker {
    /// Mark `started` as running in the store at `store_path`; refused
    /// ([`StoreError::InFlight`]) while a process holds a marker of that run id (its
    /// owner, or its agent-exec when the owner died): a run is not run twice at once.
    pub fn create(store_path: &Path, started: Started) -> Result<Marker, StoreError> {
        let path = marker_path(store_path, &started.run_id)?;
        if let Some((_, other, true)) = read_marker(&path) {
            return Err(StoreError::InFlight {
                run_id: other.run_id,
                attempt: other.attempt,
                owner_pid: other.owner_pid,
            });
        }
        let held = write_held(&path, &started)?;
        Ok(Marker {
            path,
            started,
            _held: held,
        })
    }

    /// The run is on to its attempt `attempt` (a retry): the marker says so.
    pub fn next_attempt(&mut self, attempt: u32) -> Result<(), StoreError> {
        self.started.attempt = attempt;
        self._held = write_held(&self.path, &self.started)?;
        Ok(())
    }
}

impl Drop for Marker {
    fn drop(&mut self) {
        // Nobody else removes or replaces a marker that is held ([`Marker::create`]); a
        // failure leaves one that the next settle finds unheld and its run recorded.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Write `started` to `path` whole, already locked (shared), under a temporary name
/// renamed into place; the open file holds the lock.
fn write_held(path: &Path, started: &Started) -> Result<File, StoreError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = path.parent().unwrap_or(Path::new("."));
    let err = io_err(path);
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(err(e)),
    }
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let temp = dir.join(format!(".{name}.{}", std::process::id()));
    let mut file = File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)
        .map_err(&err)?;
    let written = file
        .lock_shared()
        .and_then(|()| {
            let mut bytes = serde_json::to_vec(&Header {
                started: started.clone(),
                has_input: started.input.is_some(),
            })
            .map_err(std::io::Error::other)?;
            bytes.push(b'\n');
            if let Some(input) = &started.input {
                bytes.extend_from_slice(input);
            }
            file.write_all(&bytes)
        })
        .and_then(|()| std::fs::rename(&temp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(err(e));
    }
    Ok(file)
}

/// What [`hold`] found for a run's agent-exec.
#[derive(Debug)]
pub enum Held {
    /// The run's marker, locked shared by this process as long as the file is open.
    Marker(File),
    /// The run has no marker: it was settled as killed (its owner ended before this
    /// process could take its lock), or was never marked. The caller, told that a
    /// marker was written, must not run it.
    Missing,
    /// The marker was settled (recorded as killed and removed) while this process waited
    /// for its lock: the run must not run.
    Settled,
}

/// Hold `run_id`'s marker for its agent-exec: while this process holds it, the run is not
/// settled as killed, whatever happens to its owner.
pub fn hold(store_path: &Path, run_id: &str) -> Result<Held, StoreError> {
    use std::os::unix::fs::MetadataExt;
    let path = marker_path(store_path, run_id)?;
    let err = io_err(&path);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Held::Missing),
        Err(e) => return Err(err(e)),
    };
    file.lock_shared().map_err(&err)?;
    // A settle removes the name while it holds the lock exclusively; a retry's marker
    // replaces it (another file): either way this one no longer names the run.
    if file.metadata().map_err(&err)?.nlink() == 0 {
        return Ok(Held::Settled);
    }
    Ok(Held::Marker(file))
}

/// One marker read back, and whether a process holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marked {
    /// What the marker says.
    pub started: Started,
    /// Whether a process of the run holds it (the run is in flight); false for one whose
    /// processes have all ended and that is not settled yet.
    pub held: bool,
}

/// Read the marker at `path`, open, and whether it is held (tried with an exclusive lock,
/// kept when taken, so that the caller can settle it under that lock).
fn read_marker(path: &Path) -> Option<(File, Started, bool)> {
    let mut file = File::open(path).ok()?;
    let held = match file.try_lock() {
        Ok(()) => false,
        Err(std::fs::TryLockError::WouldBlock) => true,
        Err(std::fs::TryLockError::Error(_)) => return None,
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).ok()?;
    let end = bytes.iter().position(|b| *b == b'\n')?;
    let header: Header = serde_json::from_slice(&bytes[..end]).ok()?;
    let mut started = header.started;
    if header.has_input {
        started.input = Some(bytes[end + 1..].to_vec());
    }
    Some((file, started, held))
}

/// The entries of the store's marker directory (none when it does not exist).
fn entries(store_path: &Path) -> Result<Vec<std::fs::DirEntry>, StoreError> {
    let dir = dir(store_path);
    match std::fs::read_dir(&dir) {
        Ok(entries) => Ok(entries.flatten().collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err(&dir)(e)),
    }
}

/// The runs marked in the store at `store_path`, by run id (newest first: run ids sort by
/// start time), held or not. Markers that cannot be read (one being replaced) are
/// skipped.
pub fn marked(store_path: &Path) -> Result<Vec<Marked>, StoreError> {
    let mut runs = Vec::new();
    for entry in entries(store_path)? {
        let name = entry.file_name();
        if name.as_encoded_bytes().starts_with(b".") {
            continue;
        }
        if let Some((_, started, held)) = read_marker(&entry.path()) {
            runs.push(Marked { started, held });
        }
    }
    runs.sort_by(|a, b| b.started.run_id.cmp(&a.started.run_id));
    Ok(runs)
}

impl Store {
    /// Settle the runs whose processes all ended before they did (their markers are not
    /// held): each is recorded `killed`, unless a record of its attempt stands, and its
    /// marker removed. Returns the ids of the runs recorded here. Readers of runs call
    /// this first, so such a run shows as killed, and a durable one can be resumed.
    pub fn settle_running(&mut self) -> Result<Vec<String>, StoreError> {
        use std::os::unix::fs::MetadataExt;
        let Some(store_path) = self.path.clone() else {
            return Ok(Vec::new());
        };
        let mut settled = Vec::new();
        for entry in entries(&store_path)? {
            let path = entry.path();
            let temporary = entry.file_name().as_encoded_bytes().starts_with(b".");
            if temporary {
                // `.<run id>.<pid>`: left by a writer that died before its rename. One
                // whose writer lives may not be locked yet: it is left alone.
                let writer_gone = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.rsplit_once('.'))
                    .and_then(|(_, pid)| pid.parse::<u32>().ok())
                    .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
                if writer_gone {
                    let _ = std::fs::remove_file(&path);
                }
                continue;
            }
            // Held: in flight. Unreadable: being replaced, its successor is another entry.
            let Some((file, started, false)) = read_marker(&path) else {
                continue;
            };
            // Replaced or removed since it was opened: its successor is another entry.
            if file.metadata().map_or(true, |m| m.nlink() == 0) {
                continue;
            }
            let now = crate::now_ms();
            let record = RunRecord {
                run_id: started.run_id.clone(),
                agent: started.agent.clone(),
                started_at_ms: started.started_at_ms,
                ended_at_ms: now,
                status: Outcome::Killed,
                error: Some(format!(
                    "the processes that ran attempt {} (its owner, pid {}, and its agent-exec) ended before it did; it was found so at {} UTC",
                    started.attempt,
                    started.owner_pid,
                    agent_contract::report::utc(now)
                )),
                input: started.input.clone(),
                cache_hit: None,
                timings: PhaseTimings::default(),
                llm_calls: Vec::new(),
                tool_calls: Vec::new(),
                attempt: started.attempt,
                component_sha256: None,
                output_sha256: None,
                parent_run_id: started.parent_run_id.clone(),
                output: None,
            };
            // Not replacing a record that stands: agent-exec committed before it ended, to
            // the store or to the run log (read in again here: it may have appended after
            // this store's open read it, and before it let go of the marker).
            self.import_run_log()?;
            if self.record_run(&record, started.keep_runs)? {
                settled.push(started.run_id);
            }
            let _ = std::fs::remove_file(&path);
            drop(file);
        }
        Ok(settled)
    }

    /// The runs in flight now, newest first, once those whose processes ended have been
    /// settled ([`Store::settle_running`]).
    pub fn in_flight(&mut self) -> Result<Vec<Started>, StoreError> {
        self.settle_running()?;
        let Some(store_path) = &self.path else {
            return Ok(Vec::new());
        };
        Ok(marked(store_path)?
            .into_iter()
            .filter(|m| m.held)
            .map(|m| m.started)
            .collect())
    }
}

/// Whether the store at `store_path` has runs marked (so that a reader of runs has
/// something to show even before the store file exists).
pub fn any_marked(store_path: &Path) -> bool {
    std::fs::read_dir(dir(store_path)).is_ok_and(|mut entries| entries.next().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(id: &str, input: Option<&[u8]>) -> Started {
        Started {
            run_id: id.into(),
            agent: "steps".into(),
            started_at_ms: 1_700_000_000_000,
            attempt: 1,
            parent_run_id: None,
            owner_pid: std::process::id(),
            keep_runs: 10,
            input: input.map(<[u8]>::to_vec),
        }
    }

    #[test]
    fn a_held_marker_is_listed_as_running_and_dropping_it_removes_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store_path = dir.path().join("memory.db");
        let input = "entrée ✓ 日本語\nand a second line".as_bytes();
        let marker = Marker::create(&store_path, started("r1", Some(input))).expect("mark");
        let listed = marked(&store_path).expect("marked");
        assert_eq!(
            listed,
            [Marked {
                started: started("r1", Some(input)),
                held: true
            }]
        );
        // A settle leaves a held run alone.
        let mut store = Store::open(&store_path).expect("open");
        assert!(store.settle_running().expect("settle").is_empty());
        assert!(store.run("r1").expect("run").is_none());
        drop(marker);
        assert!(marked(&store_path).expect("marked").is_empty());
        assert!(store.settle_running().expect("settle").is_empty());
    }

    #[test]
    fn an_unheld_marker_is_settled_once_as_killed_with_its_input() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store_path = dir.path().join("memory.db");
        // As if its owner had been killed: the file stays, its lock goes.
        let path = marker_path(&store_path, "r2").expect("path");
        drop(write_held(&path, &started("r2", Some(b"in"))).expect("write"));
        assert!(!marked(&store_path).expect("marked")[0].held);

        let mut store = Store::open(&store_path).expect("open");
        assert_eq!(store.settle_running().expect("settle"), ["r2"]);
        let record = store.run("r2").expect("run").expect("recorded");
        assert_eq!(record.status, Outcome::Killed);
        assert_eq!(record.input.as_deref(), Some(&b"in"[..]));
        assert!(record.error.expect("error").contains("ended before it did"));
        assert!(marked(&store_path).expect("marked").is_empty());
        assert!(store.settle_running().expect("again").is_empty());
        // And a late agent-exec finds it settled.
        assert!(matches!(
            hold(&store_path, "r2").expect("hold"),
            Held::Missing
        ));
    }

    #[test]
    fn a_settle_keeps_the_record_agent_exec_committed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store_path = dir.path().join("memory.db");
        let mut store = Store::open(&store_path).expect("open");
        let ok = RunRecord::sample("r3", "steps", 1);
        store.record_run(&ok, 10).expect("record");
        let path = marker_path(&store_path, "r3").expect("path");
        drop(write_held(&path, &started("r3", None)).expect("write"));
        assert!(store.settle_running().expect("settle").is_empty());
        assert_eq!(
            store.run("r3").expect("run").expect("r3").status,
            Outcome::Ok
        );
        assert!(!path.exists());
    }

    #[test]
    fn a_record_logged_after_the_store_was_opened_stands_against_a_settle() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store_path = dir.path().join("memory.db");
        let mut store = Store::open(&store_path).expect("open");
        // The run's agent-exec appends its record to the run log after this open read
        // it, then ends: its marker is unheld, its record not in the store yet.
        let path = marker_path(&store_path, "r5").expect("path");
        drop(write_held(&path, &started("r5", None)).expect("write"));
        crate::run_log::append(&store_path, &RunRecord::sample("r5", "steps", 1), 10)
            .expect("append");
        assert!(store.settle_running().expect("settle").is_empty());
        assert_eq!(
            store.run("r5").expect("run").expect("r5").status,
            Outcome::Ok
        );
        assert!(!path.exists());
    }

    #[test]
    fn a_run_in_flight_is_not_marked_twice() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store_path = dir.path().join("memory.db");
        let first = Marker::create(&store_path, started("r6", None)).expect("mark");
        assert!(matches!(
            Marker::create(&store_path, started("r6", None)),
            Err(StoreError::InFlight { attempt: 1, .. })
        ));
        drop(first);
        // Once it has ended, it may be marked again (a resume).
        Marker::create(&store_path, started("r6", None)).expect("mark again");
    }

    #[test]
    fn agent_exec_holds_a_marker_and_a_retry_replaces_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store_path = dir.path().join("memory.db");
        let mut marker = Marker::create(&store_path, started("r4", None)).expect("mark");
        let Held::Marker(first) = hold(&store_path, "r4").expect("hold") else {
            panic!("the marker is there");
        };
        marker.next_attempt(2).expect("retry");
        // The first attempt's agent-exec holds a file the run no longer names.
        use std::os::unix::fs::MetadataExt;
        assert_eq!(first.metadata().expect("stat").nlink(), 0);
        let listed = marked(&store_path).expect("marked");
        assert_eq!((listed.len(), listed[0].started.attempt), (1, 2));
        assert!(matches!(
            hold(&store_path, "r4").expect("hold"),
            Held::Marker(_)
        ));
    }

    #[test]
    fn a_run_id_that_is_not_a_file_name_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store_path = dir.path().join("memory.db");
        for id in ["", "../escape", ".hidden", "a/b", "é"] {
            assert!(
                matches!(
                    Marker::create(&store_path, started(id, None)),
                    Err(StoreError::BadRunId(_))
                ),
                "{id:?}"
            );
        }
    }
}
