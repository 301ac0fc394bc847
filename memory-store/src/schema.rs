//! Numbered migrations, applied in order and recorded in `PRAGMA user_version`.
//!
//! A migration is a file `migrations/NNNN_name.sql`, listed in [`MIGRATIONS`]. Never edit
//! one that has shipped; add the next number instead.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use crate::StoreError;

/// Every migration, in order; the store's version is the number of migrations applied.
pub const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_initial.sql"),
    include_str!("../migrations/0002_llm_calls.sql"),
    include_str!("../migrations/0003_consents.sql"),
    include_str!("../migrations/0004_tool_calls.sql"),
    include_str!("../migrations/0005_drop_runs_by_start.sql"),
    include_str!("../migrations/0006_journal.sql"),
    include_str!("../migrations/0007_sub_runs.sql"),
];

/// The schema version this program writes.
pub fn latest_version() -> i64 {
    MIGRATIONS.len() as i64
}

fn user_version(conn: &Connection) -> Result<i64, rusqlite::Error> {
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
}

/// Bring the store up to [`latest_version`]. Cheap when it already is: one pragma read.
///
/// Concurrent first opens are safe: a store that is not up to date is switched to WAL and
/// migrated by one opener at a time, under an exclusive `flock` of `lock` (a file beside
/// the store), since SQLite answers a `journal_mode` switch that meets another connection
/// with "database is locked" at once, without waiting; the version is read again under
/// it, so exactly one process applies each migration. `None` (an in-memory store): no
/// lock.
pub fn migrate(conn: &mut Connection, lock: Option<&Path>) -> Result<(), StoreError> {
    let supported = latest_version();
    let found = user_version(conn)?;
    if found == supported {
        return Ok(());
    }
    if found > supported {
        return Err(StoreError::TooNew { found, supported });
    }
    let _held = match lock {
        Some(path) => Some(lock_file(path)?),
        None => None,
    };
    if user_version(conn)? == supported {
        return Ok(());
    }
    // Persistent: once set, every later connection uses WAL. Must run outside a transaction.
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") && !mode.eq_ignore_ascii_case("memory") {
        return Err(StoreError::Corrupt(format!(
            "journal_mode is {mode:?}, WAL could not be enabled"
        )));
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let current = user_version(&tx)?;
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current.max(0) as usize) {
        let version = index as i64 + 1;
        tx.execute_batch(sql)
            .map_err(|source| StoreError::Migration { version, source })?;
        tx.pragma_update(None, "user_version", version)?;
    }
    tx.commit()?;
    Ok(())
}

/// `path`, created 0600 if need be, locked exclusively (released when the file closes).
fn lock_file(path: &Path) -> Result<std::fs::File, StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::File::options()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .and_then(|file| file.lock().map(|()| file));
    file.map_err(|e| StoreError::Open {
        path: path.to_owned(),
        source: e.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrating_twice_is_a_no_op_and_newer_stores_are_refused() {
        let mut conn = Connection::open_in_memory().expect("open");
        migrate(&mut conn, None).expect("first");
        migrate(&mut conn, None).expect("second");
        assert_eq!(user_version(&conn).expect("version"), latest_version());
        conn.pragma_update(None, "user_version", latest_version() + 1)
            .expect("bump");
        assert!(matches!(
            migrate(&mut conn, None),
            Err(StoreError::TooNew { .. })
        ));
    }
}
