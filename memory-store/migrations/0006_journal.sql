-- 0006: the journal of host calls of durable runs, and what a resume or replay needs.

-- One row per host call whose result came from outside the component (a chat, a tool
-- call, an inference, a memory read, a clock), in the order the run made them, written
-- before the result reached the guest. A resumed run is served these results instead of
-- making the calls again; a replay is served nothing else.
CREATE TABLE journal (
    run_id       TEXT    NOT NULL,
    seq          INTEGER NOT NULL,  -- the call's place in its run, from 0
    kind         TEXT    NOT NULL,  -- 'llm', 'tool', 'tools', 'inference', 'memory', 'clock'
    request_hash BLOB    NOT NULL,  -- SHA-256 of the kind and the call's arguments
    result       BLOB    NOT NULL,  -- the result the guest got, as JSON
    duration_us  INTEGER NOT NULL,  -- how long the call took when it was made
    at_ms        INTEGER NOT NULL,  -- when it was made
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
-- A run's journal goes with its record (pruned by keep_runs, or deleted): only when a
-- record is deleted, so recording a run costs nothing more.
CREATE TRIGGER journal_goes_with_its_run AFTER DELETE ON runs
BEGIN
    DELETE FROM journal WHERE run_id = old.run_id;
END;

-- Which attempt of its run a record is: 1, or more once resumed. A later attempt's
-- record replaces a failed one; nothing replaces an `ok` one.
ALTER TABLE runs ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1;
-- SHA-256 of the component that ran, and of its answer (durable runs): a resume refuses
-- another component, and a replay's answer must hash the same.
ALTER TABLE runs ADD COLUMN component_sha256 TEXT;
ALTER TABLE runs ADD COLUMN output_sha256 TEXT;

-- Who is resuming a run, taken under BEGIN IMMEDIATE: one resumer at a time. A lease whose
-- process is gone is taken over.
CREATE TABLE run_leases (
    run_id      TEXT    PRIMARY KEY,
    pid         INTEGER NOT NULL,
    taken_at_ms INTEGER NOT NULL
) WITHOUT ROWID;
