//! The metrics every part of the sidecar counts into and the `/metrics` route that serves them.
//! The core registers the groups it counts itself ([`CoreMetrics`]); the server's parts register
//! theirs — RPCs ([`RpcMetrics`]), listeners ([`EdgeMetrics`]), background tasks
//! ([`TaskMetrics`]) — into the same registry.
mod edge;
mod rpc;
mod tasks;

use std::net::SocketAddr;
use std::sync::Arc;

pub use edge::EdgeMetrics;
pub use rpc::{RpcMetrics, TraceExemplar};
pub use tasks::TaskMetrics;
pub use token_sidecar_core::metrics::{
    Cache, CacheMetrics, ClockMetrics, Described, Ignored, Lookup, Metrics as CoreMetrics,
    SecurityMetrics, StoreMetrics, SyncMetrics,
};

/// Every metric of one sidecar instance: the core's groups and the server's own.
pub struct Metrics {
    core: Arc<CoreMetrics>,
    /// Calls on every surface.
    pub rpc: RpcMetrics,
    /// Connections and load on the listeners.
    pub edge: EdgeMetrics,
    /// Background tasks.
    pub tasks: TaskMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with the core's groups and the server's registered.
    pub fn new() -> Self {
        let (core, (rpc, edge, tasks)) = CoreMetrics::with_groups(|registry| {
            (
                RpcMetrics::register(registry),
                EdgeMetrics::register(registry),
                TaskMetrics::register(registry),
            )
        });
        Self {
            core: Arc::new(core),
            rpc,
            edge,
            tasks,
        }
    }

    /// The core's groups (what the revocation state, the caches and the authority count into).
    pub fn core(&self) -> &Arc<CoreMetrics> {
        &self.core
    }

    /// The OpenMetrics text exposition of every group.
    pub fn render(&self) -> String {
        self.core.render()
    }
}

impl std::ops::Deref for Metrics {
    type Target = CoreMetrics;

    fn deref(&self) -> &CoreMetrics {
        &self.core
    }
}

/// The `/metrics` route.
pub fn routes(metrics: Arc<Metrics>) -> axum::Router {
    use axum::http::header;
    use axum::routing::get;
    axum::Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.render(),
                )
            }
        }),
    )
}

/// The address `/metrics` is served on, for logs.
pub fn describe(addr: SocketAddr) -> String {
    format!("http://{addr}/metrics")
}
