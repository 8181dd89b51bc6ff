-- When each change was written, by the writer's wall clock in Unix milliseconds (0 for rows
-- written before this column): every instance observes commit-to-applied time from it
-- (SPEC §10, the propagation histogram). It is a measurement, never used by a rule.
ALTER TABLE user_cutoffs ADD COLUMN changed_unix_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE denylist ADD COLUMN changed_unix_ms BIGINT NOT NULL DEFAULT 0;

-- This database's identity, so that fleets on different databases sharing one NATS server never
-- hear each other's changes: the NATS subject ends with it (SPEC §10).
CREATE TABLE store_identity (id TEXT NOT NULL);
INSERT INTO store_identity (id) VALUES (gen_random_uuid()::text);
