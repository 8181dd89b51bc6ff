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
            ..Default::default()
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
        let request = pb::VerifyRequest {
            token: token.to_owned(),
            ..Default::default()
        };
        self.verify_request_for(request, incoming).await
    }

    /// Verify with every field given (a DPoP proof, the method and URI it must name, a client
    /// certificate: SPEC §15), on behalf of an incoming request whose trace context goes along.
    pub async fn verify_request_for(
        &self,
        request: pb::VerifyRequest,
        incoming: &http::HeaderMap,
    ) -> Result<pb::VerifyResponse, tonic::Status> {
        let mut request = tonic::Request::new(request);
        if !incoming.contains_key(TRACEPARENT) {
            opentelemetry::global::get_text_map_propagator(|propagator| {
                propagator.inject(&mut Metadata(request.metadata_mut()));
            });
            return self.call(request).await;
        }
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
    /// The scheme and host clients address this service by, for a DPoP proof's `htu`.
    origin: Option<String>,
}

impl VerifyLayer {
    /// Verifies with `client`, failing closed when the sidecar is unreachable.
    pub fn new(client: SidecarClient) -> Self {
        Self {
            client,
            unreachable: WhenUnreachable::FailClosed,
            origin: None,
        }
    }

    /// The scheme and host clients call this service at (`https://api.example.com`): what a
    /// DPoP proof's `htu` names (SPEC §15). Without it, `http://` and the `Host` header.
    pub fn origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = Some(origin.into().trim_end_matches('/').to_owned());
        self
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
                (Some(value), None) => value.to_str().ok().and_then(credential),
                (None, _) => None,
            };
            let Some((token, _dpop)) = token.map(|(t, d)| (t.to_owned(), d)) else {
                return Ok(refuse(grpc, Refusal::MissingToken));
            };
            let verify = sender_fields(&request, &token, layer.origin.as_deref());
            match layer
                .client
                .verify_request_for(verify, request.headers())
                .await
            {
                Ok(answer) if answer.valid => {
                    if let Some(claims) = answer.claims {
                        request.extensions_mut().insert(claims);
                    }
                    let mut response = inner.call(request).await?;
                    // With --dpop-nonce: the client's next proof needs it (RFC 9449 §8).
                    if let Ok(nonce) = http::HeaderValue::from_str(&answer.dpop_nonce)
                        && !answer.dpop_nonce.is_empty()
                    {
                        response.headers_mut().insert(DPOP_NONCE, nonce);
                    }
                    Ok(response)
                }
                Ok(answer) => {
                    let reason = pb::Reason::try_from(answer.reason)
                        .unwrap_or(pb::Reason::Malformed)
                        .as_str_name();
                    let mut response = refuse(grpc, Refusal::Invalid(reason));
                    if let Ok(nonce) = http::HeaderValue::from_str(&answer.dpop_nonce)
                        && !answer.dpop_nonce.is_empty()
                    {
                        response.headers_mut().insert(DPOP_NONCE, nonce);
                    }
                    Ok(response)
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

/// The token of an `Authorization` value, and whether its scheme is `DPoP` (SPEC §15).
fn credential(value: &str) -> Option<(&str, bool)> {
    if let Some(token) = bearer_credential(value) {
        return Some((token, false));
    }
    let blank = |c: char| c == ' ' || c == '\t';
    let (scheme, rest) = value.trim_matches(blank).split_once(blank)?;
    let token = rest.trim_matches(blank);
    (scheme.eq_ignore_ascii_case("dpop") && !token.is_empty()).then_some((token, true))
}

/// Verify's request for `token` on `request`: its `DPoP` proof (every value: several are
/// refused by the sidecar), method and URI go along.
fn sender_fields<B>(
    request: &http::Request<B>,
    token: &str,
    origin: Option<&str>,
) -> pb::VerifyRequest {
    let mut proofs = request.headers().get_all("dpop").iter();
    let dpop_proof = match (proofs.next(), proofs.next()) {
        (Some(one), None) => one.to_str().unwrap_or("-").to_owned(),
        // Two proofs: sent joined, which no proof can be, so the sidecar refuses it.
        (Some(_), Some(_)) => "-.-.-.-".to_owned(),
        (None, _) => String::new(),
    };
    let uri = request.uri();
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let http_uri = match (uri.scheme_str(), uri.authority(), origin) {
        (Some(scheme), Some(authority), _) => format!("{scheme}://{authority}{path}"),
        (_, _, Some(origin)) => format!("{origin}{path}"),
        _ => {
            let host = request
                .headers()
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .or_else(|| uri.authority().map(http::uri::Authority::as_str))
                .unwrap_or("localhost");
            format!("http://{host}{path}")
        }
    };
    pb::VerifyRequest {
        token: token.to_owned(),
        dpop_proof,
        http_method: request.method().as_str().to_owned(),
        http_uri,
        client_certificate: Vec::new(),
    }
}

/// RFC 9449 §8's header.
const DPOP_NONCE: &str = "dpop-nonce";

/// The `WWW-Authenticate` for a refused token: RFC 9449 §7.1's DPoP challenge for a proof of
/// possession (SPEC §15), RFC 6750's bearer challenge otherwise — as the sidecar's `/auth`.
fn challenge(reason: &str) -> String {
    let error = match reason {
        "REASON_NONCE_REQUIRED" => "use_dpop_nonce",
        "REASON_PROOF_INVALID" | "REASON_PROOF_REPLAYED" => "invalid_dpop_proof",
        "REASON_PROOF_REQUIRED" => "invalid_token",
        _ => return format!("Bearer error=\"invalid_token\", error_description=\"{reason}\""),
    };
    format!(
        "DPoP error=\"{error}\", error_description=\"{reason}\", \
         algs=\"ES256 ES384 RS256 PS256 EdDSA Ed25519\""
    )
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
            challenge(reason),
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
