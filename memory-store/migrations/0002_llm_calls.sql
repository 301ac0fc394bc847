-- 0002: evidence of every language-model call, written with its run's record.

CREATE TABLE llm_calls (
    run_id            TEXT    NOT NULL,
    seq               INTEGER NOT NULL,  -- the call's place in its run, from 0
    provider          TEXT    NOT NULL,  -- 'local' (the broker) or a configured provider
    remote            INTEGER NOT NULL,  -- 1 when the call left this machine
    model             TEXT    NOT NULL,
    device            TEXT,              -- where a local model ran: 'cpu' or 'cuda'
    outcome           TEXT    NOT NULL,  -- 'stop', 'length', or the error's kind
    error             TEXT,
    prompt_tokens     INTEGER,
    completion_tokens INTEGER,
    bytes_sent        INTEGER NOT NULL,  -- bytes sent off the machine (0 for local calls)
    escalation        TEXT,              -- why a remote provider was used
    consent           TEXT,              -- the consent it relied on
    latency_ms        REAL    NOT NULL,
    first_token_ms    REAL,
    prompt            TEXT,              -- only when the agent's manifest sets llm.retain
    answer            TEXT,              -- likewise
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
