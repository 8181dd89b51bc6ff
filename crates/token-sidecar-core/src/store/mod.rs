//! The store: the source of truth for cutoffs and the denylist, behind one small trait. (Its
//! vocabulary — changes, denylist entries, cutoffs, the audit trail — is [`crate::model`],
//! re-exported here.)
//!
//! The server crate implements it for PostgreSQL (production) and SQLite (the embedded default).
//! Every write returns only after it has committed, and every change carries a number from one
//! increasing sequence so that caches can apply "changes after N" in order.
pub mod announcement;
#[cfg(test)]
pub(crate) mod memory;

use std::sync::Arc;

use async_trait::async_trait;

use crate::clock::UnixMillis;
pub use crate::model::*;
use announcement::{FleetKey, Link};

/// Why the store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database did not answer, or refused the statement. (The cause is part of the
    /// message, not chained as a source, so that it is printed once.)
    #[error("the store is unavailable: {0}")]
    Database(DbError),
    /// The schema lacks migrations this instance may not apply itself (through a transaction
    /// pooler, or `--migrate never`): what to run instead.
    #[error("{0}")]
    SchemaBehind(String),
    /// The schema could not be brought up to date.
    #[error("database migration failed: {0}")]
    Migration(Box<dyn std::error::Error + Send + Sync>),
    /// The database URL names no supported store.
    #[error("unsupported database URL scheme (use postgres://... or sqlite:...)")]
    UnsupportedUrl,
    /// The store did not answer in time.
    #[error("the store did not answer in time ({0})")]
    Timeout(&'static str),
    /// The answer to a write's COMMIT was lost and the database could not say, within the
    /// timeout, whether it committed. The write may or may not have happened; an idempotent
    /// write (every Revoke) can be retried.
    #[error("the commit's outcome is unknown (its answer was lost); retry")]
    OutcomeUnknown,
    /// Another process owns the embedded database file, or its lock cannot be taken.
    #[error("the SQLite file cannot be owned: {0}")]
    Owner(String),
    /// The embedded database file was deleted or replaced under the running process.
    #[error("the store's file is gone: {0}; writes are refused until a restart")]
    Lost(String),
    /// A row changed under a conditional write twice in a row; the caller may retry.
    #[error("a concurrent change got in the way; retry")]
    Conflict,
    /// The store's history is not the one this instance applied; it forgot what it applied and
    /// must load again.
    #[error("the store's history forked from the one applied here; reloading")]
    Forked,
    /// Too many operations of the kind any caller can cause wait for the database already
    /// (one caller's, or all of them): refused at once rather than queued (issue 40).
    #[error("too many requests wait for the store; retry shortly")]
    Overloaded,
    /// The fleet's announcement secret cannot be had (`--sync-key-file` unreadable or short, or
    /// the table the migrations fill is unreadable to this role).
    #[error("the sync key is unusable: {0}")]
    SyncKey(String),
}

impl StoreError {
    /// Whether the database refused a connection because it is full (SQLSTATE 53300, "too many
    /// clients" — also when only the slots reserved for superusers are left).
    pub fn is_database_full(&self) -> bool {
        matches!(self, StoreError::Database(db) if db.code() == Some("53300"))
    }

    /// Why a write was not acknowledged, as the `store_write_failures_total` metric labels it.
    pub fn write_failure(&self) -> &'static str {
        match self {
            StoreError::Timeout(_) => "timeout",
            StoreError::OutcomeUnknown => "outcome_unknown",
            StoreError::Lost(_) => "file_lost",
            StoreError::Overloaded => "overloaded",
            // lock_not_available (lock_timeout), query_canceled (statement_timeout),
            // idle_in_transaction_session_timeout: a wait beyond --store-timeout.
            StoreError::Database(db)
                if matches!(db.code(), Some("55P03" | "57014" | "25P03"))
                    || db.kind() == DbErrorKind::PoolTimedOut =>
            {
                "timeout"
            }
            _ => "error",
        }
    }
}

/// What kind of database failure a [`DbError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbErrorKind {
    /// The database answered with an error (see [`DbError::code`]).
    Refused,
    /// The connection failed (I/O, TLS, protocol, a crashed worker): a statement's outcome is
    /// unknown.
    Connection,
    /// No pooled connection became free in time.
    PoolTimedOut,
    /// A row the statement needed was not there.
    RowNotFound,
    /// Anything else.
    Other,
}

/// A database failure as a store reports it: its SQLSTATE, its kind, and the driver's error as
/// the cause (its text is the message).
#[derive(Debug)]
pub struct DbError {
    code: Option<String>,
    kind: DbErrorKind,
    cause: Box<dyn std::error::Error + Send + Sync>,
}

impl DbError {
    /// A failure of `kind` with SQLSTATE `code`, caused by `cause`.
    pub fn new(
        kind: DbErrorKind,
        code: Option<String>,
        cause: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            code,
            kind,
            cause: cause.into(),
        }
    }

    /// The SQLSTATE the database answered with, if it answered.
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    /// What kind of failure it is.
    pub fn kind(&self) -> DbErrorKind {
        self.kind
    }

    /// The driver's error.
    pub fn cause(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self.cause.as_ref()
    }
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.cause, f)
    }
}

/// sqlx's errors as store errors (feature `sqlx`, for the SQL stores of the server crate).
#[cfg(feature = "sqlx")]
impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        let (kind, code) = match &e {
            sqlx::Error::Database(db) => (
                DbErrorKind::Refused,
                db.code().map(|code| code.into_owned()),
            ),
            sqlx::Error::Io(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => (DbErrorKind::Connection, None),
            sqlx::Error::PoolTimedOut => (DbErrorKind::PoolTimedOut, None),
            sqlx::Error::RowNotFound => (DbErrorKind::RowNotFound, None),
            _ => (DbErrorKind::Other, None),
        };
        StoreError::Database(DbError::new(kind, code, e))
    }
}

#[cfg(feature = "sqlx")]
impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Migration(Box::new(e))
    }
}

/// Where "changes after N" is read: the store's pool, or a connection the sync task holds of its
/// own (PostgreSQL's change listener, or [`RevocationStore::open_feed`]), so that an idle
/// instance polls on one connection rather than keeping pooled ones alive.
#[async_trait]
pub trait ChangeFeed: Send {
    /// Committed changes numbered after `after`, in order, at most `limit`.
    async fn changes_after(
        &mut self,
        after: ChangeSeq,
        limit: i64,
    ) -> Result<Vec<Change>, StoreError>;
    /// Where the history stands (its links at `at` and `own`; None for a store that keeps no
    /// chain) and the first changes after `after`: in one statement where the store can, so
    /// that a catch-up costs one round trip.
    async fn history_and_changes(
        &mut self,
        at: ChangeSeq,
        own: &[ChangeSeq],
        after: ChangeSeq,
        limit: i64,
    ) -> Result<(Option<History>, Vec<Change>), StoreError>;
}

/// Where the store's history stands (SPEC §10, "histories can fork"), read before a catch-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    /// The newest committed change's number.
    pub head: ChangeSeq,
    /// The newest link of the history chain.
    pub newest: Option<Link>,
    /// The chain's link at the anchor asked about, if the store has one there.
    pub at: Option<LinkTag>,
    /// The chain's links at this instance's own writes asked about, where the store has one.
    pub own_at: Vec<Link>,
}

impl History {
    /// Whether an instance that applied changes up to `watermark`, the last of them known by
    /// `anchor`, and wrote `own` itself, is on this history: the store has every change it
    /// applied or wrote, with the same links where it knows them. A history restarted below the
    /// watermark (a lossy failover), or with another change at the anchor or at the instance's
    /// own write (one that has passed them since), is not ours.
    pub fn continues(&self, watermark: ChangeSeq, anchor: Option<Link>, own: &[Link]) -> bool {
        let newest_own = own.iter().map(|o| o.seq).max().unwrap_or(0);
        self.head >= watermark.max(newest_own)
            && anchor.is_none_or(|anchor| self.at == Some(anchor.tag))
            && own.iter().all(|o| self.own_at.contains(o))
    }
}

/// A callback that receives every live denylist row while the filter is (re)built.
pub type DenySink<'a> = dyn FnMut(DenyKind, &str, UnixMillis) + Send + 'a;

/// The persistent revocation state.
#[async_trait]
pub trait RevocationStore: Send + Sync + 'static {
    /// A short name for logs: `postgres` or `sqlite`.
    fn kind(&self) -> &'static str;
    /// Whether other instances may write too (so changes must be synced).
    fn is_shared(&self) -> bool;
    /// Applies pending migrations.
    async fn migrate(&self) -> Result<(), StoreError>;
    /// What seals and opens this database's announcements (None for a store no other instance
    /// shares). Read once, and again after [`RevocationStore::forget_fleet`].
    async fn fleet(&self) -> Result<Option<Arc<FleetKey>>, StoreError> {
        Ok(None)
    }
    /// Forgets the fleet key, so that the next use reads it again (after a forked history: the
    /// address may now lead to another database).
    fn forget_fleet(&self) {}
    /// Every announcement this instance's writes made, sealed, once committed (for a sync mode
    /// that carries them itself, such as NATS). A receiver that lags loses the oldest; the
    /// others then see a gap and catch up from the store.
    fn announcements(&self) -> Option<tokio::sync::broadcast::Receiver<String>> {
        None
    }
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
    /// Whether the database this process opened is still the one it writes to (an embedded
    /// file deleted or replaced under it is not).
    fn check_identity(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Answers when the database is reachable.
    async fn ping(&self) -> Result<(), StoreError>;
    /// The database's clock in microseconds since the epoch, the fleet's one clock (SPEC §4
    /// rule 9); None for a store with no clock of its own, whose instance's clock is the fleet's.
    async fn clock_us(&self) -> Result<Option<i64>, StoreError> {
        Ok(None)
    }
    /// The store as `Any`, for what only one implementation offers (PostgreSQL's LISTEN
    /// connection): the server downcasts to its own store type.
    fn as_any(&self) -> &dyn std::any::Any;
    /// Why the database refuses a new connection (e.g. PostgreSQL's "sorry, too many clients
    /// already"), or None if it accepts one: for the log when the store is not ready.
    async fn why_unreachable(&self) -> Option<StoreError> {
        None
    }
    /// The user's cutoff, if any, with the change that set it.
    async fn cutoff(&self, user_id: &str) -> Result<CutoffRecord, StoreError>;
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
    /// Who set the user's cutoff in force (the audit trail's `who` of that change); None with
    /// no cutoff, or one set before owners were recorded.
    async fn cutoff_owner(&self, user_id: &str) -> Result<Option<String>, StoreError>;
    /// Whether one token or session is denied.
    async fn is_denied(&self, kind: DenyKind, id: &str) -> Result<bool, StoreError>;
    /// Adds a denylist row, recording `audit`; its change number, or None if it was there
    /// already.
    async fn deny(&self, entry: &DenyEntry, audit: &Audit)
    -> Result<Option<ChangeSeq>, StoreError>;
    /// A page of the audit trail, newest first.
    async fn audit_trail(&self, query: AuditQuery<'_>) -> Result<Vec<AuditRecord>, StoreError>;
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
    /// Committed changes numbered after `after`, in order, at most `limit`.
    async fn changes_after(&self, after: ChangeSeq, limit: i64) -> Result<Vec<Change>, StoreError>;
    /// Closes idle pooled connections beyond `keep` now, rather than at their idle timeout: the
    /// sync task calls it once it holds its own connection (so that a fleet starting together
    /// frees the database's slots at once), and after each poll it makes through the pool (so
    /// that the pool's first-in-first-out reuse does not keep several connections alive).
    async fn release_idle(&self, _keep: usize) {}
    /// A connection of its own for the sync task's polls, outside the pool; None where the pool
    /// will do (a store no other instance shares).
    async fn open_feed(&self) -> Result<Option<Box<dyn ChangeFeed>>, StoreError> {
        Ok(None)
    }
    /// Feeds every denylist row still live at `now` to `sink`, from one consistent snapshot;
    /// returns the last change number that snapshot contains.
    async fn load_denylist(
        &self,
        now: UnixMillis,
        sink: &mut DenySink<'_>,
    ) -> Result<ChangeSeq, StoreError>;
    /// Makes `rotation.new` the session's newest token if the presented token is the newest
    /// (or the session has none yet), atomically: of two concurrent rotations from one token,
    /// one wins and the other learns the winner.
    async fn rotate_session(&self, rotation: &Rotation<'_>) -> Result<RotationOutcome, StoreError>;
    /// Deletes denylist rows moot before `horizon.moot_before` and cutoffs older than
    /// `horizon.cutoffs_before` (and session heads and received events moot by then, and audit
    /// rows older than `horizon.audit_before`) — unless another instance sharing the store did
    /// within `round_ms` of the fleet's time (one purger per round for the fleet; 0: always).
    async fn purge(&self, horizon: PurgeHorizon, round_ms: i64) -> Result<Purged, StoreError>;
}
