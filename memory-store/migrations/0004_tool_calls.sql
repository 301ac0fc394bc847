-- 0004: evidence of every tool (MCP) call, written with its run's record.

CREATE TABLE tool_calls (
    run_id      TEXT    NOT NULL,
    seq         INTEGER NOT NULL,  -- the call's place among its run's tool calls, from 0
    server      TEXT    NOT NULL,  -- a server of tools.toml
    tool        TEXT    NOT NULL,
    remote      INTEGER NOT NULL,  -- 1 when the call left this machine
    outcome     TEXT    NOT NULL,  -- 'ok', or the error's kind ('timeout', ...)
    error       TEXT,
    duration_ms REAL    NOT NULL,
    start_ms    REAL    NOT NULL,  -- of it, starting the server (0 when it was running)
    bytes_in    INTEGER NOT NULL,  -- the arguments' size
    bytes_out   INTEGER NOT NULL,  -- the result's size (0 without one)
    consent     TEXT,              -- the consent a remote call relied on
    arguments   TEXT,              -- only when the agent's manifest sets tools.retain
    result      TEXT,              -- likewise
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
