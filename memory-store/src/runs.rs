//! Run records: one row per request, written once when it ends.

use agent_contract::{Outcome, PhaseTimings};
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

use crate::{Store, StoreError, to_sql_int};

/// What the store keeps about one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The run's id.
    pub run_id: String,
    /// The agent that ran.
    pub agent: String,
    /// When the run started, in milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    /// When it ended.
    pub ended_at_ms: u64,
    /// How it ended; its exit code is `status.exit_code()`.
    pub status: Outcome,
    /// What went wrong, for any status but `ok`.
    pub error: Option<String>,
    /// The request input, only when the agent's manifest asks to retain it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<Vec<u8>>,
    /// Whether the compiled component came from the cache.
    pub cache_hit: Option<bool>,
    /// Where the time went.
    pub timings: PhaseTimings,
    /// Evidence of the run's language-model calls, in order. Read back by [`Store::run`]
    /// (lists leave it empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub llm_calls: Vec<LlmCall>,
    /// Evidence of the run's tool calls, in order; read back like `llm_calls`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// Which attempt of the run this record is: 1, or more once resumed. A record of a
    /// later attempt replaces a failed one; nothing replaces an `ok` one.
    #[serde(default = "first_attempt")]
    pub attempt: u32,
    /// SHA-256 (hex) of the component that ran; kept for durable runs, whose resume
    /// refuses another component.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component_sha256: Option<String>,
    /// SHA-256 (hex) of the answer; kept for durable runs, whose replay must match it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_sha256: Option<String>,
    /// The run that started this one as a sub-run; `None` for a run a caller asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_run_id: Option<String>,
    /// A sub-run's answer, written with its record for its parent's resume
    /// ([`Store::sub_run_output`] reads it back; records read back leave it out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Vec<u8>>,
}

impl RunRecord {
    /// The report of the run this record keeps, with `output` (the answer, which the
    /// record itself keeps only for sub-runs): what a caller asking again is handed.
    pub fn into_report(self, output: Vec<u8>) -> agent_contract::RunReport {
        agent_contract::RunReport {
            run_id: self.run_id,
            agent: self.agent,
            status: self.status,
            exit_code: self.status.exit_code(),
            output: None,
            output_base64: None,
            error: self.error,
            cache_hit: self.cache_hit,
            timings: self.timings,
            verdict: None,
            // Not kept with the record.
            used_store: false,
        }
        .with_output(output)
    }
}

fn first_attempt() -> u32 {
    1
}

/// Evidence of one tool call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The server (of `tools.toml`).
    pub server: String,
    /// The tool.
    pub tool: String,
    /// Whether the call left this machine.
    pub remote: bool,
    /// `ok`, or the error's kind (`not-allowed`, `timeout`, ...).
    pub outcome: String,
    /// The error's message, when it failed.
    pub error: Option<String>,
    /// From the call to its result, in milliseconds.
    pub duration_ms: f64,
    /// Of it, starting the server (0 when it was running).
    pub start_ms: f64,
    /// Size of the arguments, bytes.
    pub bytes_in: u64,
    /// Size of the result, bytes (0 without one).
    pub bytes_out: u64,
    /// The consent a remote call relied on.
    pub consent: Option<String>,
    /// The arguments; only when the manifest retains them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
    /// The result's text; only when the manifest retains it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
}

/// Evidence of one language-model call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlmCall {
    /// `local` (the broker), or the configured provider's name.
    pub provider: String,
    /// Whether the call left this machine.
    pub remote: bool,
    /// The model asked for.
    pub model: String,
    /// Where a local model ran: `cpu` or `cuda`.
    pub device: Option<String>,
    /// `stop` or `length` when it answered, else the error's kind (`not-allowed`, ...).
    pub outcome: String,
    /// The error's message, when it failed.
    pub error: Option<String>,
    /// Tokens of the prompt, when known.
    pub prompt_tokens: Option<u32>,
    /// Tokens generated, when known.
    pub completion_tokens: Option<u32>,
    /// Bytes sent off the machine.
    pub bytes_sent: u64,
    /// Why a remote provider was used.
    pub escalation: Option<String>,
    /// The consent the call relied on.
    pub consent: Option<String>,
    /// From the call to its answer, in milliseconds.
    pub latency_ms: f64,
    /// From the call to the first generated token, in milliseconds.
    pub first_token_ms: Option<f64>,
    /// The messages sent, as JSON; only when the manifest retains them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// The answer; only when the manifest retains it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
}

/// Which run records to list.
#[derive(Debug, Clone)]
pub struct RunFilter {
    /// Only this agent's runs.
    pub agent: Option<String>,
    /// At most this many, newest first.
    pub limit: u32,
}

impl Default for RunFilter {
    fn default() -> Self {
        RunFilter {
            agent: None,
            limit: 20,
        }
    }
}

const COLUMNS: &str = "run_id, agent, started_at_ms, ended_at_ms, status, error, input, cache_hit,
    start_to_main_us, config_us, store_us, load_us, instantiate_us, handler_us, total_us,
    attempt, component_sha256, output_sha256, parent_run_id";

/// The statement that records a run: a new run id is inserted; an existing one is
/// replaced only by a later attempt of a run that did not end `ok`, else left as it is.
static UPSERT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let set = COLUMNS
        .split(',')
        .map(str::trim)
        .chain(["output", "exit_code"])
        .filter(|c| *c != "run_id")
        .map(|c| format!("{c} = excluded.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "INSERT INTO runs ({COLUMNS}, output, exit_code)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                 ?18, ?19, ?20, ?21)
         ON CONFLICT (run_id) DO UPDATE SET {set}
         WHERE runs.status != 'ok' AND runs.attempt < excluded.attempt"
    )
});

/// Record `r` (see [`UPSERT`]: once per attempt), then prune the agent's records to the
/// newest `keep_runs`. Runs inside the caller's transaction. True when it was written.
pub(crate) fn insert(conn: &Connection, r: &RunRecord, keep_runs: u32) -> Result<bool, StoreError> {
    let inserted = insert_unpruned(conn, r)?;
    prune(conn, &r.agent, keep_runs)?;
    Ok(inserted)
}

/// Record `r` without pruning: for a batch of records, pruned once per agent after
/// ([`prune`]). True when it was written.
pub(crate) fn insert_unpruned(conn: &Connection, r: &RunRecord) -> Result<bool, StoreError> {
    let t = &r.timings;
    let opt = |v: Option<u64>| v.map(to_sql_int);
    // A resumed run's evidence follows its earlier attempts'.
    let first_seq = |table: &str| -> Result<i64, StoreError> {
        if r.attempt <= 1 {
            return Ok(0);
        }
        Ok(conn
            .prepare_cached(&format!(
                "SELECT COALESCE(MAX(seq) + 1, 0) FROM {table} WHERE run_id = ?1"
            ))?
            .query_row(params![r.run_id], |row| row.get(0))?)
    };
    let (first_llm, first_tool) = (first_seq("llm_calls")?, first_seq("tool_calls")?);
    let inserted = conn.prepare_cached(&UPSERT)?.execute(params![
        r.run_id,
        r.agent,
        to_sql_int(r.started_at_ms),
        to_sql_int(r.ended_at_ms),
        r.status.as_str(),
        r.error,
        r.input,
        r.cache_hit,
        opt(t.start_to_main_us),
        opt(t.config_us),
        opt(t.store_us),
        opt(t.load_us),
        opt(t.instantiate_us),
        opt(t.handler_us),
        to_sql_int(t.total_us),
        r.attempt,
        r.component_sha256,
        r.output_sha256,
        r.parent_run_id,
        r.output,
        r.status.exit_code(),
    ])? == 1;
    if inserted {
        let mut call = conn.prepare_cached(
            "INSERT INTO llm_calls (run_id, seq, provider, remote, model, device, outcome, error,
                 prompt_tokens, completion_tokens, bytes_sent, escalation, consent, latency_ms,
                 first_token_ms, prompt, answer)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
        )?;
        for (seq, c) in r.llm_calls.iter().enumerate() {
            call.execute(params![
                r.run_id,
                first_llm + seq as i64,
                c.provider,
                c.remote,
                c.model,
                c.device,
                c.outcome,
                c.error,
                c.prompt_tokens,
                c.completion_tokens,
                to_sql_int(c.bytes_sent),
                c.escalation,
                c.consent,
                c.latency_ms,
                c.first_token_ms,
                c.prompt,
                c.answer,
            ])?;
        }
        let mut call = conn.prepare_cached(
            "INSERT INTO tool_calls (run_id, seq, server, tool, remote, outcome, error,
                 duration_ms, start_ms, bytes_in, bytes_out, consent, arguments, result)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        )?;
        for (seq, c) in r.tool_calls.iter().enumerate() {
            call.execute(params![
                r.run_id,
                first_tool + seq as i64,
                c.server,
                c.tool,
                c.remote,
                c.outcome,
                c.error,
                c.duration_ms,
                c.start_ms,
                to_sql_int(c.bytes_in),
                to_sql_int(c.bytes_out),
                c.consent,
                c.arguments,
                c.result,
            ])?;
        }
    }
    Ok(inserted)
}

/// Keep only the newest `keep_runs` records of `agent` (by start), with their calls. Each
/// statement walks the agent's records in start order, so a batch prunes once per agent,
/// not once per record: pruning after each insert or once after all of them keeps the same
/// records, since a record outside the newest `keep_runs` stays outside as more arrive.
pub(crate) fn prune(conn: &Connection, agent: &str, keep_runs: u32) -> Result<(), StoreError> {
    conn.prepare_cached(
        "DELETE FROM tool_calls WHERE run_id IN (
             SELECT run_id FROM runs WHERE agent = ?1
             ORDER BY started_at_ms DESC LIMIT -1 OFFSET ?2)",
    )?
    .execute(params![agent, i64::from(keep_runs)])?;
    conn.prepare_cached(
        "DELETE FROM llm_calls WHERE run_id IN (
             SELECT run_id FROM runs WHERE agent = ?1
             ORDER BY started_at_ms DESC LIMIT -1 OFFSET ?2)",
    )?
    .execute(params![agent, i64::from(keep_runs)])?;
    conn.prepare_cached(
        "DELETE FROM runs WHERE run_id IN (
             SELECT run_id FROM runs WHERE agent = ?1
             ORDER BY started_at_ms DESC LIMIT -1 OFFSET ?2)",
    )?
    .execute(params![agent, i64::from(keep_runs)])?;
    Ok(())
}

fn from_row(row: &Row<'_>) -> rusqlite::Result<(RunRecord, String)> {
    let u = |i: usize| -> rusqlite::Result<Option<u64>> {
        Ok(row.get::<_, Option<i64>>(i)?.map(|v| v.max(0) as u64))
    };
    let status: String = row.get(4)?;
    Ok((
        RunRecord {
            run_id: row.get(0)?,
            agent: row.get(1)?,
            started_at_ms: u(2)?.unwrap_or(0),
            ended_at_ms: u(3)?.unwrap_or(0),
            status: Outcome::Internal, // replaced below once the text is checked
            error: row.get(5)?,
            input: row.get(6)?,
            cache_hit: row.get(7)?,
            timings: PhaseTimings {
                start_to_main_us: u(8)?,
                config_us: u(9)?,
                store_us: u(10)?,
                load_us: u(11)?,
                instantiate_us: u(12)?,
                handler_us: u(13)?,
                total_us: u(14)?.unwrap_or(0),
            },
            llm_calls: Vec::new(),
            tool_calls: Vec::new(),
            attempt: row.get(15)?,
            component_sha256: row.get(16)?,
            output_sha256: row.get(17)?,
            parent_run_id: row.get(18)?,
            output: None,
        },
        status,
    ))
}

impl Store {
    /// Record a run that wrote nothing else (failed runs, runs killed from outside).
    /// Returns false when a record of that run id stands: an `ok` one, or one of the same
    /// attempt or a later one.
    pub fn record_run(&mut self, record: &RunRecord, keep_runs: u32) -> Result<bool, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let inserted = insert(&tx, record, keep_runs)?;
        tx.commit()?;
        self.truncate_wal_if_large()?;
        Ok(inserted)
    }

    /// Run records, newest first.
    pub fn runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>, StoreError> {
        self.runs_where(filter, "")
    }

    /// Run records of runs a caller asked for, newest first: sub-runs are left out (see
    /// [`Store::sub_run_counts`] and [`Store::children`]).
    pub fn caller_runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>, StoreError> {
        self.runs_where(filter, "AND parent_run_id IS NULL")
    }

    /// How the sub-runs of `parent_run_id` ended: each status and how many, by status.
    pub fn sub_run_counts(&self, parent_run_id: &str) -> Result<Vec<(Outcome, u32)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT status, count(*) FROM runs WHERE parent_run_id = ?1
             GROUP BY status ORDER BY status",
        )?;
        let rows = stmt
            .query_map(params![parent_run_id], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, u32>(1)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(status, n)| {
                let status = status.parse().map_err(|e| {
                    StoreError::Corrupt(format!("a sub-run of {parent_run_id}: {e}"))
                })?;
                Ok((status, n))
            })
            .collect()
    }

    fn runs_where(&self, filter: &RunFilter, more: &str) -> Result<Vec<RunRecord>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM runs WHERE (?1 IS NULL OR agent = ?1) {more}
             ORDER BY run_id DESC LIMIT ?2"
        ))?;
        let rows = stmt
            .query_map(params![filter.agent, i64::from(filter.limit)], from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(mut record, status)| {
                record.status = status
                    .parse()
                    .map_err(|e| StoreError::Corrupt(format!("run {}: {e}", record.run_id)))?;
                Ok(record)
            })
            .collect()
    }

    /// Delete run records with their evidence (LLM calls and retained prompts, answers
    /// and inputs): the runs `run_ids`, or every run of `agent`. The agents' memory is not
    /// touched. Returns how many runs went.
    pub fn delete_runs(
        &mut self,
        run_ids: &[String],
        agent: Option<&str>,
    ) -> Result<usize, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut deleted = 0;
        for id in run_ids {
            tx.execute("DELETE FROM llm_calls WHERE run_id = ?1", params![id])?;
            tx.execute("DELETE FROM tool_calls WHERE run_id = ?1", params![id])?;
            deleted += tx.execute("DELETE FROM runs WHERE run_id = ?1", params![id])?;
        }
        if let Some(agent) = agent {
            tx.execute(
                "DELETE FROM llm_calls WHERE run_id IN (SELECT run_id FROM runs WHERE agent = ?1)",
                params![agent],
            )?;
            tx.execute(
                "DELETE FROM tool_calls WHERE run_id IN (SELECT run_id FROM runs WHERE agent = ?1)",
                params![agent],
            )?;
            deleted += tx.execute("DELETE FROM runs WHERE agent = ?1", params![agent])?;
        }
        tx.commit()?;
        Ok(deleted)
    }

    /// The language-model calls of a run, in order.
    pub fn llm_calls(&self, run_id: &str) -> Result<Vec<LlmCall>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT provider, remote, model, device, outcome, error, prompt_tokens,
                 completion_tokens, bytes_sent, escalation, consent, latency_ms, first_token_ms,
                 prompt, answer
             FROM llm_calls WHERE run_id = ?1 ORDER BY seq",
        )?;
        let calls = stmt
            .query_map(params![run_id], |row| {
                Ok(LlmCall {
                    provider: row.get(0)?,
                    remote: row.get(1)?,
                    model: row.get(2)?,
                    device: row.get(3)?,
                    outcome: row.get(4)?,
                    error: row.get(5)?,
                    prompt_tokens: row.get(6)?,
                    completion_tokens: row.get(7)?,
                    bytes_sent: row.get::<_, i64>(8)?.max(0) as u64,
                    escalation: row.get(9)?,
                    consent: row.get(10)?,
                    latency_ms: row.get(11)?,
                    first_token_ms: row.get(12)?,
                    prompt: row.get(13)?,
                    answer: row.get(14)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(calls)
    }

    /// The tool calls of a run, in order.
    pub fn tool_calls(&self, run_id: &str) -> Result<Vec<ToolCall>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT server, tool, remote, outcome, error, duration_ms, start_ms, bytes_in,
                 bytes_out, consent, arguments, result
             FROM tool_calls WHERE run_id = ?1 ORDER BY seq",
        )?;
        let calls = stmt
            .query_map(params![run_id], |row| {
                Ok(ToolCall {
                    server: row.get(0)?,
                    tool: row.get(1)?,
                    remote: row.get(2)?,
                    outcome: row.get(3)?,
                    error: row.get(4)?,
                    duration_ms: row.get(5)?,
                    start_ms: row.get(6)?,
                    bytes_in: row.get::<_, i64>(7)?.max(0) as u64,
                    bytes_out: row.get::<_, i64>(8)?.max(0) as u64,
                    consent: row.get(9)?,
                    arguments: row.get(10)?,
                    result: row.get(11)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(calls)
    }

    /// One run record by id, with its language-model and tool calls.
    pub fn run(&self, run_id: &str) -> Result<Option<RunRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM runs WHERE run_id = ?1"))?;
        let mut rows = stmt.query_map(params![run_id], from_row)?;
        match rows.next() {
            None => Ok(None),
            Some(row) => {
                let (mut record, status) = row?;
                record.status = status
                    .parse()
                    .map_err(|e| StoreError::Corrupt(format!("run {run_id}: {e}")))?;
                record.llm_calls = self.llm_calls(run_id)?;
                record.tool_calls = self.tool_calls(run_id)?;
                Ok(Some(record))
            }
        }
    }

    /// The sub-runs `parent_run_id` started, in the order it started them.
    pub fn children(&self, parent_run_id: &str) -> Result<Vec<RunRecord>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM runs WHERE parent_run_id = ?1"
        ))?;
        let mut children = stmt
            .query_map(params![parent_run_id], from_row)?
            .map(|row| {
                let (mut record, status) = row?;
                record.status = status
                    .parse()
                    .map_err(|e| StoreError::Corrupt(format!("run {}: {e}", record.run_id)))?;
                Ok(record)
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        // Child ids end in their number: `<parent>.<n>`.
        children.sort_by_key(|r| {
            r.run_id
                .rsplit_once('.')
                .and_then(|(_, n)| n.parse::<u32>().ok())
                .unwrap_or(u32::MAX)
        });
        Ok(children)
    }

    /// The answer a sub-run's record keeps, if it has one.
    pub fn sub_run_output(&self, run_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT output FROM runs WHERE run_id = ?1")?
            .query_row(params![run_id], |row| row.get::<_, Option<Vec<u8>>>(0))
            .optional()?
            .flatten())
    }
}

#[cfg(test)]
impl RunRecord {
    /// A record for tests: run `run_id` of `agent`, started at `started` and ended a
    /// millisecond later, `ok` at its first attempt, with nothing else.
    pub(crate) fn sample(run_id: &str, agent: &str, started: u64) -> RunRecord {
        RunRecord {
            run_id: run_id.into(),
            agent: agent.into(),
            started_at_ms: started,
            ended_at_ms: started + 1,
            status: Outcome::Ok,
            error: None,
            input: None,
            cache_hit: None,
            timings: PhaseTimings::default(),
            llm_calls: Vec::new(),
            tool_calls: Vec::new(),
            attempt: 1,
            component_sha256: None,
            output_sha256: None,
            parent_run_id: None,
            output: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(run_id: &str, agent: &str, started: u64) -> RunRecord {
        RunRecord {
            timings: PhaseTimings {
                handler_us: Some(7),
                total_us: 9,
                ..PhaseTimings::default()
            },
            ..RunRecord::sample(run_id, agent, started)
        }
    }

    fn tool_call(tool: &str) -> ToolCall {
        ToolCall {
            server: "time".into(),
            tool: tool.into(),
            remote: false,
            outcome: "ok".into(),
            error: None,
            duration_ms: 3.5,
            start_ms: 0.0,
            bytes_in: 27,
            bytes_out: 140,
            consent: None,
            arguments: None,
            result: Some("東京 12:00".into()),
        }
    }

    fn call(model: &str) -> LlmCall {
        LlmCall {
            provider: "local".into(),
            remote: false,
            model: model.into(),
            device: Some("cpu".into()),
            outcome: "stop".into(),
            error: None,
            prompt_tokens: Some(30),
            completion_tokens: Some(9),
            bytes_sent: 0,
            escalation: None,
            consent: None,
            latency_ms: 120.5,
            first_token_ms: Some(20.25),
            prompt: None,
            answer: Some("Paris".into()),
        }
    }

    #[test]
    fn llm_calls_are_kept_with_their_run_and_pruned_with_it() {
        let mut store = Store::open_in_memory().expect("store");
        let mut first = record("r0", "a", 0);
        first.llm_calls = vec![call("m1"), call("m2")];
        first.tool_calls = vec![tool_call("get_current_time")];
        store.record_run(&first, 1).expect("insert");
        assert_eq!(store.run("r0").expect("run"), Some(first.clone()));
        // A second insert of the same run adds no calls.
        store.record_run(&first, 1).expect("again");
        assert_eq!(store.llm_calls("r0").expect("calls").len(), 2);
        // keep_runs 1: the next run prunes r0 and its calls.
        store.record_run(&record("r1", "a", 1), 1).expect("insert");
        assert_eq!(store.llm_calls("r0").expect("calls"), Vec::new());
        assert_eq!(store.tool_calls("r0").expect("calls"), Vec::new());
    }

    #[test]
    fn deleting_runs_takes_their_evidence_and_nothing_else() {
        let mut store = Store::open_in_memory().expect("store");
        for (id, agent) in [("r0", "a"), ("r1", "a"), ("r2", "b")] {
            let mut r = record(id, agent, 0);
            r.llm_calls = vec![call("m")];
            r.tool_calls = vec![tool_call("t")];
            store.record_run(&r, 10).expect("insert");
        }
        assert_eq!(
            store
                .delete_runs(&["r2".into(), "none".into()], None)
                .expect("delete"),
            1
        );
        assert_eq!(store.llm_calls("r2").expect("calls"), Vec::new());
        assert_eq!(store.tool_calls("r2").expect("calls"), Vec::new());
        assert_eq!(store.tool_calls("r1").expect("calls").len(), 1);
        assert_eq!(store.delete_runs(&[], Some("a")).expect("delete"), 2);
        assert_eq!(store.llm_calls("r0").expect("calls"), Vec::new());
        assert!(store.runs(&RunFilter::default()).expect("runs").is_empty());
    }

    #[test]
    fn records_round_trip_are_inserted_once_and_pruned() {
        let mut store = Store::open_in_memory().expect("store");
        for i in 0..5 {
            assert!(
                store
                    .record_run(&record(&format!("r{i}"), "a", i), 3)
                    .expect("insert")
            );
        }
        assert!(!store.record_run(&record("r4", "a", 4), 3).expect("again"));
        store
            .record_run(&record("other", "b", 0), 3)
            .expect("insert");
        let a = store
            .runs(&RunFilter {
                agent: Some("a".into()),
                limit: 10,
            })
            .expect("runs");
        let ids: Vec<&str> = a.iter().map(|r| r.run_id.as_str()).collect();
        assert_eq!(ids, ["r4", "r3", "r2"]);
        assert_eq!(a[0], record("r4", "a", 4));
        assert_eq!(
            store.run("other").expect("run").map(|r| r.agent),
            Some("b".into())
        );
        assert_eq!(store.run("missing").expect("run"), None);
    }

    #[test]
    fn a_later_attempt_replaces_a_failed_record_never_an_ok_one() {
        let mut store = Store::open_in_memory().expect("store");
        let failed = RunRecord {
            status: Outcome::Killed,
            error: Some("killed".into()),
            tool_calls: vec![tool_call("first")],
            ..record("r1", "a", 1)
        };
        assert!(store.record_run(&failed, 10).expect("insert"));
        // The same attempt again (the spawner's record after agent-exec's): ignored.
        assert!(!store.record_run(&failed, 10).expect("again"));
        let resumed = RunRecord {
            attempt: 2,
            output_sha256: Some("ab".into()),
            parent_run_id: None,
            output: None,
            tool_calls: vec![tool_call("second")],
            ..record("r1", "a", 1)
        };
        assert!(store.record_run(&resumed, 10).expect("resume"));
        let stored = store.run("r1").expect("run").expect("recorded");
        assert_eq!((stored.status, stored.attempt), (Outcome::Ok, 2));
        assert_eq!(stored.output_sha256.as_deref(), Some("ab"));
        // The evidence of both attempts, in order.
        let tools: Vec<String> = stored.tool_calls.iter().map(|c| c.tool.clone()).collect();
        assert_eq!(tools, ["first", "second"]);
        // An ok record stands, whatever comes later.
        let later = RunRecord {
            attempt: 3,
            status: Outcome::Killed,
            ..record("r1", "a", 1)
        };
        assert!(!store.record_run(&later, 10).expect("later"));
        assert_eq!(store.run("r1").expect("run").map(|r| r.attempt), Some(2));
    }
}
