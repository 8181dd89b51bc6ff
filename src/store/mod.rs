//! The store: the source of truth for cutoffs and the denylist, behind one small trait.
//!
//! PostgreSQL is the production store; SQLite is the embedded default for trying the sidecar
//! out. Both run their migrations at start (PostgreSQL under sqlx's advisory lock, so many
//! sidecars starting at once are safe). Every write returns only after it has committed.
mod postgres;
mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

use crate::clock::UnixMillis;

/// What a denylist row refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyKind {
    /// One token, by `jti`.
    Token,
    /// A session, by `sid`.
    Session,
}

impl DenyKind {
    /// The value stored in the `kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            DenyKind::Token => "jti",
            DenyKind::Session => "sid",
        }
    }
}

/// One denylist row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenyEntry {
    /// A token or a session.
    pub kind: DenyKind,
    /// The `jti` or `sid`.
    pub id: String,
    /// The user, when known.
    pub user_id: Option<String>,
    /// After this instant the row refuses nothing that could still be valid.
    pub moot_after_ms: UnixMillis,
}

/// The outcome of raising a cutoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CutoffUpdate {
    /// The cutoff in force afterwards.
    pub cutoff_ms: UnixMillis,
    /// Whether this call changed it.
    pub changed: bool,
}

/// How many rows a purge removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    /// Denylist rows.
    pub denylist: u64,
    /// Cutoff rows.
    pub cutoffs: u64,
}

/// Why the store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database did not answer, or refused the statement.
    #[error("the store is unavailable: {0}")]
    Database(#[from] sqlx::Error),
    /// The schema could not be brought up to date.
    #[error("database migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// The database URL names no supported store.
    #[error("unsupported database URL scheme (use postgres://... or sqlite:...)")]
    UnsupportedUrl,
}

/// The persistent revocation state.
#[async_trait]
pub trait RevocationStore: Send + Sync + 'static {
    /// A short name for logs: `postgres` or `sqlite`.
    fn kind(&self) -> &'static str;
    /// Applies pending migrations.
    async fn migrate(&self) -> Result<(), StoreError>;
    /// Answers when the database is reachable.
    async fn ping(&self) -> Result<(), StoreError>;
    /// The user's cutoff, if any.
    async fn cutoff(&self, user_id: &str) -> Result<Option<UnixMillis>, StoreError>;
    /// Atomically sets `C := max(C, at_least)` (SPEC §4 rule 2).
    async fn raise_cutoff(
        &self,
        user_id: &str,
        at_least: UnixMillis,
    ) -> Result<CutoffUpdate, StoreError>;
    /// Atomically sets `C := now` if `C > now` (lifting a running ban); true if it did.
    async fn lift_ban(&self, user_id: &str, now: UnixMillis) -> Result<bool, StoreError>;
    /// Whether the token `jti` and the session `sid` are denied.
    async fn denied(&self, jti: &str, sid: &str) -> Result<crate::policy::DenyStatus, StoreError>;
    /// Adds a denylist row; false if it was there already.
    async fn deny(&self, entry: &DenyEntry) -> Result<bool, StoreError>;
    /// Deletes denylist rows moot before `now` and cutoffs older than `cutoffs_before`.
    async fn purge(
        &self,
        now: UnixMillis,
        cutoffs_before: UnixMillis,
    ) -> Result<Purged, StoreError>;
}

/// Opens the store a database URL names, without running migrations.
pub async fn open(url: &str) -> Result<Arc<dyn RevocationStore>, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PostgresStore::connect_lazy(url)?))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::open(url).await?))
    } else {
        Err(StoreError::UnsupportedUrl)
    }
}

fn deny_status(kinds: impl IntoIterator<Item = String>) -> crate::policy::DenyStatus {
    let mut status = crate::policy::DenyStatus::default();
    for kind in kinds {
        match kind.as_str() {
            "jti" => status.jti = true,
            _ => status.session = true,
        }
    }
    status
}
