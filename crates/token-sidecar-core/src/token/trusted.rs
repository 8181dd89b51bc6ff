//! Tokens from trusted issuers (SPEC §16): an identity provider's own access tokens, verified
//! with its published keys and then judged by our revocation rules, as if they were ours.
//!
//! How such a token maps onto our rules:
//! - the user is the issuer's subject prefix + `sub` (the same user ids its back-channel logouts
//!   and Shared Signals events name);
//! - its IdP session (`idp_session_id`) is the prefix + `sid`, what a logout of that session
//!   denies;
//! - its own id — the one Revoke{token}, RFC 7009 revocation and the denylist use, as both its
//!   `jti` and its session — is minted-shaped: the first 128 bits of SHA-256 over the issuer and
//!   its `jti` (over the whole token when it has none). Scoped by issuer: two issuers' equal
//!   `jti`s are two tokens;
//! - `exp` is required, `iat` is not (RFC 7519; see [`session_start_ms`]);
//! - the instant a cutoff is compared with ([`session_start_ms`]) is `auth_time` when present
//!   and earlier than `iat`: a revoke-all is meant to end the user's sign-ins, and a provider
//!   keeps minting fresh access tokens (new `iat`) from a sign-in made before it. It is never
//!   taken earlier than `exp` less the refresh window, because a cutoff is purged after that
//!   window: a token judged by a cutoff is then always dead before the cutoff can go, so the
//!   purge never turns a refusal into an admission.
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwapOption;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, AlgorithmFamily};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::claims::{ClaimSlots, Claims, as_numeric_date, check_audience, required_string};
use super::provider_keys::{NotBase64Url, ProviderKeySet};
use crate::clock::{UnixMillis, UnixSeconds};
use crate::policy::user_id_problem;
use crate::reason::Reason;

/// Which audience a trusted issuer's tokens must name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    /// `aud` must contain this value.
    Exactly(String),
    /// Any audience, or none (`audience=*`: the operator said so).
    Any,
}

impl Audience {
    /// `*` is any; anything else must be named.
    pub fn parse(text: &str) -> Self {
        match text {
            "*" => Self::Any,
            named => Self::Exactly(named.to_owned()),
        }
    }
}

impl std::fmt::Display for Audience {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exactly(named) => f.write_str(named),
            Self::Any => f.write_str("*"),
        }
    }
}

/// What we trust of one issuer: its keys (swapped in whole when read again), the audience its
/// tokens must name, and the prefix that makes its subjects our users.
pub struct IssuerTrust {
    issuer: String,
    audience: Audience,
    subject_prefix: String,
    /// The refresh window: see the module's note on the cutoff.
    session_horizon_ms: i64,
    keys: ArcSwapOption<ProviderKeySet>,
    /// The key set as published (JSON), for the proxy filters' copy.
    published: ArcSwapOption<Value>,
    /// Set when a token named a `kid` not held: a hint to read the set again, at the reader's
    /// own bounded pace (SPEC §13: a stranger's `kid`s never spend a budget the issuer needs).
    unknown_kid: AtomicBool,
}

impl std::fmt::Debug for IssuerTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerTrust")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("subject_prefix", &self.subject_prefix)
            .finish_non_exhaustive()
    }
}

impl IssuerTrust {
    /// An issuer whose keys are not read yet (its tokens fail `BAD_SIGNATURE` until they are).
    pub fn new(
        issuer: impl Into<String>,
        audience: Audience,
        subject_prefix: impl Into<String>,
        session_horizon_ms: i64,
    ) -> Self {
        Self {
            issuer: issuer.into(),
            audience,
            subject_prefix: subject_prefix.into(),
            session_horizon_ms,
            keys: ArcSwapOption::empty(),
            published: ArcSwapOption::empty(),
            unknown_kid: AtomicBool::new(false),
        }
    }

    /// The `iss` its tokens carry.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The audience its tokens must name.
    pub fn audience(&self) -> &Audience {
        &self.audience
    }

    /// What is put before its subjects and session ids.
    pub fn subject_prefix(&self) -> &str {
        &self.subject_prefix
    }

    /// The refresh window the cutoff rule is bounded by.
    pub fn session_horizon_ms(&self) -> i64 {
        self.session_horizon_ms
    }

    /// Puts a freshly read key set in use.
    pub fn replace_keys(&self, keys: ProviderKeySet) {
        self.keys.store(Some(Arc::new(keys)));
    }

    /// Reads `jwks` (a JWKS document) and puts its keys in use; it is also what the proxy
    /// filters are given.
    pub fn publish_keys(&self, jwks: &[u8]) -> Result<(), String> {
        let keys = ProviderKeySet::parse_any(jwks)?;
        let document: Value = serde_json::from_slice(jwks).map_err(|e| e.to_string())?;
        self.published.store(Some(Arc::new(document)));
        self.replace_keys(keys);
        Ok(())
    }

    /// The key set in use, once read.
    pub fn keys(&self) -> Option<Arc<ProviderKeySet>> {
        self.keys.load_full()
    }

    /// Whether a token named a `kid` not held since the last call.
    pub fn take_unknown_kid(&self) -> bool {
        self.unknown_kid.load(Ordering::Relaxed) && self.unknown_kid.swap(false, Ordering::Relaxed)
    }

    fn note_unknown_kid(&self) {
        // Loaded first: a flood of made-up kids reads a shared line, it does not write it.
        if !self.unknown_kid.load(Ordering::Relaxed) {
            self.unknown_kid.store(true, Ordering::Relaxed);
        }
    }
}

/// Every trusted issuer, by `iss`.
#[derive(Debug, Default)]
pub struct TrustedIssuers {
    by_issuer: HashMap<String, Arc<IssuerTrust>>,
}

impl TrustedIssuers {
    /// These issuers (one entry per `iss`: a later one replaces an earlier one).
    pub fn new(issuers: impl IntoIterator<Item = Arc<IssuerTrust>>) -> Self {
        Self {
            by_issuer: issuers
                .into_iter()
                .map(|trust| (trust.issuer.clone(), trust))
                .collect(),
        }
    }

    /// The issuer named `iss`, if trusted.
    pub fn get(&self, iss: &str) -> Option<&Arc<IssuerTrust>> {
        self.by_issuer.get(iss)
    }

    /// Whether no issuer is trusted (the decode path then never looks at a payload before its
    /// signature).
    pub fn is_empty(&self) -> bool {
        self.by_issuer.is_empty()
    }

    /// The issuers, in no order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<IssuerTrust>> {
        self.by_issuer.values()
    }

    /// Whether every issuer's keys have been read at least once.
    pub fn all_read(&self) -> bool {
        self.by_issuer.values().all(|trust| trust.keys().is_some())
    }
}

/// The trusted issuers as the sidecar gives them to its proxy filters (`GET /trusted-issuers`):
/// one JSON document, so that a filter judges with exactly the sidecar's issuers, audiences,
/// prefixes and keys — configured once, in one place.
#[derive(serde::Serialize, serde::Deserialize)]
struct Document {
    issuers: Vec<IssuerEntry>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct IssuerEntry {
    issuer: String,
    audience: String,
    subject_prefix: String,
    session_horizon_ms: i64,
    /// None until the sidecar has read the issuer's keys.
    jwks: Option<Value>,
}

impl TrustedIssuers {
    /// The document a proxy filter reads.
    pub fn document(&self) -> String {
        let mut issuers: Vec<IssuerEntry> = self
            .by_issuer
            .values()
            .map(|trust| IssuerEntry {
                issuer: trust.issuer.clone(),
                audience: trust.audience.to_string(),
                subject_prefix: trust.subject_prefix.clone(),
                session_horizon_ms: trust.session_horizon_ms,
                jwks: trust.published.load_full().map(|v| Value::clone(&v)),
            })
            .collect();
        issuers.sort_by(|a, b| a.issuer.cmp(&b.issuer));
        serde_json::to_string(&Document { issuers }).unwrap_or_else(|_| r#"{"issuers":[]}"#.into())
    }

    /// The issuers of a document [`Self::document`] wrote (a proxy filter's copy).
    pub fn from_document(json: &[u8]) -> Result<Self, String> {
        let document: Document = serde_json::from_slice(json)
            .map_err(|e| format!("not a trusted-issuers document: {e}"))?;
        let mut issuers = Vec::new();
        for entry in document.issuers {
            let trust = IssuerTrust::new(
                entry.issuer,
                Audience::parse(&entry.audience),
                entry.subject_prefix,
                entry.session_horizon_ms,
            );
            if let Some(jwks) = entry.jwks {
                let bytes = serde_json::to_vec(&jwks).map_err(|e| e.to_string())?;
                trust
                    .publish_keys(&bytes)
                    .map_err(|e| format!("{}: {e}", trust.issuer))?;
            }
            issuers.push(Arc::new(trust));
        }
        Ok(Self::new(issuers))
    }
}

/// The signed parts of a token whose `iss` names a trusted issuer, as the decode path split it.
pub(super) struct SignedParts<'a> {
    pub(super) kid: Option<&'a str>,
    pub(super) alg: &'a str,
    pub(super) message: &'a [u8],
    pub(super) signature_b64: &'a str,
    pub(super) payload: &'a [u8],
    pub(super) token: &'a str,
}

/// Checks a trusted issuer's token: an asymmetric `alg` one of its keys fits, the signature,
/// then its claims (SPEC §16).
pub(super) fn decode_trusted(
    trust: &IssuerTrust,
    parts: SignedParts<'_>,
) -> Result<Claims, Reason> {
    // `none` and every HMAC alg end here: a provider's public key is never a secret.
    let alg: Algorithm = parts.alg.parse().map_err(|_| Reason::BadSignature)?;
    if alg.family() == AlgorithmFamily::Hmac || parts.signature_b64.is_empty() {
        return Err(Reason::BadSignature);
    }
    let keys = trust.keys().ok_or(Reason::BadSignature)?;
    if let Some(kid) = parts.kid
        && !keys.has_kid(kid)
    {
        trust.note_unknown_kid();
        return Err(Reason::BadSignature);
    }
    match keys.verify(parts.kid, alg, parts.message, parts.signature_b64) {
        Ok(true) => {}
        Ok(false) => return Err(Reason::BadSignature),
        Err(NotBase64Url) => return Err(Reason::Malformed),
    }
    trusted_claims(trust, parts.payload, parts.token)
}

/// The claims of a trusted issuer's verified payload, mapped onto ours (the module's note).
fn trusted_claims(trust: &IssuerTrust, payload: &[u8], token: &str) -> Result<Claims, Reason> {
    let slots: ClaimSlots = serde_json::from_slice(payload).map_err(|_| Reason::Malformed)?;
    if required_string(slots.iss)? != trust.issuer {
        return Err(Reason::WrongIssuer);
    }
    let sub = required_string(slots.sub)?;
    let expires_at = as_numeric_date(&slots.exp.ok_or(Reason::MissingClaim)?)?;
    let issued_at = slots.iat.as_ref().map(as_numeric_date).transpose()?;
    let not_before = slots.nbf.as_ref().map(as_numeric_date).transpose()?;
    if let Audience::Exactly(expected) = &trust.audience {
        check_audience(slots.aud.as_ref(), expected)?;
    }
    // A provider's DPoP-bound token (`cnf.jkt`) is bound here too (SPEC §15).
    let binding = crate::sender::Binding::from_claim(slots.cnf.as_ref())?;
    let mut extra = slots.extra;
    let auth_time = extra.get("auth_time").map(as_numeric_date).transpose()?;
    let jti = slots.jti.map(|v| required_string(Some(v))).transpose()?;
    let sid = slots.sid.map(|v| required_string(Some(v))).transpose()?;
    let user_id = format!("{}{sub}", trust.subject_prefix);
    if user_id_problem(&user_id).is_some() {
        return Err(Reason::Malformed);
    }
    let own_id = token_id(&trust.issuer, jti.as_deref(), token);
    let idp_session_id = sid
        .as_ref()
        .map(|sid| format!("{}{sid}", trust.subject_prefix));
    // The provider's own ids stay visible to the caller, beside the ones we judge by.
    for (name, value) in [("jti", jti), ("sid", sid)] {
        if let Some(value) = value {
            extra.insert(name.into(), Value::String(value));
        }
    }
    for (name, value) in [("orig_iat", slots.orig_iat), ("idp_sid", slots.idp_sid)] {
        if let Some(value) = value {
            extra.insert(name.into(), value);
        }
    }
    let orig_iat_ms = session_start_ms(issued_at, auth_time, expires_at, trust.session_horizon_ms);
    Ok(Claims {
        user_id,
        jti: own_id.clone(),
        session_id: own_id,
        // Without `iat`, the earliest the token can be taken to be issued.
        issued_at: issued_at.unwrap_or(UnixSeconds::floor_of(orig_iat_ms)),
        expires_at,
        not_before,
        orig_iat_ms,
        idp_session_id,
        extra,
        issuer: Some(trust.issuer.clone()),
        binding,
    })
}

/// The id a trusted issuer's token is revoked by: 128 bits of SHA-256 over the issuer and its
/// `jti` (or, without one, the whole token), in the shape of the ids we mint.
pub fn token_id(issuer: &str, jti: Option<&str>, token: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(issuer.as_bytes());
    match jti {
        Some(jti) => {
            hash.update([0u8]);
            hash.update(jti.as_bytes());
        }
        None => {
            hash.update([1u8]);
            hash.update(token.as_bytes());
        }
    }
    URL_SAFE_NO_PAD.encode(&hash.finalize()[..16])
}

/// The instant a cutoff is compared with (the module's note): `iat`, or `auth_time` when
/// earlier, but never before `exp` less the refresh window. A token without `iat` (RFC 7519
/// makes it optional) is taken as issued as early as that bound allows: every cutoff that could
/// concern it refuses it.
pub fn session_start_ms(
    issued_at: Option<UnixSeconds>,
    auth_time: Option<UnixSeconds>,
    expires_at: UnixSeconds,
    session_horizon_ms: i64,
) -> UnixMillis {
    let floor = expires_at.as_millis().saturating_sub(session_horizon_ms);
    let signed_in = auth_time.map_or(floor, |at| at.as_millis().max(floor));
    match issued_at {
        None => signed_in,
        Some(iat) if auth_time.is_none() => iat.as_millis(),
        Some(iat) => signed_in.min(iat.as_millis()),
    }
}

#[cfg(test)]
#[path = "trusted_tests.rs"]
mod tests;
