//! The change feed: what was applied and how fast, how far behind, why the store was read,
//! which announcements were dropped, and forked histories.
use super::Registrar;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WhyLabels {
    why: &'static str,
}

/// `sync_*`.
pub struct SyncMetrics {
    /// Milliseconds since the last successful sync with the store.
    pub lag_ms: Gauge,
    /// The last change number applied.
    pub watermark: Gauge,
    /// Changes applied from the change feed.
    pub changes: Counter,
    /// Seconds from a change's commit (stamped on the database's clock) to its application here.
    pub propagation: Histogram,
    /// 1 while announcements arrive on a live channel (LISTEN or NATS).
    pub channel_up: Gauge,
    /// Times the store was found on another history than the one applied (then reloaded).
    pub forks: Counter,
    catch_ups: Family<WhyLabels, Counter>,
    announcements_rejected: Family<WhyLabels, Counter>,
}

impl SyncMetrics {
    /// Registers the families.
    pub fn register(registry: &mut Registrar) -> Self {
        let this = Self {
            lag_ms: Gauge::default(),
            watermark: Gauge::default(),
            changes: Counter::default(),
            propagation: Histogram::new(exponential_buckets(0.000_5, 2.0, 18)),
            channel_up: Gauge::default(),
            forks: Counter::default(),
            catch_ups: Family::default(),
            announcements_rejected: Family::default(),
        };
        registry.register(
            "sync_lag_milliseconds",
            "Time since the last successful sync",
            this.lag_ms.clone(),
        );
        registry.register(
            "sync_watermark",
            "Last change number applied",
            this.watermark.clone(),
        );
        registry.register(
            "sync_changes",
            "Changes applied from the change feed",
            this.changes.clone(),
        );
        registry.register(
            "sync_propagation_seconds",
            "Time from a change's commit (the writer's wall clock) to its application here",
            this.propagation.clone(),
        );
        registry.register(
            "sync_channel_up",
            "1 while the change announcements (LISTEN or NATS) arrive, 0 while only polling",
            this.channel_up.clone(),
        );
        registry.register(
            "sync_catch_ups",
            "Reads of the change feed from the store, by why (poll, gap, connected, ...)",
            this.catch_ups.clone(),
        );
        registry.register(
            "sync_announcements_rejected",
            "Announcements dropped without a query, by why (unauthenticated, foreign, malformed, \
             oversized, invalid_id, other_history)",
            this.announcements_rejected.clone(),
        );
        registry.register(
            "sync_forks",
            "Times the store's history was not the one applied here (lossy failover, restore): \
             the caches were reloaded",
            this.forks.clone(),
        );
        this
    }

    /// Counts one catch-up from the store, by why.
    pub fn catch_up(&self, why: &'static str) {
        self.catch_ups.get_or_create(&WhyLabels { why }).inc();
    }

    /// Counts one announcement dropped, by why; answers how many were dropped for that why so
    /// far (the log of drops is rate-limited by it).
    pub fn announcement_rejected(&self, why: &'static str) -> u64 {
        self.announcements_rejected
            .get_or_create(&WhyLabels { why })
            .inc()
            + 1
    }
}
