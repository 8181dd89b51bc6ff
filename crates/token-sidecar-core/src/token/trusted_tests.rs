use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};

use super::*;
use crate::token::{VerifyingKeys, decode_token};

const RSA: &[u8] = include_bytes!("../../../../tests/keys/rsa.pem");
const P256: &[u8] = include_bytes!("../../../../tests/keys/p256.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("../../../../tests/keys/rsa.pub.pem");
const WINDOW_MS: i64 = 7 * 86_400_000;

fn rsa() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA).expect("the test RSA key")
}

fn p256() -> EncodingKey {
    EncodingKey::from_ec_pem(P256).expect("the test P-256 key")
}

/// A JWKS of one key's public half, as a provider publishes it (no `alg`, like Keycloak's `enc`
/// neighbours aside).
fn jwks(kid: &str, key: &EncodingKey, alg: Algorithm) -> Vec<u8> {
    let mut jwk =
        serde_json::to_value(Jwk::from_encoding_key(key, alg).expect("jwk")).expect("json");
    jwk["kid"] = json!(kid);
    if let Some(map) = jwk.as_object_mut() {
        map.remove("alg");
    }
    serde_json::to_vec(&json!({ "keys": [jwk] })).expect("json")
}

fn trust(issuer: &str, audience: Audience, prefix: &str, kid: &str) -> Arc<IssuerTrust> {
    let trust = IssuerTrust::new(issuer, audience, prefix, WINDOW_MS);
    trust
        .publish_keys(&jwks(kid, &rsa(), Algorithm::RS256))
        .expect("a key set");
    Arc::new(trust)
}

fn sign(kid: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, &rsa()).expect("sign")
}

fn keycloak_claims() -> Value {
    json!({"iss": "https://kc/realms/app", "sub": "f3a1", "aud": ["account", "api"],
           "exp": 2_000, "iat": 1_000, "jti": "8c0f-uuid", "sid": "kc-session",
           "azp": "web", "typ": "Bearer", "realm_access": {"roles": ["user"]}})
}

fn decode(trusted: &TrustedIssuers, token: &str) -> Result<Claims, Reason> {
    decode_token(&VerifyingKeys::default(), "us", None, trusted, token)
}

fn keycloak() -> TrustedIssuers {
    TrustedIssuers::new([trust(
        "https://kc/realms/app",
        Audience::parse("api"),
        "kc:",
        "rsa-1",
    )])
}

#[test]
fn a_trusted_issuers_token_becomes_a_prefixed_user_and_session() {
    let token = sign("rsa-1", &keycloak_claims());
    let claims = decode(&keycloak(), &token).expect("a trusted token");
    assert_eq!(claims.user_id, "kc:f3a1");
    assert_eq!(claims.idp_session_id.as_deref(), Some("kc:kc-session"));
    assert_eq!(claims.issuer.as_deref(), Some("https://kc/realms/app"));
    assert!(crate::token::is_minted_id(&claims.jti), "{}", claims.jti);
    assert_eq!(claims.session_id, claims.jti);
    assert_eq!(claims.orig_iat_ms, 1_000_000);
    // The provider's own ids and claims stay visible.
    assert_eq!(claims.extra.get("jti"), Some(&json!("8c0f-uuid")));
    assert_eq!(claims.extra.get("sid"), Some(&json!("kc-session")));
    assert_eq!(claims.extra.get("azp"), Some(&json!("web")));
}

#[test]
fn the_audience_expiry_and_issue_time_are_required() {
    let trusted = keycloak();
    let with = |change: &dyn Fn(&mut Value)| {
        let mut claims = keycloak_claims();
        change(&mut claims);
        decode(&trusted, &sign("rsa-1", &claims))
    };
    assert_eq!(
        with(&|c| c["aud"] = json!("account")),
        Err(Reason::WrongAudience)
    );
    assert_eq!(
        with(&|c| {
            c.as_object_mut().map(|m| m.remove("aud"));
        }),
        Err(Reason::MissingClaim)
    );
    for name in ["exp", "sub"] {
        assert_eq!(
            with(&|c| {
                c.as_object_mut().map(|m| m.remove(name));
            }),
            Err(Reason::MissingClaim),
            "{name}"
        );
    }
    assert_eq!(with(&|c| c["exp"] = json!("2000")), Err(Reason::Malformed));
    assert_eq!(
        with(&|c| c["auth_time"] = json!("yesterday")),
        Err(Reason::Malformed)
    );
    // `audience=*`: none needed.
    let any = TrustedIssuers::new([trust(
        "https://kc/realms/app",
        Audience::Any,
        "kc:",
        "rsa-1",
    )]);
    let mut claims = keycloak_claims();
    claims.as_object_mut().map(|m| m.remove("aud"));
    assert!(decode(&any, &sign("rsa-1", &claims)).is_ok());
}

#[test]
fn none_hmac_with_the_public_key_and_foreign_keys_are_bad_signatures() {
    let trusted = keycloak();
    let claims = keycloak_claims();
    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).expect("json"));
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "kid": "rsa-1"})),
        b64(&claims)
    );
    assert_eq!(decode(&trusted, &none), Err(Reason::BadSignature));
    // The classic confusion: HS256 keyed with the provider's public key.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa-1".into());
    let confused = jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_secret(RSA_PUBLIC).expect("secret"),
    )
    .expect("hs");
    assert_eq!(decode(&trusted, &confused), Err(Reason::BadSignature));
    // Signed by another key under the provider's kid.
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("rsa-1".into());
    let foreign = jsonwebtoken::encode(&header, &claims, &p256()).expect("es");
    assert_eq!(decode(&trusted, &foreign), Err(Reason::BadSignature));
    // Our own kid space is not theirs: an issuer we do not trust is just a bad signature.
    let mut stranger = claims.clone();
    stranger["iss"] = json!("https://elsewhere");
    assert_eq!(
        decode(&trusted, &sign("rsa-1", &stranger)),
        Err(Reason::BadSignature)
    );
}

#[test]
fn an_unknown_kid_asks_for_a_read_once() {
    let trusted = keycloak();
    let trust = trusted.get("https://kc/realms/app").expect("trusted");
    assert!(!trust.take_unknown_kid());
    for _ in 0..3 {
        assert_eq!(
            decode(&trusted, &sign("rotated", &keycloak_claims())),
            Err(Reason::BadSignature)
        );
    }
    assert!(trust.take_unknown_kid());
    assert!(!trust.take_unknown_kid(), "taken once");
}

#[test]
fn until_its_keys_are_read_an_issuers_tokens_are_refused() {
    let unread = TrustedIssuers::new([Arc::new(IssuerTrust::new(
        "https://kc/realms/app",
        Audience::Any,
        "kc:",
        WINDOW_MS,
    ))]);
    assert!(!unread.all_read());
    assert_eq!(
        decode(&unread, &sign("rsa-1", &keycloak_claims())),
        Err(Reason::BadSignature)
    );
    assert!(keycloak().all_read());
}

#[test]
fn two_issuers_with_the_same_subject_and_jti_name_different_users_and_tokens() {
    let trusted = TrustedIssuers::new([
        trust("https://a", Audience::Any, "a:", "rsa-1"),
        trust("https://b", Audience::Any, "b:", "rsa-1"),
    ]);
    let of = |iss: &str| {
        let mut claims = keycloak_claims();
        claims["iss"] = json!(iss);
        decode(&trusted, &sign("rsa-1", &claims)).expect("trusted")
    };
    let (a, b) = (of("https://a"), of("https://b"));
    assert_eq!(
        (a.user_id.as_str(), b.user_id.as_str()),
        ("a:f3a1", "b:f3a1")
    );
    assert_ne!(a.jti, b.jti);
    assert_ne!(a.idp_session_id, b.idp_session_id);
}

#[test]
fn a_token_without_a_jti_is_revoked_by_its_own_hash() {
    let trusted = keycloak();
    let mut claims = keycloak_claims();
    claims.as_object_mut().map(|m| m.remove("jti"));
    let one = decode(&trusted, &sign("rsa-1", &claims)).expect("trusted");
    claims["iat"] = json!(1_001);
    let two = decode(&trusted, &sign("rsa-1", &claims)).expect("trusted");
    assert!(crate::token::is_minted_id(&one.jti));
    assert_ne!(one.jti, two.jti);
}

#[test]
fn the_cutoff_is_compared_with_the_sign_in_bounded_by_the_refresh_window() {
    let s = |seconds| Some(UnixSeconds(seconds));
    let exp = UnixSeconds(1_300);
    // No auth_time: the issue time.
    assert_eq!(session_start_ms(s(1_000), None, exp, WINDOW_MS), 1_000_000);
    // An earlier sign-in is what a revoke-all ends.
    assert_eq!(session_start_ms(s(1_000), s(400), exp, WINDOW_MS), 400_000);
    // Never later than iat.
    assert_eq!(
        session_start_ms(s(1_000), s(5_000), exp, WINDOW_MS),
        1_000_000
    );
    // Never earlier than exp less the window: a cutoff kept that long sees the token die first.
    let exp = UnixSeconds(30 * 86_400);
    assert_eq!(
        session_start_ms(s(29 * 86_400), s(0), exp, WINDOW_MS),
        exp.as_millis() - WINDOW_MS
    );
    // No iat: as early as the bound allows, or the sign-in.
    assert_eq!(
        session_start_ms(None, None, exp, WINDOW_MS),
        exp.as_millis() - WINDOW_MS
    );
    assert_eq!(
        session_start_ms(None, s(29 * 86_400), exp, WINDOW_MS),
        29 * 86_400_000
    );
}

#[test]
fn our_own_tokens_are_untouched_by_trusted_issuers() {
    // A token naming our issuer is never handed to a trusted issuer's keys, even with its kid.
    let mut ours = keycloak_claims();
    ours["iss"] = json!("us");
    assert_eq!(
        decode(&keycloak(), &sign("rsa-1", &ours)),
        Err(Reason::BadSignature)
    );
    // A payload that is not JSON is malformed before any key is chosen.
    let garbage = format!(
        "{}.{}.c2ln",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","kid":"rsa-1"}"#),
        URL_SAFE_NO_PAD.encode(b"not json")
    );
    assert_eq!(decode(&keycloak(), &garbage), Err(Reason::Malformed));
}

#[test]
fn the_filters_document_carries_the_same_trust() {
    let trusted = keycloak();
    let copy = TrustedIssuers::from_document(trusted.document().as_bytes()).expect("a document");
    let token = sign("rsa-1", &keycloak_claims());
    assert_eq!(decode(&copy, &token), decode(&trusted, &token));
    assert!(decode(&copy, &token).is_ok());
    // An issuer whose keys the sidecar has not read yet is listed without them.
    let unread = TrustedIssuers::new([Arc::new(IssuerTrust::new(
        "https://x",
        Audience::Any,
        "x:",
        WINDOW_MS,
    ))]);
    let copy = TrustedIssuers::from_document(unread.document().as_bytes()).expect("a document");
    assert!(!copy.all_read());
    assert!(TrustedIssuers::from_document(b"[]").is_err());
}

#[test]
fn a_token_without_iat_is_judged_by_every_cutoff_that_could_concern_it() {
    let mut claims = keycloak_claims();
    claims.as_object_mut().map(|m| m.remove("iat"));
    let decoded = decode(&keycloak(), &sign("rsa-1", &claims)).expect("iat is optional");
    assert_eq!(decoded.orig_iat_ms, 2_000_000 - WINDOW_MS);
}

#[test]
fn a_set_of_weak_keys_only_is_read_but_verifies_nothing() {
    // A 1024-bit modulus (the top bit set): below the floor, skipped.
    let n = URL_SAFE_NO_PAD.encode([0xC1u8; 128]);
    let weak = json!({"keys": [{"kty": "RSA", "kid": "weak", "n": n, "e": "AQAB"}]});
    let trust = IssuerTrust::new("https://kc/realms/app", Audience::Any, "kc:", WINDOW_MS);
    trust
        .publish_keys(weak.to_string().as_bytes())
        .expect("read, though nothing in it is usable");
    let trusted = TrustedIssuers::new([Arc::new(trust)]);
    assert!(trusted.all_read());
    assert_eq!(
        decode(&trusted, &sign("weak", &keycloak_claims())),
        Err(Reason::BadSignature)
    );
    assert!(ProviderKeySet::parse(weak.to_string().as_bytes()).is_err());
}
