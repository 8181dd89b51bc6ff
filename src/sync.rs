//! Keeping instances that share one PostgreSQL in step.
//!
//! Every change carries a number from one sequence and is announced with NOTIFY in its
//! transaction. An instance LISTENs and, on each notification, applies "changes after the last
//! number I applied"; the same catch-up runs after every (re)connect and on a periodic poll,
//! which is the safety net — and the only mechanism in poll mode, for PgBouncer-style poolers
//! that do not carry LISTEN.
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgNotification, PgPoolOptions};
use tokio::sync::watch;

use crate::revocations::Revocations;
use crate::store::CHANGE_CHANNEL;

/// The `application_name` of the listening connection (operators see it in pg_stat_activity).
pub const LISTENER_APPLICATION_NAME: &str = "token-sidecar-listener";

/// How an instance learns of other instances' changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SyncMode {
    /// LISTEN/NOTIFY for speed, plus the periodic poll.
    Notify,
    /// The periodic poll only (works behind transaction-pooling PgBouncer).
    Poll,
}

/// How soon to retry loading or listening.
const RETRY: Duration = Duration::from_millis(250);

/// Runs until `shutdown` turns true.
pub async fn run(
    revocations: Arc<Revocations>,
    database_url: String,
    mode: SyncMode,
    poll_interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(poll_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut listener: Option<PgListener> = None;
    loop {
        if mode == SyncMode::Notify && listener.is_none() && revocations.is_loaded() {
            listener = listen(&database_url).await;
            if listener.is_some() {
                // Notifications sent while we were not listening are lost: catch up.
                catch_up(&revocations, "listen").await;
            }
        }
        // Until loaded, or while LISTEN is wanted but down, come back soon to (re)try.
        let waiting = !revocations.is_loaded() || (mode == SyncMode::Notify && listener.is_none());
        let retry = async {
            if waiting {
                tokio::time::sleep(RETRY).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let notified = async {
            match listener.as_mut() {
                Some(l) => l.try_recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            received = notified => match received {
                Ok(Some(notification)) => {
                    drain(listener.as_mut(), notification);
                    catch_up(&revocations, "notify").await;
                }
                Ok(None) => {
                    tracing::warn!("change listener lost its connection; reconnecting");
                    catch_up(&revocations, "reconnect").await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "change listener failed; polling until it is back");
                    listener = None;
                }
            },
            _ = ticker.tick() => {
                if revocations.is_loaded() {
                    catch_up(&revocations, "poll").await;
                }
                revocations.observe_lag();
            }
            () = retry => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

/// Consumes notifications already buffered: one catch-up covers them all.
fn drain(listener: Option<&mut PgListener>, first: PgNotification) {
    let Some(listener) = listener else { return };
    let mut pending = 0usize;
    while listener.next_buffered().is_some() {
        pending += 1;
    }
    tracing::trace!(first = first.payload(), pending, "changes announced");
}

async fn catch_up(revocations: &Revocations, why: &'static str) {
    match revocations.catch_up().await {
        Ok(0) => {}
        Ok(applied) => tracing::debug!(applied, why, "applied changes"),
        Err(e) => tracing::warn!(error = %e, why, "could not sync with the store"),
    }
}

async fn listen(database_url: &str) -> Option<PgListener> {
    let options = match PgConnectOptions::from_str(database_url) {
        Ok(o) => o.application_name(LISTENER_APPLICATION_NAME),
        Err(e) => {
            tracing::warn!(error = %e, "bad database URL for the change listener");
            return None;
        }
    };
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy_with(options);
    let result = async {
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(CHANGE_CHANNEL).await?;
        Ok::<_, sqlx::Error>(listener)
    }
    .await;
    match result {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(error = %e, "cannot LISTEN for changes; polling meanwhile");
            None
        }
    }
}
