//! The sidecar's codec: the decode path ([`decode_token`]) with the current key set (swapped
//! on reload) and the verified-token cache in front of it, and the encoder.
use std::sync::Arc;

use arc_swap::ArcSwap;
use jsonwebtoken::Header;

use super::claims::{Claims, WireClaims};
use super::decode::{MAX_TOKEN_BYTES, decode_token};
use super::keys::KeySet;
use super::trusted::TrustedIssuers;
use super::verified::{VerifiedCache, digest};
use crate::reason::Reason;

/// Why a token could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The crypto library refused to sign.
    #[error("signing failed: {0}")]
    Signing(String),
    /// A verify-only key set holds no private key.
    #[error("this sidecar holds no signing key (verify-only)")]
    NoSigningKey,
}

/// A key set and the decodes made with it: swapped together, so that a decode checked with a
/// key that is gone can never be remembered for the new set.
struct Generation {
    keys: Arc<KeySet>,
    verified: Option<VerifiedCache>,
}

/// Signs and decodes tokens with one key set (swapped atomically on reload), issuer and
/// audience; remembers successful decodes when given a [`VerifiedCache`].
pub struct TokenCodec {
    current: ArcSwap<Generation>,
    verified_template: Option<VerifiedCache>,
    issuer: String,
    audience: Option<String>,
    /// Issuers whose tokens are verified too (SPEC §16).
    trusted: Arc<TrustedIssuers>,
}

impl std::fmt::Debug for TokenCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCodec")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl TokenCodec {
    /// A codec for `keys`; tokens carry `issuer` and, if given, `audience`.
    pub fn new(keys: KeySet, issuer: String, audience: Option<String>) -> Self {
        Self {
            current: ArcSwap::from_pointee(Generation {
                keys: Arc::new(keys),
                verified: None,
            }),
            verified_template: None,
            issuer,
            audience,
            trusted: Arc::default(),
        }
    }

    /// Verifies the tokens of `trusted` issuers too.
    pub fn with_trusted_issuers(mut self, trusted: Arc<TrustedIssuers>) -> Self {
        self.trusted = trusted;
        self
    }

    /// The trusted issuers (empty unless configured).
    pub fn trusted_issuers(&self) -> &Arc<TrustedIssuers> {
        &self.trusted
    }

    /// Forgets every remembered decode: a trusted issuer's key set changed, and a decode checked
    /// with a key it dropped must not be answered again.
    pub fn forget_verified(&self) {
        self.current.store(Arc::new(self.generation(self.keys())));
    }

    /// Remembers successful decodes in `cache` (SPEC §8), for key sets with a public-key
    /// algorithm: with HMAC secrets only, the check itself costs what a digest and a cache
    /// probe do, and on a working set larger than the cache the probe and insert make Verify
    /// slower (measured: see BENCHMARKS.md).
    pub fn with_verified_cache(mut self, cache: VerifiedCache) -> Self {
        let keys = self.keys();
        self.verified_template = Some(cache);
        self.current.store(Arc::new(self.generation(keys)));
        self
    }

    fn generation(&self, keys: Arc<KeySet>) -> Generation {
        let verified = match &self.verified_template {
            Some(template) if !keys.only_hmac() => Some(template.emptied()),
            _ => None,
        };
        Generation { keys, verified }
    }

    /// The `iss` tokens carry.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The `aud` tokens carry, if configured.
    pub fn audience(&self) -> Option<&str> {
        self.audience.as_deref()
    }

    /// The key set in use.
    pub fn keys(&self) -> Arc<KeySet> {
        self.current.load().keys.clone()
    }

    /// Replaces the key set, with an empty verified-token cache; requests already running
    /// finish with the old set.
    pub fn replace_keys(&self, keys: KeySet) {
        self.current
            .store(Arc::new(self.generation(Arc::new(keys))));
    }

    /// Signs `claims` with the signing key.
    pub fn encode(&self, claims: &Claims) -> Result<String, CodecError> {
        let current = self.current.load();
        let signer = current
            .keys
            .signer
            .as_ref()
            .ok_or(CodecError::NoSigningKey)?;
        let mut header = Header::new(signer.alg);
        header.kid = Some(signer.kid.clone());
        let wire = WireClaims::new(claims, &self.issuer, self.audience.as_deref());
        jsonwebtoken::encode(&header, &wire, &signer.encoding)
            .map_err(|e| CodecError::Signing(e.to_string()))
    }

    /// Decodes a token and validates everything that does not depend on time; a token decoded
    /// before with the same key set is answered from the verified-token cache.
    pub fn decode(&self, token: &str) -> Result<Claims, Reason> {
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Err(Reason::Malformed);
        }
        let current = self.current.load();
        let decode = |token| {
            decode_token(
                &current.keys.verifiers,
                &self.issuer,
                self.audience.as_deref(),
                &self.trusted,
                token,
            )
        };
        let Some(verified) = &current.verified else {
            return decode(token);
        };
        let digest = digest(token);
        if let Some(claims) = verified.get(&digest) {
            return Ok(Claims::clone(&claims));
        }
        let claims = decode(token)?;
        verified.insert(digest, Arc::new(claims.clone()));
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::KeySpec;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde_json::{Map, Value, json};

    fn decode_json<T: serde::de::DeserializeOwned>(segment: &str) -> Result<T, Reason> {
        let bytes = URL_SAFE_NO_PAD
            .decode(segment)
            .map_err(|_| Reason::Malformed)?;
        serde_json::from_slice(&bytes).map_err(|_| Reason::Malformed)
    }

    fn key_file(secret: &[u8]) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("ts-codec-{}", super::super::new_random_id()));
        std::fs::write(&path, secret).expect("write key");
        path
    }

    fn codec_with(kids: &[(&str, &str, &[u8])], signing: &str, aud: Option<&str>) -> TokenCodec {
        let specs: Vec<KeySpec> = kids
            .iter()
            .map(|(kid, alg, secret)| KeySpec {
                kid: (*kid).into(),
                alg: (*alg).into(),
                path: key_file(secret),
            })
            .collect();
        let keys = KeySet::load(&specs, Some(signing)).expect("keys");
        TokenCodec::new(keys, "issuer".into(), aud.map(Into::into))
    }

    fn codec() -> TokenCodec {
        codec_with(&[("k1", "HS256", &[1; 32])], "k1", None)
    }

    fn claims() -> Claims {
        let mut extra = Map::new();
        extra.insert("role".into(), json!("admin"));
        Claims {
            user_id: "alice".into(),
            jti: "jti-1".into(),
            session_id: "sid-1".into(),
            issued_at: crate::clock::UnixSeconds(1_000),
            expires_at: crate::clock::UnixSeconds(2_000),
            not_before: None,
            orig_iat_ms: 999_123,
            idp_session_id: None,
            extra,
            issuer: None,
            binding: Default::default(),
        }
    }

    fn b64(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(v.to_string())
    }

    /// Signs raw header and payload text with the codec's signing key.
    fn sign_raw(codec: &TokenCodec, header: &str, payload: &str) -> String {
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let keys = codec.keys();
        let sig = jsonwebtoken::crypto::sign(
            message.as_bytes(),
            &keys.signer.as_ref().expect("signer").encoding,
            keys.signer.as_ref().expect("signer").alg,
        )
        .expect("sign");
        format!("{message}.{sig}")
    }

    fn resign(codec: &TokenCodec, header: &Value, payload: &Value) -> String {
        sign_raw(codec, &header.to_string(), &payload.to_string())
    }

    fn good_payload() -> Value {
        json!({"iss": "issuer", "sub": "alice", "jti": "j", "sid": "s", "iat": 1, "exp": 2,
               "orig_iat": 1.5})
    }

    #[test]
    fn round_trips_claims() {
        let codec = codec();
        let token = codec.encode(&claims()).expect("encode");
        assert_eq!(codec.decode(&token), Ok(claims()));
    }

    #[test]
    fn rejects_shapes_that_are_not_a_compact_jws() {
        let codec = codec();
        let token = codec.encode(&claims()).expect("encode");
        let too_big = "a".repeat(MAX_TOKEN_BYTES + 1);
        let five = format!("{token}.a.b");
        let truncated = &token[..token.len() - 10];
        let padded = format!("{token}=");
        for bad in [
            "",
            "garbage",
            "a.b",
            "a.b.c",
            too_big.as_str(),
            five.as_str(),
            &padded,
        ] {
            assert_eq!(codec.decode(bad), Err(Reason::Malformed), "{bad:.40}");
        }
        assert!(codec.decode(truncated).is_err());
    }

    #[test]
    fn rejects_alg_none_unknown_kid_and_alg_mismatch() {
        let codec = codec_with(
            &[("k1", "HS256", &[1; 32]), ("k2", "HS512", &[2; 64])],
            "k1",
            None,
        );
        let payload = good_payload();
        for (header, why) in [
            (json!({"alg": "none", "kid": "k1"}), "none"),
            (json!({"alg": "HS512", "kid": "k1"}), "alg differs from key"),
            (json!({"alg": "HS256", "kid": "nope"}), "unknown kid"),
            (json!({"alg": "HS256"}), "no kid"),
            (
                json!({"alg": "HS256", "kid": "../../etc/passwd"}),
                "injected kid",
            ),
        ] {
            let token = resign(&codec, &header, &payload);
            assert_eq!(codec.decode(&token), Err(Reason::BadSignature), "{why}");
        }
        for alg in ["none", "None", "NONE", "nOnE"] {
            let unsigned = format!("{}.{}.", b64(&json!({"alg": alg})), b64(&payload));
            assert_eq!(codec.decode(&unsigned), Err(Reason::BadSignature), "{alg}");
        }
        let unsigned = format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "kid": "k1"})),
            b64(&payload)
        );
        assert_eq!(codec.decode(&unsigned), Err(Reason::BadSignature));
    }

    #[test]
    fn rejects_a_wrong_key_and_a_flipped_signature() {
        let ours = codec();
        let theirs = codec_with(&[("k1", "HS256", &[9; 32])], "k1", None);
        let token = theirs.encode(&claims()).expect("encode");
        assert_eq!(ours.decode(&token), Err(Reason::BadSignature));

        let token = ours.encode(&claims()).expect("encode");
        let (head, sig) = token.rsplit_once('.').expect("three parts");
        let mut sig = URL_SAFE_NO_PAD.decode(sig).expect("b64");
        sig[0] ^= 1;
        let flipped = format!("{head}.{}", URL_SAFE_NO_PAD.encode(sig));
        assert_eq!(ours.decode(&flipped), Err(Reason::BadSignature));
    }

    #[test]
    fn verifies_with_any_configured_key_and_signs_with_one() {
        let old = codec_with(&[("old", "HS256", &[1; 32])], "old", None);
        let token = old.encode(&claims()).expect("encode");
        let rotated = codec_with(
            &[("new", "HS384", &[2; 48]), ("old", "HS256", &[1; 32])],
            "new",
            None,
        );
        assert_eq!(rotated.decode(&token), Ok(claims()));
        let fresh = rotated.encode(&claims()).expect("encode");
        let header: Value = decode_json(fresh.split('.').next().unwrap_or_default()).expect("json");
        assert_eq!(header["kid"], "new");
        assert_eq!(header["alg"], "HS384");
    }

    #[test]
    fn refuses_crit_and_payloads_that_are_not_objects() {
        let codec = codec();
        let crit = resign(
            &codec,
            &json!({"alg": "HS256", "kid": "k1", "crit": ["exp"]}),
            &good_payload(),
        );
        assert_eq!(codec.decode(&crit), Err(Reason::Malformed));
        let array = resign(&codec, &json!({"alg": "HS256", "kid": "k1"}), &json!([1]));
        assert_eq!(codec.decode(&array), Err(Reason::Malformed));
    }

    #[test]
    fn refuses_duplicate_claims_and_duplicate_header_members() {
        let codec = codec();
        let duplicate_sub = r#"{"iss":"issuer","sub":"alice","sub":"admin","jti":"j","sid":"s","iat":1,"exp":2,"orig_iat":1.5}"#;
        let token = sign_raw(&codec, r#"{"alg":"HS256","kid":"k1"}"#, duplicate_sub);
        assert_eq!(codec.decode(&token), Err(Reason::Malformed));
        let duplicate_alg = r#"{"alg":"none","alg":"HS256","kid":"k1"}"#;
        let token = sign_raw(&codec, duplicate_alg, &good_payload().to_string());
        assert_eq!(codec.decode(&token), Err(Reason::Malformed));
    }

    #[test]
    fn checks_audience_when_configured() {
        let codec = codec_with(&[("k1", "HS256", &[1; 32])], "k1", Some("api"));
        let token = codec.encode(&claims()).expect("encode");
        assert!(codec.decode(&token).is_ok());
        let other = codec_with(&[("k1", "HS256", &[1; 32])], "k1", Some("web"));
        assert_eq!(other.decode(&token), Err(Reason::WrongAudience));
    }
}
