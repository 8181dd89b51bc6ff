//! Protecting a sibling service with one line: a [`SidecarClient`] (a
//! tonic channel to the sidecar with short timeouts) and a tower layer, [`VerifyLayer`], that
//! works for tonic and axum services alike:
//!
//! ```ignore
//! let app = Router::new().route("/orders", get(orders)).layer(VerifyLayer::new(client));
//! ```
//!
//! For each request it reads `authorization: Bearer <token>`, calls Verify, and either passes
//! the request on with the verified [`pb::TokenClaims`] in its extensions, or answers itself:
//! UNAUTHENTICATED with the reason (gRPC requests) or 401 with `WWW-Authenticate` (HTTP). When
//! the sidecar cannot be reached it fails closed (UNAVAILABLE / 503) unless told to fail open.
//! Nothing is added to the sidecar's own hot path: this is an ordinary Verify call.
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tower::{Layer, Service};

use crate::bearer_credential;
use crate::pb::{self, token_service_client::TokenServiceClient};

/// A connection to the sidecar (lazy: it connects on first use and reconnects by itself).
#[derive(Clone)]
pub struct SidecarClient {
    client: TokenServiceClient<Channel>,
}

impl SidecarClient {
    /// A client for the sidecar at `uri` (e.g. `http://127.0.0.1:50051`), with a 1 s connect
    /// timeout and a 2 s deadline per call: a sidecar on loopback answers in microseconds.
    pub fn connect_lazy(uri: &str) -> Result<Self, tonic::transport::Error> {
        let channel = Endpoint::from_shared(uri.to_owned())?
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(Self {
            client: TokenServiceClient::new(channel),
        })
    }

    /// Verifies a token: `Ok` with Verify's answer (valid or not), `Err` when the sidecar could
    /// not answer. The current OpenTelemetry context (if the service has a propagator installed)
    /// goes along as W3C `traceparent`, so the sidecar's span joins the service's trace.
    pub async fn verify(&self, token: &str) -> Result<pb::VerifyResponse, tonic::Status> {
        let mut request = tonic::Request::new(pb::VerifyRequest {
            token: token.to_owned(),
        });
        opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.inject(&mut Metadata(request.metadata_mut()));
        });
        self.call(request).await
    }

    /// Verifies a token on behalf of an incoming request: its W3C trace context
    /// (`traceparent`, `tracestate`) is sent on, so the sidecar's span joins the caller's trace.
    pub async fn verify_for(
        &self,
        token: &str,
        incoming: &http::HeaderMap,
    ) -> Result<pb::VerifyResponse, tonic::Status> {
        if !incoming.contains_key(TRACEPARENT) {
            return self.verify(token).await;
        }
        let mut request = tonic::Request::new(pb::VerifyRequest {
            token: token.to_owned(),
        });
        for name in [TRACEPARENT, TRACESTATE] {
            if let Some(value) = incoming
                .get(name)
                .and_then(|v| tonic::metadata::MetadataValue::try_from(v.as_bytes()).ok())
            {
                request.metadata_mut().insert(name, value);
            }
        }
        self.call(request).await
    }

    async fn call(
        &self,
        request: tonic::Request<pb::VerifyRequest>,
    ) -> Result<pb::VerifyResponse, tonic::Status> {
        self.client
            .clone()
            .verify(request)
            .await
            .map(tonic::Response::into_inner)
    }
}

/// The W3C trace context headers.
const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

/// gRPC metadata as a propagation carrier.
struct Metadata<'a>(&'a mut tonic::metadata::MetadataMap);

impl opentelemetry::propagation::Injector for Metadata<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// What happens when the sidecar cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenUnreachable {
    /// Refuse the request (UNAVAILABLE / 503): no revocation is ever missed. The default.
    FailClosed,
    /// Let the request through without claims — only when the sidecar cannot be reached at all
    /// (UNAVAILABLE: connection refused or timed out); never when it answers, be it
    /// RESOURCE_EXHAUSTED (shedding load), DEADLINE_EXCEEDED or a refusal.
    FailOpen,
}

/// Requires a valid token on every request of the service it wraps.
#[derive(Clone)]
pub struct VerifyLayer {
    client: SidecarClient,
    unreachable: WhenUnreachable,
}

impl VerifyLayer {
    /// Verifies with `client`, failing closed when the sidecar is unreachable.
    pub fn new(client: SidecarClient) -> Self {
        Self {
            client,
            unreachable: WhenUnreachable::FailClosed,
        }
    }

    /// Chooses what an unreachable sidecar means.
    pub fn when_unreachable(mut self, unreachable: WhenUnreachable) -> Self {
        self.unreachable = unreachable;
        self
    }
}

impl<S> Layer<S> for VerifyLayer {
    type Service = Verify<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Verify {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`VerifyLayer`] makes.
#[derive(Clone)]
pub struct Verify<S> {
    inner: S,
    layer: VerifyLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, B, R> Service<http::Request<B>> for Verify<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    R: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone that was driven to readiness serves this request (tower's convention).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            let grpc = request
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/grpc"));
            let mut presented = request
                .headers()
                .get_all(http::header::AUTHORIZATION)
                .iter();
            let token = match (presented.next(), presented.next()) {
                (_, Some(_)) => {
                    // Which one is meant is ambiguous (SPEC §9): refused.
                    return Ok(refuse(grpc, Refusal::Invalid("REASON_MALFORMED")));
                }
                (Some(value), None) => value.to_str().ok().and_then(bearer_credential),
                (None, _) => None,
            };
            let Some(token) = token.map(str::to_owned) else {
                return Ok(refuse(grpc, Refusal::MissingToken));
            };
            match layer.client.verify_for(&token, request.headers()).await {
                Ok(answer) if answer.valid => {
                    if let Some(claims) = answer.claims {
                        request.extensions_mut().insert(claims);
                    }
                    inner.call(request).await
                }
                Ok(answer) => {
                    let reason = pb::Reason::try_from(answer.reason)
                        .unwrap_or(pb::Reason::Malformed)
                        .as_str_name();
                    Ok(refuse(grpc, Refusal::Invalid(reason)))
                }
                // Only a sidecar that cannot be reached (connection refused or timed out) lets
                // a request through with FailOpen; one that answers — shedding load, past the
                // deadline, refusing — is never bypassed.
                Err(status)
                    if layer.unreachable == WhenUnreachable::FailOpen
                        && status.code() == tonic::Code::Unavailable =>
                {
                    inner.call(request).await
                }
                Err(_) => Ok(refuse(grpc, Refusal::Unavailable)),
            }
        })
    }
}

enum Refusal {
    MissingToken,
    Invalid(&'static str),
    Unavailable,
}

/// The answer the layer gives itself: a gRPC status in a trailers-only response, or HTTP 401 /
/// 503 with an empty body.
fn refuse<R: Default>(grpc: bool, refusal: Refusal) -> http::Response<R> {
    let (http_status, grpc_status, message, challenge) = match refusal {
        Refusal::MissingToken => (
            http::StatusCode::UNAUTHORIZED,
            "16",
            "missing bearer token".to_owned(),
            "Bearer".to_owned(),
        ),
        Refusal::Invalid(reason) => (
            http::StatusCode::UNAUTHORIZED,
            "16",
            reason.to_owned(),
            format!("Bearer error=\"invalid_token\", error_description=\"{reason}\""),
        ),
        Refusal::Unavailable => (
            http::StatusCode::SERVICE_UNAVAILABLE,
            "14",
            "the token sidecar is unreachable".to_owned(),
            String::new(),
        ),
    };
    let mut response = http::Response::new(R::default());
    if !grpc {
        *response.status_mut() = http_status;
    }
    let headers = response.headers_mut();
    if grpc {
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", http::HeaderValue::from_static(grpc_status));
        if let Ok(value) = http::HeaderValue::from_str(&message) {
            headers.insert("grpc-message", value);
        }
    } else {
        if let Ok(value) = http::HeaderValue::from_str(&challenge)
            && !challenge.is_empty()
        {
            headers.insert(http::header::WWW_AUTHENTICATE, value);
        }
    }
    response
}
