//! Traces (OpenTelemetry, OTLP): the built binary exports to a receiver built here from the
//! protocol's own definitions (the `opentelemetry-proto` crate), never from the sidecar's code.
//! A request carrying a W3C `traceparent` is a span in that trace — on gRPC, inside Envoy's
//! `CheckRequest`, and on `/auth` — its log line names the trace, no span carries a token, and a
//! collector that is down or silent costs requests nothing and is counted.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tonic::transport::Channel;

use crate::common::{
    SidecarProcess, eventually, free_port, http_request, metric_value, serve_router,
};
use token_sidecar::api::ext_authz::pb as authz;
use token_sidecar::api::ext_authz::pb::envoy::service::auth::v3 as auth_v3;
use token_sidecar::api::pb;

/// A span received, with its resource's attributes.
type Exported = (Vec<KeyValue>, Span);

/// Spans received.
#[derive(Clone, Default)]
struct Received(Arc<parking_lot::Mutex<Vec<Exported>>>);

impl Received {
    fn take(&self, request: ExportTraceServiceRequest) {
        let mut spans = self.0.lock();
        for resource_spans in request.resource_spans {
            let resource = resource_spans
                .resource
                .map(|r| r.attributes)
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push((resource.clone(), span));
                }
            }
        }
    }

    fn in_trace(&self, trace_id: &str) -> Vec<Exported> {
        self.0
            .lock()
            .iter()
            .filter(|(_, span)| hex(&span.trace_id) == trace_id)
            .cloned()
            .collect()
    }

    fn all(&self) -> Vec<Exported> {
        self.0.lock().clone()
    }
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.take(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP/gRPC receiver on an ephemeral port; dropping the sender stops it.
async fn grpc_receiver(received: Received) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(received))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            )
            .await;
    });
    (addr, stop)
}

/// An OTLP/HTTP receiver (protobuf bodies on `/v1/traces`).
async fn http_receiver(received: Received) -> SocketAddr {
    let router = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let received = received.clone();
            async move {
                match ExportTraceServiceRequest::decode(body) {
                    Ok(request) => {
                        received.take(request);
                        (
                            http::StatusCode::OK,
                            [(http::header::CONTENT_TYPE, "application/x-protobuf")],
                            ExportTraceServiceResponse::default().encode_to_vec(),
                        )
                    }
                    Err(_) => (
                        http::StatusCode::BAD_REQUEST,
                        [(http::header::CONTENT_TYPE, "text/plain")],
                        b"not an ExportTraceServiceRequest".to_vec(),
                    ),
                }
            }
        }),
    );
    serve_router(router).await
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
        .map(|v| match v {
            any_value::Value::StringValue(s) => s.clone(),
            other => format!("{other:?}"),
        })
}

fn traceparent(trace_id: &str, parent: &str) -> String {
    format!("00-{trace_id}-{parent}-01")
}

async fn issue(channel: &Channel, user_id: &str) -> pb::IssueResponse {
    pb::token_service_client::TokenServiceClient::new(channel.clone())
        .issue(pb::IssueRequest {
            user_id: user_id.to_owned(),
            ..Default::default()
        })
        .await
        .expect("issue")
        .into_inner()
}

async fn verify_in(channel: &Channel, token: &str, trace: Option<String>) -> bool {
    let mut request = tonic::Request::new(pb::VerifyRequest {
        token: token.to_owned(),
        ..Default::default()
    });
    if let Some(trace) = trace {
        request
            .metadata_mut()
            .insert("traceparent", trace.parse().expect("ascii"));
    }
    pb::token_service_client::TokenServiceClient::new(channel.clone())
        .verify(request)
        .await
        .expect("verify")
        .into_inner()
        .valid
}

/// Connects, issues a token to `user_id` and verifies it in [`VERIFY_TRACE`].
async fn verified_in_trace(
    sidecar: &SidecarProcess,
    user_id: &str,
) -> (Channel, pb::IssueResponse) {
    let channel = sidecar.connect().await;
    let issued = issue(&channel, user_id).await;
    assert!(
        verify_in(
            &channel,
            &issued.token,
            Some(traceparent(VERIFY_TRACE, VERIFY_PARENT))
        )
        .await
    );
    (channel, issued)
}

/// GET `path` with the token as a bearer credential, in the given trace; the status.
async fn traced_get(addr: SocketAddr, path: &str, token: &str, traceparent: &str) -> u16 {
    let bearer = format!("Bearer {token}");
    http_request(
        addr,
        "GET",
        path,
        &[("Authorization", &bearer), ("traceparent", traceparent)],
        None,
    )
    .await
    .expect("an HTTP answer")
    .status
}

const VERIFY_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const VERIFY_PARENT: &str = "00f067aa0ba902b7";
const CALLER_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CALLER_PARENT: &str = "b7ad6b7169203331";
const ENVOY_TRACE: &str = "5e2f0b3a1c4d4e6f8a9b0c1d2e3f4a5b";
const AUTH_TRACE: &str = "a3ce929d0e0e47364bf92f3577b34da6";

#[tokio::test]
async fn every_surface_joins_the_callers_trace_over_otlp_grpc() {
    let received = Received::default();
    let (collector, _stop) = grpc_receiver(received.clone()).await;
    let dir = tempfile::tempdir().expect("dir");
    let http_port = free_port();
    let metrics_port = free_port();
    let sidecar = SidecarProcess::start(
        dir.path(),
        &[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                &format!("http://{collector}"),
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_SERVICE_NAME", "sidecar-under-test"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=test%20run",
            ),
            ("TOKEN_SIDECAR_LOG_FORMAT", "json"),
            ("RUST_LOG", "info,token_sidecar::api=debug"),
            (
                "TOKEN_SIDECAR_HTTP_LISTEN",
                &format!("127.0.0.1:{http_port}"),
            ),
            (
                "TOKEN_SIDECAR_METRICS_LISTEN",
                &format!("127.0.0.1:{metrics_port}"),
            ),
        ],
    )
    .await;
    let (channel, issued) = verified_in_trace(&sidecar, "traced-user").await;
    // Check: Envoy's hop in the metadata, the caller's trace in the checked request's headers.
    let mut check = tonic::Request::new(authz::CheckRequest {
        attributes: Some(auth_v3::AttributeContext {
            request: Some(auth_v3::attribute_context::Request {
                http: Some(auth_v3::attribute_context::HttpRequest {
                    method: "GET".into(),
                    path: "/orders".into(),
                    headers: HashMap::from([
                        ("authorization".into(), format!("Bearer {}", issued.token)),
                        (
                            "traceparent".into(),
                            traceparent(CALLER_TRACE, CALLER_PARENT),
                        ),
                    ]),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    });
    check.metadata_mut().insert(
        "traceparent",
        traceparent(ENVOY_TRACE, "1111111111111111")
            .parse()
            .expect("ascii"),
    );
    let answer = auth_v3::authorization_client::AuthorizationClient::new(channel.clone())
        .check(check)
        .await
        .expect("check")
        .into_inner();
    assert_eq!(answer.status.map(|s| s.code), Some(0), "allowed");
    // /auth: the forwarded request's own headers.
    let status = traced_get(
        SocketAddr::from(([127, 0, 0, 1], http_port)),
        "/auth",
        &issued.token,
        &traceparent(AUTH_TRACE, "2222222222222222"),
    )
    .await;
    assert_eq!(status, 200);

    eventually(
        Duration::from_secs(15),
        "the three spans exported",
        || async {
            [VERIFY_TRACE, CALLER_TRACE, AUTH_TRACE]
                .iter()
                .all(|t| !received.in_trace(t).is_empty())
        },
    )
    .await;

    let verify = received.in_trace(VERIFY_TRACE);
    let (resource, span) = &verify[0];
    assert_eq!(span.name, "tokensidecar.v1.TokenService/Verify");
    assert_eq!(
        hex(&span.parent_span_id),
        VERIFY_PARENT,
        "a child of the caller's span"
    );
    assert_eq!(span.kind, 2, "a server span");
    assert_eq!(attribute(&span.attributes, "result").as_deref(), Some("ok"));
    assert_eq!(
        attribute(&span.attributes, "rpc.system").as_deref(),
        Some("grpc")
    );
    assert_eq!(
        attribute(&span.attributes, "user.id"),
        None,
        "no user id without --trace-user-ids"
    );
    assert_eq!(
        attribute(resource, "service.name").as_deref(),
        Some("sidecar-under-test")
    );
    assert_eq!(
        attribute(resource, "deployment.environment").as_deref(),
        Some("test run")
    );

    let check = received.in_trace(CALLER_TRACE);
    assert_eq!(check[0].1.name, "envoy.service.auth.v3.Authorization/Check");
    assert_eq!(hex(&check[0].1.parent_span_id), CALLER_PARENT);
    assert!(
        received.in_trace(ENVOY_TRACE).is_empty(),
        "the Check joined the checked request's trace, not Envoy's hop"
    );
    let auth = received.in_trace(AUTH_TRACE);
    assert_eq!(auth[0].1.name, "GET /auth");
    assert_eq!(
        attribute(&auth[0].1.attributes, "result").as_deref(),
        Some("ok")
    );

    // The Issue (no traceparent: a trace of its own) read the new user's cutoff: a child span.
    eventually(
        Duration::from_secs(15),
        "the Issue's store span",
        || async {
            let all = received.all();
            all.iter()
                .filter(|(_, s)| s.name == "tokensidecar.v1.TokenService/Issue")
                .any(|(_, issue)| {
                    issue.parent_span_id.is_empty()
                        && all.iter().any(|(_, s)| {
                            s.name == "store cutoff" && s.parent_span_id == issue.span_id
                        })
                })
        },
    )
    .await;

    // No token (nor its signature) in anything exported.
    let signature = issued.token.rsplit('.').next().expect("a JWS");
    for (resource, span) in received.all() {
        let everything = format!("{resource:?} {span:?}");
        assert!(
            !everything.contains(&issued.token) && !everything.contains(signature),
            "a span carries the token: {}",
            span.name
        );
    }

    // Verify's latency histogram points at a trace it measured (an OpenMetrics exemplar).
    let metrics = http_request(
        SocketAddr::from(([127, 0, 0, 1], metrics_port)),
        "GET",
        "/metrics",
        &[],
        None,
    )
    .await
    .expect("metrics")
    .body;
    assert!(
        metrics.lines().any(
            |l| l.starts_with("token_sidecar_rpc_duration_seconds_bucket{")
                && l.contains("method=\"Verify\"")
                && l.contains(&format!("# {{trace_id=\"{VERIFY_TRACE}\"}}"))
        ),
        "an exemplar with the Verify's trace id:\n{metrics}"
    );

    // The request's log line names its trace and span.
    sidecar.signal("-TERM");
    let (status, log) = sidecar.wait().await;
    assert!(status.success());
    assert!(
        log.contains(&format!("traces: OTLP gRPC to http://{collector}")),
        "the start log says where traces go:\n{log}"
    );
    let verify_span = hex(&span.span_id);
    let line = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["method"] == "Verify" && l["trace_id"] == VERIFY_TRACE)
        .unwrap_or_else(|| panic!("no Verify log line with trace_id {VERIFY_TRACE}:\n{log}"));
    assert_eq!(line["span_id"], verify_span.as_str());
}

#[tokio::test]
async fn user_ids_go_into_spans_only_when_asked() {
    let received = Received::default();
    let collector = http_receiver(received.clone()).await;
    let dir = tempfile::tempdir().expect("dir");
    let sidecar = SidecarProcess::start(
        dir.path(),
        &[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                &format!("http://{collector}"),
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("TOKEN_SIDECAR_TRACE_USER_IDS", "true"),
        ],
    )
    .await;
    verified_in_trace(&sidecar, "visible-user").await;
    eventually(
        Duration::from_secs(15),
        "the span over OTLP/HTTP",
        || async { !received.in_trace(VERIFY_TRACE).is_empty() },
    )
    .await;
    let spans = received.in_trace(VERIFY_TRACE);
    assert_eq!(
        attribute(&spans[0].1.attributes, "user.id").as_deref(),
        Some("visible-user")
    );
    // An RPC with no traceparent starts a trace of its own (parent-based, always on).
    let issue_spans: Vec<_> = received
        .all()
        .into_iter()
        .filter(|(_, s)| s.name == "tokensidecar.v1.TokenService/Issue")
        .collect();
    assert!(
        issue_spans.is_empty() || issue_spans[0].1.parent_span_id.is_empty(),
        "a root span"
    );
}

/// A collector that accepts connections and never answers: exports wait for their timeout, the
/// queue fills, spans beyond it are dropped and counted, and Verify answers throughout.
#[tokio::test]
async fn a_silent_collector_never_holds_up_a_request_and_what_it_costs_is_counted() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let collector = silent.local_addr().expect("addr");
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            open.push(stream);
        }
    });
    let dir = tempfile::tempdir().expect("dir");
    let metrics_port = free_port();
    let sidecar = SidecarProcess::start(
        dir.path(),
        &[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                &format!("http://{collector}"),
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "60000"),
            (
                "TOKEN_SIDECAR_METRICS_LISTEN",
                &format!("127.0.0.1:{metrics_port}"),
            ),
        ],
    )
    .await;
    let channel = sidecar.connect().await;
    let issued = issue(&channel, "busy-user").await;
    // More spans than the queue holds, while the first export hangs.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (channel, token) = (channel.clone(), issued.token.clone());
            tokio::spawn(async move {
                for _ in 0..400 {
                    assert!(verify_in(&channel, &token, None).await);
                }
            })
        })
        .collect();
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("Verify answered throughout")
            .expect("verify task");
    }
    let metrics = SocketAddr::from(([127, 0, 0, 1], metrics_port));
    eventually(Duration::from_secs(10), "dropped spans counted", || async {
        let text = http_request(metrics, "GET", "/metrics", &[], None)
            .await
            .map(|r| r.body)
            .unwrap_or_default();
        metric_value(
            &text,
            "token_sidecar_trace_spans_total{outcome=\"dropped\"}",
        )
        .is_some_and(|n| n > 0.0)
    })
    .await;
    held.abort();
}

/// A service protected by `VerifyLayer` sends its caller's trace context on: the sidecar's
/// Verify span is in the trace of the request the service received.
#[tokio::test]
async fn verify_layer_sends_the_callers_trace_on() {
    use token_sidecar_api::client::{SidecarClient, VerifyLayer};
    let received = Received::default();
    let collector = http_receiver(received.clone()).await;
    let dir = tempfile::tempdir().expect("dir");
    let sidecar = SidecarProcess::start(
        dir.path(),
        &[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            &format!("http://{collector}"),
        )],
    )
    .await;
    let channel = sidecar.connect().await;
    let issued = issue(&channel, "layered-user").await;
    let client =
        SidecarClient::connect_lazy(&format!("http://127.0.0.1:{}", sidecar.port)).expect("uri");
    let service = serve_router(
        axum::Router::new()
            .route("/orders", axum::routing::get(|| async { "orders" }))
            .layer(VerifyLayer::new(client)),
    )
    .await;
    let status = traced_get(
        service,
        "/orders",
        &issued.token,
        &traceparent(CALLER_TRACE, CALLER_PARENT),
    )
    .await;
    assert_eq!(
        status, 200,
        "the protected service lets the request through"
    );
    eventually(
        Duration::from_secs(15),
        "the sidecar's span in the caller's trace",
        || async { !received.in_trace(CALLER_TRACE).is_empty() },
    )
    .await;
    let spans = received.in_trace(CALLER_TRACE);
    assert_eq!(spans[0].1.name, "tokensidecar.v1.TokenService/Verify");
    assert_eq!(hex(&spans[0].1.parent_span_id), CALLER_PARENT);
}

#[tokio::test]
async fn the_first_rpc_after_serving_is_exported_every_time() {
    // A process's first batch goes out on a connection the exporter has not opened yet: 20
    // starts (10 over OTLP/gRPC, 10 over OTLP/HTTP), and every first Issue's server span
    // reaches the collector.
    let received = Received::default();
    let (grpc, _stop) = grpc_receiver(received.clone()).await;
    let http = http_receiver(received.clone()).await;
    for run in 0..20 {
        let (endpoint, protocol) = if run % 2 == 0 {
            (format!("http://{grpc}"), "grpc")
        } else {
            (format!("http://{http}"), "http/protobuf")
        };
        let dir = tempfile::tempdir().expect("dir");
        let sidecar = SidecarProcess::start(
            dir.path(),
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            ],
        )
        .await;
        let channel = sidecar.connect().await;
        issue(&channel, &format!("first-{run}")).await;
        eventually(
            Duration::from_secs(15),
            "the first Issue's span at the collector",
            || {
                let received = received.clone();
                async move {
                    let spans = received.0.lock();
                    spans
                        .iter()
                        .filter(|(_, s)| s.name == "tokensidecar.v1.TokenService/Issue")
                        .count()
                        > run
                }
            },
        )
        .await;
    }
}
