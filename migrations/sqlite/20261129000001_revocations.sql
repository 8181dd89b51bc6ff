-- The embedded (single-instance) twin of migrations/postgres. Times are Unix milliseconds.
CREATE TABLE user_cutoffs (
    user_id        TEXT PRIMARY KEY,
    cutoff_unix_ms INTEGER NOT NULL,
    updated_at     TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX user_cutoffs_cutoff_idx ON user_cutoffs (cutoff_unix_ms);

CREATE TABLE denylist (
    kind               TEXT NOT NULL CHECK (kind IN ('jti', 'sid')),
    id                 TEXT NOT NULL,
    user_id            TEXT,
    moot_after_unix_ms INTEGER NOT NULL,
    created_at         TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (kind, id)
);
CREATE INDEX denylist_moot_idx ON denylist (moot_after_unix_ms);
