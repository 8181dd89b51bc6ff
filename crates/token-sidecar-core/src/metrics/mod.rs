//! Prometheus metrics. Each part of the sidecar owns one group of families and registers it
//! itself (`XMetrics::register`); [`Metrics`] is the registry plus those groups, built once per
//! instance and rendered by the server's `/metrics` route (on `--metrics-listen`).
//!
//! | group | counted by |
//! |---|---|
//! | [`RpcMetrics`] `rpc_*` | the gRPC service and the HTTP surfaces, once per call |
//! | [`CacheMetrics`] `cache_lookups`, `denylist_filter_*`, `verified_cache_entries` | the caches |
//! | [`StoreMetrics`] `store_*` | every store call of the revocation state |
//! | [`SyncMetrics`] `sync_*` | the change feed: watermark, lag, announcements, forks |
//! | [`ClockMetrics`] `clock_*` | the fleet clock upkeep and the refusals it causes |
//! | [`EdgeMetrics`] `connections_*`, `*requests_in_flight`, `shed_requests` | the listeners |
//! | [`TaskMetrics`] `task_restarts` | the supervisor of background tasks |
//! | [`SecurityMetrics`] `refresh_reuse_detected`, `idp_events_ignored` | security events |
mod caches;
mod clock;
mod edge;
mod rpc;
mod security;
mod store;
mod sync;
mod tasks;

use prometheus_client::registry::Registry;

pub use caches::{Cache, CacheMetrics, Lookup};
pub use clock::ClockMetrics;
pub use edge::EdgeMetrics;
pub use rpc::{RpcMetrics, TraceExemplar};
pub use security::{Ignored, SecurityMetrics};
pub use store::StoreMetrics;
pub use sync::SyncMetrics;
pub use tasks::TaskMetrics;

/// Every metric of one sidecar instance, by the part that counts it.
pub struct Metrics {
    registry: Registry,
    /// Calls on every surface.
    pub rpc: RpcMetrics,
    /// The cutoff cache, the denylist filter and the verified-token cache.
    pub caches: CacheMetrics,
    /// Calls to the store.
    pub store: StoreMetrics,
    /// The change feed.
    pub sync: SyncMetrics,
    /// The fleet's one clock.
    pub clock: ClockMetrics,
    /// Connections and load on the listeners.
    pub edge: EdgeMetrics,
    /// Background tasks.
    pub tasks: TaskMetrics,
    /// Security events.
    pub security: SecurityMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry (prefix `token_sidecar`) with every group registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("token_sidecar");
        let rpc = RpcMetrics::register(&mut registry);
        registry.register(
            "trace_spans",
            "Finished trace spans by outcome: exported, export_failed, dropped (queue full)",
            crate::spans::span_counter().clone(),
        );
        Self {
            rpc,
            caches: CacheMetrics::register(&mut registry),
            store: StoreMetrics::register(&mut registry),
            sync: SyncMetrics::register(&mut registry),
            clock: ClockMetrics::register(&mut registry),
            edge: EdgeMetrics::register(&mut registry),
            tasks: TaskMetrics::register(&mut registry),
            security: SecurityMetrics::register(&mut registry),
            registry,
        }
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
