//! otlp_sink: an OTLP/HTTP receiver for benchmarks (`scripts/bench-tracing`), built from the
//! protocol's own definitions (`opentelemetry-proto`). It decodes every export, counts the spans
//! and answers as a collector does; on exit (SIGTERM or Ctrl-C) it prints the count.
//!
//!   cargo run --release --example otlp_sink -- 127.0.0.1:14318
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:4318".to_owned());
    let spans = Arc::new(AtomicU64::new(0));
    let counted = spans.clone();
    let router = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let counted = counted.clone();
            async move {
                let Ok(request) = ExportTraceServiceRequest::decode(body) else {
                    return (http::StatusCode::BAD_REQUEST, Vec::new());
                };
                let n: usize = request
                    .resource_spans
                    .iter()
                    .flat_map(|r| &r.scope_spans)
                    .map(|s| s.spans.len())
                    .sum();
                counted.fetch_add(n as u64, Ordering::Relaxed);
                (
                    http::StatusCode::OK,
                    ExportTraceServiceResponse::default().encode_to_vec(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("otlp_sink listening on {addr}");
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("a SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await?;
    println!("{}", spans.load(Ordering::Relaxed));
    Ok(())
}
