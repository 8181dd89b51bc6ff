-- Cutoffs and the denylist. Times are Unix milliseconds (BIGINT) so that PostgreSQL and SQLite
-- compare them identically; to read one: to_timestamp(cutoff_unix_ms / 1000.0).
-- Every change takes a number from one sequence, so an instance can ask for "changes after N".
-- Writers hold a transaction-scoped advisory lock while they take the number and commit, so
-- numbers become visible in order and "after N" never skips a late commit.
CREATE SEQUENCE revocation_change_seq;

CREATE TABLE user_cutoffs (
    user_id        TEXT PRIMARY KEY,
    -- Tokens whose orig_iat <= cutoff are revoked; a cutoff in the future is a ban.
    cutoff_unix_ms BIGINT NOT NULL,
    change_seq     BIGINT NOT NULL DEFAULT nextval('revocation_change_seq'),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX user_cutoffs_cutoff_idx ON user_cutoffs (cutoff_unix_ms);
CREATE INDEX user_cutoffs_change_seq_idx ON user_cutoffs (change_seq);

CREATE TABLE denylist (
    -- 'jti': one token; 'sid': a session (every token refreshed from its first one).
    kind               TEXT NOT NULL CHECK (kind IN ('jti', 'sid')),
    id                 TEXT NOT NULL,
    user_id            TEXT,
    -- After this instant nothing the row refuses can still be valid: it may be purged.
    moot_after_unix_ms BIGINT NOT NULL,
    change_seq         BIGINT NOT NULL DEFAULT nextval('revocation_change_seq'),
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, id)
);
CREATE INDEX denylist_moot_idx ON denylist (moot_after_unix_ms);
CREATE INDEX denylist_change_seq_idx ON denylist (change_seq);
