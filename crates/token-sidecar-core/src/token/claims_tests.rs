use super::*;
use serde_json::json;

#[test]
fn a_token_is_denied_by_an_id_of_every_kind_it_has() {
    let mut claims = Claims {
        user_id: "alice".into(),
        jti: "j".into(),
        session_id: "s".into(),
        issued_at: UnixSeconds(0),
        expires_at: UnixSeconds(1),
        not_before: None,
        orig_iat_ms: 0,
        idp_session_id: None,
        extra: Map::new(),
        issuer: None,
        binding: Default::default(),
    };
    let ids: Vec<_> = claims.deny_ids().collect();
    assert_eq!(ids, [(DenyKind::Token, "j"), (DenyKind::Session, "s")]);
    claims.idp_session_id = Some("idp:x".into());
    assert_eq!(claims.deny_ids().count(), DenyKind::ALL.len());
    for kind in DenyKind::ALL {
        assert!(claims.id_for(kind).is_some(), "{kind:?}");
    }
}

fn payload(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

#[test]
fn only_ids_of_the_minted_shape_are_ours() {
    for _ in 0..100 {
        assert!(is_minted_id(&new_random_id()));
    }
    assert!(is_minted_id("AAAAAAAAAAAAAAAAAAAAAA"));
    // Bits beyond the 128th set: it decodes, but it is not an encoding we produce.
    assert!(!is_minted_id("AAAAAAAAAAAAAAAAAAAAAB"));
    for bad in [
        "",
        "null",
        "short",
        &"A".repeat(23),
        &"A".repeat(300),
        "AAAAAAAAAAAAAAAAAAAA+A",
    ] {
        assert!(!is_minted_id(bad), "{bad:.30}");
    }
}

fn good() -> Value {
    json!({"iss": "me", "sub": "alice", "jti": "j", "sid": "s", "iat": 10, "exp": 20,
           "orig_iat": 9.5, "role": "admin"})
}

#[test]
fn orig_iat_round_trips_every_millisecond() {
    let base = 1_764_405_892_000_i64;
    for ms in (base..base + 5_000).chain([0, 1, 999, 4_102_444_800_123]) {
        let text = serde_json::to_string(&crate::clock::fractional_seconds(ms)).unwrap_or_default();
        let back: f64 = serde_json::from_str(&text).unwrap_or(f64::NAN);
        assert_eq!(
            crate::clock::millis_of_fractional_seconds(back),
            Some(ms),
            "{ms} -> {text}"
        );
    }
}

#[test]
fn orig_iat_is_written_as_seconds_with_milliseconds() {
    let text = serde_json::to_string(&crate::clock::fractional_seconds(1_764_405_892_123))
        .unwrap_or_default();
    assert_eq!(text, "1764405892.123");
}

fn parse_payload(
    map: Map<String, Value>,
    issuer: &str,
    audience: Option<&str>,
) -> Result<Claims, Reason> {
    let json = serde_json::to_vec(&Value::Object(map)).expect("json");
    super::parse_payload(&json, issuer, audience)
}

#[test]
fn duplicate_members_are_malformed_reserved_or_not() {
    for json in [
        r#"{"iss":"me","sub":"a","sub":"b","jti":"j","sid":"s","iat":1,"exp":2,"orig_iat":1}"#,
        r#"{"iss":"me","sub":"a","jti":"j","sid":"s","iat":1,"exp":2,"orig_iat":1,"x":1,"x":2}"#,
        r#"{"iss":"me","s\u0075b":"a","sub":"b","jti":"j","sid":"s","iat":1,"exp":2,"orig_iat":1}"#,
    ] {
        assert_eq!(
            super::parse_payload(json.as_bytes(), "me", None),
            Err(Reason::Malformed),
            "{json}"
        );
    }
    let escaped = r#"{"iss":"me","s\u0075b":"a","jti":"j","sid":"s","iat":1,"exp":2,"orig_iat":1}"#;
    assert!(super::parse_payload(escaped.as_bytes(), "me", None).is_ok());
    for not_an_object in ["[]", "1", "\"x\"", "null", "{", ""] {
        assert_eq!(
            super::parse_payload(not_an_object.as_bytes(), "me", None),
            Err(Reason::Malformed)
        );
    }
}

#[test]
fn parses_claims_and_keeps_custom_ones() {
    let claims = parse_payload(payload(good()), "me", None).expect("valid");
    assert_eq!(claims.user_id, "alice");
    assert_eq!(claims.orig_iat_ms, 9_500);
    assert_eq!(claims.extra.get("role"), Some(&json!("admin")));
    assert_eq!(claims.extra.len(), 1);
}

#[test]
fn each_required_claim_is_required() {
    for name in ["iss", "sub", "jti", "sid", "iat", "exp", "orig_iat"] {
        let mut map = payload(good());
        map.remove(name);
        assert_eq!(
            parse_payload(map, "me", None),
            Err(Reason::MissingClaim),
            "{name}"
        );
    }
}

#[test]
fn wrong_types_are_malformed() {
    for (name, value) in [
        ("exp", json!("20")),
        ("exp", json!(20.5)),
        ("exp", json!(-1)),
        ("iat", json!(1e300)),
        ("nbf", json!(true)),
        ("orig_iat", json!("9")),
        ("orig_iat", json!(-3)),
        ("sub", json!(42)),
    ] {
        let mut map = payload(good());
        map.insert(name.into(), value);
        assert_eq!(
            parse_payload(map, "me", None),
            Err(Reason::Malformed),
            "{name}"
        );
    }
}

#[test]
fn issuer_and_audience_are_checked() {
    assert_eq!(
        parse_payload(payload(good()), "other", None),
        Err(Reason::WrongIssuer)
    );
    assert_eq!(
        parse_payload(payload(good()), "me", Some("api")),
        Err(Reason::MissingClaim)
    );
    let mut map = payload(good());
    map.insert("aud".into(), json!(["web", "api"]));
    assert!(parse_payload(map, "me", Some("api")).is_ok());
    let mut map = payload(good());
    map.insert("aud".into(), json!("web"));
    assert_eq!(
        parse_payload(map, "me", Some("api")),
        Err(Reason::WrongAudience)
    );
}

#[test]
fn random_ids_carry_128_bits() {
    let a = new_random_id();
    assert_eq!(a.len(), 22);
    assert_ne!(a, new_random_id());
}
