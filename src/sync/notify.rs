//! The PostgreSQL channel: one LISTEN connection per instance, which also carries the
//! instance's safety-net polls (so an idle sidecar holds exactly one connection).
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};

use super::{Channel, Event};
use crate::store::{
    CHANGE_CHANNEL, Change, ChangeFeed, ChangeSeq, History, PostgresStore, StoreError,
};

/// The `application_name` of the listening connection (operators see it in pg_stat_activity).
pub const LISTENER_APPLICATION_NAME: &str = "token-sidecar-listener";

/// LISTEN on [`CHANGE_CHANNEL`], on a connection of its own.
pub(super) struct Listener {
    options: PgConnectOptions,
    listener: Option<PgListener>,
    /// The last reason opening failed, so that a database that stays full is logged once.
    last_error: Option<String>,
}

impl Listener {
    pub(super) fn new(options: PgConnectOptions) -> Self {
        Self {
            options,
            listener: None,
            last_error: None,
        }
    }

    async fn listen(&self) -> Result<PgListener, String> {
        // PgListener takes its connection from a pool: one of its own, of one connection.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(2))
            .connect_lazy_with(
                self.options
                    .clone()
                    .application_name(LISTENER_APPLICATION_NAME),
            );
        let mut listener = PgListener::connect_with(&pool)
            .await
            .map_err(|e| e.to_string())?;
        listener
            .listen(CHANGE_CHANNEL)
            .await
            .map_err(|e| e.to_string())?;
        Ok(listener)
    }
}

#[async_trait]
impl Channel for Listener {
    fn is_open(&self) -> bool {
        self.listener.is_some()
    }

    fn is_up(&self) -> bool {
        self.listener.is_some()
    }

    async fn open(&mut self) {
        match self.listen().await {
            Ok(listener) => {
                if self.last_error.take().is_some() {
                    tracing::info!("listening for changes again");
                }
                self.listener = Some(listener);
            }
            Err(error) => {
                if self.last_error.as_deref() != Some(error.as_str()) {
                    tracing::warn!(error, "cannot LISTEN for changes; polling meanwhile");
                    self.last_error = Some(error);
                }
            }
        }
    }

    async fn next(&mut self) -> Event {
        let Some(listener) = self.listener.as_mut() else {
            return std::future::pending().await;
        };
        match listener.try_recv().await {
            Ok(Some(notification)) => Event::Announced(notification.payload().as_bytes().to_vec()),
            Ok(None) => {
                self.listener = None;
                Event::Down("the LISTEN connection was lost".to_owned())
            }
            Err(e) => {
                self.listener = None;
                Event::Down(e.to_string())
            }
        }
    }

    fn feed(&mut self) -> Option<&mut dyn ChangeFeed> {
        self.listener
            .as_mut()
            .map(|listener| listener as &mut dyn ChangeFeed)
    }

    fn close(&mut self) {
        self.listener = None;
    }
}

#[async_trait]
impl ChangeFeed for PgListener {
    async fn changes_after(
        &mut self,
        after: ChangeSeq,
        limit: i64,
    ) -> Result<Vec<Change>, StoreError> {
        PostgresStore::changes_on(self, after, limit).await
    }

    async fn history_and_changes(
        &mut self,
        at: ChangeSeq,
        own: &[ChangeSeq],
        after: ChangeSeq,
        limit: i64,
    ) -> Result<(Option<History>, Vec<Change>), StoreError> {
        let (history, changes) =
            PostgresStore::history_and_changes_on_listener(self, at, own, after, limit).await?;
        Ok((Some(history), changes))
    }
}
