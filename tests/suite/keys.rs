//! Keys as deployments use them: every algorithm, rotation by kid, verify-only public keys,
//! weak keys refused, the JWKS (gRPC and HTTP), hot reload, and interoperability with an
//! independent JWT implementation (jwt-simple) that knows only our published JWKS.
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{Backend, Settings, TestApp};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use token_sidecar::api::pb::Reason;
use token_sidecar::clock::{ManualClock, SystemClock};

pub(crate) fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(name)
}

pub(crate) fn key_arg(kid: &str, alg: &str, file: &str) -> String {
    format!("{kid}={alg}:{}", fixture(file).display())
}

fn header(token: &str) -> serde_json::Value {
    let first = token.split('.').next().unwrap_or_default();
    let bytes = URL_SAFE_NO_PAD.decode(first).expect("header b64");
    serde_json::from_slice(&bytes).expect("header json")
}

const ASYMMETRIC: &[(&str, &str, &str)] = &[
    ("RS256", "rsa.pem", "rsa.pub.pem"),
    ("RS384", "rsa.pem", "rsa.pub.pem"),
    ("RS512", "rsa.pem", "rsa.pub.pem"),
    ("PS256", "rsa.pem", "rsa.pub.pem"),
    ("ES256", "p256.pem", "p256.pub.pem"),
    ("ES384", "p384.pem", "p384.pub.pem"),
    ("EdDSA", "ed25519.pem", "ed25519.pub.pem"),
];

#[tokio::test]
async fn every_algorithm_round_trips_and_publishes_only_public_keys() {
    for (alg, private, _) in ASYMMETRIC {
        let app = Settings::new(Backend::Sqlite)
            .arg("--key", &key_arg("k", alg, private))
            .spawn()
            .await;
        let issued = app.issue("alice").await;
        assert_eq!(header(&issued.token)["alg"], *alg);
        assert_eq!(header(&issued.token)["kid"], "k");
        assert!(app.verify(&issued.token).await.valid, "{alg}");
        let refreshed = app.refresh(&issued.token).await.expect("refresh");
        assert!(app.verify(&refreshed.token).await.valid, "{alg}");
        let jwks = app.jwks().await;
        let key = &jwks["keys"][0];
        assert_eq!(key["kid"], "k", "{alg}");
        assert_eq!(key["alg"], *alg, "{alg}");
        assert_eq!(key["use"], "sig", "{alg}");
        for private_member in ["d", "p", "q", "dp", "dq", "qi", "k"] {
            assert!(
                key.get(private_member).is_none(),
                "{alg} publishes {private_member}"
            );
        }
    }
    for (alg, len) in [("HS256", 32), ("HS384", 48), ("HS512", 64)] {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("hs.key");
        std::fs::write(&path, vec![9u8; len]).expect("write");
        let app = Settings::new(Backend::Sqlite)
            .arg("--key", &format!("h={alg}:{}", path.display()))
            .spawn()
            .await;
        let issued = app.issue("alice").await;
        assert_eq!(header(&issued.token)["alg"], alg);
        assert!(app.verify(&issued.token).await.valid, "{alg}");
        assert_eq!(
            app.jwks().await,
            serde_json::json!({"keys": []}),
            "no secret published"
        );
    }
}

#[tokio::test]
async fn rotation_keeps_old_tokens_valid_until_their_key_is_retired() {
    let clock = ManualClock::new(crate::common::T0_MS);
    let old = Settings::new(Backend::Sqlite)
        .clock(clock.clone())
        .arg("--key", &key_arg("2025", "ES256", "p256.pem"))
        .spawn()
        .await;
    let old_token = old.issue("alice").await.token;

    // Step 1: the new key is added and signs; the old one only verifies (its public half).
    let rotated = Settings::new(Backend::Sqlite)
        .sharing(&old)
        .clock(clock.clone())
        .arg("--key", &key_arg("2026", "EdDSA", "ed25519.pem"))
        .arg("--key", &key_arg("2025", "ES256", "p256.pub.pem"))
        .arg("--signing-kid", "2026")
        .spawn()
        .await;
    assert!(rotated.verify(&old_token).await.valid, "old tokens verify");
    let new_token = rotated.issue("alice").await.token;
    assert_eq!(header(&new_token)["kid"], "2026");
    assert_eq!(header(&new_token)["alg"], "EdDSA");
    let kids: Vec<String> = rotated.jwks().await["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["kid"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(kids.contains(&"2025".to_owned()) && kids.contains(&"2026".to_owned()));
    // The old sidecar does not know the new key.
    assert_eq!(old.verdict(&new_token).await, Reason::BadSignature);

    // Step 2: the old key is retired.
    let retired = Settings::new(Backend::Sqlite)
        .sharing(&old)
        .clock(clock)
        .arg("--key", &key_arg("2026", "EdDSA", "ed25519.pem"))
        .spawn()
        .await;
    assert_eq!(retired.verdict(&old_token).await, Reason::BadSignature);
    assert!(retired.verify(&new_token).await.valid);
}

#[tokio::test]
async fn bad_keys_are_refused_at_start_with_the_reason() {
    let cases = [
        (key_arg("k", "RS256", "rsa1024.pem"), "at least 2048"),
        (key_arg("k", "ES384", "p256.pem"), "k"),
        (key_arg("k", "RS256", "p256.pem"), "k"),
        (key_arg("k", "ES256", "hs384.key"), "k"),
        (key_arg("k", "XS256", "rsa.pem"), "not supported"),
    ];
    for (arg, expected) in cases {
        let result = Settings::new(Backend::Sqlite)
            .arg("--key", &arg)
            .no_wait()
            .try_spawn()
            .await;
        let err = result.err().unwrap_or_else(|| panic!("{arg} was accepted"));
        assert!(err.to_string().contains(expected), "{arg}: {err}");
    }
    let verify_only = Settings::new(Backend::Sqlite)
        .arg("--key", &key_arg("k", "ES256", "p256.pub.pem"))
        .no_wait()
        .try_spawn()
        .await;
    let err = verify_only.err().expect("a public key cannot sign");
    assert!(err.to_string().contains("verify-only"), "{err}");
}

#[tokio::test]
async fn jwks_is_served_over_http_with_cache_control() {
    let app = Settings::new(Backend::Sqlite)
        .arg("--key", &key_arg("rsa", "RS256", "rsa.pem"))
        .arg("--key", &key_arg("ed", "EdDSA", "ed25519.pub.pem"))
        .spawn()
        .await;
    let (head, body) = crate::common::http_get(app.metrics_addr, "/.well-known/jwks.json").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let head = head.to_ascii_lowercase();
    assert!(head.contains("cache-control: public, max-age="), "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    let served: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(served, app.jwks().await);
    assert_eq!(served["keys"].as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn a_changed_key_file_is_reloaded_and_a_bad_one_keeps_the_old_keys() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("main.key");
    std::fs::write(&path, [1u8; 32]).expect("write");
    let app = Settings::new(Backend::Sqlite)
        .arg("--key", &format!("main=HS256:{}", path.display()))
        .spawn()
        .await;
    let before = app.issue("alice").await.token;
    assert_eq!(app.reload_keys().ok(), Some(false), "unchanged");

    std::fs::write(&path, b"short").expect("write");
    assert!(app.reload_keys().is_err(), "a weak secret is refused");
    assert!(app.verify(&before).await.valid, "old keys kept");

    std::fs::write(&path, [2u8; 32]).expect("write");
    assert_eq!(app.reload_keys().ok(), Some(true));
    assert_eq!(app.verdict(&before).await, Reason::BadSignature);
    let after = app.issue("alice").await.token;
    assert!(app.verify(&after).await.valid);
}

/// The verified-token cache is emptied with every key set: a token remembered under a key that
/// was rotated away (its file now holds another key) is refused on the next call.
#[tokio::test]
async fn a_cached_token_whose_key_was_rotated_away_is_refused() {
    use jwt_simple::prelude::ES256KeyPair;
    let dir = tempfile::tempdir().expect("dir");
    let es256 = dir.path().join("es256.pem");
    std::fs::copy(fixture("p256.pem"), &es256).expect("copy");
    let app = Settings::new(Backend::Sqlite)
        .arg("--key", &format!("es=ES256:{}", es256.display()))
        .spawn()
        .await;
    let token = app.issue("alice").await.token;
    let hits = app.metrics.caches.verified().hits;
    assert!(app.verify(&token).await.valid);
    let before = hits.get();
    assert!(app.verify(&token).await.valid);
    assert_eq!(hits.get(), before + 1, "the second Verify is a hit");
    let rotated = ES256KeyPair::generate().to_pem().expect("pem");
    std::fs::write(&es256, rotated).expect("write");
    assert_eq!(app.reload_keys().ok(), Some(true));
    assert_eq!(app.verdict(&token).await, Reason::BadSignature);
    let fresh = app.issue("alice").await.token;
    assert!(app.verify(&fresh).await.valid);
}

#[tokio::test]
async fn key_files_are_watched_without_a_signal() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("main.key");
    std::fs::write(&path, [1u8; 32]).expect("write");
    let app = Settings::new(Backend::Sqlite)
        .arg("--key", &format!("main=HS256:{}", path.display()))
        .arg("--key-reload-interval", "1s")
        .spawn()
        .await;
    let before = app.issue("alice").await.token;
    assert!(app.verify(&before).await.valid, "decoded once: cached");
    std::fs::write(&path, [3u8; 32]).expect("write");
    crate::common::eventually(Duration::from_secs(10), "watcher reloads", || async {
        app.verdict(&before).await == Reason::BadSignature
    })
    .await;
}

#[tokio::test]
async fn no_rpc_fails_while_keys_reload_under_load() {
    // The signing key stays; the verify-only key `extra` alternates between two HS256 secrets
    // that both load, so every reload swaps the whole set.
    let dir = tempfile::tempdir().expect("dir");
    let extra = dir.path().join("extra.key");
    let secrets = [[1u8; 32], [2u8; 32]];
    std::fs::write(&extra, secrets[0]).expect("write");
    let app = Settings::new(Backend::Sqlite)
        .arg("--key", &key_arg("main", "EdDSA", "ed25519.pem"))
        .arg("--key", &format!("extra=HS256:{}", extra.display()))
        .arg("--signing-kid", "main")
        .spawn()
        .await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let client = app.client.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut done = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let mut c = client.clone();
                    let issued = c
                        .issue(token_sidecar::api::pb::IssueRequest {
                            user_id: format!("w{w}"),
                            ..Default::default()
                        })
                        .await
                        .expect("issue never fails during reload")
                        .into_inner();
                    let v = c
                        .verify(token_sidecar::api::pb::VerifyRequest {
                            token: issued.token,
                            ..Default::default()
                        })
                        .await
                        .expect("verify never fails during reload")
                        .into_inner();
                    assert!(v.valid, "a fresh token stays valid across reloads");
                    done += 1;
                }
                done
            })
        })
        .collect();
    let header = serde_json::json!({"alg": "HS256", "typ": "JWT", "kid": "extra"});
    let signed_by =
        |secret: &[u8]| crate::common::craft(&header, &crate::common::good_payload(), secret);
    assert!(app.verify(&signed_by(&secrets[0])).await.valid);
    for i in 1..=20 {
        let (loaded, other) = (&secrets[i % 2], &secrets[(i + 1) % 2]);
        std::fs::write(&extra, loaded).expect("write");
        assert_eq!(
            app.reload_keys().ok(),
            Some(true),
            "reload {i} swaps the set"
        );
        assert!(
            app.verify(&signed_by(loaded)).await.valid,
            "reload {i}: a token of the loaded set verifies"
        );
        assert_eq!(
            app.verdict(&signed_by(other)).await,
            Reason::BadSignature,
            "reload {i}: the replaced secret no longer verifies"
        );
        tokio::task::yield_now().await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for w in workers {
        total += w.await.expect("worker");
    }
    assert!(total > 0);
}

mod interop {
    //! jwt-simple verifies our tokens from our JWKS alone, and mints tokens we accept.
    use super::{
        Backend, ManualClock, Settings, SystemClock, TestApp, URL_SAFE_NO_PAD, fixture, key_arg,
    };
    use base64::Engine;
    use jwt_simple::prelude::{
        Claims, Deserialize, ECDSAP256KeyPairLike, ECDSAP256PublicKeyLike, ES256KeyPair,
        ES256PublicKey, Ed25519KeyPair, Ed25519PublicKey, EdDSAKeyPairLike, EdDSAPublicKeyLike,
        HashSet, PS256KeyPair, PS256PublicKey, RS256KeyPair, RS256PublicKey, RSAKeyPairLike,
        RSAPublicKeyLike, Serialize, VerificationOptions,
    };
    use token_sidecar::clock::Clock as _;

    #[derive(Serialize, Deserialize)]
    struct Session {
        sid: String,
        orig_iat: f64,
    }

    fn component(jwk: &serde_json::Value, name: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD
            .decode(jwk[name].as_str().unwrap_or_default())
            .unwrap_or_default()
    }

    fn options() -> VerificationOptions {
        VerificationOptions {
            allowed_issuers: Some(HashSet::from(["token-sidecar".to_owned()])),
            ..Default::default()
        }
    }

    fn ours_verify_there(alg: &str, jwk: &serde_json::Value, token: &str) {
        let result = match alg {
            "RS256" => RS256PublicKey::from_components(&component(jwk, "n"), &component(jwk, "e"))
                .and_then(|k| k.verify_token::<serde_json::Value>(token, Some(options()))),
            "PS256" => PS256PublicKey::from_components(&component(jwk, "n"), &component(jwk, "e"))
                .and_then(|k| k.verify_token::<serde_json::Value>(token, Some(options()))),
            "ES256" => {
                let mut point = vec![4u8];
                point.extend(component(jwk, "x"));
                point.extend(component(jwk, "y"));
                ES256PublicKey::from_bytes(&point)
                    .and_then(|k| k.verify_token::<serde_json::Value>(token, Some(options())))
            }
            _ => Ed25519PublicKey::from_bytes(&component(jwk, "x"))
                .and_then(|k| k.verify_token::<serde_json::Value>(token, Some(options()))),
        };
        let claims = result.unwrap_or_else(|e| panic!("{alg}: jwt-simple rejected ours: {e}"));
        assert_eq!(claims.subject.as_deref(), Some("alice"), "{alg}");
        assert!(claims.custom.get("sid").is_some(), "{alg}");
    }

    fn theirs(alg: &str, pem: &str, kid: &str, now_s: u64) -> String {
        let claims = Claims::with_custom_claims(
            Session {
                sid: "their-session".into(),
                orig_iat: now_s as f64 + 0.25,
            },
            jwt_simple::prelude::Duration::from_mins(5),
        )
        .with_issuer("token-sidecar")
        .with_subject("bob")
        .with_jwt_id("their-jti");
        let signed = match alg {
            "RS256" => RS256KeyPair::from_pem(pem)
                .map(|k| k.with_key_id(kid))
                .and_then(|k| k.sign(claims)),
            "PS256" => PS256KeyPair::from_pem(pem)
                .map(|k| k.with_key_id(kid))
                .and_then(|k| k.sign(claims)),
            "ES256" => ES256KeyPair::from_pem(pem)
                .map(|k| k.with_key_id(kid))
                .and_then(|k| k.sign(claims)),
            _ => Ed25519KeyPair::from_pem(pem)
                .map(|k| k.with_key_id(kid))
                .and_then(|k| k.sign(claims)),
        };
        signed.unwrap_or_else(|e| panic!("{alg}: jwt-simple could not sign: {e}"))
    }

    #[tokio::test]
    async fn our_tokens_verify_there_from_our_jwks_and_theirs_verify_here() {
        // jwt-simple checks exp against the real clock, so this sidecar runs on real time.
        for (alg, private, _) in [
            ("RS256", "rsa.pem", ""),
            ("PS256", "rsa.pem", ""),
            ("ES256", "p256.pem", ""),
            ("EdDSA", "ed25519.pem", ""),
        ] {
            let now_ms = SystemClock.now_ms();
            let app = Settings::new(Backend::Sqlite)
                .clock(ManualClock::new(now_ms))
                .arg("--key", &key_arg("k1", alg, private))
                .spawn()
                .await;
            let ours = app.issue("alice").await.token;
            let jwks = app.jwks().await;
            let jwk = jwks["keys"]
                .as_array()
                .and_then(|keys| keys.iter().find(|k| k["kid"] == "k1"))
                .cloned()
                .expect("our key in our JWKS");
            ours_verify_there(alg, &jwk, &ours);

            let pem = std::fs::read_to_string(fixture(private)).expect("pem");
            let token = theirs(alg, &pem, "k1", (now_ms / 1000) as u64);
            // jwt-simple stamps nbf with the real time at signing.
            app.clock.set_ms(SystemClock.now_ms());
            let verdict = app.verify(&token).await;
            assert!(verdict.valid, "{alg}: ours rejected theirs: {verdict:?}");
            let claims = verdict.claims.expect("claims");
            assert_eq!(claims.user_id, "bob");
            assert_eq!(claims.session_id, "their-session");
            let orig = claims.original_issued_at.expect("orig_iat");
            assert_eq!(orig.nanos, 250_000_000, "orig_iat keeps its milliseconds");
            let _ = TestApp::shutdown(app).await;
        }
    }
}

/// An RSA key of exactly `bits` bits, made by openssl.
fn openssl_rsa(dir: &Path, bits: u32) -> PathBuf {
    let path = dir.join(format!("rsa{bits}.pem"));
    let status = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt"])
        .arg(format!("rsa_keygen_bits:{bits}"))
        .arg("-out")
        .arg(&path)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(status.success(), "openssl genpkey {bits}");
    path
}

#[tokio::test]
async fn an_rsa_key_is_measured_in_bits_in_every_place_that_reads_one() {
    // 2,041 and 2,047 bits fill 256 bytes like 2,048 does: counted as bytes × 8 they passed.
    crate::require!(PythonJwt);
    let dir = tempfile::tempdir().expect("dir");
    for bits in [2041, 2047, 2048] {
        let pem = openssl_rsa(dir.path(), bits);
        let strong = bits >= 2048;
        // As our signing key.
        let started = Settings::new(Backend::Sqlite)
            .arg("--key", &format!("k=RS256:{}", pem.display()))
            .no_wait()
            .try_spawn()
            .await;
        match started {
            Ok(app) => {
                assert!(strong, "a {bits}-bit --key was accepted");
                app.shutdown().await;
            }
            Err(e) => {
                assert!(!strong, "{bits}: {e}");
                assert!(e.to_string().contains("at least 2048"), "{e}");
            }
        }
        // In a JWKS, made by PyJWT: the Envoy filter's (and our verify-only) reading, and an
        // identity provider's key set.
        let out = std::process::Command::new("python3")
            .arg(fixture("../idp/sign.py"))
            .arg("jwks")
            .arg(format!("k={}", pem.display()))
            .output()
            .expect("sign.py");
        assert!(out.status.success());
        let mut jwks: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JWKS");
        jwks["keys"][0]["alg"] = serde_json::json!("RS256");
        let jwks = jwks.to_string();
        let filter = token_sidecar::token::VerifyingKeys::from_jwks([jwks.as_str()]);
        assert_eq!(filter.is_ok(), strong, "{bits} bits in a JWKS (the filter)");
        let idp = token_sidecar::idp::jwks::KeySet::parse(jwks.as_bytes());
        assert_eq!(
            idp.is_ok(),
            strong,
            "{bits} bits in an identity provider's key set"
        );
    }
}
