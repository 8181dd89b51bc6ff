//! Prometheus metrics: every counter, gauge and histogram of one instance, registered once in
//! [`Metrics::new`], and the `/metrics` route that renders them (served on `--metrics-listen`).
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of an RPC count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// The RPC, e.g. `Verify`.
    pub method: &'static str,
    /// `ok`, `invalid` (a Verify answering valid=false) or the gRPC code of an error.
    pub result: &'static str,
    /// The token reason, or empty.
    pub reason: &'static str,
}

/// Labels of a background task.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    /// `purge` or `secret_reload`.
    pub task: &'static str,
}

/// Labels of an RPC latency.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// The RPC.
    pub method: &'static str,
}

/// Labels of a cache lookup.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// `cutoff` or `denylist`.
    pub cache: &'static str,
    /// `hit` or `miss` (for the denylist: `negative` = filter says no, `maybe`).
    pub result: &'static str,
}

/// Labels of a store query.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueryLabels {
    /// What it was for, e.g. `cutoff`, `denied`, `changes`.
    pub kind: &'static str,
}

/// Labels of a listener's connections.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// `api`, `health` or `metrics`.
    pub listener: &'static str,
}

/// Labels of a refused connection.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// `api`, `health` or `metrics`.
    pub listener: &'static str,
    /// `limit` (over --max-connections), `handshake_timeout` or `bad_handshake`.
    pub why: &'static str,
}

/// Labels of a store that is not ready.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// `too_many_connections`, `unreachable` or `error`.
    pub reason: &'static str,
}

/// Labels of a catch-up from the store.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WhyLabels {
    /// `poll` (the periodic poll), `gap` (a missing number), `connected`, `reconnected`,
    /// `channel_down`, `unknown_announcement` or `overflow`.
    pub why: &'static str,
}

/// The exemplar of a latency: the trace of the request it measured.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TraceExemplar {
    /// The W3C trace id (32 hex digits).
    pub trace_id: String,
}

/// Every metric of one sidecar instance.
pub struct Metrics {
    registry: Registry,
    rpc_requests: Family<RpcLabels, Counter>,
    rpc_seconds: Family<MethodLabels, HistogramWithExemplars<TraceExemplar>>,
    cache_lookups: Family<CacheLabels, Counter>,
    store_queries: Family<QueryLabels, Counter>,
    store_errors: Counter,
    /// Milliseconds since the last successful sync with the store.
    pub sync_lag_ms: Gauge,
    /// The last change number applied.
    pub sync_watermark: Gauge,
    /// Changes applied from the change feed.
    pub sync_changes: Counter,
    /// Seconds from a change's commit (stamped on the database's clock) to its application here.
    pub sync_propagation: Histogram,
    /// 1 while announcements arrive on a live channel (LISTEN or NATS).
    pub sync_channel_up: Gauge,
    store_not_ready: Family<ReasonLabels, Counter>,
    sync_catch_ups: Family<WhyLabels, Counter>,
    sync_announcements_rejected: Family<WhyLabels, Counter>,
    /// Times the store was found on another history than the one applied (then reloaded).
    pub sync_forks: Counter,
    /// This process's wall clock minus the fleet's (the database's), in milliseconds.
    pub clock_skew_ms: Gauge,
    /// How far this process's reading of the fleet's clock may be off, in µs (-1: not read).
    pub clock_uncertainty_us: Gauge,
    /// 1 while the fleet's clock has been read and the skew is within --max-clock-skew.
    pub clock_in_step: Gauge,
    /// Issue and Refresh refused because this instance's clock is off the fleet's.
    pub clock_refusals: Counter,
    store_write_failures: Family<WhyLabels, Counter>,
    task_restarts: Family<TaskLabels, Counter>,
    /// Entries in the denylist filter.
    pub filter_items: Gauge,
    /// Bits in the denylist filter.
    pub filter_bits: Gauge,
    /// Configured expected size of the denylist filter.
    pub filter_expected_items: Gauge,
    /// Configured false-positive rate of the denylist filter, in parts per million.
    pub filter_target_fp_ppm: Gauge,
    /// Filter rebuilds.
    pub filter_rebuilds: Counter,
    /// Requests refused with RESOURCE_EXHAUSTED because too many were in flight.
    pub shed_requests: Counter,
    /// API requests being served now.
    pub requests_in_flight: Gauge,
    /// The configured bound on API requests in flight.
    pub max_requests_in_flight: Gauge,
    /// Refreshes of a superseded token after the reuse interval (sessions revoked, SPEC §11).
    pub refresh_reuse_detected: Counter,
    /// Security events from identity providers accepted but not acted on (an event type we do
    /// not act on, SSF's verification event).
    pub idp_events_ignored: Counter,
    connections_open: Family<ListenerLabels, Gauge>,
    connections_refused: Family<RefusedLabels, Counter>,
    verified_cache_entries: Gauge,
    hot: HotHandles,
}

/// The handles of the labels every Verify touches, resolved once: a `Family` lookup takes a
/// lock and hashes the labels on every call.
#[derive(Clone, Default)]
struct HotHandles {
    verify_ok: Counter,
    verify_seconds: Option<HistogramWithExemplars<TraceExemplar>>,
    cutoff_hit: Counter,
    denylist_negative: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("token_sidecar");
        let rpc_requests = Family::<RpcLabels, Counter>::default();
        let rpc_seconds =
            Family::<MethodLabels, HistogramWithExemplars<TraceExemplar>>::new_with_constructor(
                || HistogramWithExemplars::new(exponential_buckets(0.000_05, 2.0, 18)),
            );
        let cache_lookups = Family::<CacheLabels, Counter>::default();
        let store_queries = Family::<QueryLabels, Counter>::default();
        let m = Self {
            registry: Registry::default(),
            rpc_requests,
            rpc_seconds,
            cache_lookups,
            store_queries,
            store_errors: Counter::default(),
            sync_lag_ms: Gauge::default(),
            sync_watermark: Gauge::default(),
            sync_changes: Counter::default(),
            sync_propagation: Histogram::new(exponential_buckets(0.000_5, 2.0, 18)),
            sync_channel_up: Gauge::default(),
            store_not_ready: Family::default(),
            sync_catch_ups: Family::default(),
            sync_announcements_rejected: Family::default(),
            sync_forks: Counter::default(),
            clock_skew_ms: Gauge::default(),
            clock_in_step: Gauge::default(),
            clock_uncertainty_us: Gauge::default(),
            clock_refusals: Counter::default(),
            store_write_failures: Family::default(),
            task_restarts: Family::default(),
            filter_items: Gauge::default(),
            filter_bits: Gauge::default(),
            filter_expected_items: Gauge::default(),
            filter_target_fp_ppm: Gauge::default(),
            filter_rebuilds: Counter::default(),
            shed_requests: Counter::default(),
            requests_in_flight: Gauge::default(),
            max_requests_in_flight: Gauge::default(),
            refresh_reuse_detected: Counter::default(),
            idp_events_ignored: Counter::default(),
            connections_open: Family::default(),
            connections_refused: Family::default(),
            verified_cache_entries: Gauge::default(),
            hot: HotHandles::default(),
        };
        registry.register(
            "rpc_requests",
            "RPCs by method, result and reason",
            m.rpc_requests.clone(),
        );
        registry.register("rpc_duration_seconds", "RPC latency", m.rpc_seconds.clone());
        registry.register(
            "trace_spans",
            "Finished trace spans by outcome: exported, export_failed, dropped (queue full)",
            crate::spans::span_counter().clone(),
        );
        registry.register(
            "cache_lookups",
            "Cache lookups by cache and result",
            m.cache_lookups.clone(),
        );
        registry.register(
            "store_queries",
            "Store queries by purpose",
            m.store_queries.clone(),
        );
        registry.register(
            "store_errors",
            "Store queries that failed",
            m.store_errors.clone(),
        );
        registry.register(
            "sync_lag_milliseconds",
            "Time since the last successful sync",
            m.sync_lag_ms.clone(),
        );
        registry.register(
            "sync_watermark",
            "Last change number applied",
            m.sync_watermark.clone(),
        );
        registry.register(
            "sync_changes",
            "Changes applied from the change feed",
            m.sync_changes.clone(),
        );
        registry.register(
            "sync_propagation_seconds",
            "Time from a change's commit (the writer's wall clock) to its application here",
            m.sync_propagation.clone(),
        );
        registry.register(
            "sync_channel_up",
            "1 while the change announcements (LISTEN or NATS) arrive, 0 while only polling",
            m.sync_channel_up.clone(),
        );
        registry.register(
            "sync_catch_ups",
            "Reads of the change feed from the store, by why (poll, gap, connected, ...)",
            m.sync_catch_ups.clone(),
        );
        registry.register(
            "sync_announcements_rejected",
            "Announcements dropped without a query, by why (unauthenticated, foreign, malformed, \
             oversized, invalid_id, other_history)",
            m.sync_announcements_rejected.clone(),
        );
        registry.register(
            "sync_forks",
            "Times the store's history was not the one applied here (lossy failover, restore): \
             the caches were reloaded",
            m.sync_forks.clone(),
        );
        registry.register(
            "clock_skew_ms",
            "This process's wall clock minus the database's (the fleet's one clock), in ms",
            m.clock_skew_ms.clone(),
        );
        registry.register(
            "clock_uncertainty_us",
            "How far this process's reading of the database's clock may be off, in µs (half the \
             quickest recent round trip, plus drift); -1 until read",
            m.clock_uncertainty_us.clone(),
        );
        registry.register(
            "clock_in_step",
            "1 while the database's clock has been read and this process's is within \
             --max-clock-skew of it; 0 while Issue and Refresh are refused",
            m.clock_in_step.clone(),
        );
        registry.register(
            "clock_refusals",
            "Issue and Refresh refused because this process's clock is off the database's",
            m.clock_refusals.clone(),
        );
        registry.register(
            "store_write_failures",
            "Writes the store did not acknowledge, by why (timeout: a lock, statement or \
             connection waited beyond --store-timeout; outcome_unknown: the commit's answer was \
             lost and could not be re-checked; file_lost: the SQLite file was deleted or \
             replaced; error)",
            m.store_write_failures.clone(),
        );
        registry.register(
            "task_restarts",
            "Restarts of a background task that ended (purge, secret reload), by task",
            m.task_restarts.clone(),
        );
        registry.register(
            "store_not_ready",
            "Times the store could not be prepared at start, by reason",
            m.store_not_ready.clone(),
        );
        registry.register(
            "denylist_filter_items",
            "Entries in the denylist filter",
            m.filter_items.clone(),
        );
        registry.register(
            "denylist_filter_bits",
            "Size of the denylist filter in bits",
            m.filter_bits.clone(),
        );
        registry.register(
            "denylist_filter_expected_items",
            "Configured expected size of the denylist filter",
            m.filter_expected_items.clone(),
        );
        registry.register(
            "denylist_filter_target_fp_ppm",
            "Configured false-positive rate of the denylist filter (parts per million)",
            m.filter_target_fp_ppm.clone(),
        );
        registry.register(
            "denylist_filter_rebuilds",
            "Denylist filter rebuilds",
            m.filter_rebuilds.clone(),
        );
        registry.register(
            "shed_requests",
            "Requests refused with RESOURCE_EXHAUSTED because too many were in flight",
            m.shed_requests.clone(),
        );
        registry.register(
            "requests_in_flight",
            "API requests being served now",
            m.requests_in_flight.clone(),
        );
        registry.register(
            "max_requests_in_flight",
            "The configured bound on API requests in flight (--max-concurrent-requests)",
            m.max_requests_in_flight.clone(),
        );
        registry.register(
            "connections_open",
            "Connections open, by listener (after their handshake)",
            m.connections_open.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed unserved: over --max-connections, or no first request within \
             --handshake-timeout",
            m.connections_refused.clone(),
        );
        registry.register(
            "refresh_reuse_detected",
            "Refreshes of an older token of a session after the reuse interval: the session was \
             revoked",
            m.refresh_reuse_detected.clone(),
        );
        registry.register(
            "idp_events_ignored",
            "Security events from identity providers (Shared Signals) accepted and not acted on: \
             an event type the sidecar does not act on, or a stream verification",
            m.idp_events_ignored.clone(),
        );
        registry.register(
            "verified_cache_entries",
            "Tokens whose decode is remembered (approximate)",
            m.verified_cache_entries.clone(),
        );
        // One statement each: a Family's guard lives to the end of its statement, and a second
        // get_or_create on the same Family within it would wait for that guard forever.
        let verify_ok = m.rpc_requests.get_or_create_owned(&RpcLabels {
            method: "Verify",
            result: "ok",
            reason: "",
        });
        let verify_seconds = m
            .rpc_seconds
            .get_or_create_owned(&MethodLabels { method: "Verify" });
        let cutoff_hit = m.cache_lookups.get_or_create_owned(&CacheLabels {
            cache: "cutoff",
            result: "hit",
        });
        let denylist_negative = m.cache_lookups.get_or_create_owned(&CacheLabels {
            cache: "denylist",
            result: "negative",
        });
        let hot = HotHandles {
            verify_ok,
            verify_seconds: Some(verify_seconds),
            cutoff_hit,
            denylist_negative,
        };
        Self { registry, hot, ..m }
    }

    /// The verified-token cache's counters, resolved once: `cache_lookups{cache="verified"}`
    /// hits and misses, and its entry count.
    pub fn verified_cache(&self) -> crate::token::VerifiedCacheMetrics {
        let lookups = |result| {
            self.cache_lookups.get_or_create_owned(&CacheLabels {
                cache: "verified",
                result,
            })
        };
        crate::token::VerifiedCacheMetrics {
            hits: lookups("hit"),
            misses: lookups("miss"),
            entries: self.verified_cache_entries.clone(),
        }
    }

    /// The gauge of one listener's open connections.
    pub fn connections_open(&self, listener: &'static str) -> Gauge {
        self.connections_open
            .get_or_create(&ListenerLabels { listener })
            .clone()
    }

    /// Counts one connection closed unserved.
    pub fn connection_refused(&self, listener: &'static str, why: &'static str) {
        self.connections_refused
            .get_or_create(&RefusedLabels { listener, why })
            .inc();
    }

    /// Connections closed unserved so far, for one listener and reason.
    pub fn connections_refused_of(&self, listener: &'static str, why: &'static str) -> u64 {
        self.connections_refused
            .get_or_create(&RefusedLabels { listener, why })
            .get()
    }

    /// Counts one RPC and its latency.
    pub fn rpc(
        &self,
        method: &'static str,
        started: Instant,
        result: &'static str,
        reason: &'static str,
    ) {
        let seconds = started.elapsed().as_secs_f64();
        // While tracing is on, the latency names the request's trace (an OpenMetrics exemplar).
        let exemplar = crate::spans::current_trace_id().map(|trace_id| TraceExemplar { trace_id });
        if let ("Verify", Some(histogram)) = (method, &self.hot.verify_seconds) {
            if result == "ok" {
                self.hot.verify_ok.inc();
            } else {
                self.count_rpc(method, result, reason);
            }
            histogram.observe(seconds, exemplar, None);
            return;
        }
        self.count_rpc(method, result, reason);
        self.rpc_seconds
            .get_or_create(&MethodLabels { method })
            .observe(seconds, exemplar, None);
    }

    fn count_rpc(&self, method: &'static str, result: &'static str, reason: &'static str) {
        self.rpc_requests
            .get_or_create(&RpcLabels {
                method,
                result,
                reason,
            })
            .inc();
    }

    /// Counts one cache lookup.
    pub fn cache(&self, cache: &'static str, result: &'static str) {
        match (cache, result) {
            ("cutoff", "hit") => self.hot.cutoff_hit.inc(),
            ("denylist", "negative") => self.hot.denylist_negative.inc(),
            _ => self
                .cache_lookups
                .get_or_create(&CacheLabels { cache, result })
                .inc(),
        };
    }

    /// Counts one store query.
    pub fn store_query(&self, kind: &'static str) {
        self.store_queries
            .get_or_create(&QueryLabels { kind })
            .inc();
    }

    /// Counts one catch-up from the store, by why.
    pub fn sync_catch_up(&self, why: &'static str) {
        self.sync_catch_ups.get_or_create(&WhyLabels { why }).inc();
    }

    /// Counts one announcement dropped, by why.
    pub fn sync_announcement_rejected(&self, why: &'static str) {
        self.sync_announcements_rejected
            .get_or_create(&WhyLabels { why })
            .inc();
    }

    /// Announcements dropped so far for `why` (tests and the rate-limited log).
    pub fn sync_announcements_rejected(&self, why: &'static str) -> u64 {
        self.sync_announcements_rejected
            .get_or_create(&WhyLabels { why })
            .get()
    }

    /// Counts one failed attempt to prepare the store at start, by reason.
    pub fn store_not_ready(&self, reason: &'static str) {
        self.store_not_ready
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts one restart of a background task.
    pub fn task_restarted(&self, task: &'static str) {
        self.task_restarts.get_or_create(&TaskLabels { task }).inc();
    }

    /// Restarts of `task` so far (tests).
    pub fn task_restarts_of(&self, task: &'static str) -> u64 {
        self.task_restarts.get_or_create(&TaskLabels { task }).get()
    }

    /// Counts one write the store did not acknowledge, by why.
    pub fn store_write_failed(&self, why: &'static str) {
        self.store_write_failures
            .get_or_create(&WhyLabels { why })
            .inc();
    }

    /// Writes not acknowledged so far for `why` (tests).
    pub fn store_write_failures_of(&self, why: &'static str) -> u64 {
        self.store_write_failures
            .get_or_create(&WhyLabels { why })
            .get()
    }

    /// Counts one failed store query.
    pub fn store_error(&self) {
        self.store_errors.inc();
    }

    /// Store queries made so far for one purpose.
    pub fn store_queries_of(&self, kind: &'static str) -> u64 {
        self.store_queries
            .get_or_create(&QueryLabels { kind })
            .get()
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
