-- Refresh reuse detection (SPEC §11): the newest token of every session that has refreshed,
-- one row per session, purged with the session (moot after orig_iat + the refresh window).
CREATE TABLE session_heads (
    session_id         TEXT PRIMARY KEY,
    user_id            TEXT NOT NULL,
    -- The newest token: its jti, when it was minted (ms), and its iat and exp (NumericDates).
    newest_jti         TEXT NOT NULL,
    minted_unix_ms     BIGINT NOT NULL,
    issued_at          BIGINT NOT NULL,
    expires_at         BIGINT NOT NULL,
    -- The token the newest was refreshed from, and when that one was minted: a Refresh of an
    -- older token is judged by the age of its own successor (SPEC §11).
    parent_jti            TEXT NOT NULL,
    parent_minted_unix_ms BIGINT NOT NULL,
    moot_after_unix_ms BIGINT NOT NULL
);
CREATE INDEX session_heads_moot_idx ON session_heads (moot_after_unix_ms);
