//! The algorithms a key may have, by name, and what an HMAC key needs.
use jsonwebtoken::Algorithm;

/// The algorithms a key may be configured with.
pub const SUPPORTED_ALGORITHMS: &str =
    "HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA";

/// Shortest HMAC secret accepted (RFC 7518 §3.2 asks for at least the hash size; 32 bytes is
/// the floor SPEC sets for every HS algorithm).
pub(super) const MIN_HMAC_SECRET_BYTES: usize = 32;

/// The canonical name of a supported algorithm.
pub(super) fn algorithm(alg: &str) -> Option<(Algorithm, &'static str)> {
    Some(match alg {
        "HS256" => (Algorithm::HS256, "HS256"),
        "HS384" => (Algorithm::HS384, "HS384"),
        "HS512" => (Algorithm::HS512, "HS512"),
        "RS256" => (Algorithm::RS256, "RS256"),
        "RS384" => (Algorithm::RS384, "RS384"),
        "RS512" => (Algorithm::RS512, "RS512"),
        "PS256" => (Algorithm::PS256, "PS256"),
        "PS384" => (Algorithm::PS384, "PS384"),
        "PS512" => (Algorithm::PS512, "PS512"),
        "ES256" => (Algorithm::ES256, "ES256"),
        "ES384" => (Algorithm::ES384, "ES384"),
        "EdDSA" => (Algorithm::EdDSA, "EdDSA"),
        _ => return None,
    })
}

#[cfg(feature = "aws-lc")]
pub(super) fn hmac_algorithm(alg: Algorithm) -> aws_lc_rs::hmac::Algorithm {
    match alg {
        Algorithm::HS384 => aws_lc_rs::hmac::HMAC_SHA384,
        Algorithm::HS512 => aws_lc_rs::hmac::HMAC_SHA512,
        _ => aws_lc_rs::hmac::HMAC_SHA256,
    }
}
