//! Verify-only sidecars (Issue 42): an application pod's sidecar holds only public keys. It
//! verifies what the issuing service mints — from a PEM public key or the issuer's published
//! key set (`--issuer-jwks`) — on every surface, Envoy included; it refuses Issue and Refresh
//! (FAILED_PRECONDITION) and the privileged writes (PERMISSION_DENIED) naming the issuer; a
//! holder's Revoke{token} still works and reaches the fleet; a key that can sign is refused.
use std::time::Duration;

use crate::common::{Backend, Settings, TestApp, assert_status, eventually};
use crate::keys::key_arg;
use token_sidecar::api::pb::{self, Reason, revoke_request::Target};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

/// The issuing service: ES256 private key `2026`, its JWKS on the HTTP listener.
async fn issuer(backend: Backend) -> TestApp {
    Settings::new(backend)
        .arg("--key", &key_arg("2026", "ES256", "p256.pem"))
        .arg("--http-listen", "127.0.0.1:0")
        .spawn()
        .await
}

fn jwks_url(issuer: &TestApp) -> String {
    let http = issuer.http_addr.expect("--http-listen");
    format!("http://{http}/.well-known/jwks.json")
}

/// A verify-only sidecar on the issuer's store, reading its keys from `keys`.
fn verifier(issuer: &TestApp, keys: &[(&str, String)]) -> Settings {
    let mut settings = Settings::new(issuer.backend)
        .sharing(issuer)
        .clock(issuer.clock.clone())
        .without_key()
        .flag("--verify-only")
        .arg("--key-reload-interval", "1s");
    for (flag, value) in keys {
        settings = settings.arg(flag, value);
    }
    settings
}

#[tokio::test]
async fn a_verify_only_sidecar_verifies_the_issuers_tokens_and_refuses_to_mint() {
    crate::require!(Postgres);
    let issuer = issuer(Backend::Postgres).await;
    let by_pem = verifier(
        &issuer,
        &[("--key", key_arg("2026", "ES256", "p256.pub.pem"))],
    )
    .spawn()
    .await;
    let by_jwks = verifier(&issuer, &[("--issuer-jwks", jwks_url(&issuer))])
        .spawn()
        .await;
    let minted = issuer.issue("alice").await;
    for verifier in [&by_pem, &by_jwks] {
        let answer = verifier.verify(&minted.token).await;
        assert!(answer.valid, "{answer:?}");
        assert_eq!(answer.claims.expect("claims").user_id, "alice");
        // Publishes the keys it verifies with (what a proxy filter beside it reads).
        let kids: Vec<_> = verifier.jwks().await["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .map(|k| k["kid"].clone())
            .collect();
        assert_eq!(kids, [serde_json::json!("2026")]);

        let refused = verifier
            .issue_with(pb::IssueRequest {
                user_id: "mallory".into(),
                ..Default::default()
            })
            .await
            .expect_err("a verify-only sidecar mints nothing");
        assert_status(&refused, Code::FailedPrecondition, "VERIFY_ONLY");
        assert!(
            refused.message().contains("issuing service")
                && refused.message().contains("token-sidecar"),
            "the refusal names the issuer: {refused:?}"
        );
        let refused = verifier
            .refresh(&minted.token)
            .await
            .expect_err("no refresh");
        assert_status(&refused, Code::FailedPrecondition, "VERIFY_ONLY");
        for target in [
            Target::Jti(minted.jti.clone()),
            Target::User(pb::UserRevocation {
                user_id: "alice".into(),
                until: None,
            }),
        ] {
            let refused = verifier.revoke(target).await.expect_err("privileged");
            assert_status(&refused, Code::PermissionDenied, "VERIFY_ONLY");
        }
        let refused = verifier
            .client
            .clone()
            .lift_ban(pb::LiftBanRequest {
                user_id: "alice".into(),
                ..Default::default()
            })
            .await
            .expect_err("no lifting");
        assert_status(&refused, Code::PermissionDenied, "VERIFY_ONLY");
    }
    assert_eq!(
        issuer.verdict(&minted.token).await,
        Reason::Unspecified,
        "nothing refused was done"
    );

    // The holder revokes its token at a verify-only sidecar: written to the store, so the
    // issuer and the other verifier refuse it too.
    by_pem
        .revoke(Target::Token(minted.token.clone()))
        .await
        .expect("a holder's revoke is open");
    issuer.sync_now().await;
    by_jwks.sync_now().await;
    for app in [&issuer, &by_pem, &by_jwks] {
        assert_eq!(app.verdict(&minted.token).await, Reason::TokenRevoked);
    }
    // And the issuer's revoke-all reaches the verifiers.
    let other = issuer.issue("bob").await;
    issuer.revoke_user("bob", None).await;
    by_pem.sync_now().await;
    by_jwks.sync_now().await;
    assert_eq!(by_pem.verdict(&other.token).await, Reason::UserRevoked);
    assert_eq!(by_jwks.verdict(&other.token).await, Reason::UserRevoked);
}

#[tokio::test]
async fn a_verify_only_sidecar_follows_the_issuers_key_rotation() {
    let dir = tempfile::tempdir().expect("dir");
    let published = dir.path().join("jwks.json");
    let issuer = Settings::new(Backend::Sqlite)
        .arg("--key", &key_arg("2026", "ES256", "p256.pem"))
        .spawn()
        .await;
    // Not read yet: NOT_SERVING, and every token fails as if its key were unknown.
    let verifier = verifier(
        &issuer,
        &[("--issuer-jwks", published.display().to_string())],
    )
    .no_wait()
    .spawn()
    .await;
    verifier.wait_for_health(ServingStatus::NotServing).await;
    std::fs::write(&published, issuer.jwks().await.to_string()).expect("publish");
    verifier.wait_for_health(ServingStatus::Serving).await;
    let before = issuer.issue("alice").await.token;
    assert!(verifier.verify(&before).await.valid);

    // The issuer publishes its next key, then signs with it: the verifier learns the new kid
    // at its next read (a token naming an unknown kid asks for one at once, bounded).
    let rotated = Settings::new(Backend::Sqlite)
        .sharing(&issuer)
        .clock(issuer.clock.clone())
        .arg("--key", &key_arg("2027", "EdDSA", "ed25519.pem"))
        .arg("--key", &key_arg("2026", "ES256", "p256.pub.pem"))
        .spawn()
        .await;
    let after = rotated.issue("alice").await.token;
    assert_eq!(verifier.verdict(&after).await, Reason::BadSignature);
    std::fs::write(&published, rotated.jwks().await.to_string()).expect("publish");
    eventually(Duration::from_secs(10), "the new key is read", || async {
        verifier.verify(&after).await.valid
    })
    .await;
    assert!(
        verifier.verify(&before).await.valid,
        "the old key still verifies"
    );

    // A published set that holds a secret is not taken: the keys held stay.
    std::fs::write(
        &published,
        r#"{"keys":[{"kty":"oct","kid":"hs","alg":"HS256","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"}]}"#,
    )
    .expect("publish a secret");
    let refused = verifier.read_issuer_keys().await.expect_err("a secret");
    assert!(refused.contains("public keys"), "{refused}");
    assert!(verifier.verify(&after).await.valid, "the keys held stay");
}

#[tokio::test]
async fn a_verify_only_sidecar_refuses_keys_that_can_sign() {
    let (private, secret, public) = (
        key_arg("k", "ES256", "p256.pem"),
        key_arg("k", "HS384", "hs384.key"),
        key_arg("k", "ES256", "p256.pub.pem"),
    );
    let cases = [
        (vec!["--verify-only", "--key", &private], "public keys"),
        (vec!["--verify-only", "--key", &secret], "public keys"),
        (vec!["--verify-only"], "--issuer-jwks"),
        (
            vec!["--verify-only", "--key", &public, "--signing-kid", "k"],
            "signs nothing",
        ),
        (
            vec![
                "--issuer-jwks",
                "https://issuer.example/.well-known/jwks.json",
            ],
            "--verify-only",
        ),
    ];
    for (args, expected) in cases {
        let mut settings = Settings::new(Backend::Sqlite).without_key().no_wait();
        settings.args = args.iter().map(|a| a.to_string()).collect();
        let refused = settings.try_spawn().await.err();
        let message = refused.map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains(expected), "{args:?}: {message:?}");
    }
    // Read as the identity providers' key sets are: https://, or http:// to loopback only.
    let parsed = <token_sidecar::config::Config as clap::Parser>::try_parse_from([
        "token-sidecar",
        "--verify-only",
        "--issuer-jwks",
        "http://issuer.example/.well-known/jwks.json",
    ]);
    let message = parsed.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("https://"), "{message}");
}

/// Through Envoy: gRPC ext_authz asks a verify-only sidecar, which admits the issuer's token
/// with the identity headers and refuses it once the issuer revoked it.
#[tokio::test]
async fn envoy_admits_the_issuers_tokens_through_a_verify_only_sidecar() {
    crate::require!(Postgres, Envoy, Nginx, Traefik);
    let issuer = issuer(Backend::Postgres).await;
    let verifier = verifier(&issuer, &[("--issuer-jwks", jwks_url(&issuer))])
        .spawn()
        .await;
    let (app_addr, seen) = crate::proxies::upstream().await;
    let proxy = crate::proxies::start(
        crate::proxies::Proxy::EnvoyGrpc,
        app_addr.port(),
        verifier.addr.port(),
    );
    crate::proxies::wait_ready(&proxy, crate::proxies::Proxy::EnvoyGrpc).await;
    let minted = issuer.issue("alice").await;
    let auth = format!("Bearer {}", minted.token);
    let r = crate::proxies::get(&proxy, &[("authorization", &auth)]).await;
    assert_eq!(r.status, 200, "{r:?}");
    let headers = seen.lock().expect("seen").last().cloned().expect("reached");
    assert_eq!(headers["x-user-id"], ["alice"]);

    issuer
        .revoke(Target::Jti(minted.jti.clone()))
        .await
        .expect("revoke at the issuer");
    verifier.sync_now().await;
    let r = crate::proxies::get(&proxy, &[("authorization", &auth)]).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert!(
        r.header("www-authenticate")
            .is_some_and(|h| h.contains("token has been revoked") || h.contains("invalid_token")),
        "{r:?}"
    );
}
