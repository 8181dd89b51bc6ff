//! The stores behind the core's [`RevocationStore`] trait: PostgreSQL, the production store, and
//! SQLite, the embedded default for trying the sidecar out. Both run their migrations at start
//! (PostgreSQL under sqlx's advisory lock, so many sidecars starting at once are safe). The
//! vocabulary (changes, denylist entries, the audit trail, `StoreError`) is the core's, re-exported
//! here.
mod postgres;
mod shared;
mod sql;
mod sqlite;
mod turnstile;

use std::sync::Arc;

pub use token_sidecar_core::store::*;

pub use postgres::{
    CHANGE_CHANNEL, FEED_APPLICATION_NAME, PoolSettings, PostgresStore, read_sync_key,
};
pub use shared::{Heard, LISTENER_APPLICATION_NAME, SharedConnection, SharedFeed};
pub use sqlite::SqliteStore;
pub use turnstile::{Lane, OPEN_PER_CALLER};

/// The connection that LISTENs for announced changes (PostgreSQL in notify mode: one of the
/// `--database-max-connections` budget, with a budget of one the only one); None for other
/// stores and modes.
pub fn listen_connection(store: &dyn RevocationStore) -> Option<Arc<SharedConnection>> {
    store
        .as_any()
        .downcast_ref::<PostgresStore>()?
        .listen_connection()
}

/// Opens the store a database URL names, without running migrations, with the default pool.
pub async fn open(url: &str) -> Result<Arc<dyn RevocationStore>, StoreError> {
    open_with(url, PoolSettings::default()).await
}

/// Opens the store a database URL names, without running migrations; `pool` bounds PostgreSQL's.
pub async fn open_with(
    url: &str,
    pool: PoolSettings,
) -> Result<Arc<dyn RevocationStore>, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PostgresStore::connect_lazy(url, pool)?))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::open(url).await?))
    } else {
        Err(StoreError::UnsupportedUrl)
    }
}
