//! The checks every signed event from an identity provider passes — an OIDC logout token or a
//! Shared Signals Security Event Token (RFC 8417): a compact JWS of bounded size, an asymmetric
//! `alg` (never `none`, never HMAC), an allowed `typ`, a signature by a key of the issuer's
//! JWKS, `iss` configured, our `aud`, a fresh `iat`, an unexpired `exp` if any, and a `jti`.
//! What the event means is read by the caller ([`super::backchannel`], [`super::ssf`]); that the
//! `jti` was not seen before is checked against the store.
use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use super::jwks::{KeyLookupError, ProviderKeys};
use crate::clock::{UnixMillis, UnixSeconds, millis_in_seconds};

/// Largest event token accepted.
pub const MAX_EVENT_TOKEN_BYTES: usize = 16 * 1024;
/// How old an event's `iat` may be.
pub const MAX_EVENT_AGE_MS: i64 = millis_in_seconds(5 * 60);
/// Tolerance for the sender's clock on `iat` (ahead) and `exp`.
pub const EVENT_LEEWAY_MS: i64 = millis_in_seconds(60);
/// Longest `jti` accepted.
pub const MAX_JTI_BYTES: usize = 256;

/// The algorithms a provider may sign events with.
const ACCEPTED_ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Why an event token was refused. Each maps to the receiver's own error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// Not a JWS we can read, a forbidden `alg` or `typ`, or a missing or malformed claim.
    #[error("{0}")]
    Malformed(String),
    /// `iss` is not a configured issuer.
    #[error("the issuer is not configured here")]
    UnknownIssuer,
    /// No key of the issuer fits, or the signature does not verify.
    #[error("{0}")]
    BadKey(String),
    /// `aud` does not name us.
    #[error("the audience is not this receiver's")]
    WrongAudience,
    /// `iat` is too old or in the future, or `exp` has passed.
    #[error("{0}")]
    Stale(String),
    /// The `jti` was received before.
    #[error("the event was received before (jti replayed)")]
    Replayed,
    /// The issuer's keys could not be read: nothing is decided; the sender retries after
    /// `retry_after_secs`.
    #[error("{why}")]
    KeysUnavailable {
        /// Why, for the log.
        why: String,
        /// When to retry, in whole seconds.
        retry_after_secs: u64,
    },
}

/// A token that passed the cheap checks: nothing in it is verified yet, but it has the shape
/// of an event from a configured issuer, signed with an asymmetric `alg`, and a current `iat` — what a request must show before it may cost a signature check or a key
/// read.
pub struct Unverified<'a> {
    token: &'a str,
    header: jsonwebtoken::Header,
    keys: Arc<ProviderKeys>,
    /// The `iat` the token claims (unverified), in milliseconds.
    claimed_iat_ms: UnixMillis,
}

/// The issuers trusted for one kind of event, their keys, and the audience they must name.
pub struct EventVerifier {
    issuers: HashMap<String, Arc<ProviderKeys>>,
    audience: String,
    /// The `typ` header values accepted, lowercase (absent is accepted too).
    types: &'static [&'static str],
}

/// An event token that passed every check.
#[derive(Debug, Clone)]
pub struct VerifiedEvent {
    /// `iss`.
    pub issuer: String,
    /// `jti`.
    pub jti: String,
    /// `iat`, in milliseconds.
    pub issued_at_ms: UnixMillis,
    /// Every claim.
    pub claims: Map<String, Value>,
}

impl EventVerifier {
    /// Trusts `issuers` (issuer → its keys) for events addressed to `audience` with one of
    /// `types` as `typ` (or none).
    pub fn new(
        issuers: HashMap<String, Arc<ProviderKeys>>,
        audience: String,
        types: &'static [&'static str],
    ) -> Self {
        Self {
            issuers,
            audience,
            types,
        }
    }

    /// The configured issuers.
    pub fn issuers(&self) -> impl Iterator<Item = &str> {
        self.issuers.keys().map(String::as_str)
    }

    /// Runs every check on `token` at `now` (the fleet's clock).
    pub async fn verify(&self, token: &str, now: UnixMillis) -> Result<VerifiedEvent, EventError> {
        let unverified = self.precheck(token, now)?;
        self.verify_signature(unverified, now).await
    }

    /// The cheap checks, in this order: size, a compact JWS, a JOSE header with an accepted
    /// (asymmetric) `alg` and `typ`, a JSON payload whose `iss` is configured, a current `iat`. Nothing here reads a key set or checks a signature.
    pub fn precheck<'a>(
        &self,
        token: &'a str,
        now: UnixMillis,
    ) -> Result<Unverified<'a>, EventError> {
        let malformed = |why: &str| EventError::Malformed(why.to_owned());
        if token.len() > MAX_EVENT_TOKEN_BYTES {
            return Err(malformed("the token is too large"));
        }
        let mut parts = token.split('.');
        let (Some(_), Some(payload), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("not a compact JWS (three parts)"));
        };
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| malformed("the JOSE header is not valid (or names an unknown alg)"))?;
        if !ACCEPTED_ALGORITHMS.contains(&header.alg) {
            return Err(malformed(
                "the alg is not accepted (an asymmetric signature is required)",
            ));
        }
        if let Some(typ) = &header.typ {
            let typ = typ.to_ascii_lowercase();
            let typ = typ.strip_prefix("application/").unwrap_or(&typ);
            if !self.types.contains(&typ) {
                return Err(malformed("the typ header is not one this endpoint accepts"));
            }
        }
        // The issuer picks the keys, so it is read before the signature is checked; nothing
        // read here is trusted until then.
        let unverified: Map<String, Value> = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or_else(|| malformed("the payload is not a JSON object"))?;
        let issuer = unverified
            .get("iss")
            .and_then(Value::as_str)
            .ok_or_else(|| malformed("the iss claim is missing"))?;
        // (Whether this issuer's keys sign with the token's asymmetric alg is left to the key
        // lookup: a provider may move to another alg with a rotation.)
        let keys = self.issuers.get(issuer).ok_or(EventError::UnknownIssuer)?;
        let claimed_iat_ms = issued_at(&unverified, now)?;
        Ok(Unverified {
            token,
            header,
            keys: keys.clone(),
            claimed_iat_ms,
        })
    }

    /// The signature by a key of the issuer's (read again within its bounds when the `kid` is
    /// new), then the claims.
    pub async fn verify_signature(
        &self,
        unverified: Unverified<'_>,
        now: UnixMillis,
    ) -> Result<VerifiedEvent, EventError> {
        let Unverified {
            token,
            header,
            keys,
            claimed_iat_ms,
        } = unverified;
        let candidates = keys
            .candidates(header.kid.as_deref(), header.alg, claimed_iat_ms)
            .await
            .map_err(|e| match e {
                KeyLookupError::NoKey => EventError::BadKey(
                    "no key of the issuer's key set fits the token's kid and alg".into(),
                ),
                KeyLookupError::Unavailable {
                    why,
                    retry_after_secs,
                } => EventError::KeysUnavailable {
                    why,
                    retry_after_secs,
                },
            })?;
        let mut validation = Validation::new(header.alg);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        validation.leeway = 0;
        let claims = candidates
            .iter()
            .find_map(|key| {
                jsonwebtoken::decode::<Map<String, Value>>(token, key.decoding(), &validation).ok()
            })
            .map(|data| data.claims)
            .ok_or_else(|| EventError::BadKey("the signature does not verify".into()))?;
        self.check_claims(claims, now)
    }

    fn check_claims(
        &self,
        claims: Map<String, Value>,
        now: UnixMillis,
    ) -> Result<VerifiedEvent, EventError> {
        let malformed = |why: &str| EventError::Malformed(why.to_owned());
        let issuer = claims
            .get("iss")
            .and_then(Value::as_str)
            .filter(|iss| self.issuers.contains_key(*iss))
            .ok_or(EventError::UnknownIssuer)?
            .to_owned();
        let audience_named = match claims.get("aud") {
            Some(Value::String(one)) => *one == self.audience,
            Some(Value::Array(many)) => many.iter().any(|a| a.as_str() == Some(&self.audience)),
            None => return Err(malformed("the aud claim is missing")),
            Some(_) => return Err(malformed("the aud claim is malformed")),
        };
        if !audience_named {
            return Err(EventError::WrongAudience);
        }
        let issued_at_ms = issued_at(&claims, now)?;
        if let Some(exp) = claims.get("exp") {
            let exp_ms = exp
                .as_i64()
                .filter(|s| (0..=i64::MAX / 4_000).contains(s))
                .map(|s| UnixSeconds(s).as_millis())
                .ok_or_else(|| malformed("the exp claim is not a NumericDate"))?;
            if now >= exp_ms + EVENT_LEEWAY_MS {
                return Err(EventError::Stale("the event has expired".into()));
            }
        }
        let jti = claims
            .get("jti")
            .and_then(Value::as_str)
            .filter(|j| !j.is_empty() && j.len() <= MAX_JTI_BYTES)
            .ok_or_else(|| malformed("the jti claim is missing or too long"))?
            .to_owned();
        Ok(VerifiedEvent {
            issuer,
            jti,
            issued_at_ms,
            claims,
        })
    }
}

/// The `iat` of an event in milliseconds, refused when missing, too old or ahead of `now` by
/// more than the leeway.
fn issued_at(claims: &Map<String, Value>, now: UnixMillis) -> Result<UnixMillis, EventError> {
    let issued_at_ms = claims
        .get("iat")
        .and_then(Value::as_i64)
        .filter(|s| (0..=i64::MAX / 4_000).contains(s))
        .map(|s| UnixSeconds(s).as_millis())
        .ok_or_else(|| {
            EventError::Malformed("the iat claim is missing or not a NumericDate".into())
        })?;
    if issued_at_ms < now - MAX_EVENT_AGE_MS {
        return Err(EventError::Stale(format!(
            "the event was issued more than {} s ago",
            std::time::Duration::from_millis(MAX_EVENT_AGE_MS.unsigned_abs()).as_secs()
        )));
    }
    if issued_at_ms > now + EVENT_LEEWAY_MS {
        return Err(EventError::Stale(
            "the event's iat lies in the future".into(),
        ));
    }
    Ok(issued_at_ms)
}
