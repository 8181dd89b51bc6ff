//! OpenTelemetry traces, configured the way every OpenTelemetry SDK is (`OTEL_EXPORTER_OTLP_*`,
//! `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER[_ARG]`, each also a
//! flag). Off when no endpoint is set: then no span is ever created and the hot path pays one
//! relaxed atomic load per request.
//!
//! Spans leave through a bounded queue ([`BoundedExport`]): a collector that is down or slow
//! never slows a request and never grows memory; what cannot be queued is dropped and counted
//! (`token_sidecar_trace_spans_total{outcome}`).
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{
    Sampler, SdkTracer, SdkTracerProvider, Span, SpanData, SpanExporter, SpanProcessor,
};
use tokio::sync::mpsc;

/// Whether spans may carry the user id (`--trace-user-ids`).
static USER_IDS: AtomicBool = AtomicBool::new(false);

pub use token_sidecar_core::spans::{SpanOutcome, enabled, span_counter, store_span};

fn count(outcome: &'static str, spans: u64) {
    span_counter()
        .get_or_create(&SpanOutcome { outcome })
        .inc_by(spans);
}

/// The ids of the current request's span (hex), while tracing is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanIds {
    /// The W3C trace id, 32 hex digits.
    pub trace_id: String,
    /// The span id, 16 hex digits.
    pub span_id: String,
    /// Whether the trace is recorded (exported).
    pub sampled: bool,
}

/// The current span's ids; None while tracing is off or outside a request span.
pub fn current_ids() -> Option<SpanIds> {
    if !enabled() {
        return None;
    }
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let context = tracing::Span::current().context();
    let span = context.span();
    let ids = span.span_context();
    ids.is_valid().then(|| SpanIds {
        trace_id: ids.trace_id().to_string(),
        span_id: ids.span_id().to_string(),
        sampled: ids.is_sampled(),
    })
}

/// The trace id of the current request, if its trace is recorded (for exemplars).
pub fn current_trace_id() -> Option<String> {
    current_ids()
        .filter(|ids| ids.sampled)
        .map(|ids| ids.trace_id)
}

/// The span of one catch-up of the sync task (`why`: `poll`, `gap`, `connected`, …): a root
/// span, the store queries its children.
pub fn sync_span(why: &'static str) -> tracing::Span {
    if !enabled() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        parent: None,
        "sync",
        otel.name = "sync catch-up",
        otel.kind = "internal",
        why,
    )
}

/// Whether spans carry the user id.
pub fn user_ids() -> bool {
    USER_IDS.load(Ordering::Relaxed)
}

/// How spans are sent: OTLP over gRPC or over HTTP with protobuf bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (collectors listen on 4317).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (collectors listen on 4318; `/v1/traces` is appended).
    #[value(name = "http/protobuf")]
    HttpProtobuf,
}

/// The sampler names of the OpenTelemetry specification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "verbatim")]
#[allow(non_camel_case_types)]
pub enum SamplerName {
    /// Every trace.
    always_on,
    /// None.
    always_off,
    /// A share of traces (`OTEL_TRACES_SAMPLER_ARG`), by trace id.
    traceidratio,
    /// As the caller decided; every trace this sidecar starts.
    parentbased_always_on,
    /// As the caller decided; none this sidecar starts.
    parentbased_always_off,
    /// As the caller decided; a share of those this sidecar starts.
    parentbased_traceidratio,
}

/// What the flags say about tracing.
#[derive(Debug, Clone)]
pub struct TraceSettings {
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`: the collector's base URL.
    pub endpoint: Option<String>,
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`: the full URL for traces (used as it is).
    pub traces_endpoint: Option<String>,
    /// `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub protocol: OtlpProtocol,
    /// `OTEL_EXPORTER_OTLP_TIMEOUT`: the longest one export may take.
    pub timeout: Duration,
    /// `OTEL_SERVICE_NAME`.
    pub service_name: String,
    /// `OTEL_RESOURCE_ATTRIBUTES`: `key=value,key=value` (values percent-encoded).
    pub resource_attributes: Option<String>,
    /// `OTEL_TRACES_SAMPLER`.
    pub sampler: SamplerName,
    /// `OTEL_TRACES_SAMPLER_ARG`: the ratio.
    pub sampler_arg: Option<f64>,
    /// `OTEL_SDK_DISABLED`.
    pub disabled: bool,
    /// `--trace-user-ids`: spans carry the user id.
    pub user_ids: bool,
}

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The resource attributes are not `key=value` pairs.
    #[error("OTEL_RESOURCE_ATTRIBUTES: {0}")]
    ResourceAttributes(String),
    /// The sampler's ratio is not between 0 and 1.
    #[error("OTEL_TRACES_SAMPLER_ARG: {0}")]
    SamplerArg(String),
    /// The exporter could not be built (e.g. the endpoint is not a URL).
    #[error("the OTLP exporter: {0}")]
    Exporter(String),
}

/// Spans at most queued for export; beyond that they are dropped (and counted).
const QUEUE: usize = 2048;
/// Spans at most in one export.
const BATCH: usize = 512;
/// How long spans wait for a batch to fill.
const BATCH_DELAY: Duration = Duration::from_secs(1);

/// The running pipeline: keeps the provider until shutdown.
pub struct Tracing {
    provider: SdkTracerProvider,
    flush: mpsc::Sender<tokio::sync::oneshot::Sender<()>>,
    described: String,
}

impl Tracing {
    /// Where traces go, for the start log.
    pub fn describe(&self) -> &str {
        &self.described
    }

    /// Exports what is queued (waiting at most `bound`) and stops.
    pub async fn shutdown(self, bound: Duration) {
        let (done, answered) = tokio::sync::oneshot::channel();
        if self.flush.send(done).await.is_ok() {
            let _ = tokio::time::timeout(bound, answered).await;
        }
        let _ = self.provider.shutdown();
    }
}

impl TraceSettings {
    /// The collector's traces URL, or None when tracing is off.
    fn url(&self) -> Option<String> {
        if self.disabled {
            return None;
        }
        if let Some(url) = self.traces_endpoint.as_deref().filter(|s| !s.is_empty()) {
            return Some(url.to_owned());
        }
        let base = self.endpoint.as_deref().filter(|s| !s.is_empty())?;
        Some(match self.protocol {
            OtlpProtocol::Grpc => base.to_owned(),
            OtlpProtocol::HttpProtobuf => format!("{}/v1/traces", base.trim_end_matches('/')),
        })
    }

    fn sampler(&self) -> Result<Sampler, TraceError> {
        let ratio = || match self.sampler_arg {
            None => Ok(1.0),
            Some(r) if (0.0..=1.0).contains(&r) => Ok(r),
            Some(r) => Err(TraceError::SamplerArg(format!(
                "{r} is not a ratio between 0 and 1"
            ))),
        };
        Ok(match self.sampler {
            SamplerName::always_on => Sampler::AlwaysOn,
            SamplerName::always_off => Sampler::AlwaysOff,
            SamplerName::traceidratio => Sampler::TraceIdRatioBased(ratio()?),
            SamplerName::parentbased_always_on => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            SamplerName::parentbased_always_off => {
                Sampler::ParentBased(Box::new(Sampler::AlwaysOff))
            }
            SamplerName::parentbased_traceidratio => {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio()?)))
            }
        })
    }

    fn resource(&self) -> Result<Resource, TraceError> {
        let mut attributes = Vec::new();
        if let Some(list) = self.resource_attributes.as_deref() {
            attributes = parse_resource_attributes(list)?;
        }
        Ok(Resource::builder_empty()
            .with_attributes(attributes)
            .with_service_name(self.service_name.clone())
            .build())
    }
}

/// `key=value,key=value`, values percent-decoded (the specification's format).
pub fn parse_resource_attributes(list: &str) -> Result<Vec<KeyValue>, TraceError> {
    let mut attributes = Vec::new();
    for pair in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(TraceError::ResourceAttributes(format!(
                "`{pair}` is not key=value"
            )));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(TraceError::ResourceAttributes(format!(
                "`{pair}` has no key"
            )));
        }
        let value: String = form_urlencoded::parse(format!("v={}", value.trim()).as_bytes())
            .map(|(_, v)| v.into_owned())
            .next()
            .unwrap_or_default();
        attributes.push(KeyValue::new(key.to_owned(), value));
    }
    Ok(attributes)
}

/// What `check-config` says about tracing: where spans would go, or that it is off; an error
/// for settings the pipeline would refuse (resource attributes, the sampler's ratio).
pub fn describe(settings: &TraceSettings) -> Result<String, TraceError> {
    settings.sampler()?;
    settings.resource()?;
    Ok(match settings.url() {
        None => "traces: off (no OTEL_EXPORTER_OTLP_ENDPOINT)".to_owned(),
        Some(url) => format!(
            "traces: OTLP {} to {url}, sampler {:?}{}",
            match settings.protocol {
                OtlpProtocol::Grpc => "gRPC",
                OtlpProtocol::HttpProtobuf => "HTTP/protobuf",
            },
            settings.sampler,
            if settings.user_ids {
                ", user ids in spans"
            } else {
                ""
            }
        ),
    })
}

/// Starts the pipeline when an endpoint is configured: returns the tracer for the
/// `tracing-opentelemetry` layer, and the handle to shut it down with. Must run inside the
/// Tokio runtime (the exporter's task runs on it).
pub fn start(settings: &TraceSettings) -> Result<Option<(SdkTracer, Tracing)>, TraceError> {
    USER_IDS.store(settings.user_ids, Ordering::Relaxed);
    let Some(url) = settings.url() else {
        return Ok(None);
    };
    let exporter = match settings.protocol {
        OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(url.clone())
            .with_timeout(settings.timeout)
            .build(),
        OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url.clone())
            .with_timeout(settings.timeout)
            .build(),
    }
    .map_err(|e| TraceError::Exporter(e.to_string()))?;
    let resource = settings.resource()?;
    let mut exporter = exporter;
    // The exporter sends the resource with every batch (the SDK's own processors hand it over
    // the same way).
    exporter.set_resource(&resource);
    let processor = BoundedExport::start(exporter, settings.timeout);
    let flush = processor.flush.clone();
    let provider = SdkTracerProvider::builder()
        .with_sampler(settings.sampler()?)
        .with_resource(resource)
        .with_span_processor(processor)
        .build();
    let tracer = provider.tracer("token-sidecar");
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    token_sidecar_core::spans::enable(current_trace_id);
    let described = describe(settings)?;
    Ok(Some((
        tracer,
        Tracing {
            provider,
            flush,
            described,
        },
    )))
}

/// A span processor with a bounded queue in front of the exporter: `on_end` never waits, a
/// full queue drops the span (counted), and one task exports in batches, each bounded by the
/// export timeout.
#[derive(Debug)]
pub struct BoundedExport {
    queue: mpsc::Sender<SpanData>,
    /// Asks the task to export what it holds now; answered when done.
    flush: mpsc::Sender<tokio::sync::oneshot::Sender<()>>,
}

impl BoundedExport {
    fn start<E>(exporter: E, timeout: Duration) -> Self
    where
        E: SpanExporter + 'static,
    {
        let (queue, mut spans) = mpsc::channel::<SpanData>(QUEUE);
        let (flush, mut flushes) = mpsc::channel::<tokio::sync::oneshot::Sender<()>>(4);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            loop {
                let mut done = None;
                let open = tokio::select! {
                    span = spans.recv() => match span {
                        Some(span) => {
                            batch.push(span);
                            if batch.len() < BATCH {
                                continue;
                            }
                            true
                        }
                        None => false,
                    },
                    () = tokio::time::sleep(BATCH_DELAY), if !batch.is_empty() => true,
                    asked = flushes.recv() => {
                        while let Ok(span) = spans.try_recv() {
                            batch.push(span);
                        }
                        done = asked;
                        true
                    }
                };
                if !batch.is_empty() {
                    let spans_in = batch.len() as u64;
                    let sent = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                    let outcome = export_with_retries(&exporter, sent, timeout).await;
                    count(outcome, spans_in);
                }
                if let Some(done) = done {
                    let _ = done.send(());
                }
                if !open {
                    return;
                }
            }
        });
        Self { queue, flush }
    }
}

/// Attempts at exporting one batch before it is dropped (and counted `export_failed`).
const EXPORT_ATTEMPTS: u32 = 3;
/// The pause before a failed batch is tried again (doubled each time).
const RETRY_DELAY: Duration = Duration::from_millis(200);

/// Exports `batch`, trying again after a failure: the exporter's connection is opened on its
/// first export, and a process's first batch — the first requests' spans — must not be lost to
/// a connection still being set up or a collector a moment late. (Spans that arrive meanwhile
/// wait in the bounded queue.)
async fn export_with_retries<E: SpanExporter>(
    exporter: &E,
    batch: Vec<SpanData>,
    timeout: Duration,
) -> &'static str {
    let mut delay = RETRY_DELAY;
    for attempt in 1..=EXPORT_ATTEMPTS {
        if let Ok(Ok(())) = tokio::time::timeout(timeout, exporter.export(batch.clone())).await {
            return "exported";
        }
        if attempt < EXPORT_ATTEMPTS {
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }
    "export_failed"
}

impl SpanProcessor for BoundedExport {
    fn on_start(&self, _span: &mut Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if self.queue.try_send(span).is_err() {
            count("dropped", 1);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        // Never waits here (this is called on runtime threads): the export task flushes, and
        // `Tracing::shutdown` waits for it.
        let (done, _) = tokio::sync::oneshot::channel();
        self.flush
            .try_send(done)
            .map_err(|e| OTelSdkError::InternalFailure(e.to_string()))
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        self.force_flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> TraceSettings {
        TraceSettings {
            endpoint: None,
            traces_endpoint: None,
            protocol: OtlpProtocol::HttpProtobuf,
            timeout: Duration::from_secs(10),
            service_name: "token-sidecar".into(),
            resource_attributes: None,
            sampler: SamplerName::parentbased_always_on,
            sampler_arg: None,
            disabled: false,
            user_ids: false,
        }
    }

    #[test]
    fn the_traces_url_follows_the_specification() {
        assert_eq!(settings().url(), None, "no endpoint: off");
        let mut s = settings();
        s.endpoint = Some("http://collector:4318/".into());
        assert_eq!(s.url().as_deref(), Some("http://collector:4318/v1/traces"));
        s.protocol = OtlpProtocol::Grpc;
        assert_eq!(s.url().as_deref(), Some("http://collector:4318/"));
        s.traces_endpoint = Some("http://other:4318/custom".into());
        assert_eq!(s.url().as_deref(), Some("http://other:4318/custom"));
        s.disabled = true;
        assert_eq!(s.url(), None, "OTEL_SDK_DISABLED wins");
    }

    #[test]
    fn resource_attributes_are_key_value_pairs_with_encoded_values() {
        let parsed =
            parse_resource_attributes("a=1, deployment.environment=prod%20eu ,,").expect("valid");
        assert_eq!(
            parsed,
            vec![
                KeyValue::new("a", "1"),
                KeyValue::new("deployment.environment", "prod eu")
            ]
        );
        assert!(parse_resource_attributes("novalue").is_err());
        assert!(parse_resource_attributes("=x").is_err());
    }

    #[test]
    fn a_sampler_ratio_outside_0_to_1_is_refused() {
        let mut s = settings();
        s.sampler = SamplerName::traceidratio;
        s.sampler_arg = Some(1.5);
        assert!(matches!(s.sampler(), Err(TraceError::SamplerArg(_))));
        s.sampler_arg = Some(0.25);
        assert!(matches!(s.sampler(), Ok(Sampler::TraceIdRatioBased(r)) if r == 0.25));
    }
}
