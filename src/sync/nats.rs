//! The NATS channel: this instance publishes each change it commits, and subscribes to every
//! instance's. NATS only carries news — a message lost while NATS is down shows up as a gap in
//! the numbers or on the next poll, and is read from PostgreSQL.
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::{broadcast, watch};

use super::{Channel, Event};
use crate::revocations::Revocations;
use crate::store::ChangeFeed;
use crate::store::announcement;

/// Subscribes to (and publishes on) one subject of one NATS server.
pub(super) struct Nats {
    url: String,
    subject: String,
    revocations: Arc<Revocations>,
    connection: Option<Connection>,
    last_error: Option<String>,
}

struct Connection {
    // Kept so that the connection lives as long as the subscription.
    _client: async_nats::Client,
    subscriber: async_nats::Subscriber,
    connected: watch::Receiver<bool>,
    publisher: tokio::task::JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.publisher.abort();
    }
}

impl Nats {
    pub(super) fn new(url: String, subject: String, revocations: Arc<Revocations>) -> Self {
        Self {
            url,
            subject,
            revocations,
            connection: None,
            last_error: None,
        }
    }

    async fn connect(&self) -> Result<Connection, String> {
        // One subject per database: fleets on different databases may share a NATS server.
        let id = self
            .revocations
            .store()
            .identity()
            .await
            .map_err(|e| e.to_string())?;
        let subject = format!("{}.{id}", self.subject);
        let (state, connected) = watch::channel(false);
        let client = async_nats::ConnectOptions::new()
            .name("token-sidecar")
            // Connect in the background and reconnect for ever: the poll covers the outage.
            .retry_on_initial_connect()
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((100u64 << attempts.min(5)).min(2_000))
            })
            .ping_interval(Duration::from_secs(5))
            .event_callback(move |event| {
                let state = state.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            state.send_replace(true);
                        }
                        async_nats::Event::Disconnected | async_nats::Event::Closed => {
                            state.send_replace(false);
                        }
                        other => tracing::debug!(event = %other, "NATS"),
                    }
                }
            })
            .connect(self.url.as_str())
            .await
            .map_err(|e| e.to_string())?;
        let subscriber = client
            .subscribe(subject.clone())
            .await
            .map_err(|e| e.to_string())?;
        let publisher = tokio::spawn(publish(client.clone(), subject, self.revocations.written()));
        Ok(Connection {
            _client: client,
            subscriber,
            connected,
            publisher,
        })
    }
}

/// Publishes every change this instance commits.
async fn publish(
    client: async_nats::Client,
    subject: String,
    mut written: broadcast::Receiver<crate::store::Change>,
) {
    loop {
        match written.recv().await {
            Ok(change) => {
                let payload = announcement::encode(&change);
                if let Err(e) = client.publish(subject.clone(), payload.into()).await {
                    // The others see the gap, or catch up on their next poll.
                    tracing::warn!(error = %e, "could not publish a change on NATS");
                }
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "changes were not published on NATS (too many at once)"
                );
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

#[async_trait]
impl Channel for Nats {
    fn is_open(&self) -> bool {
        self.connection.is_some()
    }

    fn is_up(&self) -> bool {
        self.connection
            .as_ref()
            .is_some_and(|c| *c.connected.borrow())
    }

    async fn open(&mut self) {
        match self.connect().await {
            Ok(connection) => {
                self.last_error = None;
                self.connection = Some(connection);
            }
            Err(error) => {
                if self.last_error.as_deref() != Some(error.as_str()) {
                    tracing::warn!(error, url = %self.url, "cannot use NATS; polling meanwhile");
                    self.last_error = Some(error);
                }
            }
        }
    }

    async fn next(&mut self) -> Event {
        let Some(connection) = self.connection.as_mut() else {
            return std::future::pending().await;
        };
        let mut was_up = *connection.connected.borrow();
        loop {
            tokio::select! {
                message = connection.subscriber.next() => return match message {
                    Some(message) => {
                        Event::Announced(String::from_utf8_lossy(&message.payload).into_owned())
                    }
                    None => {
                        self.connection = None;
                        Event::Down("the NATS subscription ended".to_owned())
                    }
                },
                changed = connection.connected.changed() => {
                    if changed.is_err() {
                        self.connection = None;
                        return Event::Down("the NATS client stopped".to_owned());
                    }
                    let up = *connection.connected.borrow_and_update();
                    match (was_up, up) {
                        (false, true) => return Event::Up,
                        (true, false) => return Event::Down("NATS disconnected".to_owned()),
                        _ => was_up = up,
                    }
                }
            }
        }
    }

    fn feed(&mut self) -> Option<&mut dyn ChangeFeed> {
        None
    }

    fn close(&mut self) {
        self.connection = None;
    }
}
