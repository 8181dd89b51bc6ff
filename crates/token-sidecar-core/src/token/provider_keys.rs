//! An identity provider's published signing keys, parsed leniently (a provider's JWKS may omit
//! `alg` and `kid`, and carries encryption keys we skip) but held to our floors: RSA ≥ 2048
//! bits, EC on P-256 or P-384, Ed25519; never an HMAC secret, never `none`. The IdP receivers
//! (SPEC §13) and the trusted issuers' tokens (SPEC §16) check signatures with these.
use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

use super::rsa::{MIN_RSA_BITS, rsa_modulus_bits};

/// One public key of a provider.
#[derive(Clone)]
pub struct ProviderKey {
    /// The algorithm the key names, if it names one.
    alg: Option<Algorithm>,
    kind: KeyKind,
    decoding: DecodingKey,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl ProviderKey {
    /// Whether a token signed with `alg` may be checked with this key: the key's type fixes
    /// the family (so an HMAC `alg` never fits: the public key is never used as a secret).
    pub fn fits(&self, alg: Algorithm) -> bool {
        if self.alg.is_some_and(|own| own != alg) {
            return false;
        }
        matches!(
            (self.kind, alg),
            (
                KeyKind::Rsa,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512,
            ) | (KeyKind::P256, Algorithm::ES256)
                | (KeyKind::P384, Algorithm::ES384)
                | (KeyKind::Ed25519, Algorithm::EdDSA)
        )
    }

    /// The key to verify with.
    pub fn decoding(&self) -> &DecodingKey {
        &self.decoding
    }

    /// One public JWK, held to the same floors as a provider's keys (a DPoP proof's `jwk`,
    /// SPEC §15); None when it is not one we verify with.
    pub fn from_jwk(jwk: &Value) -> Option<Self> {
        provider_key(&serde_json::from_value::<Jwk>(jwk.clone()).ok()?)
    }
}

/// A signature that is not base64url: a malformed token, not a bad signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotBase64Url;

/// A provider's key set, parsed: keys by `kid`, and those without one.
#[derive(Clone, Default)]
pub struct ProviderKeySet {
    by_kid: HashMap<String, ProviderKey>,
    unnamed: Vec<ProviderKey>,
}

impl ProviderKeySet {
    /// The signing keys of a JWKS document. Keys for encryption, of other types, or that do not
    /// parse are skipped (a provider publishes more than we use); none usable is an error.
    pub fn parse(json: &[u8]) -> Result<Self, String> {
        let set = Self::parse_any(json)?;
        if set.is_empty() {
            return Err(
                "the key set holds no usable signature key (RSA of 2048 bits or more, EC P-256/P-384 \
                 or Ed25519)"
                    .into(),
            );
        }
        Ok(set)
    }

    /// [`Self::parse`], but a set without a usable key is a set (it verifies nothing): a
    /// provider that publishes only a weak key has its tokens refused, not its peers' too.
    pub fn parse_any(json: &[u8]) -> Result<Self, String> {
        let document: Value =
            serde_json::from_slice(json).map_err(|e| format!("not a JSON key set: {e}"))?;
        let keys = document
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("not a JSON Web Key Set (no \"keys\" array)")?;
        let mut set = Self::default();
        for key in keys {
            if key.get("use").and_then(Value::as_str) == Some("enc") {
                continue;
            }
            let Ok(jwk) = serde_json::from_value::<Jwk>(key.clone()) else {
                continue;
            };
            let Some(parsed) = provider_key(&jwk) else {
                continue;
            };
            match jwk.common.key_id {
                Some(kid) => {
                    set.by_kid.insert(kid, parsed);
                }
                None => set.unnamed.push(parsed),
            }
        }
        Ok(set)
    }

    /// The keys that may check a token with header `kid` and `alg`.
    pub fn candidates(&self, kid: Option<&str>, alg: Algorithm) -> Vec<ProviderKey> {
        match kid {
            Some(kid) => self
                .by_kid
                .get(kid)
                .filter(|k| k.fits(alg))
                .cloned()
                .into_iter()
                .collect(),
            None => self
                .by_kid
                .values()
                .chain(&self.unnamed)
                .filter(|k| k.fits(alg))
                .cloned()
                .collect(),
        }
    }

    /// Whether any key may check a token with `kid` and `alg`, and that signature holds over
    /// `message`.
    pub fn verify(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
        message: &[u8],
        signature_b64: &str,
    ) -> Result<bool, NotBase64Url> {
        let check = |key: &ProviderKey| {
            jsonwebtoken::crypto::verify(signature_b64, message, &key.decoding, alg)
                .map_err(|_| NotBase64Url)
        };
        match kid {
            Some(kid) => match self.by_kid.get(kid).filter(|k| k.fits(alg)) {
                Some(key) => check(key),
                None => Ok(false),
            },
            None => {
                for key in self.by_kid.values().chain(&self.unnamed) {
                    if key.fits(alg) && check(key)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
        }
    }

    /// Whether the set holds a key named `kid`.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.by_kid.contains_key(kid)
    }

    /// The key ids, sorted.
    pub fn kids(&self) -> Vec<&str> {
        let mut kids: Vec<&str> = self.by_kid.keys().map(String::as_str).collect();
        kids.sort_unstable();
        kids
    }

    /// How many usable keys the set holds.
    pub fn len(&self) -> usize {
        self.by_kid.len() + self.unnamed.len()
    }

    /// Whether the set holds no usable key (never, once parsed).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn provider_key(jwk: &Jwk) -> Option<ProviderKey> {
    let kind = match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => {
            // The same floor as our own keys.
            let bits = URL_SAFE_NO_PAD
                .decode(&rsa.n)
                .map_or(0, |n| rsa_modulus_bits(&n));
            if bits < MIN_RSA_BITS {
                return None;
            }
            KeyKind::Rsa
        }
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => KeyKind::P256,
            EllipticCurve::P384 => KeyKind::P384,
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            KeyKind::Ed25519
        }
        _ => return None,
    };
    // A key naming an algorithm we do not verify with (e.g. RSA-OAEP) is skipped.
    let alg = match &jwk.common.key_algorithm {
        None => None,
        Some(named) => Some(
            serde_json::to_value(named)
                .ok()?
                .as_str()?
                .parse::<Algorithm>()
                .ok()?,
        ),
    };
    let decoding = DecodingKey::from_jwk(jwk).ok()?;
    Some(ProviderKey {
        alg,
        kind,
        decoding,
    })
}
