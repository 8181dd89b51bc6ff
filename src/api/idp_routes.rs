//! The identity providers' routes on the HTTP listener (see [`crate::idp`]), each present only
//! when configured:
//! - `POST /oidc/backchannel-logout` (OpenID Connect Back-Channel Logout 1.0 §2.5): form
//!   `logout_token`; 200 when done, 400 with `{"error", "error_description"}` when refused, 503
//!   with `Retry-After` when the store (or the provider's key set) could not be reached;
//! - `POST /ssf/events` (RFC 8935 push): an `application/secevent+jwt` body; 202 when
//!   accepted, 400 with `{"err", "description"}` (RFC 8935 §2.3) when refused, 503 likewise.
//!
//! Both are rate-limited (a token bucket per route: [`BURST`] at once, [`PER_SECOND`] after;
//! beyond it 429 with `Retry-After`) and size-bounded (16 KiB). Every answer is counted by the
//! route's [`outcome::counted`] layer (`rpc_requests_total{method="backchannel_logout"|
//! "ssf_events"}`); refusals are logged — never the token.
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use parking_lot::Mutex;
use serde_json::json;

use crate::api::http::{content_type_is, form_param, json_response, oauth_error, unavailable};
use crate::api::outcome::{self, answered};
use crate::authority::AuthorityError;
use crate::error_code::ErrorCode;
use crate::idp::event_token::{EventError, MAX_EVENT_TOKEN_BYTES};
use crate::idp::{IdpReceiver, ReceiveError, Received};
use crate::metrics::Metrics;

/// Requests a route takes at once.
pub const BURST: f64 = 100.0;
/// Requests a route takes per second, sustained.
pub const PER_SECOND: f64 = 50.0;

#[derive(Clone)]
struct IdpState {
    receiver: Arc<IdpReceiver>,
    logout_bucket: Arc<Bucket>,
    ssf_bucket: Arc<Bucket>,
}

/// The configured routes.
pub fn router<S: Clone + Send + Sync + 'static>(
    receiver: Arc<IdpReceiver>,
    metrics: Arc<Metrics>,
) -> Router<S> {
    let mut router = Router::new();
    let counted = |method: &'static str| {
        axum::middleware::from_fn_with_state((metrics.clone(), method), outcome::counted)
    };
    if receiver.has_backchannel() {
        router = router.route(
            "/oidc/backchannel-logout",
            post(backchannel_logout).layer(counted("backchannel_logout")),
        );
    }
    if receiver.has_ssf() {
        router = router.route("/ssf/events", post(ssf_events).layer(counted("ssf_events")));
    }
    router.with_state(IdpState {
        receiver,
        logout_bucket: Arc::new(Bucket::new()),
        ssf_bucket: Arc::new(Bucket::new()),
    })
}

/// A token bucket.
struct Bucket(Mutex<(f64, Instant)>);

impl Bucket {
    fn new() -> Self {
        Self(Mutex::new((BURST, Instant::now())))
    }

    fn take(&self) -> bool {
        let mut state = self.0.lock();
        let now = Instant::now();
        let refill = now.duration_since(state.1).as_secs_f64() * PER_SECOND;
        state.0 = (state.0 + refill).min(BURST);
        state.1 = now;
        if state.0 >= 1.0 {
            state.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

fn too_many() -> Response {
    let mut response = (StatusCode::TOO_MANY_REQUESTS, "").into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    answered(
        response,
        "resource_exhausted",
        ErrorCode::RateLimited.as_str(),
    )
}

/// The metric reason of a refusal.
fn reason(error: &ReceiveError) -> &'static str {
    match error {
        ReceiveError::NotConfigured => ErrorCode::NotConfigured.as_str(),
        ReceiveError::Event(e) => match e {
            EventError::Malformed(_) => ErrorCode::Malformed.as_str(),
            EventError::UnknownIssuer => ErrorCode::UnknownIssuer.as_str(),
            EventError::BadKey(_) => ErrorCode::InvalidKey.as_str(),
            EventError::WrongAudience => ErrorCode::WrongAudience.as_str(),
            EventError::Stale(_) => ErrorCode::Stale.as_str(),
            EventError::Replayed => ErrorCode::Replayed.as_str(),
            EventError::KeysUnavailable(_) => ErrorCode::KeysUnavailable.as_str(),
        },
        ReceiveError::Authority(AuthorityError::InvalidArgument { reason, .. }) => reason.as_str(),
        ReceiveError::Authority(_) => ErrorCode::StoreUnavailable.as_str(),
    }
}

/// Whether the sender should retry: nothing was decided on our side (the store or the
/// provider's key set could not be reached).
fn retryable(error: &ReceiveError) -> bool {
    match error {
        ReceiveError::Event(EventError::KeysUnavailable(_)) => true,
        ReceiveError::Authority(AuthorityError::InvalidArgument { .. }) => false,
        ReceiveError::Authority(_) => true,
        ReceiveError::Event(_) | ReceiveError::NotConfigured => false,
    }
}

fn log_outcome(route: &'static str, outcome: &Result<Received, ReceiveError>) {
    match outcome {
        Ok(received) => {
            for (event_type, action) in &received.effects {
                tracing::info!(
                    route,
                    who = %received.who,
                    event_type = %event_type,
                    action = ?action,
                    "identity provider event"
                );
            }
        }
        Err(error) => tracing::warn!(route, error = %error, "identity provider event refused"),
    }
}

async fn backchannel_logout(
    State(state): State<IdpState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    const METHOD: &str = "backchannel_logout";
    if !state.logout_bucket.take() {
        return too_many();
    }
    let token = match form_param(&headers, body, "logout_token", MAX_EVENT_TOKEN_BYTES).await {
        Ok(token) => token,
        Err(response) => {
            tracing::warn!(
                route = METHOD,
                "identity provider event refused: not a logout request"
            );
            return answered(
                response,
                "invalid_argument",
                ErrorCode::InvalidRequest.as_str(),
            );
        }
    };
    let outcome = state.receiver.logout(&token).await;
    log_outcome(METHOD, &outcome);
    match outcome {
        Ok(_) => {
            let mut response = StatusCode::OK.into_response();
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            answered(response, "ok", "")
        }
        Err(error) if retryable(&error) => answered(unavailable(), "unavailable", reason(&error)),
        Err(error) => answered(
            oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                Some(&error.to_string()),
            ),
            "invalid_argument",
            reason(&error),
        ),
    }
}

async fn ssf_events(State(state): State<IdpState>, headers: HeaderMap, body: Body) -> Response {
    const METHOD: &str = "ssf_events";
    let refuse = |err: &str, description: &str, reason: &'static str| {
        answered(
            json_response(
                StatusCode::BAD_REQUEST,
                json!({"err": err, "description": description}),
            ),
            "invalid_argument",
            reason,
        )
    };
    let bad_request = ErrorCode::InvalidRequest.as_str();
    if !state.ssf_bucket.take() {
        return too_many();
    }
    if !content_type_is(&headers, "application/secevent+jwt") {
        return refuse(
            "invalid_request",
            "the body must be application/secevent+jwt",
            bad_request,
        );
    }
    let bytes = match axum::body::to_bytes(body, MAX_EVENT_TOKEN_BYTES).await {
        Ok(bytes) => bytes,
        Err(_) => return refuse("invalid_request", "the body is too large", bad_request),
    };
    let Ok(set) = std::str::from_utf8(&bytes) else {
        return refuse(
            "invalid_request",
            "the body is not a compact JWS",
            bad_request,
        );
    };
    let outcome = state.receiver.security_event(set.trim()).await;
    log_outcome(METHOD, &outcome);
    match outcome {
        Ok(_) => answered(StatusCode::ACCEPTED.into_response(), "ok", ""),
        Err(error) if retryable(&error) => answered(unavailable(), "unavailable", reason(&error)),
        Err(error) => {
            // RFC 8935 §2.4's error codes.
            let err = match &error {
                ReceiveError::Event(EventError::UnknownIssuer) => "invalid_issuer",
                ReceiveError::Event(EventError::BadKey(_)) => "invalid_key",
                ReceiveError::Event(EventError::WrongAudience) => "invalid_audience",
                _ => "invalid_request",
            };
            refuse(err, &error.to_string(), reason(&error))
        }
    }
}
