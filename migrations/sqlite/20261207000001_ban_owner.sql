-- A ban has an owner (SPEC §13): who set the cutoff in force, as the audit trail's `who`.
-- A transmitter's RISC account-enabled lifts only a ban it set itself.
ALTER TABLE user_cutoffs ADD COLUMN set_by TEXT;
