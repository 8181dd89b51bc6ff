//! The gRPC layer: proto <-> domain translation and the one mapping of errors to `Status`.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use prost_types::value::Kind;
use serde_json::{Map, Number, Value};
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::api::bearer_credential;
use crate::authority::{AuthorityError, IssueRequest, IssuedToken, RevokeTarget, TokenAuthority};
use crate::clock::UnixMillis;
use crate::metrics::Metrics;
use crate::reason::Reason;
use crate::token::Claims;

/// The generated protobuf and gRPC code for `tokensidecar.v1`.
pub mod pb {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("tokensidecar.v1");

    /// The encoded descriptor set of our proto and its imports, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/token_sidecar_descriptor.bin"));
}

use pb::token_service_server::TokenService;

/// The `domain` of every `google.rpc.ErrorInfo` we send.
pub const ERROR_DOMAIN: &str = "token-sidecar";

/// The bearer credential privileged RPCs must present. Its Debug output hides it.
pub struct AdminCredential(Vec<u8>);

impl AdminCredential {
    /// Shortest credential accepted.
    pub const MIN_LEN: usize = 16;

    /// Wraps a credential (surrounding whitespace, such as a file's final newline, is dropped).
    pub fn new(raw: &[u8]) -> Option<Self> {
        let text = raw.trim_ascii();
        (text.len() >= Self::MIN_LEN).then(|| Self(text.to_vec()))
    }

    /// Compares in time independent of where the first difference is.
    pub fn matches(&self, presented: &[u8]) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(presented, &self.0).is_ok()
    }
}

impl std::fmt::Debug for AdminCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminCredential(..)")
    }
}

/// `tokensidecar.v1.TokenService`, delegating to a [`TokenAuthority`].
#[derive(Clone)]
pub struct TokenGrpc {
    authority: Arc<TokenAuthority>,
    metrics: Arc<Metrics>,
    admin: Option<Arc<AdminCredential>>,
}

impl TokenGrpc {
    /// Serves `authority` over gRPC, counting RPCs in `metrics`; privileged RPCs require
    /// `admin` when it is set.
    pub fn new(
        authority: Arc<TokenAuthority>,
        metrics: Arc<Metrics>,
        admin: Option<Arc<AdminCredential>>,
    ) -> Self {
        Self {
            authority,
            metrics,
            admin,
        }
    }

    /// Checks the caller's credential for a privileged RPC.
    fn authorize<T>(
        &self,
        request: &Request<T>,
        method: &'static str,
        started: Instant,
    ) -> Result<(), Status> {
        let Some(admin) = &self.admin else {
            return Ok(());
        };
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_credential);
        let (reason, message) = match presented {
            Some(credential) if admin.matches(credential.as_bytes()) => return Ok(()),
            Some(_) => ("INVALID_CREDENTIAL", "the bearer credential is not valid"),
            None => (
                "MISSING_CREDENTIAL",
                "this RPC needs `authorization: Bearer <credential>`",
            ),
        };
        self.metrics.rpc(method, started, "unauthenticated", reason);
        tracing::warn!(method, reason, "privileged RPC refused");
        Err(Status::with_error_details(
            Code::Unauthenticated,
            message,
            ErrorDetails::with_error_info(reason, ERROR_DOMAIN, HashMap::new()),
        ))
    }

    /// Counts the RPC and writes its request log line: method, result, reason, latency, user
    /// and jti — never the token. Verify logs at debug (it is the hot path), the rest at info.
    fn record(
        &self,
        method: &'static str,
        started: Instant,
        result: &'static str,
        reason: &'static str,
        subject: Subject<'_>,
    ) {
        self.metrics.rpc(method, started, result, reason);
        let latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        // A refused request may carry megabytes in these fields: log a short prefix only.
        let (user_id, jti) = (loggable(subject.user_id), loggable(subject.jti));
        if method == "Verify" {
            tracing::debug!(method, result, reason, latency_us, user_id = %user_id, jti = %jti, "rpc");
        } else {
            tracing::info!(method, result, reason, latency_us, user_id = %user_id, jti = %jti, "rpc");
        }
    }

    /// Records the RPC and maps its error to a `Status`.
    fn finish<T>(
        &self,
        method: &'static str,
        started: Instant,
        result: Result<T, AuthorityError>,
        subject: Subject<'_>,
    ) -> Result<Response<T>, Status> {
        match result {
            Ok(value) => {
                self.record(method, started, "ok", "", subject);
                Ok(Response::new(value))
            }
            Err(e) => {
                let (result, reason) = error_labels(&e);
                self.record(method, started, result, reason, subject);
                Err(to_status(e))
            }
        }
    }
}

#[tonic::async_trait]
impl TokenService for TokenGrpc {
    async fn issue(
        &self,
        request: Request<pb::IssueRequest>,
    ) -> Result<Response<pb::IssueResponse>, Status> {
        let started = Instant::now();
        self.authorize(&request, "Issue", started)?;
        let req = request.into_inner();
        let user_id = req.user_id.clone();
        let result = async {
            let ttl_ms = req.ttl.map(|d| duration_ms(&d, "ttl")).transpose()?;
            let issued = self
                .authority
                .issue(IssueRequest {
                    user_id: req.user_id,
                    claims: req.claims.map(struct_to_json).unwrap_or_default(),
                    ttl_ms,
                })
                .await?;
            Ok(pb::IssueResponse::from(grant(issued)))
        }
        .await;
        let jti = result.as_ref().map(|r| r.jti.clone()).unwrap_or_default();
        let subject = Subject {
            user_id: &user_id,
            jti: &jti,
        };
        self.finish("Issue", started, result, subject)
    }

    async fn verify(
        &self,
        request: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        let started = Instant::now();
        let token = request.into_inner().token;
        let verdict = match self.authority.verify(&token).await {
            Ok(verdict) => verdict,
            Err(e) => return self.finish("Verify", started, Err(e), Subject::default()),
        };
        let response = match verdict {
            Ok(claims) => {
                let subject = Subject {
                    user_id: &claims.user_id,
                    jti: &claims.jti,
                };
                self.record("Verify", started, "ok", "", subject);
                pb::VerifyResponse {
                    valid: true,
                    reason: pb::Reason::Unspecified as i32,
                    claims: Some(token_claims(claims)),
                }
            }
            Err(reason) => {
                self.record(
                    "Verify",
                    started,
                    "invalid",
                    reason.code(),
                    Subject::default(),
                );
                pb::VerifyResponse {
                    valid: false,
                    reason: proto_reason(reason) as i32,
                    claims: None,
                }
            }
        };
        Ok(Response::new(response))
    }

    async fn refresh(
        &self,
        request: Request<pb::RefreshRequest>,
    ) -> Result<Response<pb::RefreshResponse>, Status> {
        let started = Instant::now();
        let token = request.into_inner().token;
        let result = self
            .authority
            .refresh(&token)
            .await
            .map(|issued| pb::RefreshResponse::from(grant(issued)));
        let jti = result.as_ref().map(|r| r.jti.clone()).unwrap_or_default();
        let subject = Subject {
            user_id: "",
            jti: &jti,
        };
        self.finish("Refresh", started, result, subject)
    }

    async fn revoke(
        &self,
        request: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        use pb::revoke_request::Target;
        let started = Instant::now();
        // Revoking a token one holds is open (like Verify); every other target is privileged.
        if !matches!(request.get_ref().target, Some(Target::Token(_))) {
            self.authorize(&request, "Revoke", started)?;
        }
        let target = request.into_inner().target;
        let (user_id, jti) = match &target {
            Some(Target::User(u)) => (u.user_id.clone(), String::new()),
            Some(Target::Jti(j)) => (String::new(), j.clone()),
            _ => Default::default(),
        };
        let result = async {
            let target = match target {
                Some(Target::Token(token)) => RevokeTarget::Token(token),
                Some(Target::Jti(jti)) => RevokeTarget::Jti(jti),
                Some(Target::SessionId(sid)) => RevokeTarget::Session(sid),
                Some(Target::User(user)) => RevokeTarget::User {
                    user_id: user.user_id,
                    until_ms: user
                        .until
                        .map(|t| timestamp_ms(&t, "user.until"))
                        .transpose()?,
                },
                None => {
                    return Err(AuthorityError::InvalidArgument {
                        field: "target",
                        reason: "MISSING_TARGET",
                        message: "set one of token, jti, session_id or user".into(),
                    });
                }
            };
            let outcome = self.authority.revoke(target).await?;
            Ok(pb::RevokeResponse {
                stored: outcome.stored,
                revoked_until: outcome.revoked_until_ms.map(timestamp),
                banned: outcome.banned,
                session_id: outcome.session_id.unwrap_or_default(),
            })
        }
        .await;
        let subject = Subject {
            user_id: &user_id,
            jti: &jti,
        };
        self.finish("Revoke", started, result, subject)
    }

    async fn lift_ban(
        &self,
        request: Request<pb::LiftBanRequest>,
    ) -> Result<Response<pb::LiftBanResponse>, Status> {
        let started = Instant::now();
        self.authorize(&request, "LiftBan", started)?;
        let user_id = request.into_inner().user_id;
        let result = self
            .authority
            .lift_ban(&user_id)
            .await
            .map(|lifted| pb::LiftBanResponse { lifted });
        let subject = Subject {
            user_id: &user_id,
            jti: "",
        };
        self.finish("LiftBan", started, result, subject)
    }

    async fn get_user_status(
        &self,
        request: Request<pb::GetUserStatusRequest>,
    ) -> Result<Response<pb::GetUserStatusResponse>, Status> {
        let started = Instant::now();
        self.authorize(&request, "GetUserStatus", started)?;
        let user_id = request.into_inner().user_id;
        let result =
            self.authority
                .user_status(&user_id)
                .await
                .map(|status| pb::GetUserStatusResponse {
                    cutoff: status.cutoff_ms.map(timestamp),
                    banned: status.banned,
                    banned_until: status.cutoff_ms.filter(|_| status.banned).map(timestamp),
                });
        let subject = Subject {
            user_id: &user_id,
            jti: "",
        };
        self.finish("GetUserStatus", started, result, subject)
    }

    async fn get_jwks(
        &self,
        _request: Request<pb::GetJwksRequest>,
    ) -> Result<Response<pb::GetJwksResponse>, Status> {
        let started = Instant::now();
        let result = Ok(pb::GetJwksResponse {
            jwks_json: self.authority.jwks_json(),
        });
        self.finish("GetJwks", started, result, Subject::default())
    }
}

/// Longest prefix of a caller's value written to a log line, in bytes.
const LOGGED_VALUE_BYTES: usize = 64;

/// `value`, or its first [`LOGGED_VALUE_BYTES`] bytes (cut at a character boundary) and `…`.
fn loggable(value: &str) -> std::borrow::Cow<'_, str> {
    if value.len() <= LOGGED_VALUE_BYTES {
        return value.into();
    }
    let mut end = LOGGED_VALUE_BYTES;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &value[..end]).into()
}

/// Who an RPC was about, for the request log.
#[derive(Clone, Copy, Default)]
struct Subject<'a> {
    user_id: &'a str,
    jti: &'a str,
}

/// The `result` and `reason` metric labels of an error.
fn error_labels(e: &AuthorityError) -> (&'static str, &'static str) {
    match e {
        AuthorityError::InvalidArgument { reason, .. } => ("invalid_argument", reason),
        AuthorityError::Rejected(r) => ("unauthenticated", r.code()),
        AuthorityError::InvalidToken(r) => ("invalid_argument", r.code()),
        AuthorityError::Banned { .. } => ("permission_denied", Reason::UserBanned.code()),
        AuthorityError::NotReady | AuthorityError::Store(_) => ("unavailable", "STORE_UNAVAILABLE"),
        AuthorityError::Codec(_) => ("internal", "SIGNING_FAILED"),
    }
}

/// The fields Issue and Refresh both answer with.
struct Grant {
    token: String,
    jti: String,
    session_id: String,
    issued_at: Option<prost_types::Timestamp>,
    expires_at: Option<prost_types::Timestamp>,
    refresh_expires_at: Option<prost_types::Timestamp>,
}

/// Issue and Refresh answer with the same fields; the two messages stay separate in the proto
/// so that either can grow on its own.
macro_rules! from_grant {
    ($($response:ty),*) => {$(
        impl From<Grant> for $response {
            fn from(g: Grant) -> Self {
                Self {
                    token: g.token,
                    jti: g.jti,
                    issued_at: g.issued_at,
                    expires_at: g.expires_at,
                    refresh_expires_at: g.refresh_expires_at,
                    session_id: g.session_id,
                }
            }
        }
    )*};
}
from_grant!(pb::IssueResponse, pb::RefreshResponse);

fn grant(issued: IssuedToken) -> Grant {
    Grant {
        token: issued.token,
        jti: issued.jti,
        session_id: issued.session_id,
        issued_at: Some(timestamp(issued.times.issued_at * 1000)),
        expires_at: Some(timestamp(issued.times.expires_at * 1000)),
        refresh_expires_at: Some(timestamp(issued.times.refresh_expires_ms)),
    }
}

fn token_claims(claims: Claims) -> pb::TokenClaims {
    pb::TokenClaims {
        user_id: claims.user_id,
        jti: claims.jti,
        session_id: claims.session_id,
        issued_at: Some(timestamp(claims.issued_at * 1000)),
        original_issued_at: Some(timestamp(claims.orig_iat_ms)),
        expires_at: Some(timestamp(claims.expires_at * 1000)),
        extra: Some(json_to_struct(claims.extra)),
    }
}

/// The proto twin of a domain reason.
pub fn proto_reason(reason: Reason) -> pb::Reason {
    match reason {
        Reason::Malformed => pb::Reason::Malformed,
        Reason::BadSignature => pb::Reason::BadSignature,
        Reason::Expired => pb::Reason::Expired,
        Reason::NotYetValid => pb::Reason::NotYetValid,
        Reason::WrongIssuer => pb::Reason::WrongIssuer,
        Reason::WrongAudience => pb::Reason::WrongAudience,
        Reason::MissingClaim => pb::Reason::MissingClaim,
        Reason::UserRevoked => pb::Reason::UserRevoked,
        Reason::UserBanned => pb::Reason::UserBanned,
        Reason::TokenRevoked => pb::Reason::TokenRevoked,
        Reason::RefreshExpired => pb::Reason::RefreshExpired,
        Reason::RefreshReused => pb::Reason::RefreshReused,
    }
}

/// The one mapping from domain errors to gRPC statuses, with an AIP-193 `ErrorInfo`.
pub fn to_status(err: AuthorityError) -> Status {
    match err {
        AuthorityError::InvalidArgument {
            field,
            reason,
            message,
        } => invalid_argument(field, reason, &message),
        AuthorityError::Rejected(reason) => token_status(Code::Unauthenticated, reason),
        AuthorityError::InvalidToken(reason) => token_status(Code::InvalidArgument, reason),
        AuthorityError::Banned { until_ms } => {
            let until = chrono::DateTime::from_timestamp_millis(until_ms)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                .unwrap_or_default();
            let mut metadata = reason_metadata(Reason::UserBanned);
            metadata.insert("banned_until".into(), until.clone());
            Status::with_error_details(
                Code::PermissionDenied,
                format!("the user is banned until {until} (REASON_USER_BANNED)"),
                ErrorDetails::with_error_info(
                    proto_reason(Reason::UserBanned).as_str_name(),
                    ERROR_DOMAIN,
                    metadata,
                ),
            )
        }
        AuthorityError::NotReady => unavailable("the store is not ready yet; retry shortly"),
        AuthorityError::Store(e) => {
            tracing::warn!(error = %e, "store error");
            unavailable("the store did not answer; nothing was changed or acknowledged")
        }
        AuthorityError::Codec(e) => {
            tracing::error!(error = %e, "could not sign a token");
            Status::with_error_details(
                Code::Internal,
                "could not sign the token",
                ErrorDetails::with_error_info("SIGNING_FAILED", ERROR_DOMAIN, HashMap::new()),
            )
        }
    }
}

/// The answer to a request shed because too many are in flight: retry later, with backoff.
pub fn overloaded(limit: usize) -> Status {
    Status::with_error_details(
        Code::ResourceExhausted,
        format!("more than {limit} requests in flight; retry with backoff"),
        ErrorDetails::with_error_info("OVERLOADED", ERROR_DOMAIN, HashMap::new()),
    )
}

fn reason_metadata(reason: Reason) -> HashMap<String, String> {
    HashMap::from([(
        "reason".to_owned(),
        proto_reason(reason).as_str_name().to_owned(),
    )])
}

fn token_status(code: Code, reason: Reason) -> Status {
    let name = proto_reason(reason).as_str_name();
    Status::with_error_details(
        code,
        format!("{reason} ({name})"),
        ErrorDetails::with_error_info(name, ERROR_DOMAIN, reason_metadata(reason)),
    )
}

fn invalid_argument(field: &str, reason: &str, message: &str) -> Status {
    let mut details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, HashMap::new());
    details.add_bad_request_violation(field, message);
    Status::with_error_details(
        Code::InvalidArgument,
        format!("{field}: {message}"),
        details,
    )
}

fn unavailable(message: &str) -> Status {
    Status::with_error_details(
        Code::Unavailable,
        message,
        ErrorDetails::with_error_info("STORE_UNAVAILABLE", ERROR_DOMAIN, HashMap::new()),
    )
}

/// A protobuf Timestamp for a time in milliseconds.
pub fn timestamp(ms: UnixMillis) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

fn bad(field: &'static str, reason: &'static str, message: &str) -> AuthorityError {
    AuthorityError::InvalidArgument {
        field,
        reason,
        message: message.into(),
    }
}

fn timestamp_ms(
    t: &prost_types::Timestamp,
    field: &'static str,
) -> Result<UnixMillis, AuthorityError> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(bad(field, "INVALID_TIMESTAMP", "nanos out of range"));
    }
    t.seconds
        .checked_mul(1000)
        .and_then(|ms| ms.checked_add(i64::from(t.nanos / 1_000_000)))
        .filter(|ms| (0..=253_402_300_799_999).contains(ms))
        .ok_or_else(|| bad(field, "INVALID_TIMESTAMP", "must lie between 1970 and 9999"))
}

fn duration_ms(d: &prost_types::Duration, field: &'static str) -> Result<i64, AuthorityError> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(bad(field, "INVALID_TTL", "must be positive"));
    }
    d.seconds
        .checked_mul(1000)
        .and_then(|ms| ms.checked_add(i64::from(d.nanos / 1_000_000)))
        .ok_or_else(|| bad(field, "INVALID_TTL", "is too large"))
}

/// Converts a protobuf Struct to JSON; whole numbers become JSON integers.
pub fn struct_to_json(s: prost_types::Struct) -> Map<String, Value> {
    s.fields
        .into_iter()
        .map(|(k, v)| (k, value_to_json(v)))
        .collect()
}

fn value_to_json(v: prost_types::Value) -> Value {
    match v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(b),
        Some(Kind::StringValue(s)) => Value::String(s),
        Some(Kind::NumberValue(n)) => {
            // 2^53: the largest range where every integer is exact in an f64.
            if n.fract() == 0.0 && n.abs() <= 9_007_199_254_740_992.0 {
                Value::Number(Number::from(n as i64))
            } else {
                Number::from_f64(n).map_or(Value::Null, Value::Number)
            }
        }
        Some(Kind::StructValue(s)) => Value::Object(struct_to_json(s)),
        Some(Kind::ListValue(l)) => Value::Array(l.values.into_iter().map(value_to_json).collect()),
    }
}

/// Converts JSON to a protobuf Struct.
pub fn json_to_struct(map: Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map
            .into_iter()
            .map(|(k, v)| (k, json_to_value(v)))
            .collect(),
    }
}

fn json_to_value(v: Value) -> prost_types::Value {
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => Kind::StringValue(s),
        Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.into_iter().map(json_to_value).collect(),
        }),
        Value::Object(o) => Kind::StructValue(json_to_struct(o)),
    };
    prost_types::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_domain_reason_has_a_distinct_proto_reason() {
        let mut seen = std::collections::HashSet::new();
        for reason in Reason::ALL {
            let p = proto_reason(reason);
            assert_ne!(p, pb::Reason::Unspecified);
            assert!(seen.insert(p));
            assert_eq!(p.as_str_name(), format!("REASON_{}", reason.code()));
        }
    }

    #[test]
    fn logged_values_are_cut_short_at_a_character_boundary() {
        assert_eq!(loggable("alice"), "alice");
        let long = "é".repeat(1_000_000);
        let cut = loggable(&long);
        assert!(cut.len() <= LOGGED_VALUE_BYTES + "…".len());
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn structs_round_trip_through_json_keeping_integers() {
        let original = json!({"n": 42, "f": 1.5, "s": "x", "b": true, "z": null,
                              "l": [1, "a"], "o": {"k": -7}});
        let Value::Object(map) = original.clone() else {
            panic!("object literal")
        };
        let back = struct_to_json(json_to_struct(map));
        assert_eq!(Value::Object(back), original);
    }

    #[test]
    fn timestamps_keep_milliseconds_and_reject_nonsense() {
        let t = timestamp(1_764_405_892_123);
        assert_eq!((t.seconds, t.nanos), (1_764_405_892, 123_000_000));
        assert_eq!(timestamp_ms(&t, "t").ok(), Some(1_764_405_892_123));
        let bad = prost_types::Timestamp {
            seconds: 1,
            nanos: -1,
        };
        assert!(timestamp_ms(&bad, "t").is_err());
        let huge = prost_types::Timestamp {
            seconds: i64::MAX,
            nanos: 0,
        };
        assert!(timestamp_ms(&huge, "t").is_err());
    }

    #[test]
    fn statuses_carry_error_info_with_the_reason() {
        let status = to_status(AuthorityError::Rejected(Reason::TokenRevoked));
        assert_eq!(status.code(), Code::Unauthenticated);
        let details = status.get_error_details();
        let info = details.error_info().expect("error info");
        assert_eq!(info.reason, "REASON_TOKEN_REVOKED");
        assert_eq!(info.domain, ERROR_DOMAIN);
        assert_eq!(info.metadata["reason"], "REASON_TOKEN_REVOKED");
        let banned = to_status(AuthorityError::Banned { until_ms: 0 });
        assert_eq!(banned.code(), Code::PermissionDenied);
        assert!(banned.message().contains("USER_BANNED"));
    }
}
