//! Request limits on the API, as one tower layer around its routes:
//! - load shedding: at most `--max-concurrent-requests` requests are served at once, across every
//!   connection; the next one is answered RESOURCE_EXHAUSTED at once (and counted) instead of
//!   queueing without bound. Health checks are never shed, so that an overloaded sidecar is not
//!   also reported dead;
//! - a request over the message-size limit is answered RESOURCE_EXHAUSTED, the code gRPC assigns
//!   to "message too large" (tonic's decoder says OUT_OF_RANGE). (One that cannot be decoded is
//!   INVALID_ARGUMENT by the codec itself: `token_sidecar_api::codec`.)

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

use crate::api::errors;
use crate::metrics::Metrics;

const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";

/// Wraps the API's routes with the in-flight bound.
#[derive(Clone)]
pub struct RequestLimits {
    permits: Arc<Semaphore>,
    limit: usize,
    metrics: Arc<Metrics>,
}

impl RequestLimits {
    /// A bound of `limit` requests in flight (at least one).
    pub fn new(limit: usize, metrics: Arc<Metrics>) -> Self {
        let limit = limit.max(1);
        metrics.edge.max_requests_in_flight.set(limit as i64);
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            metrics,
        }
    }
}

impl<S> Layer<S> for RequestLimits {
    type Service = Limited<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Limited {
            inner,
            bound: self.clone(),
        }
    }
}

/// The service [`RequestLimits`] makes.
#[derive(Clone)]
pub struct Limited<S> {
    inner: S,
    bound: RequestLimits,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, B> Service<http::Request<B>> for Limited<S>
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
            self.bound.metrics.edge.shed_requests.inc();
            let response = errors::overloaded(self.bound.limit).into_http();
            return Box::pin(std::future::ready(Ok(response)));
        };
        let guard = InFlight::new(self.bound.metrics.edge.requests_in_flight.clone(), permit);
        let answer = self.inner.call(request);
        Box::pin(async move {
            let mut result = answer.await;
            drop(guard);
            if let Ok(response) = &mut result {
                recode_tonic_refusals(response.headers_mut());
            }
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

/// Gives tonic's refusal of an oversized request the code gRPC assigns to it: RESOURCE_EXHAUSTED
/// where tonic says OUT_OF_RANGE. Only tonic's size limit answers OUT_OF_RANGE here — no handler
/// of ours does — so the code alone identifies it.
fn recode_tonic_refusals(headers: &mut http::HeaderMap) {
    // A successful answer carries no grpc-status in its headers: one lookup and done.
    if headers.get("grpc-status").map(http::HeaderValue::as_bytes) == Some(b"11") {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(status: &'static str, message: &'static str) -> String {
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-status", http::HeaderValue::from_static(status));
        headers.insert("grpc-message", http::HeaderValue::from_static(message));
        recode_tonic_refusals(&mut headers);
        headers["grpc-status"]
            .to_str()
            .unwrap_or_default()
            .to_owned()
    }

    #[test]
    fn only_the_message_size_refusal_is_rewritten() {
        assert_eq!(
            rewritten("11", "decoded%20message%20length%20too%20large"),
            "8"
        );
        for other in ["3", "13", "14"] {
            assert_eq!(rewritten(other, "anything"), other);
        }
    }
}
