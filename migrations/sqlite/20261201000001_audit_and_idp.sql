-- The embedded twin of migrations/postgres/20261201000001_audit_and_idp.sql.
-- SQLite cannot change a CHECK constraint: the denylist is rebuilt with the third kind.
CREATE TABLE denylist_new (
    kind               TEXT NOT NULL CHECK (kind IN ('jti', 'sid', 'idp')),
    id                 TEXT NOT NULL,
    user_id            TEXT,
    moot_after_unix_ms INTEGER NOT NULL,
    change_seq         INTEGER NOT NULL,
    created_at         TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    changed_unix_ms    BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, id)
);
INSERT INTO denylist_new (kind, id, user_id, moot_after_unix_ms, change_seq, created_at,
                          changed_unix_ms)
    SELECT kind, id, user_id, moot_after_unix_ms, change_seq, created_at, changed_unix_ms
        FROM denylist;
DROP TABLE denylist;
ALTER TABLE denylist_new RENAME TO denylist;
CREATE INDEX denylist_moot_idx ON denylist (moot_after_unix_ms);
CREATE INDEX denylist_change_seq_idx ON denylist (change_seq);

CREATE TABLE audit_log (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    change_seq    INTEGER NOT NULL,
    at_unix_ms    INTEGER NOT NULL,
    action        TEXT NOT NULL,
    user_id       TEXT,
    target        TEXT,
    until_unix_ms INTEGER,
    who           TEXT NOT NULL,
    why           TEXT
);
CREATE INDEX audit_log_user_idx ON audit_log (user_id, id);
CREATE INDEX audit_log_at_idx ON audit_log (at_unix_ms);

CREATE TABLE received_events (
    source             TEXT NOT NULL,
    jti                TEXT NOT NULL,
    moot_after_unix_ms INTEGER NOT NULL,
    PRIMARY KEY (source, jti)
);
CREATE INDEX received_events_moot_idx ON received_events (moot_after_unix_ms);
