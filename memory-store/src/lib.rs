//! The SQLite memory store: where everything that outlives a request lives.
//!
//! # Theory of operation
//!
//! Every request runs in a fresh process, so many short-lived processes open the same
//! file, often at once. The store is tuned for that:
//!
//! - WAL journal, `synchronous=NORMAL`, `busy_timeout`: readers never block the writer,
//!   and writers queue briefly instead of failing with "database is locked".
//! - Writes take the write lock up front (`BEGIN IMMEDIATE`), so a transaction never has
//!   to upgrade a read lock and fail half-way.
//! - No checkpoint on close (`SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE`): the last connection to
//!   close would otherwise checkpoint the WAL, 6-9 ms in a short-lived process.
//! - A short WAL instead: every process is the first to open the file, so SQLite rebuilds
//!   its WAL index by reading every frame in the WAL (about 6 µs a frame here), and that
//!   rebuild also forgets which frames were already checkpointed, so a WAL left to SQLite's
//!   own auto-checkpoint is never restarted and only grows. After each write transaction
//!   the writer therefore checks the WAL's size (one `stat`) and, past
//!   [`WAL_TRUNCATE_BYTES`], checkpoints it and truncates it to zero, without waiting: if
//!   another process is busy with the file, a later writer does it.
//! - A request's memory writes are buffered in [`RunMemory`] (reads see them) and committed
//!   in one transaction together with the run record. A run that traps, times out or is
//!   killed leaves no partial write behind.
//! - A request that uses no memory does not open the store: [`RunMemory`] opens it on the
//!   first read or write, and a run that wrote nothing appends its record to the
//!   [`run_log`], which the next open imports.
//!
//! # Layout
//!
//! - [`schema`]: numbered migrations from `migrations/*.sql`, tracked by `user_version`.
//! - [`memory`]: per-namespace key/value and event log, with the per-run write buffer.
//! - [`runs`]: run records: insert, prune, list.
//! - [`journal`]: the host calls of durable runs, for resume and replay.
//! - [`running`]: markers of the runs in flight, and the settling of those whose
//!   processes ended before they did.

pub mod consents;
pub mod journal;
pub mod memory;
pub mod run_log;
pub mod running;
pub mod runs;
pub mod schema;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::Connection;
use rusqlite::config::DbConfig;

pub use consents::Consent;
pub use journal::{JournalEntry, Leased};
pub use memory::{Entry, Event, MemoryError, Recorded, RunMemory};
pub use runs::{LlmCall, RunFilter, RunRecord, ToolCall};

/// How long a writer waits for the write lock before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// WAL size past which a writer checkpoints and truncates it: 64 frames of 4 KiB pages.
/// Small enough that rebuilding the WAL index at open stays cheap, large enough that the
/// checkpoint's fsync is paid once every dozen runs or so.
pub const WAL_TRUNCATE_BYTES: u64 = 32 + 64 * (24 + 4096);

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store file could not be opened or its directory created.
    #[error("cannot open the memory store {}: {source}", path.display())]
    Open {
        /// The store's path.
        path: PathBuf,
        /// What SQLite or the OS said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The file was written by a newer version of this program.
    #[error(
        "the memory store has schema version {found}, newer than this program's {supported}; upgrade spawner"
    )]
    TooNew {
        /// The schema version in the file.
        found: i64,
        /// The newest version this program knows.
        supported: i64,
    },
    /// A migration failed; the store is left at its previous version.
    #[error("migration {version} failed: {source}")]
    Migration {
        /// The migration that failed.
        version: i64,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// A query or write failed.
    #[error("memory store query failed: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A run of that id is in flight: its marker is held ([`running::Marker::create`]).
    #[error(
        "run {run_id} is running already (attempt {attempt}, in process {owner_pid}): wait for it to end, or cancel it"
    )]
    InFlight {
        /// The run.
        run_id: String,
        /// Its attempt in flight.
        attempt: u32,
        /// The process that owns it.
        owner_pid: u32,
    },
    /// A run id that cannot name a run's marker file ([`running`]).
    #[error("run id {0:?} is not one of this program's (letters, digits, dots and dashes)")]
    BadRunId(String),
    /// A stored value could not be understood.
    #[error("memory store holds an unexpected value: {0}")]
    Corrupt(String),
}

/// Open the store file, creating it 0600 when it is new: SQLite gives the `-wal` and `-shm`
/// files the mode of the database file, so none of the three is ever readable by others.
/// The usual case, a store that exists, costs one open, as before: the file is created
/// (and opened again) only when that open finds none.
///
/// SQLite retries a read-write open that fails (here: no such file) read-only, so when
/// another process creates the store between the two tries, that open succeeds read-only
/// and every write on it would fail with "attempt to write a readonly database". Such a
/// connection is dropped and the store opened again, read-write.
fn open_private(path: &Path) -> Result<Connection, Box<dyn std::error::Error + Send + Sync>> {
    use rusqlite::OpenFlags;
    let existing = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    match Connection::open_with_flags(path, existing) {
        Ok(conn) if !conn.is_readonly(rusqlite::MAIN_DB)? => Ok(conn),
        Ok(_) => Ok(Connection::open_with_flags(path, existing)?),
        Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::CannotOpen => {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::File::options()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)?;
            Ok(Connection::open(path)?)
        }
        Err(e) => Err(e.into()),
    }
}

/// An open memory store: one SQLite connection, configured for many short-lived processes.
pub struct Store {
    conn: Connection,
    /// The store file; `None` for in-memory stores.
    path: Option<PathBuf>,
    /// The `-wal` file, watched to keep it short; `None` for in-memory stores.
    wal_path: Option<PathBuf>,
    /// The old mode of the store's directory (the home) when opening found it open to
    /// other users and made it private, for the opener to say so.
    made_private: Option<u32>,
}

impl Store {
    /// Open (and if needed create and migrate) the store at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |source: Box<dyn std::error::Error + Send + Sync>| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let mut made_private = None;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // The store's directory is the home: private, whoever made it.
            made_private =
                agent_contract::home::ensure_private_dir(dir).map_err(|e| open_err(e.into()))?;
        }
        let conn = open_private(path).map_err(open_err)?;
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let mut lock = path.as_os_str().to_owned();
        lock.push("-migrate.lock");
        let mut store = Store::configure(conn, Some(PathBuf::from(wal)), Some(Path::new(&lock)))?;
        store.made_private = made_private;
        store.path = Some(path.to_owned());
        store.import_run_log()?;
        Ok(store)
    }

    /// Whether there is a store at `path`, or run records logged for one (which its first
    /// open imports): whether opening it would find anything.
    pub fn exists(path: &Path) -> bool {
        path.exists() || run_log::log_path(path).exists()
    }

    /// The old mode of the store's directory when [`Store::open`] found it open to other
    /// users and made it 0700 (say so: see [`agent_contract::home::made_private_notice`]).
    pub fn made_private(&self) -> Option<u32> {
        self.made_private
    }

    /// A private in-memory store, for tests.
    pub fn open_in_memory() -> Result<Store, StoreError> {
        Store::configure(Connection::open_in_memory()?, None, None)
    }

    fn configure(
        mut conn: Connection,
        wal_path: Option<PathBuf>,
        migrate_lock: Option<&Path>,
    ) -> Result<Store, StoreError> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")?;
        schema::migrate(&mut conn, migrate_lock)?;
        Ok(Store {
            conn,
            path: None,
            wal_path,
            made_private: None,
        })
    }

    /// Checkpoint and truncate the WAL when it has grown past [`WAL_TRUNCATE_BYTES`].
    /// Never waits: when another connection is using the file, it is left for later.
    /// Returns whether the WAL was truncated.
    pub fn truncate_wal_if_large(&self) -> Result<bool, StoreError> {
        let Some(wal) = &self.wal_path else {
            return Ok(false);
        };
        let size = std::fs::metadata(wal).map_or(0, |m| m.len());
        if size <= WAL_TRUNCATE_BYTES {
            return Ok(false);
        }
        self.conn.busy_timeout(Duration::ZERO)?;
        // (busy, frames in the WAL, frames checkpointed); busy = 1 when it could not finish.
        let result = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                r.get::<_, i64>(0)
            });
        self.conn.busy_timeout(BUSY_TIMEOUT)?;
        match result {
            Ok(busy) => Ok(busy == 0),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy =>
            {
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The schema version of the open store.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    /// `PRAGMA integrity_check`: `"ok"` when the file is sound, else SQLite's findings.
    pub fn integrity_check(&self) -> Result<String, StoreError> {
        let mut stmt = self.conn.prepare("PRAGMA integrity_check")?;
        let lines: Vec<String> = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(lines.join("\n"))
    }

    /// The underlying connection, for crates that add their own queries in tests.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// SQLite stores integers as i64; our counters and timestamps are u64 well below 2^63.
fn to_sql_int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_first_opens_of_a_new_store_all_succeed() {
        // A parent's sub-runs open a new home's store at once: none may be told the
        // database is locked while another switches it to WAL or migrates it.
        for _ in 0..20 {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("memory.db");
            let gate = std::sync::Barrier::new(8);
            std::thread::scope(|s| {
                let opens: Vec<_> = (0..8)
                    .map(|_| {
                        s.spawn(|| {
                            gate.wait();
                            Store::open(&path).map(|_| ())
                        })
                    })
                    .collect();
                for open in opens {
                    open.join().expect("thread").expect("the store opens");
                }
            });
        }
    }

    #[test]
    fn the_wal_is_truncated_once_it_grows_past_the_threshold() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("memory.db");
        let wal = dir.path().join("memory.db-wal");
        let wal_len = || std::fs::metadata(&wal).map_or(0, |m| m.len());
        let mut truncated = false;
        for i in 0..200 {
            let mut store = Store::open(&path).expect("open");
            let record = RunRecord {
                ended_at_ms: i,
                error: Some("x".repeat(3000)),
                ..RunRecord::sample(&format!("r{i}"), "a", i)
            };
            store.record_run(&record, 1000).expect("record");
            assert!(
                wal_len() <= WAL_TRUNCATE_BYTES + 16 * 4120,
                "WAL kept growing"
            );
            truncated |= wal_len() == 0;
        }
        assert!(truncated, "the WAL was never truncated");
        let store = Store::open(&path).expect("open");
        assert_eq!(
            store
                .runs(&RunFilter {
                    agent: None,
                    limit: 500
                })
                .expect("runs")
                .len(),
            200
        );
        assert_eq!(store.integrity_check().expect("check"), "ok");
    }
}
