//! The one decode-and-validate path (SPEC §3): Verify, Refresh and Revoke(token) — through
//! [`super::TokenCodec::decode`] — and the proxy filter all call [`decode_token`]; there is no
//! other decoder.
//!
//! It checks, in order: the size cap, the compact shape, the header (`alg` must be the `kid`'s
//! key's algorithm; `crit` and duplicate members are refused), the payload's base64url, the
//! signature, then the claims (a JSON object without duplicate members; types, required claims,
//! issuer, audience). With trusted issuers configured (SPEC §16), the payload's `iss` is read
//! before the signature to choose whose keys check it — an issuer's keys are never tried on
//! another's token — and a trusted issuer's token continues in [`super::trusted`]. Time-dependent checks (`exp`, `nbf`) belong to the revocation policy, which
//! reads the injected clock.
use std::borrow::Cow;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::Value;

use super::claims::{Claims, parse_payload};
use super::trusted::{SignedParts, TrustedIssuers, decode_trusted};
use super::verifying::{VerificationKey, VerifyingKeys};
use crate::reason::Reason;

/// Tokens longer than this are refused before any decoding.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The fields of a JOSE header that decide how a token is checked. Every other header field
/// (`jwk`, `jku`, `x5u`, `x5c`, ...) is ignored: keys come only from our own key set.
#[derive(Deserialize)]
struct JoseHeader<'a> {
    #[serde(borrow)]
    alg: Option<Cow<'a, str>>,
    #[serde(borrow)]
    kid: Option<Cow<'a, str>>,
    crit: Option<Value>,
}

/// Only the issuer of a payload (a duplicate `iss` is an error, as everywhere).
#[derive(Deserialize)]
struct IssuerOnly<'a> {
    #[serde(borrow)]
    iss: Option<Cow<'a, str>>,
}

/// Decodes a token with `keys` and validates everything that does not depend on time: the
/// token must name `issuer` and, when one is configured, `audience` — or be a token of one of
/// the `trusted` issuers, checked by their rules.
pub fn decode_token(
    keys: &VerifyingKeys,
    issuer: &str,
    audience: Option<&str>,
    trusted: &TrustedIssuers,
    token: &str,
) -> Result<Claims, Reason> {
    if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
        return Err(Reason::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Reason::Malformed);
    };
    let header_json = URL_SAFE_NO_PAD
        .decode(header_b64)
        .map_err(|_| Reason::Malformed)?;
    let header: JoseHeader = serde_json::from_slice(&header_json).map_err(|_| Reason::Malformed)?;
    if header.crit.is_some() {
        // We implement no JWS extensions, so a critical one can never be understood.
        return Err(Reason::Malformed);
    }
    let alg = header.alg.ok_or(Reason::Malformed)?;
    let signed_len = header_b64.len() + 1 + payload_b64.len();
    let message = &token.as_bytes()[..signed_len];
    let mut payload = None;
    if !trusted.is_empty() {
        let decoded = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .map_err(|_| Reason::Malformed)?;
        let named: IssuerOnly = serde_json::from_slice(&decoded).map_err(|_| Reason::Malformed)?;
        if let Some(iss) = named.iss.as_deref()
            && iss != issuer
            && let Some(trust) = trusted.get(iss)
        {
            return decode_trusted(
                trust,
                SignedParts {
                    kid: header.kid.as_deref(),
                    alg: &alg,
                    message,
                    signature_b64,
                    payload: &decoded,
                    token,
                },
            );
        }
        payload = Some(decoded);
    }
    let key = header
        .kid
        .and_then(|kid| keys.get(kid.as_ref()))
        .ok_or(Reason::BadSignature)?;
    if alg != key.alg_name {
        return Err(Reason::BadSignature);
    }
    if signature_b64.is_empty() {
        return Err(Reason::BadSignature);
    }
    // The payload's encoding is checked before any cryptography: a format error is reported
    // as such, and garbage costs no signature check.
    let payload = match payload {
        Some(decoded) => decoded,
        None => URL_SAFE_NO_PAD
            .decode(payload_b64)
            .map_err(|_| Reason::Malformed)?,
    };
    match verify_signature(key, message, signature_b64) {
        Ok(true) => {}
        Ok(false) => return Err(Reason::BadSignature),
        Err(()) => return Err(Reason::Malformed),
    }
    parse_payload(&payload, issuer, audience)
}

/// The signature check; `Err` when the signature is not base64url.
fn verify_signature(
    key: &VerificationKey,
    message: &[u8],
    signature_b64: &str,
) -> Result<bool, ()> {
    #[cfg(feature = "aws-lc")]
    if let Some(hmac) = &key.hmac {
        return verify_hmac(hmac, message, signature_b64);
    }
    jsonwebtoken::crypto::verify(signature_b64, message, &key.decoding, key.alg).map_err(|_| ())
}

/// HMAC check with the prepared key, in constant time; `Err` when the signature is not base64url,
/// exactly as `jsonwebtoken::crypto::verify` answers for the other algorithms.
#[cfg(feature = "aws-lc")]
fn verify_hmac(
    key: &aws_lc_rs::hmac::Key,
    message: &[u8],
    signature_b64: &str,
) -> Result<bool, ()> {
    let signature = URL_SAFE_NO_PAD.decode(signature_b64).map_err(|_| ())?;
    Ok(aws_lc_rs::hmac::verify(key, message, &signature).is_ok())
}
