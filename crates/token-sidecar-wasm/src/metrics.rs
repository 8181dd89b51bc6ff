//! The filter's metrics, kept by Envoy (proxy-wasm `define_metric`): Envoy shows them at
//! `/stats/prometheus` under their own names (`token_sidecar_filter_*`; the `wasmcustom`
//! namespace Envoy files them under is not shown there).
//!
//! The proxy-wasm ABI has no labels: a label is a `.name.value` segment of the stat name, which
//! Envoy's `stats_config.stats_tags` turns into a Prometheus label (tests/proxies/envoy-wasm.yaml
//! and deploy/proxies/istio-wasm.yaml carry the tag rules; without them the segments stay in the
//! name). A metric is defined on first use and its id kept, per Wasm VM; gauges are shared by
//! the VMs of one Envoy (the last one to write wins: each holds a copy of the same state).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `token_sidecar_filter_decisions` | counter | `result` (allow, deny, unavailable, ask_sidecar), `reason` (`REASON_*`, `MISSING_TOKEN`, or `none`) |
//! | `token_sidecar_filter_feed_reads` | counter | `result` (ok, failed) |
//! | `token_sidecar_filter_entries` | gauge | – (cutoffs and denied ids held) |
//! | `token_sidecar_filter_staleness_ms` | gauge | – (since the last read that reached the end) |
//! | `token_sidecar_filter_keys_age_ms` | gauge | – (since the sidecar's key set was read) |
use std::cell::RefCell;
use std::collections::HashMap;

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

/// The prefix of every metric name.
pub const PREFIX: &str = "token_sidecar_filter_";

thread_local! {
    /// Metric ids by full stat name, for this VM (a Wasm VM is single-threaded).
    static IDS: RefCell<HashMap<String, u32>> = RefCell::new(HashMap::new());
}

/// The stat name of a decision: the labels as `.name.value` segments.
pub fn decision_name(result: &str, reason: &str) -> String {
    format!("{PREFIX}decisions.result.{result}.reason.{reason}")
}

fn id(kind: MetricType, name: &str) -> Option<u32> {
    IDS.with(|ids| {
        if let Some(id) = ids.borrow().get(name) {
            return Some(*id);
        }
        let id = hostcalls::define_metric(kind, name).ok()?;
        ids.borrow_mut().insert(name.to_owned(), id);
        Some(id)
    })
}

fn count(name: &str) {
    if let Some(id) = id(MetricType::Counter, name) {
        let _ = hostcalls::increment_metric(id, 1);
    }
}

fn gauge(name: &str, value: u64) {
    if let Some(id) = id(MetricType::Gauge, name) {
        let _ = hostcalls::record_metric(id, value);
    }
}

thread_local! {
    /// Decisions counted since the last flush, by result and reason: a request costs an add
    /// here, not a host call (the ABI's increment was one of the hot path's dearest steps).
    static DECIDED: RefCell<Vec<((&'static str, &'static str), u64)>> = const { RefCell::new(Vec::new()) };
}

/// One request decided: `result` and its reason (`none` when allowed or unavailable). Reaches
/// Envoy at the next [`flush`] (every tick: the poll interval).
pub fn decision(result: &'static str, reason: &'static str) {
    DECIDED.with(|decided| {
        let mut decided = decided.borrow_mut();
        match decided.iter_mut().find(|(key, _)| *key == (result, reason)) {
            Some((_, n)) => *n += 1,
            None => decided.push(((result, reason), 1)),
        }
    });
}

/// Hands the decisions counted since the last flush to Envoy.
pub fn flush() {
    let decided = DECIDED.with(|decided| std::mem::take(&mut *decided.borrow_mut()));
    for ((result, reason), n) in decided {
        if let Some(id) = id(MetricType::Counter, &decision_name(result, reason)) {
            let _ = hostcalls::increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

/// One read of the feed answered (ok) or not (failed).
pub fn feed_read(ok: bool) {
    let result = if ok { "ok" } else { "failed" };
    count(&format!("{PREFIX}feed_reads.result.{result}"));
}

/// What the copy holds and how old it is, recorded on every tick.
pub fn state(entries: usize, staleness_ms: Option<u64>, keys_age_ms: Option<u64>) {
    gauge(
        &format!("{PREFIX}entries"),
        u64::try_from(entries).unwrap_or(u64::MAX),
    );
    // Never in step, or never read: as old as can be said.
    gauge(
        &format!("{PREFIX}staleness_ms"),
        staleness_ms.unwrap_or(u64::MAX >> 1),
    );
    if let Some(age) = keys_age_ms {
        gauge(&format!("{PREFIX}keys_age_ms"), age);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_name_segments_the_tag_rules_read() {
        assert_eq!(
            decision_name("deny", "REASON_TOKEN_REVOKED"),
            "token_sidecar_filter_decisions.result.deny.reason.REASON_TOKEN_REVOKED"
        );
    }
}
