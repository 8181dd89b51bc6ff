//! The plumbing around every `tokensidecar.v1.TokenService` RPC, as one tower layer keyed by
//! the gRPC method: who may call it (SPEC §12), how long it took, its count by result and reason,
//! its trace outcome and its one request log line. The handlers only translate and decide; they
//! leave their outcome in the request's [`OutcomeSlot`] and the layer records it.
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use tonic::Status;
use tonic_types::{ErrorDetails, StatusExt};
use tower::{Layer, Service};

use crate::api::bearer_credential;
use crate::api::caller::{CallerInfo, Callers, Refusal};
use crate::api::errors::ERROR_DOMAIN;
use crate::api::log_value::loggable;
use crate::api::trace;
use crate::metrics::Metrics;

/// Who may call a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Any caller that reaches the listener.
    Open,
    /// The admin credential, an allowed mutual-TLS identity, or loopback in sidecar mode.
    Privileged,
    /// Decided by the request (Revoke: a held token is open, every other target privileged);
    /// the handler reads the layer's [`Admission`].
    ByRequest,
}

/// The service's methods: the closed set of `method` labels, and who may call each.
const METHODS: [(&str, Access); 8] = [
    ("Issue", Access::Privileged),
    ("Verify", Access::Open),
    ("Refresh", Access::Open),
    ("Revoke", Access::ByRequest),
    ("LiftBan", Access::Privileged),
    ("GetUserStatus", Access::Privileged),
    ("GetJwks", Access::Open),
    ("ListChanges", Access::Privileged),
];

const SERVICE_PATH: &str = "/tokensidecar.v1.TokenService/";

/// The method a request path names, if it is one of the service's.
fn method_of(path: &str) -> Option<(&'static str, Access)> {
    let name = path.strip_prefix(SERVICE_PATH)?;
    METHODS.into_iter().find(|(method, _)| *method == name)
}

/// What a handler reports of its RPC: its result and reason labels and whom it was about.
#[derive(Debug, Clone, Default)]
pub(crate) struct Outcome {
    pub(crate) result: &'static str,
    pub(crate) reason: &'static str,
    pub(crate) user_id: String,
    pub(crate) jti: String,
    /// The session a Revoke ended, if it names one.
    pub(crate) session_id: Option<String>,
}

/// Where a handler leaves its [`Outcome`] (a request extension the layer put there).
#[derive(Debug, Clone, Default)]
pub(crate) struct OutcomeSlot(Arc<parking_lot::Mutex<Option<Outcome>>>);

impl OutcomeSlot {
    /// Records `outcome` as the RPC's.
    pub(crate) fn set(&self, outcome: Outcome) {
        *self.0.lock() = Some(outcome);
    }

    fn take(&self) -> Option<Outcome> {
        self.0.lock().take()
    }
}

/// Whether the caller may call a privileged RPC, as the layer found (a request extension): who
/// it is, or why not.
#[derive(Debug, Clone)]
pub(crate) struct Admission(pub(crate) Result<String, Refusal>);

/// The layer: admits privileged callers with `callers` and counts into `metrics`.
#[derive(Clone)]
pub struct RpcLayer {
    callers: Callers,
    metrics: Arc<Metrics>,
}

impl RpcLayer {
    /// The plumbing of the service's RPCs.
    pub fn new(callers: Callers, metrics: Arc<Metrics>) -> Self {
        Self { callers, metrics }
    }
}

impl<S> Layer<S> for RpcLayer {
    type Service = Rpc<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Rpc {
            inner,
            plumbing: self.clone(),
        }
    }
}

/// A service with the RPC plumbing around it.
#[derive(Clone)]
pub struct Rpc<S> {
    inner: S,
    plumbing: RpcLayer,
}

type HttpRequest = http::Request<tonic::body::Body>;
type HttpResponse = http::Response<tonic::body::Body>;

impl<S> Service<HttpRequest> for Rpc<S>
where
    S: Service<HttpRequest, Response = HttpResponse, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<HttpResponse, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: HttpRequest) -> Self::Future {
        // The service that was made ready serves this request; a fresh clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let Some((method, access)) = method_of(request.uri().path()) else {
            return Box::pin(inner.call(request));
        };
        let started = Instant::now();
        let plumbing = self.plumbing.clone();
        let slot = OutcomeSlot::default();
        if access != Access::Open {
            let admission = plumbing.admit(&request);
            if let (Access::Privileged, Err(refusal)) = (access, &admission) {
                let status = plumbing.refuse(method, started, *refusal);
                return Box::pin(async move { Ok(status.into_http()) });
            }
            request.extensions_mut().insert(Admission(admission));
        }
        request.extensions_mut().insert(slot.clone());
        Box::pin(async move {
            let response = inner.call(request).await;
            // A handler that left no outcome failed before it could say (its status says).
            let outcome = slot.take().unwrap_or(Outcome {
                result: "error",
                ..Outcome::default()
            });
            plumbing.record(method, started, &outcome);
            response
        })
    }
}

impl RpcLayer {
    /// Who the caller is, if it may call a privileged RPC: `loopback`, `admin` or its mutual-TLS
    /// identity.
    fn admit(&self, request: &HttpRequest) -> Result<String, Refusal> {
        let presented = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_credential);
        let identities = request
            .extensions()
            .get::<CallerInfo>()
            .and_then(|caller| caller.identities.clone());
        self.callers
            .admit_privileged(presented, identities.as_deref())
    }

    /// The refusal of a privileged RPC, counted and logged.
    fn refuse(&self, method: &'static str, started: Instant, refusal: Refusal) -> Status {
        let (status, outcome) = refusal_status(method, refusal);
        self.metrics
            .rpc
            .record(method, started, outcome.result, outcome.reason);
        trace::record_outcome(outcome.result, outcome.reason, "");
        status
    }

    /// Counts the RPC and writes its request log line: method, result, reason, latency, user
    /// and jti — never the token. Verify logs at debug (it is the hot path), the rest at info.
    fn record(&self, method: &'static str, started: Instant, outcome: &Outcome) {
        let Outcome { result, reason, .. } = *outcome;
        self.metrics.rpc.record(method, started, result, reason);
        let latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        // A refused request may carry megabytes in these fields: log a short prefix only.
        let (user_id, jti) = (loggable(&outcome.user_id), loggable(&outcome.jti));
        trace::record_outcome(result, reason, &user_id);
        if method == "Verify" {
            // The hot path: the trace ids are looked up only when the line is written.
            if tracing::enabled!(tracing::Level::DEBUG) {
                let (trace_id, span_id) = trace::log_ids();
                let (trace_id, span_id) = (trace_id.as_deref(), span_id.as_deref());
                tracing::debug!(method, result, reason, latency_us, user_id = %user_id, jti = %jti, trace_id, span_id, "rpc");
            }
        } else {
            let (trace_id, span_id) = trace::log_ids();
            let (trace_id, span_id) = (trace_id.as_deref(), span_id.as_deref());
            let session_id = outcome.session_id.as_deref().map(loggable);
            let session_id = session_id.as_deref();
            tracing::info!(method, result, reason, latency_us, user_id = %user_id, jti = %jti, session_id, trace_id, span_id, "rpc");
        }
    }
}

/// Whether a Verify's subject (user and jti) will be written anywhere: its debug log line (in
/// this module's target) or a span that records user ids. Verify copies it only then.
pub(crate) fn verify_subject_wanted() -> bool {
    tracing::enabled!(tracing::Level::DEBUG) || crate::otel::user_ids()
}

/// A refused privileged call, logged: its status, and its outcome for the count. A caller whose
/// certificate is good but not allowed is known, just not permitted.
pub(crate) fn refusal_status(method: &'static str, refusal: Refusal) -> (Status, Outcome) {
    let (reason, message) = (refusal.reason(), refusal.message());
    let (code, result) = match refusal {
        Refusal::IdentityNotAllowed => (tonic::Code::PermissionDenied, "permission_denied"),
        Refusal::Missing | Refusal::Invalid => (tonic::Code::Unauthenticated, "unauthenticated"),
    };
    tracing::warn!(method, reason, "privileged RPC refused");
    let details = ErrorDetails::with_error_info(
        reason,
        ERROR_DOMAIN,
        std::collections::HashMap::<String, String>::new(),
    );
    let outcome = Outcome {
        result,
        reason,
        ..Outcome::default()
    };
    (Status::with_error_details(code, message, details), outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_services_methods_are_keyed() {
        assert_eq!(
            method_of("/tokensidecar.v1.TokenService/Issue"),
            Some(("Issue", Access::Privileged))
        );
        assert_eq!(
            method_of("/tokensidecar.v1.TokenService/Revoke"),
            Some(("Revoke", Access::ByRequest))
        );
        assert_eq!(method_of("/tokensidecar.v1.TokenService/Nope"), None);
        assert_eq!(method_of("/grpc.health.v1.Health/Check"), None);
        assert_eq!(
            method_of("/envoy.service.auth.v3.Authorization/Check"),
            None
        );
    }
}
