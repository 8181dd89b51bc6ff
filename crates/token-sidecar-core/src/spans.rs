//! What the core needs of tracing: whether spans are made, a client span per store query, the
//! current trace id for metric exemplars, and the count of finished spans. The server's `otel`
//! module turns them on and exports them; the core knows no OpenTelemetry.
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// Whether spans are made (an endpoint is configured).
static ENABLED: AtomicBool = AtomicBool::new(false);
/// Where the current trace id comes from, once tracing is set up.
static TRACE_ID: OnceLock<fn() -> Option<String>> = OnceLock::new();

/// Turns span making on (for the process: tracing is global).
pub fn enable(trace_id: fn() -> Option<String>) {
    let _ = TRACE_ID.set(trace_id);
    ENABLED.store(true, Ordering::Relaxed);
}

/// Whether tracing is on.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The current request's trace id (32 hex digits) while tracing is on and it is sampled.
pub fn current_trace_id() -> Option<String> {
    if !enabled() {
        return None;
    }
    TRACE_ID.get().and_then(|source| source())
}

/// A client span for one store query (`kind`: `cutoff`, `deny`, `changes`, …), a child of the
/// current request or catch-up; a disabled span while tracing is off.
pub fn store_span(kind: &'static str) -> tracing::Span {
    if !enabled() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        "store",
        otel.name = format!("store {kind}"),
        otel.kind = "client",
        db.operation.name = kind,
    )
}

/// What became of a finished span.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SpanOutcome {
    /// `exported`, `export_failed` (the collector refused or did not answer in time) or
    /// `dropped` (the queue was full).
    pub outcome: &'static str,
}

/// `token_sidecar_trace_spans_total{outcome}`: one family for the process, registered by
/// [`crate::metrics::Metrics`].
pub fn span_counter() -> &'static Family<SpanOutcome, Counter> {
    static SPANS: std::sync::LazyLock<Family<SpanOutcome, Counter>> =
        std::sync::LazyLock::new(Family::default);
    &SPANS
}
