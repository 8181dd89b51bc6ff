//! What a token is bound to: its `cnf` claim (RFC 7800), with the members SPEC §15 uses.
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::reason::Reason;

/// A token's `cnf`: the DPoP key's thumbprint and/or the client certificate's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Binding {
    /// `cnf.jkt`: the RFC 7638 SHA-256 thumbprint of the DPoP key, base64url.
    pub jkt: Option<String>,
    /// `cnf["x5t#S256"]`: the SHA-256 thumbprint of the client certificate, base64url.
    pub x5t_s256: Option<String>,
}

impl Binding {
    /// Whether the token is a bearer token (no `cnf`).
    pub fn is_unbound(&self) -> bool {
        self.jkt.is_none() && self.x5t_s256.is_none()
    }

    /// Reads a `cnf` claim. A `cnf` we cannot read is refused, never ignored: ignoring it would
    /// make a bound token a bearer token. Members we do not know (a `jwk`, a `kid`) cannot be
    /// proven here, so they are refused too.
    pub fn from_claim(cnf: Option<&Value>) -> Result<Self, Reason> {
        let Some(cnf) = cnf else {
            return Ok(Self::default());
        };
        let Value::Object(members) = cnf else {
            return Err(Reason::Malformed);
        };
        let mut binding = Self::default();
        for (name, value) in members {
            let Value::String(text) = value else {
                return Err(Reason::Malformed);
            };
            if thumbprint_problem(text).is_some() {
                return Err(Reason::Malformed);
            }
            match name.as_str() {
                "jkt" => binding.jkt = Some(text.clone()),
                "x5t#S256" => binding.x5t_s256 = Some(text.clone()),
                _ => return Err(Reason::Malformed),
            }
        }
        if binding.is_unbound() {
            return Err(Reason::Malformed);
        }
        Ok(binding)
    }

    /// The `cnf` claim to write, if bound.
    pub fn to_claim(&self) -> Option<Value> {
        if self.is_unbound() {
            return None;
        }
        let mut cnf = Map::new();
        if let Some(jkt) = &self.jkt {
            cnf.insert("jkt".into(), Value::String(jkt.clone()));
        }
        if let Some(x5t) = &self.x5t_s256 {
            cnf.insert("x5t#S256".into(), Value::String(x5t.clone()));
        }
        Some(Value::Object(cnf))
    }
}

/// What is wrong with a SHA-256 thumbprint given as text, if anything: it must be base64url
/// without padding of exactly 32 bytes (43 characters).
pub fn thumbprint_problem(text: &str) -> Option<&'static str> {
    let canonical = text.len() == 43
        && URL_SAFE_NO_PAD
            .decode(text)
            .is_ok_and(|bytes| bytes.len() == 32 && URL_SAFE_NO_PAD.encode(&bytes) == text);
    (!canonical).then_some("a SHA-256 thumbprint: 43 base64url characters (32 bytes, no padding)")
}

/// Whether `bound` (base64url) names the thumbprint `presented`.
pub(super) fn thumbprint_matches(bound: &str, presented: &[u8; 32]) -> bool {
    URL_SAFE_NO_PAD.encode(presented) == bound
}

/// The RFC 7638 thumbprint of a public JWK: SHA-256 over the required members in
/// lexicographic order, without white space; None for a key type we do not take.
pub fn jwk_thumbprint(jwk: &Map<String, Value>) -> Option<String> {
    let member = |name: &str| jwk.get(name).and_then(Value::as_str);
    let kty = member("kty")?;
    let required: &[&str] = match kty {
        "EC" => &["crv", "kty", "x", "y"],
        "RSA" => &["e", "kty", "n"],
        "OKP" => &["crv", "kty", "x"],
        _ => return None,
    };
    let mut canonical = Map::new();
    for name in required {
        canonical.insert((*name).to_owned(), Value::String(member(name)?.to_owned()));
    }
    // serde_json's map keeps keys sorted (no `preserve_order`), which is RFC 7638's order;
    // the members are plain strings, so the serialisation has no white space to strip.
    let json = serde_json::to_string(&Value::Object(canonical)).ok()?;
    Some(URL_SAFE_NO_PAD.encode(Sha256::digest(json.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7638 §3.1's example key and thumbprint.
    #[test]
    fn the_rfc_7638_example_has_its_thumbprint() {
        let jwk: Map<String, Value> = serde_json::from_str(
            r#"{"kty":"RSA","n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw","e":"AQAB","alg":"RS256","kid":"2011-04-29"}"#,
        )
        .expect("json");
        assert_eq!(
            jwk_thumbprint(&jwk).as_deref(),
            Some("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs")
        );
    }

    #[test]
    fn a_cnf_is_read_or_refused_never_ignored() {
        let jkt = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs";
        let read = |v: Value| Binding::from_claim(Some(&v));
        assert_eq!(
            read(serde_json::json!({ "jkt": jkt })).map(|b| b.jkt),
            Ok(Some(jkt.to_owned()))
        );
        assert_eq!(
            read(serde_json::json!({ "x5t#S256": jkt })).map(|b| b.x5t_s256),
            Ok(Some(jkt.to_owned()))
        );
        for bad in [
            serde_json::json!({}),
            serde_json::json!("x"),
            serde_json::json!({ "jkt": 1 }),
            serde_json::json!({ "jkt": "short" }),
            serde_json::json!({ "jwk": { "kty": "EC" } }),
            serde_json::json!({ "jkt": jkt, "kid": jkt }),
        ] {
            assert_eq!(read(bad.clone()), Err(Reason::Malformed), "{bad}");
        }
        assert_eq!(Binding::from_claim(None), Ok(Binding::default()));
    }
}
