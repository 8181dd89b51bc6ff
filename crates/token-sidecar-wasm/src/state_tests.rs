//! The verdict of `state.rs`, natively: the sidecar's rules on a fed copy, staleness, the
//! fleet clock, the verified-token cache.
use super::*;
use crate::config::FilterConfig;
use token_sidecar_core::feed::FeedChange;

const SECRET: [u8; 32] = [42; 32];
const NOW: i64 = 1_800_000_000_000;

fn shared() -> Shared {
    let k = "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio";
    let config = format!(
        r#"{{"sidecar_cluster":"s","fetch_jwks":false,"max_staleness_ms":2000,
            "local_jwks":{{"keys":[{{"kty":"oct","kid":"main","alg":"HS256","k":"{k}"}}]}}}}"#
    );
    let mut s = Shared::new(FilterConfig::parse(config.as_bytes()).expect("config")).expect("keys");
    s.set_trusted_issuers(br#"{"issuers":[]}"#)
        .expect("the sidecar's trusted issuers: none");
    s
}

#[test]
fn a_bad_signature_is_no_final_answer_before_the_keys_are_read() {
    let k = "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio";
    let config = format!(
        r#"{{"sidecar_cluster":"s","fetch_jwks":false,
            "local_jwks":{{"keys":[{{"kty":"oct","kid":"main","alg":"HS256","k":"{k}"}}]}}}}"#
    );
    let mut s = Shared::new(FilterConfig::parse(config.as_bytes()).expect("config")).expect("keys");
    // A provider's token, say, whose issuer the filter has not heard of yet.
    let unknown = signed("alice", "j1", NOW - 1_000, &[7; 32]);
    assert_eq!(verdict(&s, &unknown, 0), Verdict::Stale);
    assert!(s.keys_wanted());
    s.set_trusted_issuers(br#"{"issuers":[]}"#).expect("read");
    assert!(matches!(
        verdict(&s, &unknown, 0),
        Verdict::Decided(Decision::Deny {
            reason: Some(Reason::BadSignature),
            ..
        })
    ));
}

fn token(sub: &str, jti: &str, orig_iat_ms: i64) -> String {
    signed(sub, jti, orig_iat_ms, &SECRET)
}

fn signed(sub: &str, jti: &str, orig_iat_ms: i64, secret: &[u8]) -> String {
    let claims = serde_json::json!({
        "iss": "token-sidecar", "sub": sub, "jti": jti, "sid": "s1",
        "iat": orig_iat_ms / 1000, "exp": orig_iat_ms / 1000 + 300,
        "orig_iat": orig_iat_ms as f64 / 1000.0,
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("main".into());
    let key = jsonwebtoken::EncodingKey::from_secret(secret).expect("key");
    jsonwebtoken::encode(&header, &claims, &key).expect("sign")
}

fn page(changes: Vec<FeedChange>, more: bool) -> FeedPage {
    FeedPage {
        next: changes.len() as i64,
        changes,
        anchor: None,
        more,
        now_ms: NOW,
    }
}

fn verdict(s: &Shared, token: &str, monotonic: u64) -> Verdict {
    let auth = format!("Bearer {token}");
    s.judge(
        Presented::One(&auth),
        Presentation::BARE,
        || None,
        || NOW,
        monotonic,
    )
}

/// The time a request is judged at is the fleet's: the last page's, moved on by the
/// monotonic clock; this worker's wall clock is read only before any page said it.
#[test]
fn the_fleet_clock_comes_from_the_pages() {
    let mut s = shared();
    let good = token("alice", "j1", NOW - 1_000);
    let expired_on_the_wall = s.judge(
        Presented::One(&format!("Bearer {good}")),
        Presentation::BARE,
        || None,
        || NOW + 86_400_000,
        0,
    );
    assert!(matches!(
        expired_on_the_wall,
        Verdict::Decided(Decision::Deny {
            reason: Some(Reason::Expired),
            ..
        })
    ));
    assert!(!s.apply_page(&page(vec![], false), 100));
    let wall_read = std::cell::Cell::new(false);
    let judged = s.judge(
        Presented::One(&format!("Bearer {good}")),
        Presentation::BARE,
        || None,
        || {
            wall_read.set(true);
            NOW + 86_400_000
        },
        150,
    );
    assert!(matches!(judged, Verdict::Decided(Decision::Allow { .. })));
    assert!(
        !wall_read.get(),
        "no wall clock read once a page said the time"
    );
    assert_eq!(s.fleet_ms(150), Some(NOW + 50));
}

#[test]
fn requests_are_judged_by_the_sidecars_rules_on_the_fed_state() {
    let mut s = shared();
    let good = token("alice", "j1", NOW - 1_000);
    // Not loaded yet: a token that decodes waits for the state; a forged one does not.
    assert_eq!(verdict(&s, &good, 0), Verdict::Stale);
    let forged = signed("alice", "j1", NOW - 1_000, &[7; 32]);
    assert!(matches!(
        verdict(&s, &forged, 0),
        Verdict::Decided(Decision::Deny {
            reason: Some(Reason::BadSignature),
            ..
        })
    ));
    assert!(s.keys_wanted(), "a bad signature asks for the keys again");

    // A snapshot in two pages: in step only after the last.
    assert!(s.apply_page(&page(vec![], true), 10));
    assert_eq!(verdict(&s, &good, 10), Verdict::Stale);
    let revoked = vec![FeedChange::Denied {
        seq: 1,
        kind: "jti".into(),
        id: "j2".into(),
        moot_after_ms: NOW + 60_000,
    }];
    assert!(!s.apply_page(&page(revoked, false), 20));
    match verdict(&s, &good, 30) {
        Verdict::Decided(Decision::Allow { set, .. }) => {
            assert!(set.contains(&("x-user-id".to_owned(), "alice".to_owned())));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        verdict(&s, &token("bob", "j2", NOW - 1_000), 30),
        Verdict::Decided(Decision::Deny {
            reason: Some(Reason::TokenRevoked),
            ..
        })
    ));
    // Older than the staleness bound: stale again; a history change starts over.
    assert_eq!(verdict(&s, &good, 20 + 2_001), Verdict::Stale);
    s.restart();
    assert_eq!(verdict(&s, &good, 30), Verdict::Stale);
    assert_eq!(
        s.next_query(10, 0),
        "/revocations/changes?after=0&limit=10&format=bin"
    );
    // Until loaded, and after a full page, each page is asked for at once (a long poll
    // after a full last page would hold the reader for `wait_ms` with more waiting).
    assert_eq!(
        s.next_query(10, 500),
        "/revocations/changes?after=0&limit=10&format=bin"
    );
    assert!(!s.apply_page(&page(vec![], false), 40));
    assert_eq!(
        s.next_query(10, 500),
        "/revocations/changes?after=0&limit=10&format=bin&wait_ms=500"
    );
    assert!(s.apply_page(&page(vec![], true), 41));
    assert!(!s.next_query(10, 500).contains("wait_ms"));
}

/// With a public-key algorithm a decode is remembered: the same token is answered without
/// a second signature check, every rule still applies, and new keys empty the memory.
#[test]
fn verified_decodes_are_remembered_until_the_keys_change() {
    let pem = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/keys/p256.pem"
    ))
    .expect("fixture");
    let encoding = jsonwebtoken::EncodingKey::from_ec_pem(&pem).expect("pem");
    let mut jwk =
        jsonwebtoken::jwk::Jwk::from_encoding_key(&encoding, jsonwebtoken::Algorithm::ES256)
            .expect("jwk");
    jwk.common.key_id = Some("ec".into());
    let jwks = serde_json::json!({ "keys": [jwk] });
    let config = format!(r#"{{"sidecar_cluster":"s","local_jwks":{jwks}}}"#);
    let mut s = Shared::new(FilterConfig::parse(config.as_bytes()).expect("config")).expect("keys");
    assert!(!s.apply_page(&page(vec![], false), 1));
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("ec".into());
    let claims = serde_json::json!({
        "iss": "token-sidecar", "sub": "alice", "jti": "j1", "sid": "s1",
        "iat": NOW / 1000, "exp": NOW / 1000 + 60, "orig_iat": NOW as f64 / 1000.0,
    });
    let token = jsonwebtoken::encode(&header, &claims, &encoding).expect("sign");
    assert!(matches!(
        verdict(&s, &token, 2),
        Verdict::Decided(Decision::Allow { .. })
    ));
    assert_eq!(s.verified.borrow().len(), 1);
    assert!(matches!(
        verdict(&s, &token, 3),
        Verdict::Decided(Decision::Allow { .. })
    ));
    // Expired on the fleet's clock: refused though remembered, and forgotten.
    let later = s.judge(
        Presented::One(&format!("Bearer {token}")),
        Presentation::BARE,
        || None,
        || NOW,
        61_004,
    );
    assert!(matches!(
        later,
        Verdict::Decided(Decision::Deny {
            reason: Some(Reason::Expired),
            ..
        })
    ));
    assert!(s.verified.borrow().is_empty());
    assert!(matches!(
        verdict(&s, &token, 5),
        Verdict::Decided(Decision::Allow { .. })
    ));
    s.set_fetched_keys(r#"{"keys":[]}"#).expect("keys");
    assert!(s.verified.borrow().is_empty(), "new keys, empty memory");
}

#[test]
fn the_state_beyond_its_bound_is_not_trusted() {
    let config = br#"{"sidecar_cluster":"s","max_entries":1,
        "local_jwks":{"keys":[]}}"#;
    let mut s = Shared::new(FilterConfig::parse(config).expect("config")).expect("keys");
    let two = (1..=2)
        .map(|seq| FeedChange::Cutoff {
            seq,
            user_id: format!("u{seq}"),
            cutoff_ms: NOW,
            moot_after_ms: None,
        })
        .collect();
    assert!(!s.apply_page(&page(two, false), 1));
    assert!(!s.in_step(1));
}
