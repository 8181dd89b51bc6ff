//! A DPoP proof (RFC 9449 §4), checked in §4.3's order. Pure: no clock of its own, no cache —
//! the caller gives the time and keeps the seen `jti`s — so the proxy filter runs the very same
//! code.
use std::borrow::Cow;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::binding::jwk_thumbprint;
use super::uri::normalize_htu;
use super::{Refusal, SenderRules};
use crate::token::ProviderKey;

/// The algorithms a proof may be signed with (asymmetric only: RFC 9449 §4.2). `Ed25519` is
/// RFC 9864's fully-specified name for `EdDSA` over Ed25519 (what current clients send).
pub const ALLOWED_ALGS: &[&str] = &["ES256", "ES384", "RS256", "PS256", "EdDSA", "Ed25519"];

/// A proof is small; anything larger is refused before it is decoded.
const MAX_PROOF_BYTES: usize = 8 * 1024;

/// The members of a JWK that only a private key has.
const PRIVATE_MEMBERS: &[&str] = &["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// A proof that passed every check but the caller's (nonce and replay).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedProof {
    /// The thumbprint of the key it was signed with (RFC 7638, base64url).
    pub jkt: String,
    /// Its `jti`.
    pub jti: String,
    /// Its `iat`, in milliseconds.
    pub iat_ms: i64,
    /// Its `nonce`, if it carried one.
    pub nonce: Option<String>,
}

#[derive(Deserialize)]
struct ProofHeader<'a> {
    #[serde(borrow)]
    typ: Option<Cow<'a, str>>,
    #[serde(borrow)]
    alg: Option<Cow<'a, str>>,
    jwk: Option<Value>,
    crit: Option<Value>,
}

#[derive(Deserialize)]
struct ProofClaims {
    jti: Option<Value>,
    htm: Option<Value>,
    htu: Option<Value>,
    iat: Option<Value>,
    ath: Option<Value>,
    nonce: Option<Value>,
}

/// A proof's `ath` for `token`: base64url(SHA-256(token)) (RFC 9449 §4.2).
pub fn access_token_hash(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

/// Checks `proof` for a request `method` `uri` carrying the access token `token`, at `now_ms`
/// (the fleet clock): everything of RFC 9449 §4.3 but the key binding (the caller compares
/// [`CheckedProof::jkt`]), the nonce and the replay.
pub fn check_proof(
    proof: &str,
    method: &str,
    uri: &str,
    token: &str,
    now_ms: i64,
    rules: &SenderRules,
) -> Result<CheckedProof, Refusal> {
    let malformed = || Refusal::invalid("jwt");
    if proof.is_empty() || proof.len() > MAX_PROOF_BYTES {
        return Err(malformed());
    }
    let mut parts = proof.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed());
    };
    let header_json = URL_SAFE_NO_PAD
        .decode(header_b64)
        .map_err(|_| malformed())?;
    let header: ProofHeader = serde_json::from_slice(&header_json).map_err(|_| malformed())?;
    if header.crit.is_some() {
        return Err(malformed());
    }
    if header.typ.as_deref() != Some("dpop+jwt") {
        return Err(Refusal::invalid("typ"));
    }
    let alg_name = header.alg.as_deref().unwrap_or_default();
    if !ALLOWED_ALGS.contains(&alg_name) {
        return Err(Refusal::invalid("alg"));
    }
    let alg: Algorithm = match alg_name {
        "Ed25519" => Algorithm::EdDSA,
        named => named.parse().map_err(|_| Refusal::invalid("alg"))?,
    };
    let jwk = match &header.jwk {
        Some(Value::Object(jwk)) => jwk,
        _ => return Err(Refusal::invalid("jwk")),
    };
    if PRIVATE_MEMBERS.iter().any(|m| jwk.contains_key(*m)) {
        return Err(Refusal::invalid("jwk"));
    }
    let jwk_value = header.jwk.as_ref().ok_or_else(|| Refusal::invalid("jwk"))?;
    let key = ProviderKey::from_jwk(jwk_value)
        .filter(|k| k.fits(alg))
        .ok_or_else(|| Refusal::invalid("jwk"))?;
    let payload = URL_SAFE_NO_PAD
        .decode(payload_b64)
        .map_err(|_| malformed())?;
    let message = &proof.as_bytes()[..header_b64.len() + 1 + payload_b64.len()];
    match jsonwebtoken::crypto::verify(signature_b64, message, key.decoding(), alg) {
        Ok(true) => {}
        _ => return Err(Refusal::invalid("signature")),
    }
    let claims: ProofClaims = serde_json::from_slice(&payload).map_err(|_| malformed())?;
    let text = |v: Option<Value>, check| match v {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        _ => Err(Refusal::invalid(check)),
    };
    let jti = text(claims.jti, "jti")?;
    if jti.len() > 256 {
        return Err(Refusal::invalid("jti"));
    }
    let htm = text(claims.htm, "htm")?;
    if method.is_empty() || htm != method {
        return Err(Refusal::invalid("htm"));
    }
    let htu = text(claims.htu, "htu")?;
    match (normalize_htu(&htu), normalize_htu(uri)) {
        (Some(claimed), Some(requested)) if claimed == requested => {}
        _ => return Err(Refusal::invalid("htu")),
    }
    let nonce = match claims.nonce {
        None => None,
        Some(Value::String(n)) => Some(n),
        Some(_) => return Err(Refusal::invalid("nonce")),
    };
    // A NumericDate may have a fraction (RFC 7519 §2).
    let iat_ms = claims
        .iat
        .as_ref()
        .and_then(Value::as_f64)
        .filter(|s| s.is_finite() && s.abs() < 1e12)
        .map(|s| (s * 1_000.0).floor() as i64)
        .ok_or_else(|| Refusal::invalid("iat"))?;
    if iat_ms < now_ms - rules.max_age_ms || iat_ms > now_ms + rules.leeway_ms {
        return Err(Refusal::invalid("iat"));
    }
    let ath = text(claims.ath, "ath")?;
    if ath != access_token_hash(token) {
        return Err(Refusal::invalid("ath"));
    }
    let jkt = jwk_thumbprint(jwk).ok_or_else(|| Refusal::invalid("jwk"))?;
    Ok(CheckedProof {
        jkt,
        jti,
        iat_ms,
        nonce,
    })
}
