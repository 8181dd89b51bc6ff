//! Calls to the store: queries by purpose, failures, writes not acknowledged, and the times it
//! could not be prepared at start.
use super::Registrar;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueryLabels {
    /// What it was for, e.g. `cutoff`, `denied`, `changes`.
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    /// `too_many_connections`, `unreachable` or `error`.
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WhyLabels {
    why: &'static str,
}

/// `store_queries_total`, `store_errors_total`, `store_write_failures_total`,
/// `store_not_ready_total`.
pub struct StoreMetrics {
    queries: Family<QueryLabels, Counter>,
    errors: Counter,
    write_failures: Family<WhyLabels, Counter>,
    not_ready: Family<ReasonLabels, Counter>,
}

impl StoreMetrics {
    /// Registers the families.
    pub fn register(registry: &mut Registrar) -> Self {
        let this = Self {
            queries: Family::default(),
            errors: Counter::default(),
            write_failures: Family::default(),
            not_ready: Family::default(),
        };
        registry.register(
            "store_queries",
            "Store queries by purpose",
            this.queries.clone(),
        );
        registry.register(
            "store_errors",
            "Store queries that failed",
            this.errors.clone(),
        );
        registry.register(
            "store_write_failures",
            "Writes the store did not acknowledge, by why (timeout: a lock, statement or \
             connection waited beyond --store-timeout; outcome_unknown: the commit's answer was \
             lost and could not be re-checked; file_lost: the SQLite file was deleted or \
             replaced; error)",
            this.write_failures.clone(),
        );
        registry.register(
            "store_not_ready",
            "Times the store could not be prepared at start, by reason",
            this.not_ready.clone(),
        );
        this
    }

    /// Counts one query, by purpose.
    pub fn query(&self, kind: &'static str) {
        self.queries.get_or_create(&QueryLabels { kind }).inc();
    }

    /// Counts one failed query.
    pub fn error(&self) {
        self.errors.inc();
    }

    /// Counts one write the store did not acknowledge, by why.
    pub fn write_failed(&self, why: &'static str) {
        self.write_failures.get_or_create(&WhyLabels { why }).inc();
    }

    /// Counts one failed attempt to prepare the store at start, by reason.
    pub fn not_ready(&self, reason: &'static str) {
        self.not_ready.get_or_create(&ReasonLabels { reason }).inc();
    }
}
