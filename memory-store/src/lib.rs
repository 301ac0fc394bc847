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
//!   close would otherwise checkpoint the WAL, 6-9 ms in a short-lived process. The WAL
//!   is still checkpointed automatically by commits once it grows past its threshold.
//! - A request's memory writes are buffered in [`RunMemory`] (reads see them) and committed
//!   in one transaction together with the run record. A run that traps, times out or is
//!   killed leaves no partial write behind.
//!
//! # Layout
//!
//! - [`schema`]: numbered migrations from `migrations/*.sql`, tracked by `user_version`.
//! - [`memory`]: per-namespace key/value and event log, with the per-run write buffer.
//! - [`runs`]: run records: insert, prune, list.

pub mod memory;
pub mod runs;
pub mod schema;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::Connection;
use rusqlite::config::DbConfig;

pub use memory::{Entry, Event, MemoryError, RunMemory};
pub use runs::{RunFilter, RunRecord};

/// How long a writer waits for the write lock before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// A stored value could not be understood.
    #[error("memory store holds an unexpected value: {0}")]
    Corrupt(String),
}

/// An open memory store: one SQLite connection, configured for many short-lived processes.
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Open (and if needed create and migrate) the store at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |source: Box<dyn std::error::Error + Send + Sync>| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| open_err(e.into()))?;
        }
        let conn = Connection::open(path).map_err(|e| open_err(e.into()))?;
        Store::configure(conn)
    }

    /// A private in-memory store, for tests.
    pub fn open_in_memory() -> Result<Store, StoreError> {
        Store::configure(Connection::open_in_memory()?)
    }

    fn configure(mut conn: Connection) -> Result<Store, StoreError> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")?;
        schema::migrate(&mut conn)?;
        Ok(Store { conn })
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
