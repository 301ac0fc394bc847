-- 0001: key/value memory and the event log, per namespace; run records.

-- Durable key/value memory. One namespace per agent unless its manifest shares one.
CREATE TABLE kv (
    namespace     TEXT    NOT NULL,
    key           TEXT    NOT NULL,
    value         BLOB    NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (namespace, key)
) WITHOUT ROWID;

-- Append-only event log; seq orders events across all namespaces.
CREATE TABLE events (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    namespace TEXT    NOT NULL,
    run_id    TEXT    NOT NULL,
    at_ms     INTEGER NOT NULL,
    kind      TEXT    NOT NULL,
    payload   BLOB    NOT NULL
);
CREATE INDEX events_by_namespace ON events (namespace, seq);
CREATE TRIGGER events_are_append_only BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only');
END;

-- One row per run, written once when the run ends.
CREATE TABLE runs (
    run_id           TEXT    PRIMARY KEY,
    agent            TEXT    NOT NULL,
    started_at_ms    INTEGER NOT NULL,
    ended_at_ms      INTEGER NOT NULL,
    status           TEXT    NOT NULL,
    exit_code        INTEGER NOT NULL,
    error            TEXT,
    input            BLOB,    -- only when the agent's manifest sets memory.retain_input
    cache_hit        INTEGER,
    start_to_main_us INTEGER,
    config_us        INTEGER,
    store_us         INTEGER,
    load_us          INTEGER,
    instantiate_us   INTEGER,
    handler_us       INTEGER,
    total_us         INTEGER NOT NULL
);
CREATE INDEX runs_by_agent ON runs (agent, started_at_ms);
CREATE INDEX runs_by_start ON runs (started_at_ms);
