-- 0003: the user's consents to an agent's use of a remote language-model provider.

CREATE TABLE consents (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    agent         TEXT    NOT NULL,
    provider      TEXT    NOT NULL,
    granted_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER,            -- NULL: until revoked
    revoked_at_ms INTEGER             -- set by `spawner consent revoke`; rows are kept
);
CREATE INDEX consents_by_grant ON consents (agent, provider);
