//! The tests of `jwks`.
use super::*;

const EC_A: &str = r#"{"kty":"EC","crv":"P-256","kid":"a","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;
const EC_B: &str = r#"{"kty":"EC","crv":"P-256","kid":"b","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;

struct Provider {
    dir: std::path::PathBuf,
    clock: crate::clock::ManualClock,
    keys: ProviderKeys,
}

impl Provider {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("ts-jwks-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary folder");
        let clock = crate::clock::ManualClock::new(1_700_000_000_000);
        let keys = ProviderKeys::new(
            JwksSource::File(dir.join("jwks.json")),
            Arc::new(clock.clone()),
        );
        let this = Self { dir, clock, keys };
        this.publish(&[EC_A]);
        this
    }

    fn publish(&self, keys: &[&str]) {
        std::fs::write(
            self.dir.join("jwks.json"),
            format!("{{\"keys\":[{}]}}", keys.join(",")),
        )
        .expect("the key set is written");
    }

    async fn lookup(&self, kid: &str, iat_ms: UnixMillis) -> Result<usize, KeyLookupError> {
        self.keys
            .candidates(Some(kid), Algorithm::ES256, iat_ms)
            .await
            .map(|found| found.len())
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn made_up_kids_cannot_hide_a_rotation() {
    let provider = Provider::new("rotation");
    let now = || provider.clock.now_ms();
    assert_eq!(provider.lookup("a", now()).await, Ok(1));
    // A stranger's made-up kid, issued "now": the set was read before it, so one read is
    // asked for; none is allowed within the interval, so the answer is "retry", not 400.
    provider.clock.advance_ms(10);
    let made_up = provider.lookup("made-up", now() + 5).await;
    assert!(
        matches!(
            made_up,
            Err(KeyLookupError::Unavailable {
                retry_after_secs: 1,
                ..
            })
        ),
        "{made_up:?}"
    );
    // The provider rotates and signs with its new key while the stranger keeps sending.
    provider.publish(&[EC_A, EC_B]);
    let issued = now();
    provider.clock.advance_ms(2 * READ_INTERVAL_MS);
    for _ in 0..50 {
        let _ = provider.lookup("made-up", now() + 59_000).await;
    }
    // Whoever's request read the set, it was read after the provider's token was issued.
    assert_eq!(provider.lookup("b", issued).await, Ok(1));
    // A kid absent from a set read after the token was issued is final.
    assert_eq!(
        provider.lookup("gone", issued).await,
        Err(KeyLookupError::NoKey)
    );
}

#[tokio::test]
async fn an_old_set_is_read_again_and_a_failed_read_keeps_the_keys() {
    let provider = Provider::new("age");
    assert_eq!(provider.lookup("a", 0).await, Ok(1));
    provider.publish(&[EC_B]);
    provider.clock.advance_ms(MAX_AGE_MS);
    // The refresh by age happens on use, whatever strangers did with the interval.
    assert_eq!(provider.lookup("a", 0).await, Err(KeyLookupError::NoKey));
    assert_eq!(provider.lookup("b", 0).await, Ok(1));
    std::fs::write(provider.dir.join("jwks.json"), "not json").expect("written");
    provider.clock.advance_ms(MAX_AGE_MS);
    assert_eq!(provider.lookup("b", 0).await, Ok(1), "keys kept");
}

#[tokio::test]
async fn a_set_never_read_answers_retry() {
    let provider = Provider::new("never");
    std::fs::remove_file(provider.dir.join("jwks.json")).expect("removed");
    let first = provider.lookup("a", 0).await;
    assert!(
        matches!(first, Err(KeyLookupError::Unavailable { .. })),
        "{first:?}"
    );
    provider.publish(&[EC_A]);
    // Within the interval no second read begins: still "retry".
    assert!(provider.lookup("a", 0).await.is_err());
    provider.clock.advance_ms(READ_INTERVAL_MS);
    assert_eq!(provider.lookup("a", 0).await, Ok(1));
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
