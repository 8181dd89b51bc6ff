//! Each HTTP route's per-call bookkeeping in one layer: the handler attaches its outcome (the
//! metric `result` label and the reason) to the response it answers with; [`counted`] times the
//! call, counts it in `rpc_requests_total{method,result,reason}` and `rpc_duration_seconds`, and
//! records the outcome on the request's trace span. (The gRPC service counts in
//! `token_service::TokenGrpc::record`, where the reason is still a domain value.)
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::api::trace;
use crate::error_code::ErrorCode;
use crate::metrics::Metrics;

/// How a call ended, as it is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The `result` label: `ok`, `invalid_argument`, `unavailable`, …
    pub result: &'static str,
    /// The `reason` label (empty when there is none).
    pub reason: &'static str,
}

/// `response`, marked with how the call ended.
pub fn answered(mut response: Response, result: &'static str, reason: &'static str) -> Response {
    response.extensions_mut().insert(Outcome { result, reason });
    response
}

/// What to count under for a route: the metric `method` label.
pub type Counted = (Arc<Metrics>, &'static str);

/// The layer around one route (`axum::middleware::from_fn_with_state((metrics, method),
/// counted)`): counts every answer, by the outcome its handler attached (a response without one
/// is counted by its status class).
pub async fn counted(
    State((metrics, method)): State<Counted>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let response = next.run(request).await;
    let outcome = response
        .extensions()
        .get::<Outcome>()
        .copied()
        .unwrap_or_else(|| by_status(response.status()));
    metrics
        .rpc
        .record(method, started, outcome.result, outcome.reason);
    trace::record_outcome(outcome.result, outcome.reason, "");
    response
}

fn by_status(status: http::StatusCode) -> Outcome {
    let (result, reason) = if status.is_success() {
        ("ok", "")
    } else if status.is_client_error() {
        ("invalid_argument", ErrorCode::InvalidRequest.as_str())
    } else {
        ("internal", ErrorCode::Internal.as_str())
    };
    Outcome { result, reason }
}
