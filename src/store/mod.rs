//! The stores behind the core's roles ([`RevocationStore`]): PostgreSQL, the production store;
//! SQLite, the embedded default for trying the sidecar out; and the core's memory store
//! (`memory:`, for tests). PostgreSQL and SQLite run their migrations at start (PostgreSQL under
//! sqlx's advisory lock, so many sidecars starting at once are safe). The vocabulary (changes,
//! denylist entries, the audit trail, `StoreError`) is the core's, re-exported here.
mod postgres;
mod sql;
mod sqlite;
mod transport;
mod turnstile;

use std::sync::Arc;

pub use token_sidecar_core::store::*;

pub use postgres::{
    CHANGE_CHANNEL, FEED_APPLICATION_NAME, Heard, LISTENER_APPLICATION_NAME, ListenerFeed,
    ListeningConnection, PoolSettings, PostgresStore, read_sync_key,
};
pub use sqlite::SqliteStore;
pub use transport::{NoTransport, SyncTransport};
pub use turnstile::{Lane, OPEN_PER_CALLER};

/// A store as the server opens it: its roles, and its sync transport.
#[derive(Clone)]
pub struct Opened {
    /// The store's roles.
    pub store: Arc<dyn RevocationStore>,
    /// How other instances' news reaches this one.
    pub transport: Arc<dyn SyncTransport>,
}

/// Opens the store a database URL names, without running migrations, with the default pool.
pub async fn open(url: &str) -> Result<Arc<dyn RevocationStore>, StoreError> {
    Ok(open_with(url, PoolSettings::default()).await?.store)
}

/// Opens the store a database URL names, without running migrations; `pool` bounds PostgreSQL's.
pub async fn open_with(url: &str, pool: PoolSettings) -> Result<Opened, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let store = Arc::new(PostgresStore::connect_lazy(url, pool)?);
        Ok(Opened {
            store: store.clone(),
            transport: store,
        })
    } else if url.starts_with("sqlite:") {
        Ok(Opened {
            store: Arc::new(SqliteStore::open(url).await?),
            transport: Arc::new(NoTransport),
        })
    } else if url == "memory:" {
        Ok(Opened {
            store: Arc::new(memory::MemoryStore::default()),
            transport: Arc::new(NoTransport),
        })
    } else {
        Err(StoreError::UnsupportedUrl)
    }
}
