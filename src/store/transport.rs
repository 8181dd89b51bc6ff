//! The sync transport: how news of other instances' writes reaches this one — separate from the
//! store's roles, because only the server's sync task uses it and only PostgreSQL has one.
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::postgres::{ListeningConnection, PostgresStore};
use super::{ChangeFeed, StoreError};

/// What the sync task needs of a store beyond its roles.
#[async_trait]
pub trait SyncTransport: Send + Sync {
    /// The connection that LISTENs for announced changes (PostgreSQL in notify mode: one of the
    /// `--database-max-connections` budget, with a budget of one the only one).
    fn listen_connection(&self) -> Option<Arc<ListeningConnection>> {
        None
    }
    /// Every announcement this instance's writes made, sealed, once committed (for a sync mode
    /// that carries them itself, such as NATS). A receiver that lags loses the oldest; the
    /// others then see a gap and catch up from the store.
    fn announcements(&self) -> Option<broadcast::Receiver<String>> {
        None
    }
    /// A connection of its own for the sync task's polls, outside the pool; None where the pool
    /// will do (a store no other instance shares).
    async fn open_feed(&self) -> Result<Option<Box<dyn ChangeFeed>>, StoreError> {
        Ok(None)
    }
    /// Closes idle pooled connections beyond `keep` now, rather than at their idle timeout: the
    /// sync task calls it once it holds its own connection (so that a fleet starting together
    /// frees the database's slots at once), and after each poll it makes through the pool (so
    /// that the pool's first-in-first-out reuse does not keep several connections alive).
    async fn release_idle(&self, _keep: usize) {}
}

/// The transport of a store no other instance shares: none.
pub struct NoTransport;

impl SyncTransport for NoTransport {}

#[async_trait]
impl SyncTransport for PostgresStore {
    fn listen_connection(&self) -> Option<Arc<ListeningConnection>> {
        PostgresStore::listen_connection(self)
    }

    fn announcements(&self) -> Option<broadcast::Receiver<String>> {
        Some(PostgresStore::announcements(self))
    }

    async fn open_feed(&self) -> Result<Option<Box<dyn ChangeFeed>>, StoreError> {
        PostgresStore::open_feed(self).await
    }

    async fn release_idle(&self, keep: usize) {
        PostgresStore::release_idle(self, keep).await
    }
}
