//! Trace context per request (W3C `traceparent` / `tracestate`), while tracing is on
//! ([`crate::otel::enabled`]): one server span for every TokenService RPC, every Check and
//! every HTTP request, joined to the caller's trace —
//!
//! - gRPC: from the request's metadata ([`GrpcTraceLayer`]);
//! - Check: from the request headers *inside* Envoy's `CheckRequest` (the caller's trace, not
//!   Envoy's hop), else the metadata ([`check_span`]);
//! - HTTP (`/auth`, introspection, revocation): from the forwarded request's headers
//!   ([`http_trace`]).
//!
//! Each surface records its result and reason on the span ([`record_outcome`]); the user id only
//! with `--trace-user-ids`; never a token or a key. Health and reflection make no spans.
use std::collections::HashMap;
use std::task::{Context, Poll};

use opentelemetry::propagation::Extractor;
use tracing::Span;
use tracing::field::Empty;
use tracing::instrument::{Instrument, Instrumented};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::otel;

/// The W3C trace context header.
pub const TRACEPARENT: &str = "traceparent";

/// Request headers as a propagation carrier.
pub struct Headers<'a>(pub &'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Envoy's `CheckRequest` headers (lower-case names) as a propagation carrier.
pub struct CheckHeaders<'a>(pub &'a HashMap<String, String>);

impl Extractor for CheckHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

fn join(span: &Span, carrier: &dyn Extractor) {
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(carrier));
    // A span that is not recorded (sampled out by a filter) has no parent to set.
    let _ = span.set_parent(parent);
}

/// A server span for the gRPC method at `path` (`/package.Service/Method`), child of the trace
/// in `carrier` (a new trace if it carries none).
pub fn grpc_span(path: &str, carrier: &dyn Extractor) -> Span {
    if !otel::enabled() {
        return Span::none();
    }
    let name = path.trim_start_matches('/');
    let (service, method) = name.split_once('/').unwrap_or((name, ""));
    let span = tracing::info_span!(
        "rpc",
        otel.name = name,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        result = Empty,
        reason = Empty,
        user.id = Empty,
    );
    join(&span, carrier);
    span
}

/// A server span for an HTTP request, child of the trace in its headers.
pub fn http_span(method: &http::Method, route: &str, headers: &http::HeaderMap) -> Span {
    if !otel::enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        "http",
        otel.name = format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = route,
        result = Empty,
        reason = Empty,
        user.id = Empty,
    );
    join(&span, &Headers(headers));
    span
}

/// The span of one Check: the caller's trace when the checked request's headers carry one,
/// else the trace of the Check call itself (Envoy's hop).
pub fn check_span(
    check_headers: Option<&HashMap<String, String>>,
    metadata: &http::HeaderMap,
) -> Span {
    if !otel::enabled() {
        return Span::none();
    }
    match check_headers.filter(|h| h.contains_key(TRACEPARENT)) {
        Some(headers) => grpc_span(
            "/envoy.service.auth.v3.Authorization/Check",
            &CheckHeaders(headers),
        ),
        None => grpc_span(
            "/envoy.service.auth.v3.Authorization/Check",
            &Headers(metadata),
        ),
    }
}

/// Records the request's outcome on the current span (and the user id with
/// `--trace-user-ids`).
pub fn record_outcome(result: &str, reason: &str, user_id: &str) {
    if !otel::enabled() {
        return;
    }
    let span = Span::current();
    span.record("result", result);
    if !reason.is_empty() {
        span.record("reason", reason);
    }
    if otel::user_ids() && !user_id.is_empty() {
        span.record("user.id", user_id);
    }
}

/// The current span's trace and span ids (hex), for the request's log line; None while tracing
/// is off or outside a request span.
pub fn log_ids() -> (Option<String>, Option<String>) {
    match otel::current_ids() {
        Some(ids) => (Some(ids.trace_id), Some(ids.span_id)),
        None => (None, None),
    }
}

/// The tower layer that gives every TokenService RPC its span (not health, reflection or
/// Check, which makes its own from the checked request).
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcTraceLayer;

impl<S> tower::Layer<S> for GrpcTraceLayer {
    type Service = GrpcTrace<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcTrace { inner }
    }
}

/// See [`GrpcTraceLayer`].
#[derive(Debug, Clone)]
pub struct GrpcTrace<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for GrpcTrace<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Instrumented<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        let span = if otel::enabled() && path.starts_with("/tokensidecar.") {
            grpc_span(path, &Headers(request.headers()))
        } else {
            Span::none()
        };
        self.inner.call(request).instrument(span)
    }
}

/// Axum middleware: the span of one HTTP request.
pub async fn http_trace(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if !otel::enabled() {
        return next.run(request).await;
    }
    // Low cardinality: the route, not the path (every `/auth/...` is `/auth`).
    let route = match request.uri().path() {
        "/oauth2/introspect" => "/oauth2/introspect",
        "/oauth2/revoke" => "/oauth2/revoke",
        path if path == "/auth" || path.starts_with("/auth/") => "/auth",
        _ => "unmatched",
    };
    let span = http_span(request.method(), route, request.headers());
    next.run(request).instrument(span).await
}
