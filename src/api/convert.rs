//! Translation between the proto and the domain: timestamps and durations (milliseconds),
//! custom claims (`google.protobuf.Struct` ↔ JSON), reasons, and the answer shapes of Issue,
//! Refresh and Verify.
use prost_types::value::Kind;
use serde_json::{Map, Number, Value};

use crate::api::pb;
use crate::authority::{AuthorityError, IssuedToken};
use crate::clock::UnixMillis;
use crate::error_code::ErrorCode;
use crate::reason::Reason;
use crate::store::AuditRecord;
use crate::token::Claims;

/// The fields Issue and Refresh both answer with.
pub struct Grant {
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

/// The answer fields of a minted token.
pub fn grant(issued: IssuedToken) -> Grant {
    Grant {
        token: issued.token,
        jti: issued.jti,
        session_id: issued.session_id,
        issued_at: Some(timestamp(issued.times.issued_at.as_millis())),
        expires_at: Some(timestamp(issued.times.expires_at.as_millis())),
        refresh_expires_at: Some(timestamp(issued.times.refresh_expires_ms)),
    }
}

/// One change of the audit trail, as `ListChanges` answers it.
pub fn change(record: AuditRecord) -> pb::Change {
    pb::Change {
        at: Some(timestamp(record.at_ms)),
        kind: record.action,
        who: record.who,
        why: record.why.unwrap_or_default(),
        user_id: record.user_id.unwrap_or_default(),
        target: record.target.unwrap_or_default(),
        until: record.until_ms.map(timestamp),
    }
}

/// Verify's claims; `own_issuer` is the `iss` of the sidecar's own tokens.
pub fn token_claims(claims: Claims, own_issuer: &str) -> pb::TokenClaims {
    pb::TokenClaims {
        issuer: claims.issuer.unwrap_or_else(|| own_issuer.to_owned()),
        user_id: claims.user_id,
        jti: claims.jti,
        session_id: claims.session_id,
        issued_at: Some(timestamp(claims.issued_at.as_millis())),
        original_issued_at: Some(timestamp(claims.orig_iat_ms)),
        expires_at: Some(timestamp(claims.expires_at.as_millis())),
        extra: Some(json_to_struct(claims.extra)),
        idp_session_id: claims.idp_session_id.unwrap_or_default(),
        dpop_jkt: claims.binding.jkt.unwrap_or_default(),
        x5t_s256: claims.binding.x5t_s256.unwrap_or_default(),
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
        Reason::ProofRequired => pb::Reason::ProofRequired,
        Reason::ProofInvalid => pb::Reason::ProofInvalid,
        Reason::ProofReplayed => pb::Reason::ProofReplayed,
        Reason::NonceRequired => pb::Reason::NonceRequired,
    }
}

/// A protobuf Timestamp for a time in milliseconds.
pub fn timestamp(ms: UnixMillis) -> prost_types::Timestamp {
    let (seconds, nanos) = token_sidecar_core::clock::seconds_and_nanos(ms);
    prost_types::Timestamp { seconds, nanos }
}

fn bad(field: &'static str, reason: ErrorCode, message: &str) -> AuthorityError {
    AuthorityError::InvalidArgument {
        field,
        reason,
        message: message.into(),
    }
}

/// Milliseconds of a request Timestamp, within 1970..9999.
pub fn timestamp_ms(
    t: &prost_types::Timestamp,
    field: &'static str,
) -> Result<UnixMillis, AuthorityError> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(bad(
            field,
            ErrorCode::InvalidTimestamp,
            "nanos out of range",
        ));
    }
    t.seconds
        .checked_mul(1000)
        .and_then(|ms| ms.checked_add(i64::from(t.nanos / 1_000_000)))
        .filter(|ms| (0..=253_402_300_799_999).contains(ms))
        .ok_or_else(|| {
            bad(
                field,
                ErrorCode::InvalidTimestamp,
                "must lie between 1970 and 9999",
            )
        })
}

/// Milliseconds of a request Duration (positive).
pub fn duration_ms(d: &prost_types::Duration, field: &'static str) -> Result<i64, AuthorityError> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(bad(field, ErrorCode::InvalidTtl, "must be positive"));
    }
    d.seconds
        .checked_mul(1000)
        .and_then(|ms| ms.checked_add(i64::from(d.nanos / 1_000_000)))
        .ok_or_else(|| bad(field, ErrorCode::InvalidTtl, "is too large"))
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
            assert_eq!(p.as_str_name(), reason.code());
        }
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
}
