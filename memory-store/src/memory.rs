//! Per-namespace key/value memory and event log, seen through one run's write buffer.
//!
//! [`RunMemory`] owns the store for the length of a request, and opens it only when the
//! run first reads memory or needs it to commit. Writes go into a buffer that reads consult
//! first, so an agent sees its own writes; [`RunMemory::commit`] applies the buffer and the
//! run record in one `BEGIN IMMEDIATE` transaction, and [`RunMemory::discard`] drops the
//! buffer and records only the run. A run with nothing to apply has its record appended to
//! the [run log](crate::run_log) instead, without opening SQLite.

use std::cell::{Cell, OnceCell};
use std::collections::BTreeMap;
use std::path::PathBuf;

use rusqlite::{OptionalExtension, TransactionBehavior, params};

use crate::{RunRecord, Store, StoreError, to_sql_int};

/// Longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Largest value or event payload accepted, in bytes.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Longest event kind accepted, in bytes.
pub const MAX_KIND_BYTES: usize = 64;
/// Most bytes one run may write (keys, values, events) before its writes are refused.
pub const MAX_RUN_WRITE_BYTES: usize = 16 * 1024 * 1024;

/// Why a memory operation was refused. Mirrors `memory-error` in `wit/agent.wit`.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The key or event kind is empty or too long.
    #[error("{0}")]
    InvalidKey(String),
    /// The value or payload is over [`MAX_VALUE_BYTES`].
    #[error("{0}")]
    TooLarge(String),
    /// The run has written more than [`MAX_RUN_WRITE_BYTES`].
    #[error("{0}")]
    QuotaExceeded(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for MemoryError {
    fn from(e: rusqlite::Error) -> Self {
        MemoryError::Store(StoreError::Sqlite(e))
    }
}

/// A key and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Vec<u8>,
}

/// One event of a namespace's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Position in the log; `None` while the event is pending in this run.
    pub seq: Option<u64>,
    /// When it was appended, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The agent's label for it.
    pub kind: String,
    /// Its data.
    pub payload: Vec<u8>,
}

/// The memory store as one run sees it: its namespace plus its buffered writes.
pub struct RunMemory {
    store: OnceCell<Store>,
    /// The store's file, opened on first use; `None` when the store was given open (an
    /// in-memory one), which then also keeps the records.
    path: Option<PathBuf>,
    namespace: String,
    /// Buffered key writes: `Some` puts, `None` deletes.
    writes: BTreeMap<String, Option<Vec<u8>>>,
    /// Buffered event appends, in order.
    events: Vec<Event>,
    /// Bytes buffered so far, against [`MAX_RUN_WRITE_BYTES`].
    written: usize,
    /// Whether the run has read from the store (or otherwise asked for its connection).
    read: Cell<bool>,
}

impl RunMemory {
    /// Start a run in `namespace` of an open store, which keeps its record too.
    pub fn new(store: Store, namespace: impl Into<String>) -> RunMemory {
        RunMemory {
            store: OnceCell::from(store),
            path: None,
            namespace: namespace.into(),
            writes: BTreeMap::new(),
            events: Vec::new(),
            written: 0,
            read: Cell::new(false),
        }
    }

    /// Start a run in `namespace` of the store file at `path`, opened when first needed
    /// (`opened`: a connection to it made ahead of the request, if there is one).
    pub fn lazy(path: PathBuf, opened: Option<Store>, namespace: impl Into<String>) -> RunMemory {
        RunMemory {
            store: opened.map_or_else(OnceCell::new, OnceCell::from),
            path: Some(path),
            namespace: namespace.into(),
            writes: BTreeMap::new(),
            events: Vec::new(),
            written: 0,
            read: Cell::new(false),
        }
    }

    /// The store itself, for reads outside the namespace (the user's consents); opened now
    /// if it was not.
    pub fn store(&self) -> Result<&Store, StoreError> {
        self.read.set(true);
        if let Some(store) = self.store.get() {
            return Ok(store);
        }
        let path = self.path.as_deref().ok_or_else(|| {
            StoreError::Corrupt("the run's store is neither open nor on disk".into())
        })?;
        let store = Store::open(path)?;
        Ok(self.store.get_or_init(|| store))
    }

    /// Whether the run has used the store so far: read from it, or buffered a write that
    /// its commit will apply. (A connection given open and never used does not count.)
    pub fn used(&self) -> bool {
        self.read.get() || !self.writes.is_empty() || !self.events.is_empty()
    }

    /// Whether the store has been opened (by a read, or given open).
    pub fn is_open(&self) -> bool {
        self.store.get().is_some()
    }

    /// The namespace this run reads and writes.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The value under `key`, including this run's pending writes.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, MemoryError> {
        check_key(key)?;
        if let Some(pending) = self.writes.get(key) {
            return Ok(pending.clone());
        }
        Ok(self
            .store()?
            .conn
            .prepare_cached("SELECT value FROM kv WHERE namespace = ?1 AND key = ?2")?
            .query_row(params![self.namespace, key], |r| r.get(0))
            .optional()?)
    }

    /// Buffer a write of `value` under `key`.
    pub fn put(&mut self, key: &str, value: Vec<u8>) -> Result<(), MemoryError> {
        check_key(key)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(MemoryError::TooLarge(format!(
                "value of {} bytes is over the limit of {MAX_VALUE_BYTES} bytes",
                value.len()
            )));
        }
        self.charge(key.len() + value.len())?;
        self.writes.insert(key.to_owned(), Some(value));
        Ok(())
    }

    /// Buffer the removal of `key`; true when it was present.
    pub fn delete(&mut self, key: &str) -> Result<bool, MemoryError> {
        let existed = self.get(key)?.is_some();
        self.charge(key.len())?;
        self.writes.insert(key.to_owned(), None);
        Ok(existed)
    }

    /// Entries whose key starts with `prefix`, in key order, at most `limit`.
    pub fn list(&self, prefix: &str, limit: u32) -> Result<Vec<Entry>, MemoryError> {
        let limit = limit as usize;
        // Pending deletes can hide at most `writes.len()` stored rows, so this many suffice.
        let fetch = limit.saturating_add(self.writes.len());
        let mut merged: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        {
            let mut stmt = self.store()?.conn.prepare_cached(
                "SELECT key, value FROM kv WHERE namespace = ?1 AND key >= ?2 ORDER BY key",
            )?;
            let mut rows = stmt.query(params![self.namespace, prefix])?;
            while let Some(row) = rows.next()? {
                let key: String = row.get(0)?;
                if !key.starts_with(prefix) || merged.len() >= fetch {
                    break;
                }
                merged.insert(key, row.get(1)?);
            }
        }
        for (key, value) in self.writes.range(prefix.to_owned()..) {
            if !key.starts_with(prefix) {
                break;
            }
            match value {
                Some(v) => merged.insert(key.clone(), v.clone()),
                None => merged.remove(key),
            };
        }
        Ok(merged
            .into_iter()
            .take(limit)
            .map(|(key, value)| Entry { key, value })
            .collect())
    }

    /// Buffer an event for the log.
    pub fn append_event(
        &mut self,
        kind: &str,
        payload: Vec<u8>,
        at_ms: u64,
    ) -> Result<(), MemoryError> {
        if kind.is_empty() || kind.len() > MAX_KIND_BYTES {
            return Err(MemoryError::InvalidKey(format!(
                "event kind must be 1-{MAX_KIND_BYTES} bytes, got {}",
                kind.len()
            )));
        }
        if payload.len() > MAX_VALUE_BYTES {
            return Err(MemoryError::TooLarge(format!(
                "event payload of {} bytes is over the limit of {MAX_VALUE_BYTES} bytes",
                payload.len()
            )));
        }
        self.charge(kind.len() + payload.len())?;
        self.events.push(Event {
            seq: None,
            at_ms,
            kind: kind.to_owned(),
            payload,
        });
        Ok(())
    }

    /// Committed events after `after`, oldest first, then this run's pending ones.
    pub fn read_events(&self, after: u64, limit: u32) -> Result<Vec<Event>, MemoryError> {
        let limit = limit as usize;
        let mut stmt = self.store()?.conn.prepare_cached(
            "SELECT seq, at_ms, kind, payload FROM events
             WHERE namespace = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )?;
        let mut events = stmt
            .query_map(
                params![self.namespace, to_sql_int(after), limit as i64],
                |r| {
                    Ok(Event {
                        seq: Some(r.get::<_, i64>(0)? as u64),
                        at_ms: r.get::<_, i64>(1)? as u64,
                        kind: r.get(2)?,
                        payload: r.get(3)?,
                    })
                },
            )?
            .collect::<Result<Vec<_>, _>>()?;
        let room = limit.saturating_sub(events.len());
        events.extend(self.events.iter().take(room).cloned());
        Ok(events)
    }

    /// Apply this run's writes and insert its record, in one transaction. Also prunes the
    /// agent's run records down to `keep_runs`. A run that wrote nothing has its record
    /// logged instead (when its store is a file).
    pub fn commit(mut self, record: &RunRecord, keep_runs: u32) -> Result<Recorded, StoreError> {
        if self.writes.is_empty()
            && self.events.is_empty()
            && let Some(path) = &self.path
        {
            return crate::run_log::append(path, record, keep_runs).map(Recorded::Logged);
        }
        self.store()?;
        let Some(mut store) = self.store.take() else {
            return Err(StoreError::Corrupt("the run's store did not open".into()));
        };
        let tx = store
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut put = tx.prepare_cached(
                "INSERT INTO kv (namespace, key, value, updated_at_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (namespace, key) DO UPDATE
                 SET value = excluded.value, updated_at_ms = excluded.updated_at_ms",
            )?;
            let mut delete =
                tx.prepare_cached("DELETE FROM kv WHERE namespace = ?1 AND key = ?2")?;
            let now = to_sql_int(record.ended_at_ms);
            for (key, value) in &self.writes {
                match value {
                    Some(v) => put.execute(params![self.namespace, key, v, now])?,
                    None => delete.execute(params![self.namespace, key])?,
                };
            }
            let mut append = tx.prepare_cached(
                "INSERT INTO events (namespace, run_id, at_ms, kind, payload)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for e in &self.events {
                append.execute(params![
                    self.namespace,
                    record.run_id,
                    to_sql_int(e.at_ms),
                    e.kind,
                    e.payload
                ])?;
            }
            crate::runs::insert(&tx, record, keep_runs)?;
        }
        tx.commit()?;
        store.truncate_wal_if_large()?;
        Ok(Recorded::Store(store))
    }

    /// Drop this run's writes and record only the run (logged, when its store is a file).
    pub fn discard(mut self, record: &RunRecord, keep_runs: u32) -> Result<Recorded, StoreError> {
        if let Some(path) = &self.path {
            return crate::run_log::append(path, record, keep_runs).map(Recorded::Logged);
        }
        let Some(mut store) = self.store.take() else {
            return Err(StoreError::Corrupt("the run's store is not open".into()));
        };
        store.record_run(record, keep_runs)?;
        Ok(Recorded::Store(store))
    }

    fn charge(&mut self, bytes: usize) -> Result<(), MemoryError> {
        let total = self.written.saturating_add(bytes);
        if total > MAX_RUN_WRITE_BYTES {
            return Err(MemoryError::QuotaExceeded(format!(
                "this run has written {total} bytes, over the limit of {MAX_RUN_WRITE_BYTES}"
            )));
        }
        self.written = total;
        Ok(())
    }
}

/// Where a run's record went.
pub enum Recorded {
    /// Into the store, with the run's writes; the connection, for more.
    Store(Store),
    /// Into the run log, which is this many bytes long now.
    Logged(u64),
}

impl Recorded {
    /// The store connection, when the record went into the store.
    pub fn store(self) -> Option<Store> {
        match self {
            Recorded::Store(store) => Some(store),
            Recorded::Logged(_) => None,
        }
    }
}

fn check_key(key: &str) -> Result<(), MemoryError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(MemoryError::InvalidKey(format!(
            "key must be 1-{MAX_KEY_BYTES} bytes, got {}",
            key.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_contract::Outcome;

    fn record(run_id: &str, status: Outcome) -> RunRecord {
        RunRecord {
            status,
            cache_hit: Some(true),
            ..RunRecord::sample(run_id, "notes", 1)
        }
    }

    #[test]
    fn reads_see_pending_writes_and_commit_makes_them_durable() {
        let store = Store::open_in_memory().expect("store");
        let mut m = RunMemory::new(store, "ns");
        m.put("a/1", b"one".to_vec()).expect("put");
        m.put("a/2", b"two".to_vec()).expect("put");
        m.put("b/1", b"other".to_vec()).expect("put");
        assert_eq!(m.get("a/1").expect("get"), Some(b"one".to_vec()));
        let store = m
            .commit(&record("r1", Outcome::Ok), 10)
            .expect("commit")
            .store()
            .expect("open");

        let mut m = RunMemory::new(store, "ns");
        assert!(m.delete("a/1").expect("delete"));
        m.put("a/3", b"three".to_vec()).expect("put");
        let keys: Vec<String> = m
            .list("a/", 10)
            .expect("list")
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(keys, ["a/2", "a/3"]);
        assert_eq!(m.list("a/", 1).expect("list").len(), 1);
        // Another namespace sees none of it.
        let other = RunMemory::new(
            m.discard(&record("r2", Outcome::Trap), 10)
                .expect("d")
                .store()
                .expect("open"),
            "x",
        );
        assert_eq!(other.get("a/2").expect("get"), None);
    }

    #[test]
    fn discarded_runs_leave_no_writes_but_a_record() {
        let store = Store::open_in_memory().expect("store");
        let mut m = RunMemory::new(store, "ns");
        m.put("k", b"v".to_vec()).expect("put");
        m.append_event("note", b"x".to_vec(), 5).expect("append");
        let store = m
            .discard(&record("r1", Outcome::Trap), 10)
            .expect("discard")
            .store()
            .expect("open");
        let m = RunMemory::new(store, "ns");
        assert_eq!(m.get("k").expect("get"), None);
        assert!(m.read_events(0, 10).expect("events").is_empty());
        let recent = m
            .store()
            .expect("store")
            .runs(&crate::RunFilter::default())
            .expect("runs");
        assert_eq!(recent.len(), 1);
        assert_eq!(recent[0].status, Outcome::Trap);
    }

    #[test]
    fn events_get_sequence_numbers_on_commit() {
        let store = Store::open_in_memory().expect("store");
        let mut m = RunMemory::new(store, "ns");
        m.append_event("note", b"first".to_vec(), 1)
            .expect("append");
        let pending = m.read_events(0, 10).expect("read");
        assert_eq!(pending[0].seq, None);
        let store = m
            .commit(&record("r1", Outcome::Ok), 10)
            .expect("commit")
            .store()
            .expect("open");
        let mut m = RunMemory::new(store, "ns");
        m.append_event("note", b"second".to_vec(), 2)
            .expect("append");
        let events = m.read_events(0, 10).expect("read");
        assert_eq!(events.len(), 2);
        assert!(events[0].seq.is_some() && events[1].seq.is_none());
        let after = m.read_events(events[0].seq.unwrap_or(0), 10).expect("read");
        assert_eq!(after.len(), 1);
    }

    #[test]
    fn limits_are_enforced() {
        let store = Store::open_in_memory().expect("store");
        let mut m = RunMemory::new(store, "ns");
        assert!(matches!(m.put("", vec![]), Err(MemoryError::InvalidKey(_))));
        assert!(matches!(
            m.put("k", vec![0; MAX_VALUE_BYTES + 1]),
            Err(MemoryError::TooLarge(_))
        ));
        for i in 0..(MAX_RUN_WRITE_BYTES / MAX_VALUE_BYTES) {
            m.put(&format!("k{i}"), vec![0; MAX_VALUE_BYTES - 8])
                .expect("within quota");
        }
        assert!(matches!(
            m.put("last", vec![0; MAX_VALUE_BYTES]),
            Err(MemoryError::QuotaExceeded(_))
        ));
        assert!(matches!(
            m.append_event("", vec![], 0),
            Err(MemoryError::InvalidKey(_))
        ));
    }
}
