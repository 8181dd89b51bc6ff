-- The change feed trusts no one (SPEC §10).
--
-- The fleet's secret: every announcement (NOTIFY payload, NATS message) carries a MAC under it,
-- so that a role that can only connect, or a client of a shared NATS server, cannot forge one.
-- Generated here once (256 bits from three v4 UUIDs' 366 random bits); only the owner (and
-- roles granted SELECT: the sidecars' role, if another role migrates) can read it.
-- `--sync-key-file` replaces it for fleets that manage the secret themselves.
CREATE TABLE sync_key (secret BYTEA NOT NULL);
INSERT INTO sync_key (secret)
    SELECT sha256(convert_to(gen_random_uuid()::text || gen_random_uuid()::text
                             || gen_random_uuid()::text, 'UTF8'));
REVOKE ALL ON sync_key FROM PUBLIC;

-- The history chain: one link per change, a digest of the previous link and a random nonce.
-- An instance remembers the link of the last change it applied and compares it with the
-- store's at every contact: another history under the same numbers (a lossy failover, a restore,
-- a re-created database) differs there. Links are kept a day, the newest always.
CREATE TABLE change_chain (
    seq          BIGINT PRIMARY KEY,
    prev         BYTEA NOT NULL,
    tag          BYTEA NOT NULL,
    committed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- Changes made before the chain: one link stands for all of them.
INSERT INTO change_chain (seq, prev, tag)
    SELECT last_value, '\x00000000000000000000000000000000'::bytea,
           substr(sha256(convert_to(gen_random_uuid()::text, 'UTF8')), 1, 16)
        FROM revocation_change_seq WHERE is_called;
