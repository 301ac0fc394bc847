//! Consents: the user's recorded permission for one agent to use one remote provider
//! (`spawner consent grant|revoke|list`). A grant is a row; revoking stamps it, so the
//! history stays; a call checks for a live grant and names it in its evidence.

use rusqlite::{TransactionBehavior, params};
use serde::Serialize;

use crate::{Store, StoreError, to_sql_int};

/// One grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Consent {
    /// Its number.
    pub id: i64,
    /// The agent it covers.
    pub agent: String,
    /// The provider it covers.
    pub provider: String,
    /// When it was granted, ms since the Unix epoch.
    pub granted_at_ms: u64,
    /// When it lapses; never when absent.
    pub expires_at_ms: Option<u64>,
    /// When it was revoked.
    pub revoked_at_ms: Option<u64>,
}

impl Consent {
    /// Whether it covers a call at `now_ms`.
    pub fn live(&self, now_ms: u64) -> bool {
        self.revoked_at_ms.is_none() && self.expires_at_ms.is_none_or(|e| now_ms < e)
    }
}

fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Consent> {
    let ms = |i: usize| -> rusqlite::Result<Option<u64>> {
        Ok(row.get::<_, Option<i64>>(i)?.map(|v| v.max(0) as u64))
    };
    Ok(Consent {
        id: row.get(0)?,
        agent: row.get(1)?,
        provider: row.get(2)?,
        granted_at_ms: ms(3)?.unwrap_or(0),
        expires_at_ms: ms(4)?,
        revoked_at_ms: ms(5)?,
    })
}

const COLUMNS: &str = "id, agent, provider, granted_at_ms, expires_at_ms, revoked_at_ms";

impl Store {
    /// Grant `agent` the use of `provider` from `now_ms`, until `expires_at_ms` if given.
    pub fn grant_consent(
        &mut self,
        agent: &str,
        provider: &str,
        now_ms: u64,
        expires_at_ms: Option<u64>,
    ) -> Result<Consent, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO consents (agent, provider, granted_at_ms, expires_at_ms)
             VALUES (?1, ?2, ?3, ?4)",
            params![
                agent,
                provider,
                to_sql_int(now_ms),
                expires_at_ms.map(to_sql_int)
            ],
        )?;
        let id = tx.last_insert_rowid();
        tx.commit()?;
        Ok(Consent {
            id,
            agent: agent.into(),
            provider: provider.into(),
            granted_at_ms: now_ms,
            expires_at_ms,
            revoked_at_ms: None,
        })
    }

    /// Revoke every live grant of `provider` to `agent`; how many there were.
    pub fn revoke_consent(
        &mut self,
        agent: &str,
        provider: &str,
        now_ms: u64,
    ) -> Result<usize, StoreError> {
        Ok(self.conn.execute(
            "UPDATE consents SET revoked_at_ms = ?3
             WHERE agent = ?1 AND provider = ?2 AND revoked_at_ms IS NULL",
            params![agent, provider, to_sql_int(now_ms)],
        )?)
    }

    /// Every grant, oldest first.
    pub fn consents(&self) -> Result<Vec<Consent>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM consents ORDER BY id"))?;
        let rows = stmt.query_map([], from_row)?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// The newest grant of `provider` to `agent` that covers a call at `now_ms`.
    pub fn live_consent(
        &self,
        agent: &str,
        provider: &str,
        now_ms: u64,
    ) -> Result<Option<Consent>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM consents WHERE agent = ?1 AND provider = ?2 ORDER BY id DESC"
        ))?;
        let rows: Vec<Consent> = stmt
            .query_map(params![agent, provider], from_row)?
            .collect::<Result<_, _>>()?;
        Ok(rows.into_iter().find(|c| c.live(now_ms)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_cover_calls_until_they_expire_or_are_revoked() {
        let mut store = Store::open_in_memory().expect("store");
        assert_eq!(store.live_consent("a", "p", 10).expect("query"), None);
        store.grant_consent("a", "p", 10, Some(100)).expect("grant");
        assert!(store.live_consent("a", "p", 50).expect("query").is_some());
        assert_eq!(store.live_consent("a", "p", 100).expect("query"), None);
        assert_eq!(store.live_consent("b", "p", 50).expect("query"), None);
        let forever = store.grant_consent("a", "p", 60, None).expect("grant");
        assert_eq!(
            store
                .live_consent("a", "p", 1000)
                .expect("query")
                .map(|c| c.id),
            Some(forever.id)
        );
        assert_eq!(store.revoke_consent("a", "p", 70).expect("revoke"), 2);
        assert_eq!(store.live_consent("a", "p", 80).expect("query"), None);
        assert_eq!(store.consents().expect("list").len(), 2);
    }
}
