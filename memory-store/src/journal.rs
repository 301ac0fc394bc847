//! The journal of a durable run's host calls (migration 0006): each call whose result came
//! from outside the component, in the order the run made it, with a hash of its request
//! and the result the guest got. A resumed run is served these results instead of making
//! the calls again; a replay is served nothing else. Rows go with their run's record when
//! it is pruned or deleted (a trigger on `runs`).

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use crate::{Store, StoreError, to_sql_int};

/// One journaled host call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    /// The call's place in its run, from 0.
    pub seq: u32,
    /// What was called: `llm`, `tool`, `tools`, `inference`, `memory`, `clock`.
    pub kind: String,
    /// SHA-256 of the kind and the call's arguments: a re-run that asks otherwise at this
    /// step has diverged.
    pub request_hash: Vec<u8>,
    /// The result the guest got, as JSON.
    pub result: Vec<u8>,
    /// How long the call took when it was made, in microseconds.
    pub duration_us: u64,
    /// When it was made, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}

impl Store {
    /// The journal of `run_id`, in order (empty for a run that kept none).
    pub fn journal(&self, run_id: &str) -> Result<Vec<JournalEntry>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, kind, request_hash, result, duration_us, at_ms FROM journal
             WHERE run_id = ?1 ORDER BY seq",
        )?;
        let entries = stmt
            .query_map(params![run_id], |r| {
                Ok(JournalEntry {
                    seq: r.get(0)?,
                    kind: r.get(1)?,
                    request_hash: r.get(2)?,
                    result: r.get(3)?,
                    duration_us: r.get::<_, i64>(4)?.max(0) as u64,
                    at_ms: r.get::<_, i64>(5)?.max(0) as u64,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        // A gap would serve a later result at an earlier step.
        if let Some((i, e)) = entries
            .iter()
            .enumerate()
            .find(|(i, e)| e.seq as usize != *i)
        {
            return Err(StoreError::Corrupt(format!(
                "the journal of run {run_id} has step {} where step {i} belongs",
                e.seq
            )));
        }
        Ok(entries)
    }

    /// Append `entries` to the journal of `run_id`, durably, in one transaction. A step
    /// that is already there is an error: a run never journals a step twice.
    pub fn append_journal(&self, run_id: &str, entries: &[JournalEntry]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let tx = Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        insert(&tx, run_id, entries)?;
        tx.commit()?;
        self.truncate_wal_if_large()?;
        Ok(())
    }
}

/// How [`Store::take_lease`] had the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leased {
    /// Taken now: the taker gives it back.
    Taken,
    /// The same process held it already.
    Held,
}

impl Store {
    /// Take the lease on resuming `run_id` for process `pid`, unless a process that
    /// `alive` says is running holds it: then `Err(its pid)`. Checked and taken in one
    /// `BEGIN IMMEDIATE` transaction, so two resumers cannot both take it. A lease `pid`
    /// holds already is [`Leased::Held`]: within one process (the daemon's threads), who
    /// holds it is the caller's to know.
    pub fn take_lease(
        &self,
        run_id: &str,
        pid: u32,
        alive: impl Fn(u32) -> bool,
    ) -> Result<Result<Leased, u32>, StoreError> {
        let tx = Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        let holder: Option<u32> = tx
            .prepare_cached("SELECT pid FROM run_leases WHERE run_id = ?1")?
            .query_row(params![run_id], |r| r.get(0))
            .optional()?;
        match holder {
            Some(holder) if holder == pid => return Ok(Ok(Leased::Held)),
            Some(holder) if alive(holder) => return Ok(Err(holder)),
            _ => {}
        }
        tx.prepare_cached(
            "INSERT OR REPLACE INTO run_leases (run_id, pid, taken_at_ms) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![run_id, pid, to_sql_int(crate::now_ms())])?;
        tx.commit()?;
        Ok(Ok(Leased::Taken))
    }

    /// Give back the lease on `run_id`, if `pid` holds it.
    pub fn release_lease(&self, run_id: &str, pid: u32) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("DELETE FROM run_leases WHERE run_id = ?1 AND pid = ?2")?
            .execute(params![run_id, pid])?;
        Ok(())
    }
}

fn insert(conn: &Connection, run_id: &str, entries: &[JournalEntry]) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO journal (run_id, seq, kind, request_hash, result, duration_us, at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for e in entries {
        stmt.execute(params![
            run_id,
            e.seq,
            e.kind,
            e.request_hash,
            e.result,
            to_sql_int(e.duration_us),
            to_sql_int(e.at_ms),
        ])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u32, kind: &str) -> JournalEntry {
        JournalEntry {
            seq,
            kind: kind.into(),
            request_hash: vec![seq as u8; 32],
            result: format!("{{\"step\":{seq}}}").into_bytes(),
            duration_us: 10,
            at_ms: 1,
        }
    }

    #[test]
    fn entries_come_back_in_order_and_a_step_is_journaled_once() {
        let store = Store::open_in_memory().expect("store");
        store
            .append_journal("r1", &[entry(0, "clock"), entry(1, "tool")])
            .expect("append");
        store
            .append_journal("r1", &[entry(2, "llm")])
            .expect("append");
        store
            .append_journal("r2", &[entry(0, "memory")])
            .expect("append");
        let journal = store.journal("r1").expect("journal");
        assert_eq!(
            journal,
            [entry(0, "clock"), entry(1, "tool"), entry(2, "llm")]
        );
        assert!(store.append_journal("r1", &[entry(2, "llm")]).is_err());
        assert_eq!(store.journal("r1").expect("journal").len(), 3);
        assert!(store.journal("none").expect("journal").is_empty());
    }

    #[test]
    fn one_resumer_at_a_time_and_a_dead_ones_lease_is_taken_over() {
        let store = Store::open_in_memory().expect("store");
        assert_eq!(
            store.take_lease("r1", 10, |_| true).expect("take"),
            Ok(Leased::Taken)
        );
        assert_eq!(store.take_lease("r1", 11, |_| true).expect("take"), Err(10));
        assert_eq!(
            store.take_lease("r2", 11, |_| true).expect("take"),
            Ok(Leased::Taken)
        );
        // Its holder is gone: taken over.
        assert_eq!(
            store.take_lease("r1", 11, |pid| pid != 10).expect("take"),
            Ok(Leased::Taken)
        );
        assert_eq!(
            store.take_lease("r1", 11, |_| true).expect("take"),
            Ok(Leased::Held),
            "its own lease"
        );
        store.release_lease("r1", 10).expect("not its lease");
        assert_eq!(store.take_lease("r1", 12, |_| true).expect("take"), Err(11));
        store.release_lease("r1", 11).expect("release");
        assert_eq!(
            store.take_lease("r1", 12, |_| true).expect("take"),
            Ok(Leased::Taken)
        );
    }

    #[test]
    fn a_journal_goes_with_its_runs_record_and_not_before() {
        let mut store = Store::open_in_memory().expect("store");
        store
            .append_journal("r1", &[entry(0, "tool")])
            .expect("append");
        let record = |id: &str, started: u64| crate::RunRecord {
            ended_at_ms: started,
            ..crate::RunRecord::sample(id, "a", started)
        };
        store.record_run(&record("r1", 1), 1).expect("record");
        assert_eq!(store.journal("r1").expect("journal").len(), 1);
        // keep_runs = 1: r1 is pruned, its journal with it.
        store.record_run(&record("r2", 2), 1).expect("record");
        assert!(store.journal("r1").expect("journal").is_empty());
        store
            .append_journal("r2", &[entry(0, "tool")])
            .expect("append");
        store.delete_runs(&["r2".into()], None).expect("delete");
        assert!(store.journal("r2").expect("journal").is_empty());
    }

    #[test]
    fn a_gap_in_the_journal_is_reported_not_served() {
        let store = Store::open_in_memory().expect("store");
        store
            .append_journal("r1", &[entry(0, "clock"), entry(2, "tool")])
            .expect("append");
        let e = store.journal("r1").expect_err("gap");
        assert!(e.to_string().contains("step 2 where step 1"), "{e}");
    }
}
