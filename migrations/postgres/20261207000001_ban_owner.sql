-- A ban has an owner (SPEC §13): who set the cutoff in force, as the audit trail's `who`
-- (admin, a mutual-TLS identity, loopback, backchannel:<iss>, ssf:<iss>, ...). A transmitter's
-- RISC account-enabled lifts only a ban it set itself. Rows from before this column have no
-- owner: only an operator's LiftBan lifts them. Additive: older sidecars ignore the column.
ALTER TABLE user_cutoffs ADD COLUMN IF NOT EXISTS set_by TEXT;
