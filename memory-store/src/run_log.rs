//! The run log: run records waiting to be imported into the store.
//!
//! A run that wrote no memory has nothing to keep atomic with its record, so it need not
//! open SQLite at all (opening it rebuilds the WAL index and parses the schema; committing
//! writes several WAL pages): its agent-exec appends the record to `<store>-runs`, one
//! `write` of one frame, and the next [`Store::open`](crate::Store::open) imports what is
//! there into the `runs` tables, in one transaction, and empties the log. Every reader of
//! runs opens the store first, so a record is never missed; the daemon's keeper connection
//! imports before it answers.
//!
//! # Frames, and what a kill can leave
//!
//! A frame is `\n<crc32 of the JSON, 8 hex digits> <JSON>\n`, where the JSON is one line
//! (a [`Logged`]: the record and its agent's `keep_runs`). An appender killed in the
//! middle of its `write` may leave a torn frame; the next frame starts with its own
//! newline, so the torn one ends there and fails its checksum, and the import skips it
//! (that run's spawner, which saw its agent-exec killed, records the run itself).
//!
//! # Locks and crashes
//!
//! Appenders hold a shared `flock` on the log for their one write; the importer holds an
//! exclusive one from reading the log to emptying it, so no append falls between the two.
//! An importer killed after its commit and before emptying the log imports the same frames
//! again next time: a record is inserted once by run id (`INSERT OR IGNORE`), and pruning
//! is the same as the first time, so nothing changes.
//!
//! Durability is the store's own: `synchronous=NORMAL` does not sync a commit either, so
//! both survive any process being killed and neither promises more across a power loss.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use rusqlite::TransactionBehavior;
use serde::{Deserialize, Serialize};

use crate::{RunRecord, Store, StoreError};

/// A log past this size is imported by whoever appended to it, after answering (a run
/// record is about 500 bytes, so about one run in 500 pays for the import).
pub const IMPORT_AFTER_BYTES: u64 = 256 * 1024;

/// One frame's contents.
#[derive(Serialize, Deserialize)]
pub struct Logged {
    /// The agent's `memory.keep_runs`, applied when the record is imported.
    pub keep_runs: u32,
    /// The run.
    pub record: RunRecord,
}

/// The run log beside the store file at `store_path`.
pub fn log_path(store_path: &Path) -> PathBuf {
    let mut path = store_path.as_os_str().to_owned();
    path.push("-runs");
    PathBuf::from(path)
}

/// Append `record` to the run log of the store at `store_path` (created 0600 if new).
/// Returns the log's size after the append, for the caller to import a long log
/// ([`IMPORT_AFTER_BYTES`]) when it has time.
pub fn append(store_path: &Path, record: &RunRecord, keep_runs: u32) -> Result<u64, StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = log_path(store_path);
    let err = |source: std::io::Error| StoreError::Open {
        path: path.clone(),
        source: source.into(),
    };
    let json = serde_json::to_vec(&Logged {
        keep_runs,
        record: record.clone(),
    })
    .map_err(|e| StoreError::Corrupt(format!("cannot encode run {}: {e}", record.run_id)))?;
    let mut frame = Vec::with_capacity(json.len() + 12);
    frame.extend_from_slice(format!("\n{:08x} ", crc32fast::hash(&json)).as_bytes());
    frame.extend_from_slice(&json);
    frame.push(b'\n');
    let mut file = File::options()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&path)
        .map_err(err)?;
    file.lock_shared().map_err(err)?;
    file.write_all(&frame).map_err(err)?;
    Ok(file.metadata().map_err(err)?.len())
}

/// The records in a log's bytes, skipping torn or foreign frames; and how many were skipped.
fn parse(bytes: &[u8]) -> (Vec<Logged>, usize) {
    let mut records = Vec::new();
    let mut skipped = 0;
    for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let parsed = line
            .split_first_chunk::<9>()
            .filter(|(head, _)| head[8] == b' ')
            .and_then(|(head, json)| {
                let crc = std::str::from_utf8(&head[..8]).ok()?;
                let crc = u32::from_str_radix(crc, 16).ok()?;
                (crc32fast::hash(json) == crc).then_some(json)
            })
            .and_then(|json| serde_json::from_slice::<Logged>(json).ok());
        match parsed {
            Some(logged) => records.push(logged),
            None => skipped += 1,
        }
    }
    (records, skipped)
}

impl Store {
    /// Import the run log into the store, in one transaction, and empty it. Cheap when
    /// there is nothing to import (one `stat`). Returns how many records were read.
    pub fn import_run_log(&mut self) -> Result<usize, StoreError> {
        let Some(store_path) = self.path.clone() else {
            return Ok(0);
        };
        let path = log_path(&store_path);
        if std::fs::metadata(&path).map_or(true, |m| m.len() == 0) {
            return Ok(0);
        }
        let err = |source: std::io::Error| StoreError::Open {
            path: path.clone(),
            source: source.into(),
        };
        let mut file = match File::options().read(true).write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(err(e)),
        };
        file.lock().map_err(err)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(err)?;
        if bytes.is_empty() {
            return Ok(0);
        }
        let (records, _torn) = parse(&bytes);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Pruned once per agent, after its records are in, to the `keep_runs` its newest
        // frame carried (the agent's manifest as of its latest run).
        let mut keep: Vec<(&str, u32)> = Vec::new();
        for logged in &records {
            crate::runs::insert_unpruned(&tx, &logged.record)?;
            let agent = logged.record.agent.as_str();
            match keep.iter_mut().find(|(a, _)| *a == agent) {
                Some(entry) => entry.1 = logged.keep_runs,
                None => keep.push((agent, logged.keep_runs)),
            }
        }
        for (agent, keep_runs) in keep {
            crate::runs::prune(&tx, agent, keep_runs)?;
        }
        tx.commit()?;
        file.set_len(0).map_err(err)?;
        drop(file);
        self.truncate_wal_if_large()?;
        Ok(records.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, started: u64) -> RunRecord {
        RunRecord {
            error: Some("ünïcödé ✓ 日本語".into()),
            cache_hit: Some(true),
            ..RunRecord::sample(id, "a", started)
        }
    }

    /// The store's runs, newest first, by id.
    fn run_ids(store: &Store) -> Vec<String> {
        store
            .runs(&crate::RunFilter::default())
            .expect("runs")
            .into_iter()
            .map(|r| r.run_id)
            .collect()
    }

    #[test]
    fn logged_runs_are_imported_once_and_a_torn_frame_is_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store_path = dir.path().join("memory.db");
        append(&store_path, &record("r1", 1), 10).expect("append");
        // A frame torn by a kill mid-write, then a whole one after it.
        let log = log_path(&store_path);
        let mut torn = std::fs::read(&log).expect("log");
        torn.truncate(torn.len() - 20);
        let mut f = File::options().append(true).open(&log).expect("open");
        f.write_all(&torn).expect("torn");
        append(&store_path, &record("r2", 2), 10).expect("append");

        let mut store = Store::open(&store_path).expect("open imports");
        let ids = run_ids(&store);
        assert_eq!(ids, ["r2", "r1"]);
        assert_eq!(
            store.run("r1").expect("run").expect("r1"),
            record("r1", 1),
            "the record round-trips"
        );
        assert_eq!(std::fs::metadata(&log).expect("log").len(), 0, "emptied");
        assert_eq!(store.import_run_log().expect("again"), 0);
    }

    #[test]
    fn a_run_that_uses_no_memory_never_opens_the_store_and_one_that_writes_does() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store_path = dir.path().join("memory.db");
        let m = crate::RunMemory::lazy(store_path.clone(), None, "ns");
        let recorded = m.commit(&record("quiet", 1), 10).expect("commit");
        assert!(matches!(recorded, crate::Recorded::Logged(_)));
        assert!(!store_path.exists(), "SQLite was not opened");

        let mut m = crate::RunMemory::lazy(store_path.clone(), None, "ns");
        m.put("k", b"v".to_vec()).expect("put");
        let store = m
            .commit(&record("writer", 2), 10)
            .expect("commit")
            .store()
            .expect("the writes went through the store");
        let ids = run_ids(&store);
        assert_eq!(ids, ["writer", "quiet"], "the open imported the logged run");
    }

    #[test]
    fn an_import_repeated_after_a_crash_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store_path = dir.path().join("memory.db");
        for i in 0..5 {
            append(&store_path, &record(&format!("r{i}"), i), 3).expect("append");
        }
        let kept = std::fs::read(log_path(&store_path)).expect("log");
        let store = Store::open(&store_path).expect("open");
        let first = store.runs(&crate::RunFilter::default()).expect("runs");
        assert_eq!(first.len(), 3, "pruned to keep_runs");
        drop(store);
        // As if the importer had died after its commit, before emptying the log.
        std::fs::write(log_path(&store_path), &kept).expect("restore");
        let store = Store::open(&store_path).expect("open");
        assert_eq!(
            store.runs(&crate::RunFilter::default()).expect("runs"),
            first
        );
    }

    #[test]
    fn an_import_keeps_each_agents_newest_runs_by_start_whatever_the_log_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store_path = dir.path().join("memory.db");
        // Agent a, logged out of start order, keeps 3; agent b keeps 5 of its 2.
        for started in [5, 1, 7, 3, 6, 2, 4] {
            append(&store_path, &record(&format!("a{started}"), started), 3).expect("append");
        }
        for started in [9, 8] {
            let b = RunRecord {
                agent: "b".into(),
                ..record(&format!("b{started}"), started)
            };
            append(&store_path, &b, 5).expect("append");
        }
        let store = Store::open(&store_path).expect("open imports");
        let ids = run_ids(&store);
        assert_eq!(ids, ["b9", "b8", "a7", "a6", "a5"]);
    }
}
