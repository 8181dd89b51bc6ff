//! Health: `grpc.health.v1` for `tokensidecar.v1.TokenService` and for `""`. NOT_SERVING until
//! the store is migrated and the caches are loaded (retried every `--health-interval`), then in
//! step with whether this instance can answer: the store pings, or the caches are within the
//! staleness bound (or serving stale was chosen).
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService};

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
/// feeds, whose Watch streams end once `watches_end` turns true.
pub async fn reporter(
    watches_end: watch::Receiver<bool>,
) -> (HealthReporter, HealthServer<EndingWatches>) {
    let reporter = HealthReporter::new();
    set_status(&reporter, ServingStatus::NotServing).await;
    reporter
        .set_service_status(LIVENESS_NAME, ServingStatus::Serving)
        .await;
    let service = EndingWatches {
        inner: HealthService::from_health_reporter(reporter.clone()),
        reporter: reporter.clone(),
        watches_end,
    };
    (reporter, HealthServer::new(service))
}

/// tonic-health's service, except that open Watch streams are ended by the server at shutdown
/// (after they have seen NOT_SERVING and the drain delay has passed), so that no client's watch
/// holds the process until the grace runs out.
pub struct EndingWatches {
    inner: HealthService,
    reporter: HealthReporter,
    watches_end: watch::Receiver<bool>,
}

type WatchStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<HealthCheckResponse, tonic::Status>> + Send + 'static>,
>;

#[tonic::async_trait]
impl Health for EndingWatches {
    async fn check(
        &self,
        request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
        self.inner.check(request).await
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        use futures::StreamExt;
        let service = request.get_ref().service.clone();
        let updates = self.inner.watch(request).await?.into_inner();
        let ended = stopped(self.watches_end.clone());
        // The stream ends right after the last status change: send the status as it is then,
        // so that a NOT_SERVING set just before the end is never lost to the race.
        let statuses = HealthService::from_health_reporter(self.reporter.clone());
        let last = futures::stream::once(async move {
            statuses
                .check(tonic::Request::new(HealthCheckRequest { service }))
                .await
                .ok()
                .map(|answer| Ok(answer.into_inner()))
        })
        .filter_map(std::future::ready);
        Ok(tonic::Response::new(Box::pin(
            updates.take_until(ended).chain(last),
        )))
    }
}

/// SPEC §12: on SIGTERM every name but [`LIVENESS_NAME`] turns NOT_SERVING at once, Check and
/// open Watch streams alike.
pub async fn draining(reporter: &HealthReporter) {
    set_status(reporter, ServingStatus::NotServing).await;
    reporter
        .set_service_status(crate::clock_upkeep::HEALTH_NAME, ServingStatus::NotServing)
        .await;
}

/// Migrates the store and loads the caches, then keeps health in step with whether this
/// instance can answer: NOT_SERVING until loaded, and while the caches are stale and the store
/// is unreachable (unless serving stale answers was chosen).
///
/// Until loaded it retries with a growing delay (at most `interval`), logging each distinct
/// reason once — a database that is full says so ("too many clients"), and the instance becomes
/// SERVING as soon as it gets a connection. Once loaded, the store is pinged only while the
/// caches are stale: an instance in step needs no connection of its own for health (SPEC §10).
pub async fn keep(
    revocations: Arc<Revocations>,
    reporter: HealthReporter,
    interval: Duration,
    shutdown: watch::Receiver<bool>,
) {
    let store = revocations.store().clone();
    let mut serving = None;
    let mut not_ready = NotReady::default();
    loop {
        let intact = match store.check_identity() {
            Ok(()) => true,
            Err(e) => {
                if serving != Some(false) {
                    tracing::error!(error = %e, "the store's file is gone: NOT_SERVING");
                }
                false
            }
        };
        let answering = if !intact {
            false
        } else if revocations.is_loaded() {
            revocations.can_answer() || {
                let reachable = store.ping().await.is_ok();
                if !reachable {
                    tracing::warn!("store unreachable and the caches are stale");
                }
                reachable
            }
        } else {
            match prepare(&revocations).await {
                Ok(()) => {
                    tracing::info!(store = store.kind(), "store migrated and caches loaded");
                    not_ready = NotReady::default();
                    true
                }
                Err(e) => {
                    not_ready.record(&revocations, e).await;
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
        let pause = if revocations.is_loaded() {
            interval
        } else {
            not_ready.next_delay(interval)
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            // Shutdown reports NOT_SERVING itself (see [`draining`]).
            () = stopped(shutdown.clone()) => return,
        }
    }
}

/// Why the store is not ready yet, and how long to wait before trying again.
#[derive(Default)]
struct NotReady {
    attempts: u32,
    last_reason: Option<String>,
}

impl NotReady {
    async fn record(&mut self, revocations: &Revocations, error: StoreError) {
        self.attempts += 1;
        // The pool reports a database that refuses connections only as "timed out": ask it
        // once directly for its reason.
        let reason = match revocations.store().why_unreachable().await {
            Some(refusal) => refusal,
            None => error.to_string(),
        };
        // SQLSTATE 53300, in either of PostgreSQL's wordings (the second when only the slots
        // reserved for superusers are left).
        let kind = if reason.contains("too many clients") || reason.contains("connection slots") {
            "too_many_connections"
        } else if matches!(error, StoreError::Database(_)) {
            "unreachable"
        } else {
            "error"
        };
        revocations.metrics().store_not_ready(kind);
        if self.last_reason.as_deref() != Some(reason.as_str()) {
            tracing::warn!(
                error = %reason,
                "store not ready: health is NOT_SERVING; retrying until it is"
            );
            self.last_reason = Some(reason);
        } else {
            tracing::debug!(attempts = self.attempts, error = %error, "store still not ready");
        }
    }

    /// 100 ms doubling up to `max`, with jitter so that a fleet started together does not
    /// retry in step.
    fn next_delay(&self, max: Duration) -> Duration {
        let base = Duration::from_millis(100u64 << self.attempts.min(8)).min(max);
        base.mul_f64(rand::random_range(0.5..1.0))
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
