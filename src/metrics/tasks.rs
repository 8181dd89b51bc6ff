//! Background tasks: restarts of a task that ended.
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use token_sidecar_core::metrics::Registrar;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    /// `purge`, `secret_reload`, …
    task: &'static str,
}

/// `task_restarts_total`.
pub struct TaskMetrics {
    restarts: Family<TaskLabels, Counter>,
}

impl TaskMetrics {
    /// Registers the family.
    pub fn register(registry: &mut Registrar) -> Self {
        let restarts = Family::default();
        registry.register(
            "task_restarts",
            "Restarts of a background task that ended (purge, secret reload), by task",
            restarts.clone(),
        );
        Self { restarts }
    }

    /// Counts one restart of `task`; answers how many it has had.
    pub fn restarted(&self, task: &'static str) -> u64 {
        self.restarts.get_or_create(&TaskLabels { task }).inc() + 1
    }
}
