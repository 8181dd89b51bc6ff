//! The identity providers' routes on the HTTP listener (see [`crate::idp`]), each present only
//! when configured:
//! - `POST /oidc/backchannel-logout` (OpenID Connect Back-Channel Logout 1.0 §2.5): form
//!   `logout_token`; 200 when done, 400 with `{"error", "error_description"}` when refused, 503
//!   with `Retry-After` when the store (or the provider's key set) could not be reached;
//! - `POST /ssf/events` (RFC 8935 push): an `application/secevent+jwt` body; 202 when
//!   accepted, 400 with `{"err", "description"}` (RFC 8935 §2.3) when refused, 503 likewise.
//!
//! Both are size-bounded (16 KiB). A request pays nothing for the cheap checks; a refused key
//! or signature is charged to its source's budget and to a shared one, and once either is spent
//! such refusals are answered 429 with `Retry-After` (see [`crate::idp`]'s budget: a verified
//! event is never answered 429). When the provider's key set cannot settle a new `kid` yet, the
//! answer is 503 with `Retry-After` (the provider retries), never a final 400. Every answer is
//! counted by the route's [`outcome::counted`] layer (`rpc_requests_total{method=
//! "backchannel_logout"|"ssf_events", reason}`); refusals are logged once per reason per minute
//! per route — never the token.
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use parking_lot::Mutex;
use serde_json::json;

use crate::api::caller::CallerInfo;
use crate::api::outcome::{self, answered};
use crate::api::responses::{content_type_is, form_param, json_response, oauth_error, unavailable};
use crate::authority::AuthorityError;
use crate::error_code::ErrorCode;
use crate::idp::event_token::{EventError, MAX_EVENT_TOKEN_BYTES};
use crate::idp::{IdpReceiver, ReceiveError, Received};
use crate::metrics::Metrics;
use crate::store::Lane;

/// How often one route logs a refusal of one reason.
const LOG_EVERY: Duration = Duration::from_secs(60);

#[derive(Clone)]
struct IdpState {
    receiver: Arc<IdpReceiver>,
    log: Arc<RefusalLog>,
}

/// OpenID Connect Back-Channel Logout 1.0's route.
pub const BACKCHANNEL_LOGOUT: &str = "/oidc/backchannel-logout";
/// Shared Signals push delivery (RFC 8935)'s route.
pub const SSF_EVENTS: &str = "/ssf/events";

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
            BACKCHANNEL_LOGOUT,
            post(backchannel_logout).layer(counted("backchannel_logout")),
        );
    }
    if receiver.has_ssf() {
        router = router.route(SSF_EVENTS, post(ssf_events).layer(counted("ssf_events")));
    }
    router.with_state(IdpState {
        receiver,
        log: Arc::new(RefusalLog::default()),
    })
}

/// Refusals are logged once per route and reason per [`LOG_EVERY`], with the number passed over
/// since: a flood of junk cannot flood the log (every refusal is counted in the metrics).
#[derive(Default)]
struct RefusalLog(Mutex<HashMap<RouteReason, LastLine>>);

/// A route and a refusal's reason.
type RouteReason = (&'static str, &'static str);
/// When the last line was written, and how many refusals were passed over since.
type LastLine = (Instant, u64);

impl RefusalLog {
    /// Whether to log now, and how many were passed over since the last line.
    fn due(&self, route: &'static str, reason: &'static str) -> Option<u64> {
        let mut state = self.0.lock();
        let now = Instant::now();
        match state.get_mut(&(route, reason)) {
            Some((at, skipped)) if now.duration_since(*at) < LOG_EVERY => {
                *skipped += 1;
                None
            }
            Some((at, skipped)) => {
                *at = now;
                Some(std::mem::take(skipped))
            }
            None => {
                state.insert((route, reason), (now, 0));
                Some(0)
            }
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

/// 503 with `Retry-After`: nothing was decided; the sender retries.
fn retry_later(error: &ReceiveError) -> Response {
    let mut response = unavailable();
    if let ReceiveError::Event(EventError::KeysUnavailable {
        retry_after_secs, ..
    }) = error
    {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        if let Some(body) = keys_unavailable_body() {
            *response.body_mut() = body;
        }
    }
    answered(response, "unavailable", reason(error))
}

fn keys_unavailable_body() -> Option<Body> {
    serde_json::to_vec(&json!({
        "error": "temporarily_unavailable",
        "error_description": "the issuer's key set cannot settle this kid yet; retry after \
                              Retry-After seconds",
    }))
    .ok()
    .map(Body::from)
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
            EventError::KeysUnavailable { .. } => ErrorCode::KeysUnavailable.as_str(),
        },
        ReceiveError::RateLimited => ErrorCode::RateLimited.as_str(),
        ReceiveError::Authority(AuthorityError::InvalidArgument { reason, .. }) => reason.as_str(),
        ReceiveError::Authority(_) => ErrorCode::StoreUnavailable.as_str(),
    }
}

/// Whether the sender should retry: nothing was decided on our side (the store or the
/// provider's key set could not be reached).
fn retryable(error: &ReceiveError) -> bool {
    match error {
        ReceiveError::Event(EventError::KeysUnavailable { .. }) => true,
        ReceiveError::Authority(AuthorityError::InvalidArgument { .. }) => false,
        ReceiveError::Authority(_) => true,
        ReceiveError::Event(_) | ReceiveError::NotConfigured | ReceiveError::RateLimited => false,
    }
}

fn log_outcome(log: &RefusalLog, route: &'static str, outcome: &Result<Received, ReceiveError>) {
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
        Err(error) => {
            let why = reason(error);
            if let Some(passed_over) = log.due(route, why) {
                tracing::warn!(
                    route,
                    reason = why,
                    error = %error,
                    passed_over,
                    "identity provider event refused (one line per reason per minute; \
                     passed_over: how many since the last)"
                );
            }
        }
    }
}

/// The sender's address, as the listener's guard saw it.
fn source(caller: Option<Extension<CallerInfo>>) -> Option<IpAddr> {
    crate::api::caller::caller_ip(caller.as_ref().map(|Extension(caller)| caller))
}

async fn backchannel_logout(
    State(state): State<IdpState>,
    caller: Option<Extension<CallerInfo>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    const METHOD: &str = "backchannel_logout";
    let token = match form_param(&headers, body, "logout_token", MAX_EVENT_TOKEN_BYTES).await {
        Ok(token) => token,
        Err(response) => {
            let why = ErrorCode::InvalidRequest.as_str();
            if let Some(passed_over) = state.log.due(METHOD, why) {
                tracing::warn!(
                    route = METHOD,
                    reason = why,
                    passed_over,
                    "identity provider event refused: not a logout request"
                );
            }
            return answered(
                response,
                "invalid_argument",
                ErrorCode::InvalidRequest.as_str(),
            );
        }
    };
    let source = source(caller);
    let outcome = Lane::Open(source)
        .scope(state.receiver.logout(&token, source))
        .await;
    log_outcome(&state.log, METHOD, &outcome);
    match outcome {
        Ok(_) => {
            let mut response = StatusCode::OK.into_response();
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            answered(response, "ok", "")
        }
        Err(error) if retryable(&error) => retry_later(&error),
        Err(ReceiveError::RateLimited) => too_many(),
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

async fn ssf_events(
    State(state): State<IdpState>,
    caller: Option<Extension<CallerInfo>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
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
    let source = source(caller);
    let outcome = Lane::Open(source)
        .scope(state.receiver.security_event(set.trim(), source))
        .await;
    log_outcome(&state.log, METHOD, &outcome);
    match outcome {
        Ok(_) => answered(StatusCode::ACCEPTED.into_response(), "ok", ""),
        Err(error) if retryable(&error) => retry_later(&error),
        Err(ReceiveError::RateLimited) => too_many(),
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
