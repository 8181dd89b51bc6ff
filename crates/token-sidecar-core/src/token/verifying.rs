//! Keys that verify: one per `kid`, from our configured keys or from a published key set.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

#[cfg(feature = "aws-lc")]
use super::algorithms::hmac_algorithm;
use super::algorithms::{MIN_HMAC_SECRET_BYTES, algorithm};
use super::key_error::KeyError;
use super::rsa::{MIN_RSA_BITS, rsa_modulus_bits};

/// A key that can verify tokens carrying its `kid`.
pub(super) struct VerificationKey {
    pub(super) alg: Algorithm,
    pub(super) alg_name: &'static str,
    pub(super) decoding: DecodingKey,
    /// For HS* keys, the HMAC key prepared once (jsonwebtoken would rebuild it on every check).
    #[cfg(feature = "aws-lc")]
    pub(super) hmac: Option<aws_lc_rs::hmac::Key>,
}

impl VerificationKey {
    pub(super) fn hmac(
        alg: Algorithm,
        alg_name: &'static str,
        secret: &[u8],
    ) -> Result<Self, String> {
        Ok(Self {
            alg,
            alg_name,
            decoding: DecodingKey::from_secret(secret).map_err(|e| e.to_string())?,
            #[cfg(feature = "aws-lc")]
            hmac: Some(aws_lc_rs::hmac::Key::new(hmac_algorithm(alg), secret)),
        })
    }

    pub(super) fn public(alg: Algorithm, alg_name: &'static str, decoding: DecodingKey) -> Self {
        Self {
            alg,
            alg_name,
            decoding,
            #[cfg(feature = "aws-lc")]
            hmac: None,
        }
    }
}

/// The keys that verify, by `kid`: all the one decode path needs. A [`KeySet`] holds them
/// beside its signer; a proxy filter holds them alone, read from a JWKS.
#[derive(Default)]
pub struct VerifyingKeys {
    by_kid: HashMap<String, VerificationKey>,
    /// Set when a token named a `kid` not held: a hint to read a published set again (read
    /// and cleared by whoever refreshes it, at its own bounded pace).
    unknown_kid: AtomicBool,
}

impl VerifyingKeys {
    pub(super) fn get(&self, kid: &str) -> Option<&VerificationKey> {
        let found = self.by_kid.get(kid);
        // Loaded first: a flood of made-up kids reads a shared line, it does not write it.
        if found.is_none() && !self.unknown_kid.load(Ordering::Relaxed) {
            self.unknown_kid.store(true, Ordering::Relaxed);
        }
        found
    }

    pub(super) fn contains(&self, kid: &str) -> bool {
        self.by_kid.contains_key(kid)
    }

    /// Whether a token named a `kid` not held since the last call.
    pub fn take_unknown_kid(&self) -> bool {
        self.unknown_kid.load(Ordering::Relaxed) && self.unknown_kid.swap(false, Ordering::Relaxed)
    }

    /// The `kid` of an HMAC key, if any is held.
    pub(super) fn hmac_kid(&self) -> Option<&str> {
        self.by_kid
            .iter()
            .find(|(_, k)| k.alg.family() == AlgorithmFamily::Hmac)
            .map(|(kid, _)| kid.as_str())
    }

    /// Moves every key of `other` in (a `kid` held twice is an error).
    pub(super) fn absorb(&mut self, other: VerifyingKeys) -> Result<(), KeyError> {
        for (kid, key) in other.by_kid {
            self.insert(kid, key)?;
        }
        Ok(())
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.by_kid.len()
    }

    /// Whether there is no key (every token then fails `BAD_SIGNATURE`).
    pub fn is_empty(&self) -> bool {
        self.by_kid.is_empty()
    }

    /// Whether every key is an HMAC secret (a signature check then costs about what a cache
    /// lookup does).
    pub fn only_hmac(&self) -> bool {
        self.by_kid
            .values()
            .all(|k| k.alg.family() == AlgorithmFamily::Hmac)
    }

    /// The key ids, sorted.
    pub fn kids(&self) -> Vec<&str> {
        let mut kids: Vec<&str> = self.by_kid.keys().map(String::as_str).collect();
        kids.sort_unstable();
        kids
    }

    pub(super) fn insert(&mut self, kid: String, key: VerificationKey) -> Result<(), KeyError> {
        match self.by_kid.entry(kid) {
            std::collections::hash_map::Entry::Occupied(taken) => {
                Err(KeyError::DuplicateKid(taken.key().clone()))
            }
            std::collections::hash_map::Entry::Vacant(free) => {
                free.insert(key);
                Ok(())
            }
        }
    }

    /// The keys of one or more RFC 7517 key sets (JSON), held to the rules `--key` files are:
    /// every key names its `kid` and one of our algorithms (`alg`), RSA keys have at least
    /// 2048 bits, an EC key is on its algorithm's curve, and an `oct` key (an HMAC secret, which
    /// only a set kept private can carry) has at least 32 bytes. Keys meant only for
    /// encryption (`"use": "enc"`) are skipped.
    pub fn from_jwks<'a>(sets: impl IntoIterator<Item = &'a str>) -> Result<Self, KeyError> {
        let mut keys = Self::default();
        for json in sets {
            let set: JwkSet = serde_json::from_str(json).map_err(|e| KeyError::Invalid {
                kid: String::new(),
                message: format!("not a JSON Web Key Set: {e}"),
            })?;
            for jwk in set.keys {
                if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
                    continue;
                }
                let kid = jwk.common.key_id.clone().ok_or_else(|| KeyError::Invalid {
                    kid: String::new(),
                    message: "a key without a kid".into(),
                })?;
                let invalid = |message: String| KeyError::Invalid {
                    kid: kid.clone(),
                    message,
                };
                let named = jwk
                    .common
                    .key_algorithm
                    .map(|a| a.to_string())
                    .ok_or_else(|| invalid("no alg".into()))?;
                let (alg, alg_name) =
                    algorithm(&named).ok_or_else(|| KeyError::UnsupportedAlgorithm {
                        kid: kid.clone(),
                        alg: named.clone(),
                    })?;
                let key = match &jwk.algorithm {
                    AlgorithmParameters::OctetKey(oct) if alg.family() == AlgorithmFamily::Hmac => {
                        let secret = URL_SAFE_NO_PAD
                            .decode(&oct.value)
                            .map_err(|_| invalid("the secret is not base64url".into()))?;
                        if secret.len() < MIN_HMAC_SECRET_BYTES {
                            return Err(KeyError::WeakSecret {
                                kid: kid.clone(),
                                path: "the key set".into(),
                                len: secret.len(),
                            });
                        }
                        VerificationKey::hmac(alg, alg_name, &secret).map_err(invalid)?
                    }
                    AlgorithmParameters::OctetKey(_) => {
                        return Err(invalid(format!("an oct key cannot be {alg_name}")));
                    }
                    _ if alg.family() == AlgorithmFamily::Hmac => {
                        return Err(invalid(format!("{alg_name} needs an oct key")));
                    }
                    _ => {
                        check_public_jwk(&jwk, alg, alg_name).map_err(|problem| match problem {
                            PublicKeyProblem::WeakRsa(detail) => KeyError::WeakRsaKey {
                                kid: kid.clone(),
                                path: "the key set".into(),
                                detail,
                            },
                            PublicKeyProblem::Other(message) => invalid(message),
                        })?;
                        let decoding =
                            DecodingKey::from_jwk(&jwk).map_err(|e| invalid(e.to_string()))?;
                        VerificationKey::public(alg, alg_name, decoding)
                    }
                };
                keys.insert(kid, key)?;
            }
        }
        Ok(keys)
    }
}

/// Why a public key is refused.
pub(super) enum PublicKeyProblem {
    WeakRsa(String),
    Other(String),
}

/// A public JWK is strong enough and matches its algorithm: RSA ≥ 2048 bits, EC on the
/// algorithm's curve, an OKP key for EdDSA.
pub(super) fn check_public_jwk(
    jwk: &Jwk,
    alg: Algorithm,
    alg_name: &str,
) -> Result<(), PublicKeyProblem> {
    match (&jwk.algorithm, alg.family()) {
        (AlgorithmParameters::RSA(rsa), AlgorithmFamily::Rsa) => {
            let bits = URL_SAFE_NO_PAD
                .decode(&rsa.n)
                .map_or(0, |n| rsa_modulus_bits(&n));
            if bits < MIN_RSA_BITS {
                return Err(PublicKeyProblem::WeakRsa(format!("{bits} bits")));
            }
            Ok(())
        }
        (AlgorithmParameters::EllipticCurve(ec), AlgorithmFamily::Ec) => {
            let wanted = if alg == Algorithm::ES256 {
                EllipticCurve::P256
            } else {
                EllipticCurve::P384
            };
            if ec.curve != wanted {
                return Err(PublicKeyProblem::Other(format!(
                    "{alg_name} needs a {wanted:?} key"
                )));
            }
            Ok(())
        }
        (AlgorithmParameters::OctetKeyPair(_), AlgorithmFamily::Ed) => Ok(()),
        _ => Err(PublicKeyProblem::Other(format!(
            "the key's type does not fit {alg_name}"
        ))),
    }
}
