//! Tokens made by hand and how answers are checked: the test secret, crafted tokens, and the
//! status and ErrorInfo of an error.
use tonic_types::StatusExt;

use super::app::T0_MS;

/// Asserts a status's code and the reason in its `google.rpc.ErrorInfo`.
pub fn assert_status(status: &tonic::Status, code: tonic::Code, reason: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    let details = status.get_error_details();
    let info = details
        .error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.reason, reason, "{status:?}");
    assert_eq!(info.domain, "token-sidecar");
}

/// The secret every test sidecar's `main` key holds.
pub const TEST_SECRET: [u8; 32] = [42u8; 32];

/// Signs an arbitrary header and payload with HS256 and `secret`: for hand-made tokens.
pub fn craft(header: &serde_json::Value, payload: &serde_json::Value, secret: &[u8]) -> String {
    use base64::Engine;
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let message = format!("{}.{}", b64(header), b64(payload));
    let key = jsonwebtoken::EncodingKey::from_secret(secret).expect("key");
    let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
        .expect("sign");
    format!("{message}.{sig}")
}

/// A payload that is valid at T0 for the default configuration.
pub fn good_payload() -> serde_json::Value {
    let t0 = T0_MS / 1000;
    serde_json::json!({
        "iss": "token-sidecar", "sub": "crafted", "jti": "crafted-jti", "sid": "crafted-sid",
        "iat": t0, "exp": t0 + 300, "orig_iat": t0 as f64,
    })
}

/// The header our sidecars' `main` key expects.
pub fn good_header() -> serde_json::Value {
    serde_json::json!({"alg": "HS256", "typ": "JWT", "kid": "main"})
}
