//! The key set: specs, sizes, the JWKS, the dev key, and published test vectors.
use super::*;
use crate::token::VerifyingKeys;
use crate::token::rsa::{rsa_modulus_bits, rsa_private_key_bits};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

#[test]
fn an_rsa_modulus_counts_its_bits_not_its_bytes() {
    let mut modulus = vec![0u8; 256];
    modulus[0] = 0x80;
    assert_eq!(rsa_modulus_bits(&modulus), 2048);
    modulus[0] = 0x01;
    assert_eq!(
        rsa_modulus_bits(&modulus),
        2041,
        "256 bytes, yet 2,041 bits"
    );
    modulus[0] = 0x7f;
    assert_eq!(rsa_modulus_bits(&modulus), 2047);
    let mut signed = vec![0u8];
    signed.extend(std::iter::repeat_n(0xff, 256));
    assert_eq!(
        rsa_modulus_bits(&signed),
        2048,
        "DER's leading zero is not counted"
    );
    assert_eq!(rsa_modulus_bits(&[]), 0);
    assert_eq!(rsa_modulus_bits(&[0, 0]), 0);
}

#[test]
fn rsa_key_sizes_are_read_before_the_library_sees_the_key() {
    let read = |name: &str| {
        let path = format!("{}/../../tests/keys/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(path).expect("fixture")
    };
    assert_eq!(rsa_private_key_bits(&read("rsa.pem")), Some(2048));
    assert_eq!(rsa_private_key_bits(&read("rsa1024.pem")), Some(1024));
    assert_eq!(rsa_private_key_bits(&read("p256.pem")), None, "not RSA");
    assert_eq!(rsa_private_key_bits("not a pem"), None);
}

fn spec(kid: &str, alg: &str) -> KeySpec {
    KeySpec {
        kid: kid.into(),
        alg: alg.into(),
        path: PathBuf::from(format!("/keys/{kid}")),
    }
}

#[test]
fn parses_key_specs() {
    let parsed: KeySpec = "main=hs256:/run/keys/main".parse().expect("valid");
    assert_eq!(parsed, spec("main", "HS256").with_path("/run/keys/main"));
    for bad in ["main", "main=HS256", "=HS256:/x", "main=:/x", "main=HS256:"] {
        assert!(bad.parse::<KeySpec>().is_err(), "{bad}");
    }
}

impl KeySpec {
    fn with_path(mut self, p: &str) -> Self {
        self.path = PathBuf::from(p);
        self
    }
}

#[test]
fn the_first_key_signs_unless_told_otherwise() {
    let keys = vec![
        (spec("a", "HS256"), vec![1; 32]),
        (spec("b", "HS512"), vec![2; 64]),
    ];
    let set = KeySet::from_material(keys.clone(), None).expect("valid");
    assert_eq!(set.signing_kid(), Some("a"));
    let set = KeySet::from_material(keys, Some("b")).expect("valid");
    assert_eq!(set.signing_kid(), Some("b"));
    assert_eq!(set.verifiers.len(), 2);
}

#[test]
fn refuses_weak_unknown_duplicate_and_unsupported_keys() {
    let weak = KeySet::from_material(vec![(spec("a", "HS256"), vec![1; 31])], None);
    assert!(matches!(weak, Err(KeyError::WeakSecret { len: 31, .. })));
    let unknown = KeySet::from_material(vec![(spec("a", "HS256"), vec![1; 32])], Some("z"));
    assert!(matches!(unknown, Err(KeyError::UnknownSigningKid(_))));
    let dup = KeySet::from_material(
        vec![
            (spec("a", "HS256"), vec![1; 32]),
            (spec("a", "HS384"), vec![1; 48]),
        ],
        None,
    );
    assert!(matches!(dup, Err(KeyError::DuplicateKid(_))));
    let none = KeySet::from_material(vec![(spec("a", "NONE"), vec![1; 32])], None);
    assert!(matches!(none, Err(KeyError::UnsupportedAlgorithm { .. })));
    assert!(matches!(
        KeySet::from_material(vec![], None),
        Err(KeyError::Empty)
    ));
}

#[test]
fn jwks_never_publishes_hmac_secrets() {
    let set = KeySet::from_material(vec![(spec("a", "HS256"), vec![7; 32])], None).expect("valid");
    assert_eq!(set.jwks_json(), r#"{"keys":[]}"#);
}

#[test]
fn dev_key_is_created_once_with_private_mode() {
    let dir = std::env::temp_dir().join(format!("ts-devkey-{}", new_suffix()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("dev.key");
    let (first, created) = KeySet::load_or_create_dev_key(&path).expect("created");
    assert!(created);
    let (_, created_again) = KeySet::load_or_create_dev_key(&path).expect("loaded");
    assert!(!created_again);
    assert_eq!(first.signing_kid(), Some("dev"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// RFC 7515 appendix A.1: HS256 over the given signing input with the given key.
#[test]
fn rfc7515_a1_hs256_vector() {
    let k = URL_SAFE_NO_PAD
        .decode("AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow")
        .expect("k");
    let set = KeySet::from_material(vec![(spec("a", "HS256"), k)], None).expect("key");
    let input = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ";
    let sig = jsonwebtoken::crypto::sign(
        input.as_bytes(),
        &set.signer.as_ref().expect("signer").encoding,
        set.signer.as_ref().expect("signer").alg,
    )
    .expect("sign");
    assert_eq!(sig, "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
}

/// RFC 8037 appendix A: the Ed25519 key, its public JWK and the A.4 signature, loaded the
/// way an operator would (a PKCS#8 PEM file).
#[test]
fn rfc8037_ed25519_vector() {
    use base64::engine::general_purpose::STANDARD;
    let d = URL_SAFE_NO_PAD
        .decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")
        .expect("d");
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend(d);
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        STANDARD.encode(der)
    );
    let set =
        KeySet::from_material(vec![(spec("ed", "EdDSA"), pem.into_bytes())], None).expect("key");
    let jwks: serde_json::Value = serde_json::from_str(set.jwks_json()).expect("json");
    assert_eq!(
        jwks["keys"][0]["x"],
        "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
    );
    assert_eq!(jwks["keys"][0]["kid"], "ed");
    assert!(jwks["keys"][0].get("d").is_none(), "no private part");
    let input = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc";
    let sig = jsonwebtoken::crypto::sign(
        input.as_bytes(),
        &set.signer.as_ref().expect("signer").encoding,
        set.signer.as_ref().expect("signer").alg,
    )
    .expect("sign");
    assert_eq!(
        sig,
        "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
    );
    let key = set.verifiers.get("ed").expect("ed");
    assert_eq!(
        jsonwebtoken::crypto::verify(&sig, input.as_bytes(), &key.decoding, key.alg).ok(),
        Some(true)
    );
}

/// The published key set, read back as a filter reads it: every public key verifies what
/// the key set signed; `oct` keys (private sets only) are HMAC secrets held to 32 bytes.
#[test]
fn a_jwks_reads_back_into_the_same_verifying_keys() {
    let read = |name: &str| {
        let path = format!("{}/../../tests/keys/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(path).expect("fixture")
    };
    let set = KeySet::from_material(
        vec![
            (spec("ec", "ES256"), read("p256.pem")),
            (spec("rsa", "RS256"), read("rsa.pem")),
            (spec("hs", "HS256"), vec![7; 32]),
        ],
        None,
    )
    .expect("keys");
    let secret = URL_SAFE_NO_PAD.encode([7u8; 32]);
    let private =
        format!(r#"{{"keys":[{{"kty":"oct","kid":"hs","alg":"HS256","k":"{secret}"}}]}}"#);
    let keys = VerifyingKeys::from_jwks([set.jwks_json(), private.as_str()]).expect("jwks");
    assert_eq!(keys.kids(), vec!["ec", "hs", "rsa"]);
    let message = b"header.payload";
    // The signer ("ec", the first key) signs; the key read back from the JWKS verifies.
    let signer = set.signer.as_ref().expect("signer");
    let sig = jsonwebtoken::crypto::sign(message, &signer.encoding, signer.alg).expect("sign");
    let key = keys.get("ec").expect("kid");
    assert_eq!(
        jsonwebtoken::crypto::verify(&sig, message, &key.decoding, key.alg).ok(),
        Some(true)
    );

    let short = URL_SAFE_NO_PAD.encode([7u8; 31]);
    let refused = [
        format!(r#"{{"keys":[{{"kty":"oct","kid":"hs","alg":"HS256","k":"{short}"}}]}}"#),
        format!(r#"{{"keys":[{{"kty":"oct","alg":"HS256","k":"{secret}"}}]}}"#),
        format!(r#"{{"keys":[{{"kty":"oct","kid":"hs","k":"{secret}"}}]}}"#),
        format!(r#"{{"keys":[{{"kty":"oct","kid":"hs","alg":"ES256","k":"{secret}"}}]}}"#),
        "not json".to_owned(),
    ];
    for jwks in &refused {
        assert!(VerifyingKeys::from_jwks([jwks.as_str()]).is_err(), "{jwks}");
    }
    let twice = VerifyingKeys::from_jwks([private.as_str(), private.as_str()]);
    assert!(matches!(twice, Err(KeyError::DuplicateKid(_))));
    let small_rsa = KeySet::from_material(vec![(spec("r", "RS256"), read("rsa1024.pem"))], None);
    assert!(
        small_rsa.is_err(),
        "the 1024-bit fixture is refused at load already"
    );
}

fn new_suffix() -> String {
    crate::token::new_random_id()
}

#[test]
fn a_verify_only_set_holds_public_keys_only_and_hints_at_unknown_kids() {
    let fixture = |name: &str| {
        let path = std::path::PathBuf::from(format!(
            "{}/../../tests/keys/{name}",
            env!("CARGO_MANIFEST_DIR")
        ));
        std::fs::read(&path).map(|m| (path, m)).expect("fixture")
    };
    let spec = |kid: &str, alg: &str, path: std::path::PathBuf| KeySpec {
        kid: kid.into(),
        alg: alg.into(),
        path,
    };
    let (path, material) = fixture("p256.pem");
    let refused = KeySet::verify_only(vec![(spec("k", "ES256", path), material)], None);
    assert!(matches!(refused, Err(KeyError::SecretInVerifyOnly(kid)) if kid == "k"));
    let (path, material) = fixture("hs384.key");
    let refused = KeySet::verify_only(vec![(spec("h", "HS384", path), material)], None);
    assert!(matches!(refused, Err(KeyError::SecretInVerifyOnly(kid)) if kid == "h"));
    let secret = r#"{"keys":[{"kty":"oct","kid":"s","alg":"HS256","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"}]}"#;
    assert!(matches!(
        KeySet::verify_only(Vec::new(), Some(secret)),
        Err(KeyError::SecretInVerifyOnly(kid)) if kid == "s"
    ));

    // A file key and the issuer's set: a kid both name is the file's; the set's others join.
    let (path, material) = fixture("p256.pub.pem");
    let issuer = KeySet::from_material(
        vec![
            (
                spec("a", "ES256", fixture("p256.pem").0),
                fixture("p256.pem").1,
            ),
            (
                spec("b", "EdDSA", fixture("ed25519.pem").0),
                fixture("ed25519.pem").1,
            ),
        ],
        None,
    )
    .expect("issuer");
    let set = KeySet::verify_only(
        vec![(spec("a", "ES256", path), material)],
        Some(issuer.jwks_json()),
    )
    .expect("verify-only");
    assert_eq!(set.kids(), ["a", "b"]);
    assert_eq!(set.signing_kid(), None);
    let published: serde_json::Value = serde_json::from_str(set.jwks_json()).expect("json");
    assert_eq!(published["keys"].as_array().map(Vec::len), Some(2));
    assert!(!set.take_unknown_kid());
    assert!(set.verifiers.get("a").is_some());
    assert!(!set.take_unknown_kid(), "a known kid is no hint");
    assert!(set.verifiers.get("made-up").is_none());
    assert!(set.take_unknown_kid());
    assert!(!set.take_unknown_kid(), "taken once");
}
