//! `GET /revocations/changes` on the HTTP listener: the change feed, for proxy filters that keep
//! their own copy of the revocation state (the Envoy filter, `crates/token-sidecar-wasm`).
//!
//! Query: `after` (a change number, default 0: from the start, which is the whole current
//! state), `anchor` (the hex link the previous page gave at `after`), `limit` (1 to
//! 10,000, default 1,000), `wait_ms` (0 to 30,000, default 0: a long poll — the answer is held
//! until a change after `after` has been applied here, or that long), `format` (`json`, the
//! default, or `bin`: [`crate::feed::binary`], what the Envoy filter reads). Answers: 200 with a
//! [`FeedPage`]; 409 `history_changed` when the history is not the one the reader
//! followed (start again from 0); 400 for a bad parameter; 401 without the feed or admin
//! credential (the feed is open only on a loopback listener with neither configured); 503 with
//! `Retry-After` when the store cannot be read. While this instance is in step the pages come
//! from the changes it applied, in memory (no query); a reader behind them, or an instance out
//! of step, is answered from the store.
use std::sync::Arc;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::get;

use crate::api::bearer_credential;
use crate::api::caller::Callers;
use crate::api::open_gate::OpenGate;
use crate::api::outcome::{self, answered};
use crate::api::responses::{json_response, oauth_error, overloaded, unavailable};
use crate::authority::TokenAuthority;
use crate::error_code::ErrorCode;
use crate::feed::{FeedChange, FeedPage, MAX_PAGE, link_from_hex, link_hex};
use crate::metrics::Metrics;
use crate::revocations::FeedPage as StorePage;

const DEFAULT_PAGE: i64 = 1_000;

/// The query's parameters, each at most once.
#[derive(Debug, Default)]
struct FeedQuery {
    after: Option<String>,
    anchor: Option<String>,
    limit: Option<String>,
    wait_ms: Option<String>,
    format: Option<String>,
}

impl FeedQuery {
    fn parse(raw: Option<&str>) -> Option<Self> {
        let mut query = Self::default();
        for (name, value) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
            let slot = match name.as_ref() {
                "after" => &mut query.after,
                "anchor" => &mut query.anchor,
                "limit" => &mut query.limit,
                "wait_ms" => &mut query.wait_ms,
                "format" => &mut query.format,
                _ => continue,
            };
            if slot.replace(value.into_owned()).is_some() {
                return None;
            }
        }
        Some(query)
    }
}

/// The feed's route.
pub const CHANGES: &str = "/revocations/changes";

/// The longest long poll (`wait_ms`) a reader may ask for.
pub const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// What the feed route needs: the revocation state, who may read, and the open gate it shares
/// with the other open routes of the listener.
#[derive(Clone)]
pub(crate) struct FeedState {
    authority: Arc<TokenAuthority>,
    callers: Callers,
    open: OpenGate,
    /// A long poll is held at most this long (under the request timeout).
    wait_cap: std::time::Duration,
}

impl FeedState {
    pub(crate) fn new(
        authority: Arc<TokenAuthority>,
        callers: Callers,
        open: OpenGate,
        wait_cap: std::time::Duration,
    ) -> Self {
        Self {
            authority,
            callers,
            open,
            wait_cap,
        }
    }
}

/// `GET /revocations/changes`, counted as `feed`.
pub(crate) fn router<S: Clone + Send + Sync + 'static>(
    state: FeedState,
    metrics: Arc<Metrics>,
) -> Router<S> {
    Router::new()
        .route(
            CHANGES,
            get(changes).layer(axum::middleware::from_fn_with_state(
                (metrics, "feed"),
                outcome::counted,
            )),
        )
        .with_state(state)
}

async fn changes(
    State(api): State<FeedState>,
    caller: Option<axum::extract::Extension<crate::api::caller::CallerInfo>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let caller =
        crate::api::caller::caller_ip(caller.as_ref().map(|axum::extract::Extension(c)| c));
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_credential);
    if !api.callers.admit_feed(presented) {
        let reason = match presented {
            None => ErrorCode::MissingCredential,
            Some(_) => ErrorCode::InvalidCredential,
        };
        let mut response = oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            Some("present a feed credential (--feed-token-file) or the admin credential"),
        );
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return answered(response, "unauthenticated", reason.as_str());
    }
    let bad = |what: &str| {
        answered(
            oauth_error(StatusCode::BAD_REQUEST, "invalid_request", Some(what)),
            "invalid_argument",
            ErrorCode::InvalidRequest.as_str(),
        )
    };
    if raw.as_ref().is_some_and(|q| q.len() > 1024) {
        return bad("the query is too long");
    }
    let Some(query) = FeedQuery::parse(raw.as_deref()) else {
        return bad("a parameter is repeated");
    };
    let Some(after) = number(query.after.as_deref(), 0).filter(|a| *a >= 0) else {
        return bad("after: a change number (0 or more)");
    };
    let Some(limit) =
        number(query.limit.as_deref(), DEFAULT_PAGE).filter(|l| (1..=MAX_PAGE).contains(l))
    else {
        return bad("limit: 1 to 10000");
    };
    let Some(wait_ms) = number(query.wait_ms.as_deref(), 0)
        .filter(|w| u128::try_from(*w).is_ok_and(|w| w <= MAX_WAIT.as_millis()))
    else {
        return bad("wait_ms: 0 to 30000");
    };
    let binary = match query.format.as_deref() {
        None | Some("json") => false,
        Some("bin") => true,
        Some(_) => return bad("format: json or bin"),
    };
    let anchor = match query.anchor.as_deref() {
        None | Some("") => None,
        Some(text) => match link_from_hex(text) {
            Some(tag) => Some(tag),
            None => return bad("anchor: the hex link a previous page gave"),
        },
    };
    let revocations = api.authority.revocations();
    // A long poll holds only this request's connection: no gate, no store, no lock.
    let wait = std::time::Duration::from_millis(wait_ms.unsigned_abs()).min(api.wait_cap);
    if !wait.is_zero() {
        revocations.feed_wait(after, wait).await;
    }
    // Any feed reader is served in the store's open lane (no reader crowds out the others).
    let Some(_admitted) = api.open.admit(caller) else {
        return overloaded();
    };
    let lane = crate::store::Lane::Open(caller);
    match lane
        .scope(revocations.feed_page(after, anchor, limit))
        .await
    {
        Err(e) => {
            tracing::warn!(error = %e, "the change feed could not be read");
            answered(
                unavailable(),
                "unavailable",
                ErrorCode::StoreUnavailable.as_str(),
            )
        }
        Ok(StorePage::Forked) => answered(
            oauth_error(
                StatusCode::CONFLICT,
                "history_changed",
                Some("the store's history is not the one followed: start again from after=0"),
            ),
            "failed_precondition",
            ErrorCode::HistoryChanged.as_str(),
        ),
        Ok(StorePage::Changes { changes, link }) => {
            let next = changes.last().map_or(after, |c| c.seq());
            let page = FeedPage {
                more: changes.len() as i64 == limit,
                changes: changes
                    .iter()
                    .map(|c| FeedChange::with_horizon(c, api.authority.policy()))
                    .collect(),
                next,
                anchor: link.map(|tag| link_hex(&tag)),
                now_ms: revocations.now_ms(),
            };
            if binary {
                return answered(
                    binary_response(crate::feed::binary::encode(&page)),
                    "ok",
                    "",
                );
            }
            match serde_json::to_value(&page) {
                Ok(body) => answered(json_response(StatusCode::OK, body), "ok", ""),
                Err(_) => answered(
                    oauth_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", None),
                    "internal",
                    ErrorCode::Internal.as_str(),
                ),
            }
        }
    }
}

/// A page in the feed's binary form.
fn binary_response(body: Vec<u8>) -> Response {
    let mut response = Response::new(axum::body::Body::from(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::feed::binary::CONTENT_TYPE),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A decimal parameter, `default` when absent; None when it is not a number.
fn number(text: Option<&str>, default: i64) -> Option<i64> {
    match text {
        None => Some(default),
        Some(t) if t.len() <= 19 && !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) => {
            t.parse().ok()
        }
        Some(_) => None,
    }
}
