//! The HTTP listener (`--http-listen`, off by default), for proxies and OAuth clients:
//! - `/auth` and `/auth/...`, any method: forward-auth for nginx `auth_request`, ingress-nginx
//!   `auth-url`, Traefik `ForwardAuth` and Envoy's HTTP ext_authz mode — 200 with the identity
//!   headers, 401 with `WWW-Authenticate`, or 503 (never 202, which Envoy would take as a
//!   denial);
//! - `POST /oauth2/introspect` (RFC 7662): the caller presents the admin credential
//!   (`--admin-token-file`; without one configured the endpoint answers 401 to everyone); an
//!   active token answers its claims, anything else exactly `{"active":false}`;
//! - `POST /oauth2/revoke` (RFC 7009): revokes the token's session like `Revoke{token}`; 200
//!   for an invalid or unknown token too; 503 with `Retry-After` when nothing was committed.
//!
//! - `GET /revocations/changes`: the change feed for proxy filters ([`crate::api::feed`]);
//! - `GET /.well-known/jwks.json`: the public keys, as on the metrics port ([`jwks_routes`]).
//!
//! A malformed request (no form body, another content type, a body over 16 KiB, a token over
//! 8 KiB, a repeated parameter) gets a 400 with an RFC 6749-style `{"error": ...}`.
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use serde_json::{Map, Value, json};

use crate::api::bearer_credential;
use crate::api::caller::{self, CallerInfo, Callers};
use crate::api::feed;
use crate::api::forward_auth::{Decision, ForwardAuth, Presented};
use crate::api::idp_routes;
use crate::api::log_value::loggable;
use crate::api::open_gate::OpenGate;
use crate::api::outcome::{self, answered};
use crate::api::responses::{form_param, json_response, oauth_error, overloaded, unavailable};
use crate::api::sender::ProofInputs;
use crate::api::trace;
use crate::authority::{AuthorityError, Cause, RevokeTarget, TokenAuthority};
use crate::error_code::ErrorCode;
use crate::idp::IdpReceiver;
use crate::metrics::Metrics;
use crate::store::Lane;
use crate::token::MAX_TOKEN_BYTES;

/// Envoy's HTTP ext_authz: the headers to remove from the upstream request.
const HEADERS_TO_REMOVE: &str = "x-envoy-auth-headers-to-remove";

/// Members RFC 7662 §2.2 and RFC 7519 §4.1 register: never taken from custom claims.
const REGISTERED_MEMBERS: [&str; 13] = [
    "active",
    "scope",
    "client_id",
    "username",
    "token_type",
    "exp",
    "iat",
    "nbf",
    "sub",
    "aud",
    "iss",
    "jti",
    "cnf",
];

/// Of those, what a trusted issuer's token answers in its own words (SPEC §16): the provider
/// granted its `scope`, knows its `client_id` and `username`, and its `jti` is its own.
const PROVIDERS_OWN: [&str; 4] = ["scope", "client_id", "username", "jti"];

/// `--http-listen`'s forward-auth route (and everything below `/auth/`).
pub const AUTH: &str = "/auth";
/// RFC 7662 introspection.
pub const INTROSPECT: &str = "/oauth2/introspect";
/// RFC 7009 revocation.
pub const REVOKE: &str = "/oauth2/revoke";
/// The public keys (RFC 7517), also on `--metrics-listen`.
pub const JWKS: &str = "/.well-known/jwks.json";
/// The trusted issuers (SPEC §16) with their keys, for proxy filters.
pub const TRUSTED_ISSUERS: &str = "/trusted-issuers";

/// Every route `--http-listen` serves (the identity providers' when they are configured): what
/// `--help` and the README must name (a test reads this list).
pub const ROUTES: [&str; 8] = [
    AUTH,
    INTROSPECT,
    REVOKE,
    JWKS,
    TRUSTED_ISSUERS,
    feed::CHANGES,
    idp_routes::BACKCHANNEL_LOGOUT,
    idp_routes::SSF_EVENTS,
];

/// What the HTTP routes need.
#[derive(Clone)]
pub struct HttpApi {
    decide: ForwardAuth,
    callers: Callers,
    metrics: Arc<Metrics>,
    idp: Option<Arc<IdpReceiver>>,
    /// RFC 7009 revocations and feed reads, a few at a time per caller.
    open: OpenGate,
    /// The longest a feed reader's long poll is held: under the request timeout.
    feed_wait_cap: std::time::Duration,
}

impl HttpApi {
    /// Routes answered by `decide`'s authority; introspection admits `callers`' introspection
    /// and admin credentials.
    pub fn new(decide: ForwardAuth, callers: Callers, metrics: Arc<Metrics>) -> Self {
        Self {
            decide,
            callers,
            metrics,
            idp: None,
            open: OpenGate::default(),
            feed_wait_cap: feed::MAX_WAIT,
        }
    }

    /// Holds a feed reader's long poll for less than `timeout`, which would cut it (408).
    pub fn with_request_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.feed_wait_cap =
            feed::MAX_WAIT.min(timeout.saturating_sub(std::time::Duration::from_secs(1)));
        self
    }

    /// Also serves the identity providers' routes `receiver` configures (see [`crate::idp`]).
    pub fn with_idp(mut self, receiver: Option<Arc<IdpReceiver>>) -> Self {
        self.idp = receiver;
        self
    }

    /// Admits one open request of `caller` (see [`OpenGate`]); None: answer [`overloaded`].
    pub(crate) fn admit_open(
        &self,
        caller: Option<std::net::IpAddr>,
    ) -> Option<crate::api::open_gate::Admitted> {
        self.open.admit(caller)
    }

    pub(crate) fn authority(&self) -> &std::sync::Arc<TokenAuthority> {
        self.decide.authority()
    }

    /// The routes.
    pub fn router(self) -> Router {
        let mut router = Router::new()
            .route(AUTH, any(forward_auth))
            .route("/auth/{*rest}", any(forward_auth))
            .route(
                INTROSPECT,
                post(introspect).layer(axum::middleware::from_fn_with_state(
                    (self.metrics.clone(), "introspect"),
                    outcome::counted,
                )),
            )
            .route(
                JWKS,
                get(|State(api): State<HttpApi>| async move { jwks(api.authority()) }),
            )
            .route(
                TRUSTED_ISSUERS,
                get(|State(api): State<HttpApi>| async move {
                    (
                        [
                            (header::CONTENT_TYPE, "application/json"),
                            (header::CACHE_CONTROL, "public, max-age=60"),
                        ],
                        api.authority().trusted_issuers().document(),
                    )
                        .into_response()
                }),
            )
            .route(
                REVOKE,
                post(revoke).layer(axum::middleware::from_fn_with_state(
                    (self.metrics.clone(), "http_revoke"),
                    outcome::counted,
                )),
            );
        router = router.merge(feed::router(
            feed::FeedState::new(
                self.authority().clone(),
                self.callers.clone(),
                self.open.clone(),
                self.feed_wait_cap,
            ),
            self.metrics.clone(),
        ));
        if let Some(idp) = &self.idp {
            router = router.merge(idp_routes::router(idp.clone(), self.metrics.clone()));
        }
        router
            .with_state(self)
            .layer(axum::middleware::from_fn(trace::http_trace))
    }
}

/// `/.well-known/jwks.json`: the public keys (RFC 7517), served beside `/metrics` on the
/// metrics port, for verifiers that check tokens themselves.
pub fn jwks_routes(authority: Arc<TokenAuthority>) -> Router {
    Router::new().route(
        JWKS,
        get(move || {
            let authority = authority.clone();
            async move { jwks(&authority) }
        }),
    )
}

/// The public keys (RFC 7517), also on the HTTP listener for proxy filters.
fn jwks(authority: &TokenAuthority) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            // Short enough that a rotation reaches verifiers within a minute.
            (header::CACHE_CONTROL, "public, max-age=60"),
        ],
        authority.jwks_json(),
    )
        .into_response()
}

fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

/// Every `Authorization` header of the request (one that is not text counts too).
fn presented(headers: &HeaderMap) -> Presented<'_> {
    Presented::from_values(
        headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .map(|v| v.to_str().unwrap_or_default()),
    )
}

async fn forward_auth(
    State(api): State<HttpApi>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let inputs = ProofInputs::forwarded(&headers, &method, path);
    match api
        .decide
        .decide(presented(&headers), inputs, "http_auth")
        .await
    {
        Decision::Allow {
            set, remove, nonce, ..
        } => {
            let mut response = StatusCode::OK.into_response();
            insert_nonce(&mut response, nonce);
            for (name, value) in set {
                if let (Ok(name), Ok(value)) = (
                    header::HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(&value),
                ) {
                    response.headers_mut().insert(name, value);
                }
            }
            // Forwarded-claim headers this token does not set: Envoy's HTTP ext_authz removes
            // what this lists from the upstream request (nginx and Traefik are configured to
            // replace them, see deploy/proxies), so a client cannot smuggle them through.
            if !remove.is_empty()
                && let Ok(value) = HeaderValue::from_str(&remove.join(","))
            {
                response.headers_mut().insert(HEADERS_TO_REMOVE, value);
            }
            response
        }
        Decision::Deny {
            challenge, nonce, ..
        } => {
            let mut response = (StatusCode::UNAUTHORIZED, "").into_response();
            insert_nonce(&mut response, nonce);
            if let Ok(value) = HeaderValue::from_str(&challenge) {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, value);
            }
            response
        }
        Decision::Unavailable => unavailable(),
    }
}

/// RFC 9449 §8: the nonce the client's next proof must carry.
fn insert_nonce(response: &mut Response, nonce: Option<String>) {
    if let Some(value) = nonce.and_then(|n| HeaderValue::from_str(&n).ok()) {
        response.headers_mut().insert("dpop-nonce", value);
    }
}

async fn introspect(State(api): State<HttpApi>, headers: HeaderMap, body: Body) -> Response {
    // RFC 7662 §2.1: only an authorized caller may introspect. Without a configured
    // introspection or admin credential nobody is, so the endpoint answers 401 to everyone.
    let presented = authorization(&headers).and_then(bearer_credential);
    if !api.callers.admit_introspection(presented) {
        let configured = api.callers.introspection.is_some() || api.callers.admin.is_some();
        let reason = match (configured, presented) {
            (false, _) => ErrorCode::IntrospectionNotConfigured,
            (true, None) => ErrorCode::MissingCredential,
            (true, Some(_)) => ErrorCode::InvalidCredential,
        };
        let description = if configured {
            "present an introspection credential as a bearer token"
        } else {
            "introspection needs --introspection-token-file (or --admin-token-file) on the \
                 sidecar"
        };
        let mut response = oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            Some(description),
        );
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return answered(response, "unauthenticated", reason.as_str());
    }
    let token = match form_token(&headers, body).await {
        Ok(token) => token,
        Err(response) => {
            return answered(
                response,
                "invalid_argument",
                ErrorCode::InvalidRequest.as_str(),
            );
        }
    };
    let authority = api.decide.authority();
    match authority.verify(&token).await {
        Err(_) => answered(
            unavailable(),
            "unavailable",
            ErrorCode::StoreUnavailable.as_str(),
        ),
        Ok(Err(reason)) => answered(
            json_response(StatusCode::OK, json!({"active": false})),
            "inactive",
            reason.code(),
        ),
        Ok(Ok(claims)) => {
            let mut answer = Map::new();
            answer.insert("active".into(), Value::Bool(true));
            // A custom claim named like a member RFC 7662 or RFC 7519 registers is left out:
            // the answer would otherwise vouch for it (`"active": false` on a valid token,
            // a `scope` or `client_id` the sidecar never granted). It stays in the token.
            let trusted = claims.issuer.is_some();
            let answered_here = |name: &str| {
                REGISTERED_MEMBERS.contains(&name) && !(trusted && PROVIDERS_OWN.contains(&name))
            };
            answer.extend(
                claims
                    .extra
                    .into_iter()
                    .filter(|(name, _)| !answered_here(name)),
            );
            answer.insert("sub".into(), Value::from(claims.user_id));
            match claims.issuer {
                Some(issuer) => {
                    answer.insert("iss".into(), Value::from(issuer));
                }
                None => {
                    answer.insert("jti".into(), Value::from(claims.jti));
                    answer.insert("sid".into(), Value::from(claims.session_id));
                    answer.insert("iss".into(), Value::from(authority.issuer()));
                    if let Some(aud) = authority.audience() {
                        answer.insert("aud".into(), Value::from(aud));
                    }
                }
            }
            answer.insert("iat".into(), Value::from(claims.issued_at));
            answer.insert("exp".into(), Value::from(claims.expires_at));
            if let Some(nbf) = claims.not_before {
                answer.insert("nbf".into(), Value::from(nbf));
            }
            // RFC 9449 §6.2, RFC 8705 §3.2: a bound token's confirmation, for a resource
            // server that checks the proof itself.
            let token_type = match claims.binding.jkt {
                Some(_) => "DPoP",
                None => "Bearer",
            };
            if let Some(cnf) = claims.binding.to_claim() {
                answer.insert("cnf".into(), cnf);
            }
            answer.insert("token_type".into(), Value::from(token_type));
            answered(
                json_response(StatusCode::OK, Value::Object(answer)),
                "ok",
                "",
            )
        }
    }
}

async fn revoke(
    State(api): State<HttpApi>,
    caller: Option<axum::extract::Extension<CallerInfo>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let caller = caller::caller_ip(caller.as_ref().map(|axum::extract::Extension(c)| c));
    let Some(_admitted) = api.admit_open(caller) else {
        return overloaded();
    };
    let lane = Lane::Open(caller);
    let token = match form_token(&headers, body).await {
        Ok(token) => token,
        Err(response) => {
            return answered(
                response,
                "invalid_argument",
                ErrorCode::InvalidRequest.as_str(),
            );
        }
    };
    let cause = Cause::new(caller::TOKEN_HOLDER, Some("RFC 7009 revocation".into()));
    match lane
        .scope(
            api.decide
                .authority()
                .revoke(RevokeTarget::Token(token), &cause),
        )
        .await
    {
        Ok(outcome) => {
            // Whose session ended, as the gRPC Revoke logs it.
            let user_id = outcome.user_id.as_deref().map(loggable);
            let session_id = outcome.session_id.as_deref().map(loggable);
            tracing::info!(
                method = "http_revoke",
                result = "ok",
                stored = outcome.stored,
                user_id = user_id.as_deref(),
                session_id = session_id.as_deref(),
                "rpc"
            );
            answered(StatusCode::OK.into_response(), "ok", "")
        }
        // RFC 7009 §2.2: an invalid token is no error; there is nothing to revoke.
        Err(AuthorityError::InvalidToken(reason)) => {
            answered(StatusCode::OK.into_response(), "ok", reason.code())
        }
        Err(AuthorityError::Store(_) | AuthorityError::NotReady) => answered(
            unavailable(),
            "unavailable",
            ErrorCode::StoreUnavailable.as_str(),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "RFC 7009 revocation failed");
            answered(
                oauth_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", None),
                "internal",
                ErrorCode::Internal.as_str(),
            )
        }
    }
}

/// The `token` parameter of a form body, or the 400 to answer.
async fn form_token(headers: &HeaderMap, body: Body) -> Result<String, Response> {
    form_param(headers, body, "token", MAX_TOKEN_BYTES).await
}
