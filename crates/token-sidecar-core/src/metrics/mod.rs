//! Prometheus metrics the core counts itself. Each part owns one group of families and
//! registers it itself (`XMetrics::register`); [`Metrics`] is the registry plus those groups,
//! built once per instance. The server registers its own groups (RPCs, listeners, tasks) into
//! the same registry ([`Metrics::with_groups`]) and renders it on `/metrics`.
//!
//! | group | counted by |
//! |---|---|
//! | [`CacheMetrics`] `cache_lookups`, `denylist_filter_*`, `verified_cache_entries` | the caches |
//! | [`StoreMetrics`] `store_*` | every store call of the revocation state |
//! | [`SyncMetrics`] `sync_*` | the change feed: watermark, lag, announcements, forks |
//! | [`ClockMetrics`] `clock_*` | the fleet clock upkeep and the refusals it causes |
//! | [`SecurityMetrics`] `refresh_reuse_detected`, `idp_events_ignored` | security events |
mod caches;
mod clock;
mod security;
mod store;
mod sync;

use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Metric, Registry};

pub use caches::{Cache, CacheMetrics, Lookup};
pub use clock::ClockMetrics;
pub use security::{Ignored, SecurityMetrics};
pub use store::StoreMetrics;
pub use sync::SyncMetrics;

/// One registered family, as the reference documentation lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    /// The family's name with the prefix (counters show `_total` in the exposition).
    pub name: String,
    /// `counter`, `gauge`, `histogram` …
    pub kind: &'static str,
    /// Its help text.
    pub help: String,
}

/// The registry every group registers into, which also keeps what was registered: an empty
/// labelled family renders nothing, yet the reference (docs/reference.md) lists every family.
pub struct Registrar {
    registry: Registry,
    catalogue: Vec<Described>,
}

impl Registrar {
    const PREFIX: &'static str = "token_sidecar";

    fn new() -> Self {
        Self {
            registry: Registry::with_prefix(Self::PREFIX),
            catalogue: Vec::new(),
        }
    }

    /// Registers `metric` as `name` (prefixed) with `help`.
    pub fn register<M: Metric + TypedMetric>(&mut self, name: &str, help: &str, metric: M) {
        let kind = match M::TYPE {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
            MetricType::Info => "info",
            _ => "unknown",
        };
        self.catalogue.push(Described {
            name: format!("{}_{name}", Self::PREFIX),
            kind,
            help: help.to_owned(),
        });
        self.registry.register(name, help, metric);
    }
}

/// The core's metrics of one sidecar instance, by the part that counts it.
pub struct Metrics {
    registry: Registry,
    catalogue: Vec<Described>,
    /// The cutoff cache, the denylist filter and the verified-token cache.
    pub caches: CacheMetrics,
    /// Calls to the store.
    pub store: StoreMetrics,
    /// The change feed.
    pub sync: SyncMetrics,
    /// The fleet's one clock.
    pub clock: ClockMetrics,
    /// Security events.
    pub security: SecurityMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry (prefix `token_sidecar`) with every group of the core registered.
    pub fn new() -> Self {
        Self::with_groups(|_| ()).0
    }

    /// The same, with the groups `register` adds (the server's own) in the same registry,
    /// registered first.
    pub fn with_groups<T>(register: impl FnOnce(&mut Registrar) -> T) -> (Self, T) {
        let mut registry = Registrar::new();
        let groups = register(&mut registry);
        registry.register(
            "trace_spans",
            "Finished trace spans by outcome: exported, export_failed, dropped (queue full)",
            crate::spans::span_counter().clone(),
        );
        let caches = CacheMetrics::register(&mut registry);
        let store = StoreMetrics::register(&mut registry);
        let sync = SyncMetrics::register(&mut registry);
        let clock = ClockMetrics::register(&mut registry);
        let security = SecurityMetrics::register(&mut registry);
        let metrics = Self {
            caches,
            store,
            sync,
            clock,
            security,
            registry: registry.registry,
            catalogue: registry.catalogue,
        };
        (metrics, groups)
    }

    /// Every registered family, in registration order.
    pub fn catalogue(&self) -> &[Described] {
        &self.catalogue
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "could not encode metrics");
        }
        out
    }
}

/// A label whose values are a closed set, encoded as the text the exposition has always shown.
macro_rules! label_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// The label value.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text),+
                }
            }
        }

        impl prometheus_client::encoding::EncodeLabelValue for $name {
            fn encode(
                &self,
                encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
            ) -> Result<(), std::fmt::Error> {
                std::fmt::Write::write_str(encoder, self.as_str())
            }
        }
    };
}
pub(crate) use label_enum;
