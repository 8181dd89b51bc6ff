//! The PostgreSQL channel: the instance's listening connection, which also carries its
//! safety-net polls (and, with a budget of one connection, every query and write: see
//! `store::ListeningConnection`), so that a sidecar holds one connection.
use std::sync::Arc;

use async_trait::async_trait;

use super::{Channel, Event};
use crate::store::{ChangeFeed, Heard, ListenerFeed, ListeningConnection};

pub use crate::store::LISTENER_APPLICATION_NAME;

/// LISTEN on the store's change channel, on the store's listening connection.
pub(super) struct Listener {
    connection: Arc<ListeningConnection>,
    feed: ListenerFeed,
    /// The connection last known to be listening; None while it is not.
    epoch: Option<u64>,
    /// The last reason opening failed, so that a database that stays full is logged once.
    last_error: Option<String>,
}

impl Listener {
    pub(super) fn new(connection: Arc<ListeningConnection>) -> Self {
        Self {
            feed: ListenerFeed(connection.clone()),
            connection,
            epoch: None,
            last_error: None,
        }
    }
}

#[async_trait]
impl Channel for Listener {
    fn is_open(&self) -> bool {
        self.epoch.is_some()
    }

    fn is_up(&self) -> bool {
        self.epoch.is_some()
    }

    async fn open(&mut self) {
        match self.connection.open().await {
            Ok(epoch) => {
                if self.last_error.take().is_some() {
                    tracing::info!("listening for changes again");
                }
                self.epoch = Some(epoch);
            }
            Err(error) => {
                let error = error.to_string();
                if self.last_error.as_deref() != Some(error.as_str()) {
                    tracing::warn!(error, "cannot LISTEN for changes; polling meanwhile");
                    self.last_error = Some(error);
                }
            }
        }
    }

    async fn next(&mut self) -> Event {
        let Some(epoch) = self.epoch.as_mut() else {
            return std::future::pending().await;
        };
        match self.connection.next(epoch).await {
            Heard::Announced(payload) => Event::Announced(payload),
            Heard::Reconnected => Event::Up,
            Heard::Lost(reason) => {
                self.epoch = None;
                Event::Down(reason)
            }
        }
    }

    fn feed(&mut self) -> Option<&mut dyn ChangeFeed> {
        self.epoch
            .is_some()
            .then_some(&mut self.feed as &mut dyn ChangeFeed)
    }

    fn close(&mut self) {
        // The failed catch-up's lease closed the connection already; opening starts again.
        self.epoch = None;
    }
}
