//! Health reporting: `grpc.health.v1` for `tokensidecar.v1.TokenService` and for `""` (what
//! [`crate::readiness`] decides), `liveness` (the process alone) and `clock`
//! ([`crate::clock_upkeep`]); Watch streams that the server ends at shutdown; and the
//! NOT_SERVING of every name but `liveness` on SIGTERM ([`draining`]).

use tokio::sync::watch;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService};

use crate::shutdown::stopped;

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

/// Reports `status` for TokenService and for the server as a whole (`""`).
pub async fn set_status(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status(SERVICE_NAME, status).await;
    reporter.set_service_status("", status).await;
}
