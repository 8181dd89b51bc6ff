//! Health: `grpc.health.v1` for `tokensidecar.v1.TokenService` and for `""`. NOT_SERVING until
//! the store is migrated and the caches are loaded (retried every `--health-interval`), then in
//! step with whether this instance can answer: the store pings, or the caches are within the
//! staleness bound (or serving stale was chosen).
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::revocations::Revocations;
use crate::shutdown::stopped;
use crate::store::StoreError;

/// The fully qualified name under which health reports TokenService.
pub const SERVICE_NAME: &str = "tokensidecar.v1.TokenService";

/// The health name that reflects the process alone, never the store: SERVING from start to
/// shutdown. Kubelet's liveness probe asks for it, so that a database outage makes pods unready
/// (TokenService NOT_SERVING) without restarting them.
pub const LIVENESS_NAME: &str = "liveness";

/// A reporter that starts NOT_SERVING (and [`LIVENESS_NAME`] SERVING), and the health service it
/// feeds.
pub async fn reporter() -> (
    HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    let (reporter, service) = tonic_health::server::health_reporter();
    set_status(&reporter, ServingStatus::NotServing).await;
    reporter
        .set_service_status(LIVENESS_NAME, ServingStatus::Serving)
        .await;
    (reporter, service)
}

/// Migrates the store and loads the caches, then keeps health in step with whether this
/// instance can answer: NOT_SERVING until loaded, and while the caches are stale and the store
/// is unreachable (unless serving stale answers was chosen).
pub async fn keep(
    revocations: Arc<Revocations>,
    reporter: HealthReporter,
    interval: Duration,
    shutdown: watch::Receiver<bool>,
) {
    let store = revocations.store().clone();
    let mut serving = None;
    loop {
        let answering = if revocations.is_loaded() {
            let reachable = store.ping().await.is_ok();
            if !reachable {
                tracing::warn!("store unreachable");
            }
            reachable || revocations.can_answer(revocations.now_ms())
        } else {
            match prepare(&revocations).await {
                Ok(()) => {
                    tracing::info!(store = store.kind(), "store migrated and caches loaded");
                    true
                }
                Err(e) => {
                    tracing::warn!(error = %e, "store not ready: health is NOT_SERVING");
                    false
                }
            }
        };
        if serving != Some(answering) {
            let status = if answering {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            set_status(&reporter, status).await;
            serving = Some(answering);
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            () = stopped(shutdown.clone()) => {
                set_status(&reporter, ServingStatus::NotServing).await;
                reporter
                    .set_service_status(LIVENESS_NAME, ServingStatus::NotServing)
                    .await;
                return;
            }
        }
    }
}

async fn prepare(revocations: &Revocations) -> Result<(), StoreError> {
    revocations.store().migrate().await?;
    revocations.load().await
}

/// Reports `status` for TokenService and for the server as a whole (`""`).
pub async fn set_status(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status(SERVICE_NAME, status).await;
    reporter.set_service_status("", status).await;
}
