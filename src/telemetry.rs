//! Logging, and traces when an OTLP endpoint is set ([`crate::otel`]). Tokens and key material
//! are never logged: requests log user ids and jtis only (and, while tracing is on, the trace
//! and span ids of the request).
use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;
use crate::otel::{self, TraceError, TraceSettings, Tracing};

/// Installs the global subscriber; `RUST_LOG` overrides the default `info` level.
pub fn init(format: LogFormat) {
    let _ = install(format, None);
}

/// Installs the global subscriber with the OpenTelemetry layer the settings ask for (none when
/// no endpoint is set); returns the pipeline to shut down at exit. Runs inside the runtime.
pub fn init_with_traces(
    format: LogFormat,
    traces: &TraceSettings,
) -> Result<Option<Tracing>, TraceError> {
    let started = otel::start(traces)?;
    let (tracer, tracing) = match started {
        Some((tracer, tracing)) => (Some(tracer), Some(tracing)),
        None => (None, None),
    };
    install(format, tracer);
    if let Some(tracing) = &tracing {
        tracing::info!("{}", tracing.describe());
    }
    Ok(tracing)
}

fn install(format: LogFormat, tracer: Option<opentelemetry_sdk::trace::SdkTracer>) -> bool {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let logs = match format {
        LogFormat::Text => fmt.with_filter(filter).boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).with_filter(filter).boxed(),
    };
    // The sidecar's own request spans only: log events (which name users) never become span
    // events, and the libraries' internal spans (h2, hyper, tower: several per request, at
    // trace level) are not exported.
    let spans = tracer.map(|tracer| {
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                meta.is_span() && meta.target().starts_with("token_sidecar")
            }))
    });
    // A second init (tests) keeps the first subscriber.
    tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init()
        .is_ok()
}
