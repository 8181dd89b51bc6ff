//! Calls on every surface: counts by method, result and reason, and latencies with the trace
//! of the request as an exemplar.
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::exponential_buckets;
use token_sidecar_core::metrics::Registrar;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: &'static str,
    /// `ok`, `invalid` (a Verify answering valid=false), `denied`, or the gRPC code of an error.
    result: &'static str,
    /// The token reason or error code, or empty.
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

/// The exemplar of a latency: the trace of the request it measured.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TraceExemplar {
    /// The W3C trace id (32 hex digits).
    pub trace_id: String,
}

type Latencies = HistogramWithExemplars<TraceExemplar>;

/// `rpc_requests_total` and `rpc_duration_seconds`.
pub struct RpcMetrics {
    requests: Family<RpcLabels, Counter>,
    seconds: Family<MethodLabels, Latencies>,
    // The handles every Verify touches, resolved once: a `Family` lookup takes a lock and
    // hashes the labels on every call.
    verify_ok: Counter,
    verify_seconds: Latencies,
}

impl RpcMetrics {
    /// Registers the families.
    pub fn register(registry: &mut Registrar) -> Self {
        let requests = Family::<RpcLabels, Counter>::default();
        let seconds = Family::<MethodLabels, Latencies>::new_with_constructor(|| {
            HistogramWithExemplars::new(exponential_buckets(0.000_05, 2.0, 18))
        });
        registry.register(
            "rpc_requests",
            "RPCs by method, result and reason",
            requests.clone(),
        );
        registry.register("rpc_duration_seconds", "RPC latency", seconds.clone());
        // One statement each: a Family's guard lives to the end of its statement.
        let verify_ok = requests.get_or_create_owned(&RpcLabels {
            method: "Verify",
            result: "ok",
            reason: "",
        });
        let verify_seconds = seconds.get_or_create_owned(&MethodLabels { method: "Verify" });
        Self {
            requests,
            seconds,
            verify_ok,
            verify_seconds,
        }
    }

    /// Counts one call and its latency since `started`.
    pub fn record(
        &self,
        method: &'static str,
        started: Instant,
        result: &'static str,
        reason: &'static str,
    ) {
        let seconds = started.elapsed().as_secs_f64();
        // While tracing is on, the latency names the request's trace (an OpenMetrics exemplar).
        let exemplar = token_sidecar_core::spans::current_trace_id()
            .map(|trace_id| TraceExemplar { trace_id });
        if method == "Verify" {
            if result == "ok" {
                self.verify_ok.inc();
            } else {
                self.count(method, result, reason);
            }
            self.verify_seconds.observe(seconds, exemplar, None);
            return;
        }
        self.count(method, result, reason);
        self.seconds
            .get_or_create(&MethodLabels { method })
            .observe(seconds, exemplar, None);
    }

    fn count(&self, method: &'static str, result: &'static str, reason: &'static str) {
        self.requests
            .get_or_create(&RpcLabels {
                method,
                result,
                reason,
            })
            .inc();
    }
}
