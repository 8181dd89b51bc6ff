-- The embedded (single-instance) twin of migrations/postgres. Times are Unix milliseconds.
-- One counter numbers every change, as PostgreSQL's revocation_change_seq does.
CREATE TABLE revocation_change_seq (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    value INTEGER NOT NULL
);
INSERT INTO revocation_change_seq (id, value) VALUES (1, 0);

CREATE TABLE user_cutoffs (
    user_id        TEXT PRIMARY KEY,
    cutoff_unix_ms INTEGER NOT NULL,
    change_seq     INTEGER NOT NULL,
    updated_at     TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX user_cutoffs_cutoff_idx ON user_cutoffs (cutoff_unix_ms);
CREATE INDEX user_cutoffs_change_seq_idx ON user_cutoffs (change_seq);

CREATE TABLE denylist (
    kind               TEXT NOT NULL CHECK (kind IN ('jti', 'sid')),
    id                 TEXT NOT NULL,
    user_id            TEXT,
    moot_after_unix_ms INTEGER NOT NULL,
    change_seq         INTEGER NOT NULL,
    created_at         TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (kind, id)
);
CREATE INDEX denylist_moot_idx ON denylist (moot_after_unix_ms);
CREATE INDEX denylist_change_seq_idx ON denylist (change_seq);
