//! Request limits on the API, as one tower layer around its routes:
//! - load shedding: at most `--max-concurrent-requests` requests are served at once, across every
//!   connection; the next one is answered RESOURCE_EXHAUSTED at once (and counted) instead of
//!   queueing without bound. Health checks are never shed, so that an overloaded sidecar is not
//!   also reported dead;
//! - a request over the message-size limit is answered RESOURCE_EXHAUSTED, the code gRPC assigns
//!   to "message too large" (tonic's decoder says OUT_OF_RANGE), and one that cannot be decoded
//!   INVALID_ARGUMENT (tonic says INTERNAL).

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
        metrics.max_requests_in_flight.set(limit as i64);
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
            self.bound.metrics.shed_requests.inc();
            let response = errors::overloaded(self.bound.limit).into_http();
            return Box::pin(std::future::ready(Ok(response)));
        };
        let guard = InFlight::new(self.bound.metrics.requests_in_flight.clone(), permit);
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

/// Gives tonic's own refusals of a request the codes gRPC assigns to them: an oversized message
/// is RESOURCE_EXHAUSTED (tonic says OUT_OF_RANGE), and a message prost cannot decode (e.g.
/// `claims` nested deeper than its recursion limit) is the caller's INVALID_ARGUMENT (tonic says
/// INTERNAL). Our handlers never answer OUT_OF_RANGE, and their INTERNAL answers carry other
/// messages, so nothing else is touched.
fn recode_tonic_refusals(headers: &mut http::HeaderMap) {
    // A successful answer carries no grpc-status in its headers: one lookup and done.
    let (from, to) = match headers.get("grpc-status").map(http::HeaderValue::as_bytes) {
        Some(b"11") => (
            ["message%20length%20too%20large", "message length too large"],
            "8",
        ),
        Some(b"13") => (
            [
                "failed%20to%20decode%20Protobuf",
                "failed to decode Protobuf",
            ],
            "3",
        ),
        _ => return,
    };
    let matches = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|m| from.iter().any(|f| m.contains(f)));
    if matches {
        headers.insert("grpc-status", http::HeaderValue::from_static(to));
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
        let too_large = "Error,%20decoded%20message%20length%20too%20large";
        assert_eq!(rewritten("11", too_large), "8");
        assert_eq!(rewritten("11", "something%20else"), "11");
        assert_eq!(rewritten("3", too_large), "3");
        let undecodable = "failed%20to%20decode%20Protobuf%20message:%20recursion%20limit";
        assert_eq!(rewritten("13", undecodable), "3");
        assert_eq!(rewritten("13", "could%20not%20sign%20the%20token"), "13");
    }
}
