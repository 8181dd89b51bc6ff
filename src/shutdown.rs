//! The shutdown signal every listener and background task watches: a `watch` channel that turns
//! true once, on SIGTERM/SIGINT or [`crate::server::RunningSidecar::shutdown`].
use tokio::sync::watch;

/// Resolves once `rx` says stop.
pub async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}
