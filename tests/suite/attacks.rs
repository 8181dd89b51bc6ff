//! The attack catalogue: hostile tokens, each with the reason Verify must give (never an error
//! status, never a panic), and property tests that random bytes and mutations of a valid token
//! never verify.
use std::path::Path;

use crate::common::{Backend, Settings, T0_MS, TEST_SECRET, craft};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use proptest::prelude::*;
use serde_json::{Value, json};
use token_sidecar::api::pb::Reason;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(name)
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

fn payload() -> Value {
    let mut p = crate::common::good_payload();
    p["aud"] = json!("api");
    p
}

fn with(mut p: Value, k: &str, v: Value) -> Value {
    p[k] = v;
    p
}

fn without(mut p: Value, k: &str) -> Value {
    if let Some(m) = p.as_object_mut() {
        m.remove(k);
    }
    p
}

fn hs(header: Value, payload: &Value) -> String {
    craft(&header, payload, &TEST_SECRET)
}

fn main_header() -> Value {
    json!({"alg": "HS256", "typ": "JWT", "kid": "main"})
}

/// Signs raw header and payload text (for duplicates and non-JSON) with the main key.
fn raw(header: &str, payload: &str) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let key = jsonwebtoken::EncodingKey::from_secret(&TEST_SECRET).expect("key");
    let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
        .expect("sign");
    format!("{message}.{sig}")
}

/// HS256 with an arbitrary secret (algorithm confusion: a public key used as an HMAC secret).
fn hs_with(secret: &[u8], kid: &str) -> String {
    craft(&json!({"alg": "HS256", "kid": kid}), &payload(), secret)
}

fn unsigned(header: Value) -> String {
    format!("{}.{}.", b64(&header), b64(&payload()))
}

pub(crate) fn catalogue(valid: &str) -> Vec<(&'static str, String, Reason)> {
    let t0 = T0_MS / 1000;
    let rsa_pub = std::fs::read(fixture("rsa.pub.pem")).expect("rsa pub");
    let ec_pub = std::fs::read(fixture("p256.pub.pem")).expect("ec pub");
    let attacker = [13u8; 32];
    let (head, sig) = valid.rsplit_once('.').expect("jws");
    let mut flipped = URL_SAFE_NO_PAD.decode(sig).expect("sig");
    flipped[5] ^= 0x01;
    let flipped = format!("{head}.{}", URL_SAFE_NO_PAD.encode(flipped));
    let zero_ecdsa = format!(
        "{}.{}.{}",
        b64(&json!({"alg": "ES256", "kid": "es"})),
        b64(&payload()),
        URL_SAFE_NO_PAD.encode([0u8; 64])
    );
    let (h, p) = (
        head.split('.').next().unwrap_or_default(),
        head.split('.').nth(1).unwrap_or_default(),
    );
    let padded = format!("{h}==.{p}.{sig}");
    // A correctly signed token whose payload, in the standard alphabet, contains '+' or '/'.
    let std_alphabet = (0..64u32)
        .map(|i| {
            hs(
                main_header(),
                &with(payload(), "pad", json!("~".repeat(i as usize) + "\u{fbff}")),
            )
        })
        .find(|t| t.split('.').nth(1).is_some_and(|p| p.contains(['-', '_'])))
        .map(|t| {
            let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
            parts[1] = parts[1].replace('-', "+").replace('_', "/");
            parts.join(".")
        })
        .expect("a payload with '-' or '_' in base64url");
    let _ = STANDARD;
    let nested = format!("{}{}", "[".repeat(3000), "]".repeat(3000));
    vec![
        (
            "alg none",
            unsigned(json!({"alg": "none", "kid": "main"})),
            Reason::BadSignature,
        ),
        (
            "alg None",
            unsigned(json!({"alg": "None", "kid": "main"})),
            Reason::BadSignature,
        ),
        (
            "alg NONE",
            unsigned(json!({"alg": "NONE", "kid": "main"})),
            Reason::BadSignature,
        ),
        (
            "alg nOnE",
            unsigned(json!({"alg": "nOnE"})),
            Reason::BadSignature,
        ),
        (
            "alg none with a signature",
            hs(json!({"alg": "none", "kid": "main"}), &payload()),
            Reason::BadSignature,
        ),
        (
            "HS256 keyed with the RSA public key",
            hs_with(&rsa_pub, "rsa"),
            Reason::BadSignature,
        ),
        (
            "HS256 keyed with the EC public key",
            hs_with(&ec_pub, "es"),
            Reason::BadSignature,
        ),
        (
            "HS256 under an ES256 kid",
            hs(json!({"alg": "HS256", "kid": "es"}), &payload()),
            Reason::BadSignature,
        ),
        (
            "RS256 claimed for the HMAC key",
            hs(json!({"alg": "RS256", "kid": "main"}), &payload()),
            Reason::BadSignature,
        ),
        (
            "unknown kid",
            hs(json!({"alg": "HS256", "kid": "nope"}), &payload()),
            Reason::BadSignature,
        ),
        (
            "kid path traversal",
            hs(
                json!({"alg": "HS256", "kid": "../../../etc/passwd"}),
                &payload(),
            ),
            Reason::BadSignature,
        ),
        (
            "kid SQL injection",
            hs(json!({"alg": "HS256", "kid": "' OR '1'='1"}), &payload()),
            Reason::BadSignature,
        ),
        (
            "empty kid",
            hs(json!({"alg": "HS256", "kid": ""}), &payload()),
            Reason::BadSignature,
        ),
        (
            "no kid",
            hs(json!({"alg": "HS256"}), &payload()),
            Reason::BadSignature,
        ),
        (
            "embedded jwk with the attacker's key",
            craft(
                &json!({"alg": "HS256", "kid": "main", "jwk": {"kty": "oct", "k": URL_SAFE_NO_PAD.encode(attacker)}}),
                &payload(),
                &attacker,
            ),
            Reason::BadSignature,
        ),
        (
            "jku to the attacker's key set",
            craft(
                &json!({"alg": "HS256", "kid": "main", "jku": "https://evil.example/jwks.json"}),
                &payload(),
                &attacker,
            ),
            Reason::BadSignature,
        ),
        (
            "x5u to the attacker's certificate",
            craft(
                &json!({"alg": "HS256", "kid": "main", "x5u": "https://evil.example/cert.pem"}),
                &payload(),
                &attacker,
            ),
            Reason::BadSignature,
        ),
        ("ECDSA r = s = 0", zero_ecdsa, Reason::BadSignature),
        ("one flipped signature bit", flipped, Reason::BadSignature),
        (
            "JWE-shaped, five parts",
            format!("{valid}.AAAA.BBBB"),
            Reason::Malformed,
        ),
        ("two parts", head.to_owned(), Reason::Malformed),
        ("four parts", format!("{valid}.x"), Reason::Malformed),
        ("empty", String::new(), Reason::Malformed),
        ("base64 padding", padded, Reason::Malformed),
        ("standard base64 alphabet", std_alphabet, Reason::Malformed),
        (
            "whitespace inside",
            format!("{} {}", &valid[..10], &valid[10..]),
            Reason::Malformed,
        ),
        (
            "header not JSON",
            format!("{}.{}.{}", URL_SAFE_NO_PAD.encode("not json"), p, sig),
            Reason::Malformed,
        ),
        (
            "payload not JSON",
            raw(&main_header().to_string(), "not json"),
            Reason::Malformed,
        ),
        (
            "payload an array",
            raw(&main_header().to_string(), "[1,2]"),
            Reason::Malformed,
        ),
        (
            "deeply nested payload",
            raw(&main_header().to_string(), &nested),
            Reason::Malformed,
        ),
        (
            "header over the size cap",
            hs(
                json!({"alg": "HS256", "kid": "main", "pad": "x".repeat(9000)}),
                &payload(),
            ),
            Reason::Malformed,
        ),
        ("a 1 MB token", "A".repeat(1024 * 1024), Reason::Malformed),
        (
            "duplicate sub",
            raw(
                &main_header().to_string(),
                &payload().to_string().replacen(
                    "\"sub\":\"crafted\"",
                    "\"sub\":\"crafted\",\"sub\":\"admin\"",
                    1,
                ),
            ),
            Reason::Malformed,
        ),
        (
            "duplicate alg",
            raw(
                r#"{"alg":"none","alg":"HS256","kid":"main"}"#,
                &payload().to_string(),
            ),
            Reason::Malformed,
        ),
        (
            "crit header",
            hs(
                json!({"alg": "HS256", "kid": "main", "crit": ["exp"], "exp": 1}),
                &payload(),
            ),
            Reason::Malformed,
        ),
        (
            "exp as a string",
            hs(main_header(), &with(payload(), "exp", json!("9999999999"))),
            Reason::Malformed,
        ),
        (
            "exp as a float",
            hs(
                main_header(),
                &with(payload(), "exp", json!(9_999_999_999.5)),
            ),
            Reason::Malformed,
        ),
        (
            "exp negative",
            hs(main_header(), &with(payload(), "exp", json!(-1))),
            Reason::Malformed,
        ),
        (
            "exp huge",
            hs(main_header(), &with(payload(), "exp", json!(1e30))),
            Reason::Malformed,
        ),
        (
            "iat as a string",
            hs(main_header(), &with(payload(), "iat", json!("0"))),
            Reason::Malformed,
        ),
        (
            "nbf as a float",
            hs(main_header(), &with(payload(), "nbf", json!(1.5))),
            Reason::Malformed,
        ),
        (
            "orig_iat as a string",
            hs(main_header(), &with(payload(), "orig_iat", json!("1"))),
            Reason::Malformed,
        ),
        (
            "missing sub",
            hs(main_header(), &without(payload(), "sub")),
            Reason::MissingClaim,
        ),
        (
            "missing jti",
            hs(main_header(), &without(payload(), "jti")),
            Reason::MissingClaim,
        ),
        (
            "missing exp",
            hs(main_header(), &without(payload(), "exp")),
            Reason::MissingClaim,
        ),
        (
            "missing orig_iat",
            hs(main_header(), &without(payload(), "orig_iat")),
            Reason::MissingClaim,
        ),
        (
            "missing sid",
            hs(main_header(), &without(payload(), "sid")),
            Reason::MissingClaim,
        ),
        (
            "missing aud",
            hs(main_header(), &without(payload(), "aud")),
            Reason::MissingClaim,
        ),
        (
            "wrong iss",
            hs(main_header(), &with(payload(), "iss", json!("evil"))),
            Reason::WrongIssuer,
        ),
        (
            "wrong aud",
            hs(main_header(), &with(payload(), "aud", json!("web"))),
            Reason::WrongAudience,
        ),
        (
            "nbf in the future",
            hs(main_header(), &with(payload(), "nbf", json!(t0 + 3600))),
            Reason::NotYetValid,
        ),
        (
            // Signed with the real key by a signer whose clock runs 10^6 s ahead (rule 8): it
            // would outlive a revoke-all made now.
            "iat from the future",
            hs(
                main_header(),
                &with(
                    with(payload(), "iat", json!(t0 + 1_000_000)),
                    "exp",
                    json!(t0 + 1_000_300),
                ),
            ),
            Reason::NotYetValid,
        ),
        (
            "expired",
            hs(main_header(), &with(payload(), "exp", json!(t0 - 1))),
            Reason::Expired,
        ),
    ]
}

/// The sidecar the catalogue is made for: the HS256 `main` key signs; RS256 and ES256 keys
/// verify too; audience `api`.
pub(crate) async fn catalogue_app(
    settings: Settings,
) -> (crate::common::TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("dir");
    let main_key = dir.path().join("main.key");
    std::fs::write(&main_key, TEST_SECRET).expect("write key");
    let settings = settings
        .arg("--key", &format!("main=HS256:{}", main_key.display()))
        .arg(
            "--key",
            &format!("rsa=RS256:{}", fixture("rsa.pem").display()),
        )
        .arg(
            "--key",
            &format!("es=ES256:{}", fixture("p256.pem").display()),
        )
        .arg("--signing-kid", "main")
        .arg("--audience", "api");
    (settings.spawn().await, dir)
}

#[tokio::test]
async fn every_attack_in_the_catalogue_gets_its_reason() {
    let (app, _keys) = catalogue_app(Settings::new(Backend::Sqlite)).await;
    let valid = app.issue("alice").await.token;
    assert!(app.verify(&valid).await.valid);
    assert!(
        app.verify(&hs(main_header(), &payload())).await.valid,
        "the crafting is sound"
    );
    let cases = catalogue(&valid);
    assert!(cases.len() >= 30, "{} cases", cases.len());
    let mut failures = Vec::new();
    for (name, token, expected) in &cases {
        let answer = app.verify(token).await;
        if answer.valid || answer.reason != *expected as i32 {
            failures.push(format!(
                "{name}: got valid={} reason={:?}",
                answer.valid,
                Reason::try_from(answer.reason)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// One in-process codec with the main key, and a token it accepts.
static CODEC: std::sync::LazyLock<(token_sidecar::token::TokenCodec, String)> =
    std::sync::LazyLock::new(|| {
        use token_sidecar::token::{KeySet, KeySpec, TokenCodec};
        let spec = KeySpec {
            kid: "main".into(),
            alg: "HS256".into(),
            path: "in-memory".into(),
        };
        let keys = KeySet::from_material(vec![(spec, TEST_SECRET.to_vec())], None).expect("keys");
        let codec = TokenCodec::new(keys, "token-sidecar".into(), None);
        (codec, hs(main_header(), &crate::common::good_payload()))
    });

fn codec() -> (&'static token_sidecar::token::TokenCodec, &'static str) {
    (&CODEC.0, &CODEC.1)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Random bytes never verify and never panic.
    #[test]
    fn random_input_never_verifies(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let (codec, _) = codec();
        let text = String::from_utf8_lossy(&bytes);
        prop_assert!(codec.decode(&text).is_err());
    }

    /// Random text shaped like a JWS never verifies.
    #[test]
    fn random_three_part_text_never_verifies(a in "[A-Za-z0-9_-]{0,80}", b in "[A-Za-z0-9_-]{0,200}", c in "[A-Za-z0-9_-]{0,90}") {
        let (codec, _) = codec();
        let token = format!("{a}.{b}.{c}");
        prop_assert!(codec.decode(&token).is_err());
    }

    /// Any change to a valid token — a replaced, inserted or deleted character — is refused.
    #[test]
    fn mutations_of_a_valid_token_never_verify(pos in any::<prop::sample::Index>(), ch in any::<char>(), op in 0u8..3) {
        let (codec, token) = codec();
        prop_assert!(codec.decode(token).is_ok());
        let mut chars: Vec<char> = token.chars().collect();
        let i = pos.index(chars.len());
        match op {
            0 => chars[i] = ch,
            1 => chars.insert(i, ch),
            _ => { chars.remove(i); }
        }
        let mutated: String = chars.into_iter().collect();
        if mutated != token {
            prop_assert!(codec.decode(&mutated).is_err(), "{} verified", mutated);
        }
    }
}
