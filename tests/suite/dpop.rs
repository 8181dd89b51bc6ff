//! Sender-constrained tokens (SPEC §15) over gRPC: Issue binds, Verify and Refresh need the
//! proof, every check of RFC 9449 §4.3 has its refusal, nonces cross instances. Every proof is
//! made by panva's `dpop` (an independent RFC 9449 client, [`crate::common::dpop`]); the
//! sidecar's clock is set to the real time before each proof is judged (the proof's `iat` is the
//! maker's), and moved from there to make proofs stale or early.
use serde_json::json;
use token_sidecar::api::pb;
use token_sidecar::clock::ManualClock;
use tonic::Code;

use crate::common::dpop::{ClientKey, ProofMaker, Target, real_now_ms};
use crate::common::{Backend, Settings, TestApp, assert_status};

const HTU: &str = "https://api.example.com/orders";

async fn sidecar(backend: Backend, args: &[&str]) -> TestApp {
    let mut settings = Settings::new(backend).clock(ManualClock::new(real_now_ms()));
    for pair in args.chunks(2) {
        settings = match pair {
            [flag, value] => settings.arg(flag, value),
            [flag] => settings.flag(flag),
            _ => settings,
        };
    }
    settings.spawn().await
}

async fn issue_bound(app: &TestApp, key: &ClientKey) -> pb::IssueResponse {
    app.issue_with(pb::IssueRequest {
        user_id: "alice".into(),
        dpop_jkt: key.jkt.clone(),
        ..Default::default()
    })
    .await
    .expect("issue a DPoP-bound token")
}

async fn verify(
    app: &TestApp,
    token: &str,
    proof: &str,
    htm: &str,
    htu: &str,
) -> pb::VerifyResponse {
    app.clock.set_ms(real_now_ms());
    app.client
        .clone()
        .verify(pb::VerifyRequest {
            token: token.into(),
            dpop_proof: proof.into(),
            http_method: htm.into(),
            http_uri: htu.into(),
            ..Default::default()
        })
        .await
        .expect("verify answers")
        .into_inner()
}

fn for_token(token: &str) -> Target<'_> {
    Target {
        htm: "GET",
        htu: HTU,
        token: Some(token),
        nonce: None,
    }
}

#[tokio::test]
async fn a_dpop_bound_token_is_valid_only_with_a_fresh_proof_by_its_key() {
    crate::require!(DpopClient);
    let app = sidecar(Backend::Sqlite, &[]).await;
    let mut maker = ProofMaker::start();
    let key = maker.key("ES256");
    let issued = issue_bound(&app, &key).await;
    let token = issued.token.as_str();

    // No proof, or presented as a bare bearer token: refused.
    let bare = app.verify(token).await;
    assert_eq!(bare.reason(), pb::Reason::ProofRequired, "{bare:?}");

    // The proof: valid, with the binding in the claims; the same proof again is a replay.
    let proof = maker.proof(&key, for_token(token));
    let answer = verify(&app, token, &proof, "GET", HTU).await;
    assert!(answer.valid, "{answer:?}");
    assert_eq!(answer.claims.expect("claims").dpop_jkt, key.jkt);
    assert!(
        answer.dpop_nonce.is_empty(),
        "no nonce without --dpop-nonce"
    );
    let again = verify(&app, token, &proof, "GET", HTU).await;
    assert_eq!(again.reason(), pb::Reason::ProofReplayed);

    // The query and fragment are not compared; scheme and host are normalised.
    let proof = maker.proof(&key, for_token(token));
    let answer = verify(
        &app,
        token,
        &proof,
        "GET",
        "HTTPS://API.example.com:443/orders?page=2",
    )
    .await;
    assert!(answer.valid, "{answer:?}");

    // Each check of RFC 9449 §4.3, refused as PROOF_INVALID.
    let wrong = [
        ("another method", "POST", HTU),
        ("another host", "GET", "https://evil.example.com/orders"),
        ("another path", "GET", "https://api.example.com/orders/1"),
        ("another scheme", "GET", "http://api.example.com/orders"),
    ];
    for (what, htm, htu) in wrong {
        let proof = maker.proof(&key, for_token(token));
        let answer = verify(&app, token, &proof, htm, htu).await;
        assert_eq!(
            answer.reason(),
            pb::Reason::ProofInvalid,
            "{what}: {answer:?}"
        );
    }
    let other_key = maker.key("ES256");
    let proof = maker.proof(&other_key, for_token(token));
    let answer = verify(&app, token, &proof, "GET", HTU).await;
    assert_eq!(
        answer.reason(),
        pb::Reason::ProofInvalid,
        "another key: {answer:?}"
    );
    let no_ath = maker.proof(
        &key,
        Target {
            token: None,
            ..for_token(token)
        },
    );
    let answer = verify(&app, token, &no_ath, "GET", HTU).await;
    assert_eq!(
        answer.reason(),
        pb::Reason::ProofInvalid,
        "no ath: {answer:?}"
    );
    let other = app.issue("bob").await;
    let wrong_ath = maker.proof(&key, for_token(&other.token));
    let answer = verify(&app, token, &wrong_ath, "GET", HTU).await;
    assert_eq!(
        answer.reason(),
        pb::Reason::ProofInvalid,
        "another token's ath: {answer:?}"
    );

    let hostile = [
        ("typ JWT", json!({"typ": "JWT"}), json!({}), "key"),
        ("no typ", json!({"typ": null}), json!({}), "key"),
        ("alg none", json!({"alg": "none"}), json!({}), "none"),
        ("HS256", json!({"alg": "HS256"}), json!({}), "hs256"),
        ("a private jwk", json!({"jwk": "private"}), json!({}), "key"),
        ("no jwk", json!({"jwk": null}), json!({}), "key"),
        ("no jti", json!({}), json!({"jti": null}), "key"),
        ("no iat", json!({}), json!({"iat": null}), "key"),
        (
            "a bad signature",
            json!({}),
            json!({"htm": "GET", "extra": 1}),
            "none",
        ),
    ];
    for (what, header, claims, sign) in hostile {
        let proof = maker.forge(&key, for_token(token), header, claims, sign);
        let answer = verify(&app, token, &proof, "GET", HTU).await;
        assert_eq!(
            answer.reason(),
            pb::Reason::ProofInvalid,
            "{what}: {answer:?}"
        );
    }
    for garbage in ["x", "a.b.c", "..", &"A".repeat(9_000)] {
        let answer = verify(&app, token, garbage, "GET", HTU).await;
        assert_eq!(answer.reason(), pb::Reason::ProofInvalid, "{garbage:.20}");
    }

    // `iat` on the fleet clock: older than --dpop-max-age (60 s), or ahead of it.
    let proof = maker.proof(&key, for_token(token));
    app.clock.set_ms(real_now_ms() + 61_000);
    let stale = verify_at(&app, token, &proof).await;
    assert_eq!(stale.reason(), pb::Reason::ProofInvalid, "stale: {stale:?}");
    // (A token minted before the proof, so that only the proof is early.)
    app.clock.set_ms(real_now_ms() - 10_000);
    let earlier = issue_bound(&app, &key).await;
    let proof = maker.proof(&key, for_token(&earlier.token));
    app.clock.set_ms(real_now_ms() - 5_000);
    let early = verify_at(&app, &earlier.token, &proof).await;
    assert_eq!(
        early.reason(),
        pb::Reason::ProofInvalid,
        "from the future: {early:?}"
    );

    // An unbound token needs no proof, and a proof given with it changes nothing.
    let unbound = app.issue("carol").await;
    assert!(app.verify(&unbound.token).await.valid);
    let proof = maker.proof(&key, for_token(&unbound.token));
    assert!(verify(&app, &unbound.token, &proof, "GET", HTU).await.valid);
}

/// Verify at the clock as it is (the caller set it).
async fn verify_at(app: &TestApp, token: &str, proof: &str) -> pb::VerifyResponse {
    app.client
        .clone()
        .verify(pb::VerifyRequest {
            token: token.into(),
            dpop_proof: proof.into(),
            http_method: "GET".into(),
            http_uri: HTU.into(),
            ..Default::default()
        })
        .await
        .expect("verify answers")
        .into_inner()
}

#[tokio::test]
async fn every_key_type_the_client_library_makes_is_checked() {
    crate::require!(DpopClient);
    let app = sidecar(Backend::Sqlite, &[]).await;
    let mut maker = ProofMaker::start();
    for alg in ["ES256", "PS256", "RS256", "Ed25519"] {
        let key = maker.key(alg);
        let issued = issue_bound(&app, &key).await;
        let proof = maker.proof(&key, for_token(&issued.token));
        let answer = verify(&app, &issued.token, &proof, "GET", HTU).await;
        assert!(answer.valid, "{alg}: {answer:?}");
    }
}

#[tokio::test]
async fn issue_refuses_a_thumbprint_that_is_not_one_and_cnf_is_reserved() {
    let app = sidecar(Backend::Sqlite, &[]).await;
    for (field, request) in [
        (
            "dpop_jkt",
            pb::IssueRequest {
                user_id: "alice".into(),
                dpop_jkt: "not-a-thumbprint".into(),
                ..Default::default()
            },
        ),
        (
            "x5t_s256",
            pb::IssueRequest {
                user_id: "alice".into(),
                x5t_s256: "A".repeat(44),
                ..Default::default()
            },
        ),
    ] {
        let e = app.issue_with(request).await.expect_err(field);
        assert_status(&e, Code::InvalidArgument, "INVALID_THUMBPRINT");
    }
    let mut claims = prost_types::Struct::default();
    claims.fields.insert(
        "cnf".into(),
        prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue("x".into())),
        },
    );
    let e = app
        .issue_with(pb::IssueRequest {
            user_id: "alice".into(),
            claims: Some(claims),
            ..Default::default()
        })
        .await
        .expect_err("cnf is reserved");
    assert_status(&e, Code::InvalidArgument, "RESERVED_CLAIM");
}

#[tokio::test]
async fn refresh_of_a_bound_token_needs_its_proof_and_keeps_the_binding() {
    crate::require!(DpopClient);
    let app = sidecar(Backend::Sqlite, &[]).await;
    let mut maker = ProofMaker::start();
    let key = maker.key("ES256");
    let issued = issue_bound(&app, &key).await;
    let refresh = |proof: String| {
        let mut client = app.client.clone();
        let token = issued.token.clone();
        app.clock.set_ms(real_now_ms());
        async move {
            client
                .refresh(pb::RefreshRequest {
                    token,
                    dpop_proof: proof,
                    http_method: "POST".into(),
                    http_uri: "https://auth.example.com/refresh".into(),
                    ..Default::default()
                })
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let target = Target {
        htm: "POST",
        htu: "https://auth.example.com/refresh",
        token: Some(&issued.token),
        nonce: None,
    };
    let e = refresh(String::new()).await.expect_err("no proof");
    assert_status(&e, Code::Unauthenticated, "REASON_PROOF_REQUIRED");
    let other = maker.key("ES256");
    let e = refresh(maker.proof(&other, target))
        .await
        .expect_err("another key");
    assert_status(&e, Code::Unauthenticated, "REASON_PROOF_INVALID");
    let refreshed = refresh(maker.proof(&key, target))
        .await
        .expect("refresh with the proof");

    // The new token is bound to the same key: useless without a proof, valid with one.
    assert_eq!(
        app.verify(&refreshed.token).await.reason(),
        pb::Reason::ProofRequired
    );
    let proof = maker.proof(&key, for_token(&refreshed.token));
    let answer = verify(&app, &refreshed.token, &proof, "GET", HTU).await;
    assert!(answer.valid, "{answer:?}");
    assert_eq!(answer.claims.expect("claims").dpop_jkt, key.jkt);
}

#[tokio::test]
async fn a_nonce_from_one_instance_is_accepted_by_another() {
    crate::require!(Postgres, DpopClient);
    // A long --dpop-max-age: a nonce two steps old is refused for itself, not for its proof.
    let a = sidecar(Backend::Postgres, &["--dpop-nonce", "--dpop-max-age", "5m"]).await;
    let b = Settings::new(Backend::Postgres)
        .sharing(&a)
        .clock(a.clock.clone())
        .flag("--dpop-nonce")
        .arg("--dpop-max-age", "5m")
        .spawn()
        .await;
    let mut maker = ProofMaker::start();
    let key = maker.key("ES256");
    let issued = issue_bound(&a, &key).await;
    let token = issued.token.as_str();

    // Without a nonce: refused, with one to use.
    let proof = maker.proof(&key, for_token(token));
    let answer = verify(&a, token, &proof, "GET", HTU).await;
    assert_eq!(answer.reason(), pb::Reason::NonceRequired, "{answer:?}");
    let nonce = answer.dpop_nonce;
    assert!(!nonce.is_empty());

    // A's nonce at B.
    let with_nonce = Target {
        nonce: Some(&nonce),
        ..for_token(token)
    };
    let proof = maker.proof(&key, with_nonce);
    let answer = verify(&b, token, &proof, "GET", HTU).await;
    assert!(answer.valid, "{answer:?}");
    assert!(
        !answer.dpop_nonce.is_empty(),
        "a fresh nonce on an allowed answer too"
    );

    // Another fleet's nonce, or one two steps old, is no nonce.
    let proof = maker.proof(
        &key,
        Target {
            nonce: Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            ..for_token(token)
        },
    );
    assert_eq!(
        verify(&b, token, &proof, "GET", HTU).await.reason(),
        pb::Reason::NonceRequired
    );
    let proof = maker.proof(&key, with_nonce);
    b.clock.set_ms(real_now_ms() + 61_000);
    let late = verify_at(&b, token, &proof).await;
    assert_eq!(late.reason(), pb::Reason::NonceRequired, "{late:?}");
    assert_ne!(
        late.dpop_nonce, nonce,
        "the refusal carries the new step's nonce"
    );
    // An unbound token is untouched by --dpop-nonce.
    a.clock.set_ms(real_now_ms());
    let unbound = a.issue("dave").await;
    assert!(a.verify(&unbound.token).await.valid);
}
