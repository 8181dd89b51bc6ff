//! An identity provider's signing keys: a JWKS file, or an `https://` URL fetched and cached.
//!
//! A token naming a `kid` the cached set does not hold makes the set be read again (a key
//! rotation at the provider); reads are budgeted — [`READ_BURST`] at once, one more every
//! [`READ_EVERY_MS`] — so that a sender of made-up `kid`s cannot make us hammer the provider,
//! while a rotation (even one announced by a first token a moment before the new key is
//! published) is picked up at once. A set older than [`MAX_AGE_MS`] is read again on use. A
//! failed read keeps the keys already held.
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::fetch;
use crate::clock::Clock;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

/// Reads of a set that may follow one another at once.
pub const READ_BURST: f64 = 5.0;
/// After the burst, one more read every this many milliseconds.
pub const READ_EVERY_MS: i64 = 2_000;
/// A set older than this (milliseconds) is read again when used.
pub const MAX_AGE_MS: i64 = 600_000;

/// Where a provider's keys are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// A JWKS file (e.g. a mounted ConfigMap).
    File(PathBuf),
    /// An `https://` URL (or `http://` to a loopback address).
    Url(String),
}

impl JwksSource {
    /// `https://…` or `http://…` is a URL (checked), anything else a path.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("the JWKS source is empty".into());
        }
        if text.contains("://") {
            fetch::check_url(text).map_err(|e| e.to_string())?;
            return Ok(JwksSource::Url(text.to_owned()));
        }
        Ok(JwksSource::File(PathBuf::from(text)))
    }
}

impl std::fmt::Display for JwksSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwksSource::File(path) => write!(f, "{}", path.display()),
            JwksSource::Url(url) => f.write_str(url),
        }
    }
}

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
    /// Whether a token signed with `alg` may be checked with this key.
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
}

/// A provider's key set, parsed: keys by `kid`, and those without one.
#[derive(Clone, Default)]
pub struct KeySet {
    by_kid: HashMap<String, ProviderKey>,
    unnamed: Vec<ProviderKey>,
}

impl KeySet {
    /// The signing keys of a JWKS document. Keys for encryption, of other types, or that do not
    /// parse are skipped (a provider publishes more than we use); none usable is an error.
    pub fn parse(json: &[u8]) -> Result<Self, String> {
        let document: Value =
            serde_json::from_slice(json).map_err(|e| format!("not a JSON key set: {e}"))?;
        let keys = document
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("not a JSON Web Key Set (no \"keys\" array)")?;
        let mut set = KeySet::default();
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
        if set.by_kid.is_empty() && set.unnamed.is_empty() {
            return Err(
                "the key set holds no usable signature key (RSA, EC P-256/P-384 or \
                        Ed25519)"
                    .into(),
            );
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

    /// Whether the set holds a key named `kid`.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.by_kid.contains_key(kid)
    }
}

fn provider_key(jwk: &Jwk) -> Option<ProviderKey> {
    let kind = match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => {
            // The same floor as our own keys.
            let bits =
                base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &rsa.n)
                    .map_or(0, |n| n.iter().skip_while(|b| **b == 0).count() * 8);
            if bits < crate::token::MIN_RSA_BITS {
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

/// Why no key could be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyLookupError {
    /// The set (read just now, or within [`REFETCH_EVERY_MS`]) holds no key for the token.
    #[error("no key of the issuer's key set fits the token's kid and alg")]
    NoKey,
    /// The set could never be read.
    #[error("the issuer's key set could not be read: {0}")]
    Unavailable(String),
}

/// A provider's keys, read on first use and again as needed.
pub struct ProviderKeys {
    source: JwksSource,
    /// Ages are measured on its monotonic clock (the injected one: tests move it).
    clock: Arc<dyn Clock>,
    state: tokio::sync::Mutex<Held>,
}

#[derive(Default)]
struct Held {
    set: Option<Arc<KeySet>>,
    /// Monotonic milliseconds of the last successful read.
    read_at: Option<i64>,
    /// Reads spent from the budget, as of `spent_at` (monotonic milliseconds).
    spent: f64,
    spent_at: i64,
}

impl Held {
    /// Takes one read from the budget, if there is one left at `now`.
    fn take_read(&mut self, now: i64) -> bool {
        let refilled = now.saturating_sub(self.spent_at) as f64 / READ_EVERY_MS as f64;
        self.spent = (self.spent - refilled).max(0.0);
        self.spent_at = now;
        if self.spent + 1.0 > READ_BURST {
            return false;
        }
        self.spent += 1.0;
        true
    }
}

impl ProviderKeys {
    /// Keys to be read from `source`.
    pub fn new(source: JwksSource, clock: Arc<dyn Clock>) -> Self {
        Self {
            source,
            clock,
            state: tokio::sync::Mutex::new(Held::default()),
        }
    }

    /// Where the keys come from.
    pub fn source(&self) -> &JwksSource {
        &self.source
    }

    /// The keys that may check a token with header `kid` and `alg`, reading the set again if
    /// it is old or holds no such `kid` (within the read budget).
    pub async fn candidates(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Vec<ProviderKey>, KeyLookupError> {
        let mut held = self.state.lock().await;
        let now = self.clock.monotonic_ms();
        let since = |at: i64| now.saturating_sub(at);
        let old = held.read_at.is_none_or(|at| since(at) >= MAX_AGE_MS);
        let unknown = match (&held.set, kid) {
            (Some(set), Some(kid)) => !set.has_kid(kid),
            (Some(_), None) => false,
            (None, _) => true,
        };
        if (old || unknown) && held.take_read(now) {
            match self.read().await {
                Ok(set) => {
                    held.set = Some(Arc::new(set));
                    held.read_at = Some(now);
                }
                Err(why) => {
                    tracing::warn!(source = %self.source, error = %why, "an identity provider's key set could not be read; the keys held are kept");
                    if held.set.is_none() {
                        return Err(KeyLookupError::Unavailable(why));
                    }
                }
            }
        }
        match &held.set {
            Some(set) => {
                let found = set.candidates(kid, alg);
                if found.is_empty() {
                    Err(KeyLookupError::NoKey)
                } else {
                    Ok(found)
                }
            }
            None => Err(KeyLookupError::Unavailable(
                "not read yet (reads are budgeted: retry shortly)".into(),
            )),
        }
    }

    async fn read(&self) -> Result<KeySet, String> {
        read_key_set(&self.source).await
    }
}

impl KeySet {
    /// How many usable keys the set holds.
    pub fn len(&self) -> usize {
        self.by_kid.len() + self.unnamed.len()
    }

    /// Whether the set holds no usable key (never, once parsed).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Reads and parses the key set at `source` once (also what `check-config` does).
pub async fn read_key_set(source: &JwksSource) -> Result<KeySet, String> {
    let bytes = match source {
        JwksSource::File(path) => {
            let bytes = tokio::fs::read(path)
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if bytes.len() > fetch::MAX_JWKS_BYTES {
                return Err(format!("{} is too large", path.display()));
            }
            bytes
        }
        JwksSource::Url(url) => fetch::get(url)
            .await
            .map_err(|e| format!("{url}: {e}"))?
            .to_vec(),
    };
    KeySet::parse(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_budgeted_a_burst_then_one_every_two_seconds() {
        let mut held = Held::default();
        for _ in 0..5 {
            assert!(held.take_read(0));
        }
        assert!(!held.take_read(0), "a sender of made-up kids is held back");
        assert!(!held.take_read(READ_EVERY_MS - 1));
        assert!(held.take_read(READ_EVERY_MS));
        assert!(!held.take_read(READ_EVERY_MS));
        assert!(held.take_read(READ_EVERY_MS * 20));
    }

    #[test]
    fn a_key_set_keeps_only_usable_signature_keys() {
        let set = KeySet::parse(
            br#"{"keys":[
                {"kty":"EC","crv":"P-256","kid":"ec","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
                {"kty":"EC","crv":"P-256","kid":"enc","use":"enc","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
                {"kty":"oct","kid":"secret","k":"c2VjcmV0"},
                {"kty":"RSA","kid":"small","n":"AQAB","e":"AQAB"}
            ]}"#,
        )
        .expect("one usable key");
        assert!(set.has_kid("ec"));
        for skipped in ["enc", "secret", "small"] {
            assert!(!set.has_kid(skipped), "{skipped}");
        }
        assert_eq!(set.candidates(Some("ec"), Algorithm::ES256).len(), 1);
        assert!(set.candidates(Some("ec"), Algorithm::ES384).is_empty());
        assert!(set.candidates(Some("ec"), Algorithm::RS256).is_empty());
        assert_eq!(set.candidates(None, Algorithm::ES256).len(), 1);
        for bad in [&b"{}"[..], b"[]", b"{\"keys\":[]}", b"not json"] {
            assert!(KeySet::parse(bad).is_err());
        }
    }
}
