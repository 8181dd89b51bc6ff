//! The metrics every part of the sidecar counts into ([`Metrics`], from the core crate) and the
//! `/metrics` route that serves them.
use std::net::SocketAddr;
use std::sync::Arc;

pub use token_sidecar_core::metrics::*;

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
