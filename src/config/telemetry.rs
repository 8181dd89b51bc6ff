//! Logs, metrics and traces.
use super::values::LogFormat;
use crate::otel::OtlpProtocol;
use crate::otel::SamplerName;

/// Logs, metrics and traces.
#[derive(Debug, Clone, clap::Args)]
pub struct TelemetryArgs {
    /// Log format.
    #[arg(help_heading = "Telemetry", long, env = "TOKEN_SIDECAR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// OTLP collector base URL (e.g. http://collector:4318; gRPC: http://collector:4317):
    /// traces are exported there. Unset: no tracing, at no cost.
    #[arg(help_heading = "Telemetry", long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otel_exporter_otlp_endpoint: Option<String>,

    /// OTLP traces URL, used as it is (overrides the base URL's `/v1/traces`).
    #[arg(
        help_heading = "Telemetry",
        long,
        env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    )]
    pub otel_exporter_otlp_traces_endpoint: Option<String>,

    /// OTLP transport.
    #[arg(help_heading = "Telemetry", long, env = "OTEL_EXPORTER_OTLP_PROTOCOL", value_enum, default_value_t = OtlpProtocol::HttpProtobuf)]
    pub otel_exporter_otlp_protocol: OtlpProtocol,

    /// The longest one export may take, in milliseconds.
    #[arg(help_heading = "Telemetry", long, env = "OTEL_EXPORTER_OTLP_TIMEOUT", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub otel_exporter_otlp_timeout: u64,

    /// `service.name` of the spans.
    #[arg(
        help_heading = "Telemetry",
        long,
        env = "OTEL_SERVICE_NAME",
        default_value = "token-sidecar"
    )]
    pub otel_service_name: String,

    /// More resource attributes: `key=value,key=value` (values percent-encoded), e.g.
    /// `deployment.environment=prod,k8s.pod.name=orders-7d9f`.
    #[arg(help_heading = "Telemetry", long, env = "OTEL_RESOURCE_ATTRIBUTES")]
    pub otel_resource_attributes: Option<String>,

    /// Which traces are recorded (the OpenTelemetry sampler names); by default a request
    /// follows its caller's decision and is recorded when it starts a trace.
    #[arg(help_heading = "Telemetry", long, env = "OTEL_TRACES_SAMPLER", value_enum, default_value_t = SamplerName::parentbased_always_on)]
    pub otel_traces_sampler: SamplerName,

    /// The sampler's ratio (0 to 1) for `traceidratio` and `parentbased_traceidratio`.
    #[arg(help_heading = "Telemetry", long, env = "OTEL_TRACES_SAMPLER_ARG")]
    pub otel_traces_sampler_arg: Option<f64>,

    /// Turns tracing off whatever else is set.
    #[arg(help_heading = "Telemetry", long, env = "OTEL_SDK_DISABLED", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub otel_sdk_disabled: bool,

    /// Spans carry the user id (`user.id`); off by default (traces often go to places logs do
    /// not). Tokens and keys are never in a span.
    #[arg(help_heading = "Telemetry", long, env = "TOKEN_SIDECAR_TRACE_USER_IDS", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub trace_user_ids: bool,
}
