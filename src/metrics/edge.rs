//! The listeners: connections open and refused, requests in flight and shed.
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use token_sidecar_core::metrics::Registrar;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    /// `api`, `health`, `http` or `metrics`.
    listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    listener: &'static str,
    /// `limit` (over --max-connections), `peer_limit`, `handshake_timeout` or `bad_handshake`.
    why: &'static str,
}

/// `connections_open`, `connections_refused_total`, `shed_requests_total`,
/// `requests_in_flight`, `max_requests_in_flight`.
pub struct EdgeMetrics {
    open: Family<ListenerLabels, Gauge>,
    refused: Family<RefusedLabels, Counter>,
    /// Requests refused with RESOURCE_EXHAUSTED because too many were in flight.
    pub shed_requests: Counter,
    /// API requests being served now.
    pub requests_in_flight: Gauge,
    /// The configured bound on API requests in flight.
    pub max_requests_in_flight: Gauge,
}

impl EdgeMetrics {
    /// Registers the families.
    pub fn register(registry: &mut Registrar) -> Self {
        let this = Self {
            open: Family::default(),
            refused: Family::default(),
            shed_requests: Counter::default(),
            requests_in_flight: Gauge::default(),
            max_requests_in_flight: Gauge::default(),
        };
        registry.register(
            "shed_requests",
            "Requests refused with RESOURCE_EXHAUSTED because too many were in flight",
            this.shed_requests.clone(),
        );
        registry.register(
            "requests_in_flight",
            "API requests being served now",
            this.requests_in_flight.clone(),
        );
        registry.register(
            "max_requests_in_flight",
            "The configured bound on API requests in flight (--max-concurrent-requests)",
            this.max_requests_in_flight.clone(),
        );
        registry.register(
            "connections_open",
            "Connections open, by listener (after their handshake)",
            this.open.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed unserved: over --max-connections, or no first request within \
             --handshake-timeout",
            this.refused.clone(),
        );
        this
    }

    /// The gauge of one listener's open connections.
    pub fn connections_open(&self, listener: &'static str) -> Gauge {
        self.open.get_or_create_owned(&ListenerLabels { listener })
    }

    /// Counts one connection closed unserved.
    pub fn connection_refused(&self, listener: &'static str, why: &'static str) {
        self.refused
            .get_or_create(&RefusedLabels { listener, why })
            .inc();
    }
}
