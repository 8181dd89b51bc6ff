//! The claims we put in a token and read back out of one.
//!
//! Representation: `iat`, `exp` and `nbf` are integer NumericDates (seconds), for interoperability.
//! `orig_iat` is a NumericDate with exactly millisecond precision: seconds since the epoch as a
//! JSON number with up to three decimals (e.g. `1764405892.123`). Inside the sidecar it is an
//! integer count of milliseconds.
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;

use serde_json::{Map, Value};

use crate::clock::{UnixMillis, UnixSeconds};
use crate::model::DenyKind;
use crate::reason::Reason;
use crate::sender::Binding;

/// Claim names that Issue's custom claims may not set.
pub const RESERVED_CLAIMS: &[&str] = &[
    "iss", "sub", "aud", "exp", "nbf", "iat", "jti", "sid", "orig_iat", "idp_sid", "cnf",
];

/// The validated claims of one token.
#[derive(Clone, PartialEq)]
pub struct Claims {
    /// `sub`: the user.
    pub user_id: String,
    /// `jti`: this token's id.
    pub jti: String,
    /// `sid`: the session id, shared by every token refreshed from the first one.
    pub session_id: String,
    /// `iat`, in seconds.
    pub issued_at: UnixSeconds,
    /// `exp`, in seconds.
    pub expires_at: UnixSeconds,
    /// `nbf`, in seconds, if present.
    pub not_before: Option<UnixSeconds>,
    /// `orig_iat`: when the session's first token was issued, in milliseconds.
    pub orig_iat_ms: UnixMillis,
    /// `idp_sid`: the identity provider's session this token was minted for (Issue's
    /// `idp_session_id`), kept across refreshes; a back-channel logout of it revokes the token.
    pub idp_session_id: Option<String>,
    /// Every claim that is not reserved: the custom claims given at Issue.
    pub extra: Map<String, Value>,
    /// The trusted issuer that signed it (SPEC §16); None: this sidecar's own token.
    pub issuer: Option<String>,
    /// `cnf`: the key or certificate it is bound to (SPEC §15); unbound for a bearer token.
    pub binding: Binding,
}

// Claims carry user data and ids that let a reader correlate sessions; keep Debug terse.
impl Claims {
    /// The id this token is denied by under `kind`, if it has one: its `jti`, its session, or
    /// the identity provider's session it was minted for. (An exhaustive match: a new kind of
    /// denylist row is answered here, or the compiler asks.)
    pub fn id_for(&self, kind: DenyKind) -> Option<&str> {
        match kind {
            DenyKind::Token => Some(&self.jti),
            DenyKind::Session => Some(&self.session_id),
            DenyKind::IdpSession => self.idp_session_id.as_deref(),
        }
    }

    /// Every `(kind, id)` a denylist row could refuse this token by, for each of
    /// [`DenyKind::ALL`]: what Verify, the proxy filter's mirror and the policy look up.
    pub fn deny_ids(&self) -> impl Iterator<Item = (DenyKind, &str)> {
        DenyKind::ALL
            .into_iter()
            .filter_map(|kind| Some((kind, self.id_for(kind)?)))
    }
}

impl std::fmt::Debug for Claims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claims")
            .field("user_id", &self.user_id)
            .field("jti", &self.jti)
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .field("orig_iat_ms", &self.orig_iat_ms)
            .field("extra_claims", &self.extra.len())
            .finish_non_exhaustive()
    }
}

/// A fresh 128-bit random identifier, base64url without padding (22 characters).
pub fn new_random_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether `id` has the shape of an id [`new_random_id`] mints: 22 base64url characters that
/// encode exactly 128 bits. Anything else names no token or session of ours.
pub fn is_minted_id(id: &str) -> bool {
    id.len() == 22
        && URL_SAFE_NO_PAD
            .decode(id)
            .is_ok_and(|bytes| bytes.len() == 16 && URL_SAFE_NO_PAD.encode(&bytes) == id)
}

/// The JSON shape written into a token's payload.
#[derive(serde::Serialize)]
#[cfg(feature = "runtime")]
pub(super) struct WireClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
    jti: &'a str,
    sid: &'a str,
    iat: UnixSeconds,
    exp: UnixSeconds,
    #[serde(skip_serializing_if = "Option::is_none")]
    nbf: Option<UnixSeconds>,
    orig_iat: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    idp_sid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cnf: Option<Value>,
    #[serde(flatten)]
    extra: &'a Map<String, Value>,
}

#[cfg(feature = "runtime")]
impl<'a> WireClaims<'a> {
    pub(super) fn new(claims: &'a Claims, issuer: &'a str, audience: Option<&'a str>) -> Self {
        Self {
            iss: issuer,
            sub: &claims.user_id,
            aud: audience,
            jti: &claims.jti,
            sid: &claims.session_id,
            iat: claims.issued_at,
            exp: claims.expires_at,
            nbf: claims.not_before,
            orig_iat: crate::clock::fractional_seconds(claims.orig_iat_ms),
            idp_sid: claims.idp_session_id.as_deref(),
            cnf: claims.binding.to_claim(),
            extra: &claims.extra,
        }
    }
}

/// Reads the claims out of a payload (JSON bytes) whose signature has already been checked.
///
/// The payload must be one JSON object without duplicate member names; `issuer` must match
/// `iss`; `audience`, when configured, must be named by `aud`.
pub(super) fn parse_payload(
    json: &[u8],
    issuer: &str,
    audience: Option<&str>,
) -> Result<Claims, Reason> {
    let slots: ClaimSlots = serde_json::from_slice(json).map_err(|_| Reason::Malformed)?;
    let iss = required_string(slots.iss)?;
    let user_id = required_string(slots.sub)?;
    let jti = required_string(slots.jti)?;
    let session_id = required_string(slots.sid)?;
    let issued_at = as_numeric_date(&slots.iat.ok_or(Reason::MissingClaim)?)?;
    let expires_at = as_numeric_date(&slots.exp.ok_or(Reason::MissingClaim)?)?;
    let not_before = match slots.nbf {
        None => None,
        Some(value) => Some(as_numeric_date(&value)?),
    };
    let orig_iat_ms = match slots.orig_iat {
        None => return Err(Reason::MissingClaim),
        Some(Value::Number(n)) => n
            .as_f64()
            .and_then(crate::clock::millis_of_fractional_seconds)
            .ok_or(Reason::Malformed)?,
        Some(_) => return Err(Reason::Malformed),
    };
    let idp_session_id = match slots.idp_sid {
        None => None,
        Some(value) => Some(required_string(Some(value))?),
    };
    let binding = Binding::from_claim(slots.cnf.as_ref())?;

    if iss != issuer {
        return Err(Reason::WrongIssuer);
    }
    if let Some(expected) = audience {
        check_audience(slots.aud.as_ref(), expected)?;
    }
    Ok(Claims {
        user_id,
        jti,
        session_id,
        issued_at,
        expires_at,
        not_before,
        orig_iat_ms,
        idp_session_id,
        extra: slots.extra,
        issuer: None,
        binding,
    })
}

/// `aud` (a string or an array of them) names `expected`.
pub(super) fn check_audience(aud: Option<&Value>, expected: &str) -> Result<(), Reason> {
    let named = match aud {
        None => return Err(Reason::MissingClaim),
        Some(Value::String(one)) => one == expected,
        Some(Value::Array(many)) => many.iter().any(|a| a.as_str() == Some(expected)),
        Some(_) => return Err(Reason::Malformed),
    };
    if named {
        Ok(())
    } else {
        Err(Reason::WrongAudience)
    }
}

/// A payload object taken apart in one pass: the reserved claims in their own slots (no map
/// insert and remove for each), the custom ones in `extra`. Duplicate member names are refused:
/// RFC 7519 allows "last one wins", but two verifiers that pick differently would disagree
/// about the same token.
#[derive(Default)]
pub(super) struct ClaimSlots {
    pub(super) iss: Option<Value>,
    pub(super) sub: Option<Value>,
    pub(super) aud: Option<Value>,
    pub(super) jti: Option<Value>,
    pub(super) sid: Option<Value>,
    pub(super) iat: Option<Value>,
    pub(super) exp: Option<Value>,
    pub(super) nbf: Option<Value>,
    pub(super) orig_iat: Option<Value>,
    pub(super) idp_sid: Option<Value>,
    pub(super) cnf: Option<Value>,
    pub(super) extra: Map<String, Value>,
}

impl<'de> serde::Deserialize<'de> for ClaimSlots {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ClaimSlots;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object without duplicate members")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut access: A,
            ) -> Result<ClaimSlots, A::Error> {
                let mut slots = ClaimSlots::default();
                while let Some(MemberName(name)) = access.next_key::<MemberName<'de>>()? {
                    let slot = match name.as_ref() {
                        "iss" => &mut slots.iss,
                        "sub" => &mut slots.sub,
                        "aud" => &mut slots.aud,
                        "jti" => &mut slots.jti,
                        "sid" => &mut slots.sid,
                        "iat" => &mut slots.iat,
                        "exp" => &mut slots.exp,
                        "nbf" => &mut slots.nbf,
                        "orig_iat" => &mut slots.orig_iat,
                        "idp_sid" => &mut slots.idp_sid,
                        "cnf" => &mut slots.cnf,
                        _ => {
                            if slots.extra.contains_key(name.as_ref()) {
                                return Err(serde::de::Error::custom("duplicate member"));
                            }
                            let value = access.next_value::<Value>()?;
                            slots.extra.insert(name.into_owned(), value);
                            continue;
                        }
                    };
                    if slot.is_some() {
                        return Err(serde::de::Error::custom("duplicate member"));
                    }
                    *slot = Some(access.next_value::<Value>()?);
                }
                Ok(slots)
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// A member name, borrowed from the input when it has no escapes (the usual case).
struct MemberName<'de>(std::borrow::Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for MemberName<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = MemberName<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(MemberName(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(MemberName(std::borrow::Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(MemberName(std::borrow::Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

pub(super) fn required_string(value: Option<Value>) -> Result<String, Reason> {
    match value {
        None => Err(Reason::MissingClaim),
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) => Err(Reason::MissingClaim),
        Some(_) => Err(Reason::Malformed),
    }
}

/// An integer NumericDate: non-negative, and small enough that milliseconds do not overflow.
pub(super) fn as_numeric_date(value: &Value) -> Result<UnixSeconds, Reason> {
    const MAX_SECONDS: i64 = i64::MAX / 4_000;
    value
        .as_i64()
        .filter(|s| (0..=MAX_SECONDS).contains(s))
        .map(UnixSeconds)
        .ok_or(Reason::Malformed)
}

#[cfg(test)]
#[path = "claims_tests.rs"]
mod tests;
