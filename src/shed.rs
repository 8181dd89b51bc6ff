//! Load shedding: at most `--max-concurrent-requests` API requests are served at once, across
//! every connection; the next one is answered RESOURCE_EXHAUSTED at once (and counted) instead of
//! queueing without bound. Health checks are never shed, so that an overloaded sidecar is not
//! also reported dead.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

use crate::grpc;
use crate::metrics::Metrics;

const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";

/// Wraps the API's routes with the in-flight bound.
#[derive(Clone)]
pub struct ShedLayer {
    permits: Arc<Semaphore>,
    limit: usize,
    metrics: Arc<Metrics>,
}

impl ShedLayer {
    /// A bound of `limit` requests in flight (at least one).
    pub fn new(limit: usize, metrics: Arc<Metrics>) -> Self {
        let limit = limit.max(1);
        metrics.max_requests_in_flight.set(limit as i64);
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            metrics,
        }
    }
}

impl<S> Layer<S> for ShedLayer {
    type Service = Shed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Shed {
            inner,
            bound: self.clone(),
        }
    }
}

/// The service [`ShedLayer`] makes.
#[derive(Clone)]
pub struct Shed<S> {
    inner: S,
    bound: ShedLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, B> Service<http::Request<B>> for Shed<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path().starts_with(HEALTH_PREFIX) {
            return Box::pin(self.inner.call(request));
        }
        let Ok(permit) = self.bound.permits.clone().try_acquire_owned() else {
            self.bound.metrics.shed_requests.inc();
            let response = grpc::overloaded(self.bound.limit).into_http();
            return Box::pin(std::future::ready(Ok(response)));
        };
        let guard = InFlight::new(self.bound.metrics.requests_in_flight.clone(), permit);
        let answer = self.inner.call(request);
        Box::pin(async move {
            let result = answer.await;
            drop(guard);
            result
        })
    }
}

/// One request's place in the bound; released even when the caller gives up mid-request.
struct InFlight {
    gauge: Gauge,
    _permit: OwnedSemaphorePermit,
}

impl InFlight {
    fn new(gauge: Gauge, permit: OwnedSemaphorePermit) -> Self {
        gauge.inc();
        Self {
            gauge,
            _permit: permit,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}
