-- When each change was written, by the writer's wall clock in Unix milliseconds (0 for rows
-- written before this column): every instance observes commit-to-applied time from it
-- (SPEC §10, the propagation histogram). It is a measurement, never used by a rule.
ALTER TABLE user_cutoffs ADD COLUMN changed_unix_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE denylist ADD COLUMN changed_unix_ms BIGINT NOT NULL DEFAULT 0;
