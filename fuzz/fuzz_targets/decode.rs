//! Fuzzes the one decode path (`TokenCodec::decode`, shared by Verify, Refresh and Revoke).
//!
//! Two oracles besides "never panics": a token that decodes must be byte-for-byte one of the
//! tokens we signed (no forgery, no malleable encoding), and every input is tried both as raw
//! text and as an edit of a valid token (so the fuzzer starts past the signature check).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use token_sidecar_core::token::{Claims, KeySet, KeySpec, TokenCodec};

struct Fixture {
    codec: TokenCodec,
    tokens: Vec<String>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/keys");
        let specs = |signing: &str| -> KeySet {
            let specs: Vec<KeySpec> = [
                format!("hs=HS384:{keys}/hs384.key"),
                format!("es=ES256:{keys}/p256.pem"),
                format!("ed=EdDSA:{keys}/ed25519.pem"),
            ]
            .iter()
            .map(|s| s.parse().expect("key spec"))
            .collect();
            KeySet::load(&specs, Some(signing)).expect("test keys load")
        };
        let claims = Claims {
            user_id: "alice".into(),
            jti: "AAAAAAAAAAAAAAAAAAAAAA".into(),
            session_id: "BBBBBBBBBBBBBBBBBBBBBB".into(),
            issued_at: 1_767_225_600,
            expires_at: 1_767_225_900,
            not_before: None,
            orig_iat_ms: 1_767_225_600_123,
            idp_session_id: None,
            extra: serde_json::json!({"role": "admin", "n": [1, 2.5, null]})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        };
        let mut tokens = Vec::new();
        for signer in ["hs", "es", "ed"] {
            let codec = TokenCodec::new(specs(signer), "token-sidecar".into(), None);
            tokens.push(codec.encode(&claims).expect("sign"));
        }
        Fixture {
            codec: TokenCodec::new(specs("hs"), "token-sidecar".into(), None),
            tokens,
        }
    })
}

fn check(fixture: &Fixture, token: &str) {
    if fixture.codec.decode(token).is_ok() {
        assert!(
            fixture.tokens.iter().any(|t| t == token),
            "accepted a token we never signed: {token}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let fixture = fixture();
    check(fixture, &String::from_utf8_lossy(data));
    // The input as an edit of a valid token: [which token, position hi, position lo, bytes…].
    if let [which, hi, lo, replacement @ ..] = data {
        let valid = &fixture.tokens[*which as usize % fixture.tokens.len()];
        let at = (usize::from(*hi) << 8 | usize::from(*lo)) % (valid.len() + 1);
        let mut edited = valid.as_bytes()[..at].to_vec();
        edited.extend_from_slice(replacement);
        let rest = (at + replacement.len()).min(valid.len());
        edited.extend_from_slice(&valid.as_bytes()[rest..]);
        check(fixture, &String::from_utf8_lossy(&edited));
    }
});
