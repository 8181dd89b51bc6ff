//! The NATS channel: this instance publishes each change it commits, and subscribes to every
//! instance's. NATS only carries news — a message lost while NATS is down shows up as a gap in
//! the numbers or on the next poll, and is read from PostgreSQL.
//!
//! The server may be shared or open: what is published is sealed for the fleet (see
//! [`crate::store::announcement`]), and the subject ends with the fleet's name, so fleets on
//! other databases (copies of ours included) never hear each other. The connection is made as
//! production runs NATS: a credentials file, an nkey seed or a token, TLS with a CA and an
//! optional client certificate; no credential is ever logged, the URL's included.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::{broadcast, watch};

use super::{Channel, Event};
use crate::revocations::Revocations;
use crate::store::announcement::MAX_ANNOUNCEMENT_BYTES;
use crate::store::{ChangeFeed, SyncTransport};

/// Announcements buffered per subscription before the client drops messages (then a gap shows
/// and the store is asked): bounds what a flood of large messages can hold in memory.
const SUBSCRIPTION_CAPACITY: usize = 256;

/// How the sidecar authenticates to NATS and checks its server.
#[derive(Debug, Clone, Default)]
pub struct NatsAuth {
    /// `--nats-creds-file`: a user JWT and its nkey seed (a `.creds` file).
    pub creds_file: Option<PathBuf>,
    /// `--nats-nkey-file`: an nkey seed.
    pub nkey_file: Option<PathBuf>,
    /// `--nats-token-file`: a token.
    pub token_file: Option<PathBuf>,
    /// `--nats-tls-ca`: the CA that signs the server's certificate (TLS required then).
    pub tls_ca: Option<PathBuf>,
    /// `--nats-tls-cert` and `--nats-tls-key`: a client certificate.
    pub tls_client: Option<(PathBuf, PathBuf)>,
}

impl NatsAuth {
    /// The client options these settings ask for, with the credentials `url` carries.
    async fn options(
        &self,
        url_credentials: Option<&str>,
    ) -> Result<async_nats::ConnectOptions, String> {
        let mut options = async_nats::ConnectOptions::new();
        match url_credentials.map(|c| c.split_once(':')) {
            Some(Some((user, password))) => {
                options = options.user_and_password(user.to_owned(), password.to_owned());
            }
            Some(None) => {
                options = options.token(url_credentials.unwrap_or_default().to_owned());
            }
            None => {}
        }
        if let Some(path) = &self.creds_file {
            options = options
                .credentials_file(path)
                .await
                .map_err(|e| format!("--nats-creds-file {}: {e}", path.display()))?;
        }
        if let Some(path) = &self.nkey_file {
            options = options.nkey(read_secret(path, "--nats-nkey-file")?);
        }
        if let Some(path) = &self.token_file {
            options = options.token(read_secret(path, "--nats-token-file")?);
        }
        if let Some(ca) = &self.tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let Some((cert, key)) = &self.tls_client {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        Ok(options)
    }
}

/// A secret file's text, trimmed (its content never appears in an error).
fn read_secret(path: &std::path::Path, flag: &str) -> Result<String, String> {
    let bytes =
        crate::secret_file::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()))?;
    String::from_utf8(bytes)
        .map(|text| text.trim().to_owned())
        .map_err(|_| format!("{flag} {}: not UTF-8 text", path.display()))
}

/// `url` without its user part, and that part: `user:password` or a token. The client is given
/// them as options (it does not take them from a `tls://` URL), and the URL it keeps for its
/// errors holds none.
fn split_credentials(url: &str) -> (String, Option<String>) {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let path = if path.is_empty() {
        String::new()
    } else {
        format!("/{path}")
    };
    match authority.rsplit_once('@') {
        Some((credentials, host)) => (
            format!("{scheme}{host}{path}"),
            Some(credentials.to_owned()),
        ),
        None => (url.to_owned(), None),
    }
}

/// `url` with any user, password or token replaced by `***`, for logs.
pub fn redacted(url: &str) -> String {
    match split_credentials(url) {
        (bare, Some(_)) => match bare.split_once("://") {
            Some((scheme, rest)) => format!("{scheme}://***@{rest}"),
            None => format!("***@{bare}"),
        },
        (bare, None) => bare,
    }
}

/// Subscribes to (and publishes on) one subject of one NATS server.
pub(super) struct Nats {
    url: String,
    subject: String,
    auth: NatsAuth,
    revocations: Arc<Revocations>,
    transport: Arc<dyn SyncTransport>,
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
    pub(super) fn new(
        url: String,
        subject: String,
        auth: NatsAuth,
        revocations: Arc<Revocations>,
        transport: Arc<dyn SyncTransport>,
    ) -> Self {
        Self {
            url,
            subject,
            auth,
            revocations,
            transport,
            connection: None,
            last_error: None,
        }
    }

    async fn connect(&self) -> Result<Connection, String> {
        // One subject per database: fleets on different databases may share a NATS server.
        let store = self.revocations.store();
        let fleet = store
            .fleet()
            .await
            .map_err(|e| e.to_string())?
            .ok_or("this store has no fleet")?;
        let announcements = self
            .transport
            .announcements()
            .ok_or("this store announces nothing")?;
        let subject = format!("{}.{}", self.subject, fleet.fleet());
        let (state, connected) = watch::channel(false);
        let (url, credentials) = split_credentials(&self.url);
        let client = self
            .auth
            .options(credentials.as_deref())
            .await?
            .name("token-sidecar")
            .subscription_capacity(SUBSCRIPTION_CAPACITY)
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
            .connect(url.as_str())
            .await
            // The client's errors name the server, never the URL's credentials.
            .map_err(|e| e.to_string())?;
        let subscriber = client
            .subscribe(subject.clone())
            .await
            .map_err(|e| e.to_string())?;
        let publisher = tokio::spawn(publish(client.clone(), subject, announcements));
        Ok(Connection {
            _client: client,
            subscriber,
            connected,
            publisher,
        })
    }
}

/// Publishes every change this instance commits, sealed as the store announced it.
async fn publish(
    client: async_nats::Client,
    subject: String,
    mut written: broadcast::Receiver<String>,
) {
    loop {
        match written.recv().await {
            Ok(payload) => {
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
                    tracing::warn!(
                        error,
                        url = redacted(&self.url),
                        "cannot use NATS; polling meanwhile"
                    );
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
                    // A flood of large messages is refused before it is copied.
                    Some(message) if message.payload.len() > MAX_ANNOUNCEMENT_BYTES => {
                        Event::Announced(message.payload.slice(..MAX_ANNOUNCEMENT_BYTES + 1).to_vec())
                    }
                    Some(message) => Event::Announced(message.payload.to_vec()),
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

#[cfg(test)]
mod tests {
    use super::{redacted, split_credentials};

    #[test]
    fn credentials_never_reach_a_log() {
        for (url, shown) in [
            ("nats://s3cr3t@nats:4222", "nats://***@nats:4222"),
            (
                "tls://user:pa@ss@nats.example:4222/x",
                "tls://***@nats.example:4222/x",
            ),
            ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
            ("nats:4222", "nats:4222"),
        ] {
            assert_eq!(redacted(url), shown);
            assert!(!redacted(url).contains("s3cr3t") && !redacted(url).contains(":pa"));
        }
    }

    #[test]
    fn credentials_are_taken_out_of_the_url() {
        assert_eq!(
            split_credentials("tls://u:p@w@h:4222/x"),
            ("tls://h:4222/x".to_owned(), Some("u:p@w".to_owned()))
        );
        assert_eq!(
            split_credentials("nats://tok@h:4222"),
            ("nats://h:4222".to_owned(), Some("tok".to_owned()))
        );
        assert_eq!(
            split_credentials("nats://h:4222"),
            ("nats://h:4222".to_owned(), None)
        );
    }
}
