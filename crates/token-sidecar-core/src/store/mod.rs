//! The store: the source of truth for cutoffs and the denylist, seen through the roles its users
//! need rather than one wide trait. (Its vocabulary — changes, denylist entries, cutoffs, the
//! audit trail — is [`crate::model`], re-exported here.)
//!
//! | role | what it is |
//! |---|---|
//! | [`Backend`] | the database itself: migrations, reachability, its clock, its identity |
//! | [`RevocationLog`] | the numbered log: every write with its number, chain link, audit row and sealed announcement in one transaction; reading it back |
//! | [`RevocationReads`] | what the hot path asks on a cache miss: a cutoff, a denylist row |
//! | [`AuditLog`] | the audit trail (`ListChanges`) |
//! | [`EventLedger`] | the identity providers' events already acted on (replay protection) |
//! | [`SessionHeads`] | each session's newest token (refresh reuse detection) |
//! | [`Maintenance`] | the purge of what can no longer refuse anything |
//!
//! [`RevocationStore`] is every role at once, what a backend implements and the server holds.
//! The log's writes are the same steps on every backend ([`pipeline`]): a backend supplies only
//! its SQL dialect and its transaction. PostgreSQL and SQLite live in the server crate; the
//! [`memory`] backend here serves tests, the Envoy filter's unit tests and `memory:` URLs.
//!
//! Every write returns only after it has committed, and every change carries a number from one
//! increasing sequence so that caches can apply "changes after N" in order.
pub mod announcement;
mod error;
mod history;
pub mod memory;
pub mod pipeline;

use std::sync::Arc;

use async_trait::async_trait;

use crate::clock::UnixMillis;
pub use crate::model::*;
pub use crate::policy::PurgeHorizon;
use announcement::{FleetKey, Link};
pub use error::{DbError, DbErrorKind, StoreError};
pub use history::{ChangeFeed, DenySink, History};

/// The database behind the roles: what starting, health and `check-config` ask of it.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// A short name for logs: `postgres`, `sqlite` or `memory`.
    fn kind(&self) -> &'static str;
    /// Whether other instances may write too (so changes must be synced).
    fn is_shared(&self) -> bool;
    /// Applies pending migrations.
    async fn migrate(&self) -> Result<(), StoreError>;
    /// Answers when the database is reachable.
    async fn ping(&self) -> Result<(), StoreError>;
    /// The database's clock in microseconds since the epoch, the fleet's one clock (SPEC §4
    /// rule 9); None for a store with no clock of its own, whose instance's clock is the fleet's.
    async fn clock_us(&self) -> Result<Option<i64>, StoreError> {
        Ok(None)
    }
    /// Whether the database this process opened is still the one it writes to (an embedded
    /// file deleted or replaced under it is not).
    fn check_identity(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Why the database refuses a new connection (e.g. PostgreSQL's "sorry, too many clients
    /// already"), or None if it accepts one: for the log when the store is not ready.
    async fn why_unreachable(&self) -> Option<StoreError> {
        None
    }
}

/// The numbered revocation log: the writes that revoke, each a change with the next number, and
/// the log read back in order (SPEC §6, §10).
#[async_trait]
pub trait RevocationLog: Send + Sync {
    /// Atomically sets `C := max(C, at_least)` (SPEC §4 rule 2); a change records `audit`, and
    /// its `who` becomes the cutoff's owner.
    async fn raise_cutoff(
        &self,
        user_id: &str,
        at_least: UnixMillis,
        audit: &Audit,
    ) -> Result<CutoffUpdate, StoreError>;
    /// Atomically sets `C := now` if `C > now` (lifting a running ban) — and, with
    /// `only_owner`, only if that is who set the ban (SPEC §13) — the change if it did,
    /// recording `audit` (whose `who` becomes the cutoff's owner).
    async fn lift_ban(
        &self,
        user_id: &str,
        now: UnixMillis,
        only_owner: Option<&str>,
        audit: &Audit,
    ) -> Result<Option<ChangeSeq>, StoreError>;
    /// Adds a denylist row, recording `audit`; its change number, or None if it was there
    /// already.
    async fn deny(&self, entry: &DenyEntry, audit: &Audit)
    -> Result<Option<ChangeSeq>, StoreError>;
    /// Committed changes numbered after `after`, in order, at most `limit`.
    async fn changes_after(&self, after: ChangeSeq, limit: i64) -> Result<Vec<Change>, StoreError>;
    /// Where the history stands, and its links at `at` and `own`; None for a store that keeps
    /// no chain.
    async fn history(
        &self,
        _at: ChangeSeq,
        _own: &[ChangeSeq],
    ) -> Result<Option<History>, StoreError> {
        Ok(None)
    }
    /// [`ChangeFeed::history_and_changes`] through the store's pool.
    async fn history_and_changes(
        &self,
        at: ChangeSeq,
        own: &[ChangeSeq],
        after: ChangeSeq,
        limit: i64,
    ) -> Result<(Option<History>, Vec<Change>), StoreError> {
        let history = self.history(at, own).await?;
        Ok((history, self.changes_after(after, limit).await?))
    }
    /// The newest change this process wrote through the store, with its link.
    fn last_written(&self) -> Option<Link> {
        None
    }
    /// Feeds every denylist row still live at `now` to `sink`, from one consistent snapshot;
    /// returns the last change number that snapshot contains.
    async fn load_denylist(
        &self,
        now: UnixMillis,
        sink: &mut DenySink<'_>,
    ) -> Result<ChangeSeq, StoreError>;
    /// What seals and opens this database's announcements (None for a store no other instance
    /// shares). Read once, and again after [`RevocationLog::forget_fleet`].
    async fn fleet(&self) -> Result<Option<Arc<FleetKey>>, StoreError> {
        Ok(None)
    }
    /// Forgets the fleet key, so that the next use reads it again (after a forked history: the
    /// address may now lead to another database).
    fn forget_fleet(&self) {}
}

/// What the hot path asks the store when its caches cannot answer.
#[async_trait]
pub trait RevocationReads: Send + Sync {
    /// The user's cutoff, if any, with the change that set it.
    async fn cutoff(&self, user_id: &str) -> Result<CutoffRecord, StoreError>;
    /// Who set the user's cutoff in force (the audit trail's `who` of that change); None with
    /// no cutoff, or one set before owners were recorded.
    async fn cutoff_owner(&self, user_id: &str) -> Result<Option<String>, StoreError>;
    /// Whether one token or session is denied.
    async fn is_denied(&self, kind: DenyKind, id: &str) -> Result<bool, StoreError>;
}

/// The audit trail every change wrote (read by `ListChanges`).
#[async_trait]
pub trait AuditLog: Send + Sync {
    /// A page of the audit trail, newest first.
    async fn audit_trail(&self, query: AuditQuery<'_>) -> Result<Vec<AuditRecord>, StoreError>;
}

/// The security events received from identity providers, remembered so that a replay does
/// nothing.
#[async_trait]
pub trait EventLedger: Send + Sync {
    /// Remembers a received security event (`source` names its sender) until `moot_after_ms`;
    /// false if it was remembered already (a replay).
    async fn remember_event(
        &self,
        source: &str,
        jti: &str,
        moot_after_ms: UnixMillis,
    ) -> Result<bool, StoreError>;
    /// Whether a security event was received already.
    async fn event_seen(&self, source: &str, jti: &str) -> Result<bool, StoreError>;
}

/// Each refreshed session's newest token (SPEC §11).
#[async_trait]
pub trait SessionHeads: Send + Sync {
    /// Makes `rotation.new` the session's newest token if the presented token is the newest
    /// (or the session has none yet), atomically: of two concurrent rotations from one token,
    /// one wins and the other learns the winner.
    async fn rotate_session(&self, rotation: &Rotation<'_>) -> Result<RotationOutcome, StoreError>;
}

/// Keeping the store small.
#[async_trait]
pub trait Maintenance: Send + Sync {
    /// Deletes denylist rows moot before `horizon.moot_before` and cutoffs older than
    /// `horizon.cutoffs_before` (and session heads and received events moot by then, and audit
    /// rows older than `horizon.audit_before`) — unless another instance sharing the store did
    /// within `round_ms` of the fleet's time (one purger per round for the fleet; 0: always).
    async fn purge(&self, horizon: PurgeHorizon, round_ms: i64) -> Result<Purged, StoreError>;
}

/// Every role at once: what a backend implements (by implementing each role) and what the
/// server opens from a database URL.
pub trait RevocationStore:
    Backend + RevocationLog + RevocationReads + AuditLog + EventLedger + SessionHeads + Maintenance
{
}

impl<T> RevocationStore for T where
    T: Backend
        + RevocationLog
        + RevocationReads
        + AuditLog
        + EventLedger
        + SessionHeads
        + Maintenance
{
}
