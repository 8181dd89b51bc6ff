-- Identity-provider-driven revocation and the audit trail.
--
-- The denylist learns a third kind, 'idp': an identity provider's session (a back-channel
-- logout's or a Shared Signals event's sid); it refuses every token minted for that session.
ALTER TABLE denylist DROP CONSTRAINT IF EXISTS denylist_kind_check;
ALTER TABLE denylist ADD CONSTRAINT denylist_kind_check CHECK (kind IN ('jti', 'sid', 'idp'));

-- Who changed what and why, one row per committed change, written in the change's
-- transaction. Kept for --audit-retention, independently of the denylist's purge.
CREATE TABLE audit_log (
    id            BIGSERIAL PRIMARY KEY,
    change_seq    BIGINT NOT NULL,
    -- On the fleet's clock (Unix milliseconds).
    at_unix_ms    BIGINT NOT NULL,
    -- REVOKE_USER, BAN_USER, LIFT_BAN, REVOKE_SESSION, REVOKE_TOKEN, REVOKE_IDP_SESSION.
    action        TEXT NOT NULL,
    user_id       TEXT,
    -- The jti, sid or IdP session id of a denylist change.
    target        TEXT,
    -- The cutoff (or ban end) a user change set.
    until_unix_ms BIGINT,
    -- admin, a mutual-TLS identity, loopback, token-holder, backchannel:<iss>, ssf:<iss>,
    -- reuse-detection.
    who           TEXT NOT NULL,
    why           TEXT
);
CREATE INDEX audit_log_user_idx ON audit_log (user_id, id);
CREATE INDEX audit_log_at_idx ON audit_log (at_unix_ms);

-- Security events received from identity providers (logout tokens, SETs), by sender and jti,
-- until they could no longer be accepted anyway: a replay is refused fleet-wide.
CREATE TABLE received_events (
    source             TEXT NOT NULL,
    jti                TEXT NOT NULL,
    moot_after_unix_ms BIGINT NOT NULL,
    PRIMARY KEY (source, jti)
);
CREATE INDEX received_events_moot_idx ON received_events (moot_after_unix_ms);
