//! The identity provider revokes for us (issue 30): OIDC back-channel logout tokens shaped like
//! Keycloak's and Shared Signals events, each signed by a sender built from PyJWT
//! (`tests/idp/sign.py`), never from our own code; their effects on Verify across two
//! instances; every refusal answered as the specs say with nothing stored; the audit trail.
//! The real OpenID Provider (panva's `oidc-provider`) is in [`provider`].
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use token_sidecar::api::pb;
use token_sidecar::clock::Clock;

use crate::common::{
    Backend, DAY, HttpResponse, SEC, Settings, TestApp, assert_status, http_request,
};

mod access_tokens;
mod provider;
mod through_envoy;
mod trust;

const ISSUER: &str = "https://keycloak.test/realms/app";
const CLIENT_ID: &str = "token-app";
/// The same provider as the OpenID Provider: one issuer, so no subject prefix is needed (the
/// prefixes of several are tested in `several_providers_each_name_their_own_users`).
const TRANSMITTER: &str = ISSUER;
const AUDIENCE: &str = "https://sidecar.test/ssf";
const LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
const CAEP: &str = "https://schemas.openid.net/secevent/caep/event-type/";
const RISC: &str = "https://schemas.openid.net/secevent/risc/event-type/";

fn fixture(name: &str) -> String {
    format!("{}/tests/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn sign_py(args: &[&str], stdin: Option<&Value>) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("python3")
        .arg(fixture("idp/sign.py"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("python3 runs tests/idp/sign.py (pip install 'pyjwt[crypto]')");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(spec) = stdin {
        input
            .write_all(spec.to_string().as_bytes())
            .expect("write spec");
    }
    drop(input);
    let out = child.wait_with_output().expect("sign.py");
    assert!(out.status.success(), "sign.py failed");
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

/// A JWKS file holding the public halves of `keys` (kid, PEM fixture).
fn write_jwks(path: &Path, keys: &[(&str, &str)]) {
    let args: Vec<String> = keys
        .iter()
        .map(|(kid, pem)| format!("{kid}={}", fixture(&format!("keys/{pem}"))))
        .collect();
    let mut argv = vec!["jwks"];
    argv.extend(args.iter().map(String::as_str));
    std::fs::write(path, sign_py(&argv, None)).expect("write jwks");
}

/// A JWS signed by PyJWT: RS256 with `rsa.pem` (kid k1) unless `alg`/`pem`/`kid` say otherwise.
fn sign(alg: &str, pem: Option<&str>, headers: Value, claims: &Value) -> String {
    let spec = json!({
        "alg": alg,
        "key": pem.map(|p| fixture(&format!("keys/{p}"))),
        "headers": headers,
        "claims": claims,
    });
    sign_py(&["token"], Some(&spec))
}

fn rs256(typ: &str, claims: &Value) -> String {
    sign(
        "RS256",
        Some("rsa.pem"),
        json!({"kid": "k1", "typ": typ}),
        claims,
    )
}

fn next_jti() -> String {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    format!(
        "event-{}",
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// Claims of a logout token as Keycloak sends it.
fn keycloak_logout(now_s: i64, sid: Option<&str>, sub: Option<&str>) -> Value {
    let mut claims = json!({
        "iss": ISSUER, "aud": CLIENT_ID, "iat": now_s, "exp": now_s + 120,
        "jti": next_jti(), "typ": "Logout",
        "events": { LOGOUT_EVENT: { "revoke_offline_access": true } },
    });
    if let Some(sid) = sid {
        claims["sid"] = json!(sid);
    }
    if let Some(sub) = sub {
        claims["sub"] = json!(sub);
    }
    claims
}

/// Claims of a SET about `subject` carrying one event.
fn set(now_s: i64, event_type: &str, subject: Value) -> Value {
    json!({
        "iss": TRANSMITTER, "aud": AUDIENCE, "iat": now_s, "jti": next_jti(),
        "sub_id": subject,
        "events": { event_type: {} },
    })
}

fn user_subject(user: &str) -> Value {
    json!({"format": "iss_sub", "iss": TRANSMITTER, "sub": user})
}

/// Sidecars that trust the test provider (its keys in `jwks`) for both receivers.
fn receiving(backend: Backend, jwks: &Path) -> Settings {
    Settings::new(backend)
        .arg("--http-listen", "127.0.0.1:0")
        .arg("--oidc-issuer", &format!("{ISSUER}={}", jwks.display()))
        .arg("--oidc-client-id", CLIENT_ID)
        .arg(
            "--ssf-transmitter",
            &format!("{TRANSMITTER}={}", jwks.display()),
        )
        .arg("--ssf-audience", AUDIENCE)
}

async fn two_receivers(backend: Backend) -> (TestApp, TestApp, PathBuf) {
    let dir = tempfile::tempdir().expect("dir").keep();
    let jwks = dir.join("jwks.json");
    write_jwks(&jwks, &[("k1", "rsa.pem")]);
    let a = receiving(backend, &jwks).spawn().await;
    let b = receiving(backend, &jwks)
        .sharing(&a)
        .clock(a.clock.clone())
        .spawn()
        .await;
    (a, b, jwks)
}

async fn logout(app: &TestApp, token: &str) -> HttpResponse {
    let body = format!("logout_token={token}");
    http_request(
        app.http_addr.expect("http listener"),
        "POST",
        "/oidc/backchannel-logout",
        &[],
        Some(("application/x-www-form-urlencoded", &body)),
    )
    .await
    .expect("the back-channel logout route answers")
}

async fn push(app: &TestApp, set: &str) -> HttpResponse {
    http_request(
        app.http_addr.expect("http listener"),
        "POST",
        "/ssf/events",
        &[],
        Some(("application/secevent+jwt", set)),
    )
    .await
    .expect("the SSF route answers")
}

async fn issue_for(app: &TestApp, user: &str, idp_session: &str) -> Result<String, tonic::Status> {
    app.client
        .clone()
        .issue(pb::IssueRequest {
            user_id: user.into(),
            idp_session_id: idp_session.into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().token)
}

async fn changes(
    app: &TestApp,
    user: &str,
    page_size: i32,
    page_token: &str,
) -> pb::ListChangesResponse {
    app.client
        .clone()
        .list_changes(pb::ListChangesRequest {
            user_id: user.into(),
            page_size,
            page_token: page_token.into(),
        })
        .await
        .expect("list changes")
        .into_inner()
}

fn now_s(app: &TestApp) -> i64 {
    app.clock.now_ms() / 1000
}

#[tokio::test]
async fn a_keycloak_logout_ends_the_idp_session_everywhere_and_a_sub_ends_them_all() {
    crate::require!(Postgres, PythonJwt);
    let (a, b, _) = two_receivers(Backend::Postgres).await;
    let in_session = issue_for(&a, "alice", "kc-session-1").await.expect("issue");
    let refreshed = a.refresh(&in_session).await.expect("refresh").token;
    let other_session = issue_for(&a, "alice", "kc-session-2").await.expect("issue");
    let plain = issue_for(&b, "alice", "").await.expect("issue");
    for token in [&in_session, &refreshed, &other_session, &plain] {
        assert_eq!(b.verdict(token).await, pb::Reason::Unspecified);
    }

    // Keycloak's current shape: typ logout+jwt, a typ claim, exp, revoke_offline_access.
    let token = rs256(
        "logout+jwt",
        &keycloak_logout(now_s(&a), Some("kc-session-1"), Some("alice")),
    );
    let answer = logout(&a, &token).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.header("cache-control").as_deref(), Some("no-store"));
    b.sync_now().await;
    for app in [&a, &b] {
        assert_eq!(app.verdict(&in_session).await, pb::Reason::TokenRevoked);
        assert_eq!(
            app.verdict(&refreshed).await,
            pb::Reason::TokenRevoked,
            "refreshed from it"
        );
        assert_eq!(app.verdict(&other_session).await, pb::Reason::Unspecified);
        assert_eq!(app.verdict(&plain).await, pb::Reason::Unspecified);
    }
    let ended = issue_for(&b, "alice", "kc-session-1")
        .await
        .expect_err("ended");
    assert_status(&ended, tonic::Code::PermissionDenied, "IDP_SESSION_ENDED");

    // An older Keycloak: typ JWT, and only a sub: the user is logged out everywhere.
    a.clock.advance_ms(SEC);
    let token = rs256("JWT", &keycloak_logout(now_s(&a), None, Some("alice")));
    assert_eq!(logout(&b, &token).await.status, 200);
    a.sync_now().await;
    for app in [&a, &b] {
        assert_eq!(app.verdict(&other_session).await, pb::Reason::UserRevoked);
        assert_eq!(app.verdict(&plain).await, pb::Reason::UserRevoked);
    }
    let fresh = issue_for(&a, "alice", "kc-session-3")
        .await
        .expect("a new login works");
    assert_eq!(b.verdict(&fresh).await, pb::Reason::Unspecified);

    let trail = changes(&a, "alice", 0, "").await.changes;
    let who = format!("backchannel:{ISSUER}");
    assert_eq!(trail.len(), 2, "{trail:?}");
    assert_eq!(trail[0].kind, "REVOKE_USER");
    assert_eq!(trail[1].kind, "REVOKE_IDP_SESSION");
    assert_eq!(trail[1].target, "kc-session-1");
    for change in &trail {
        assert_eq!(change.who, who);
        assert_eq!(change.why, LOGOUT_EVENT);
    }
}

#[tokio::test]
async fn every_refused_logout_token_is_answered_400_and_stores_nothing() {
    crate::require!(Postgres, PythonJwt);
    let (a, _b, _) = two_receivers(Backend::Postgres).await;
    let token = issue_for(&a, "bob", "kc-bob").await.expect("issue");
    let now = now_s(&a);
    let good = keycloak_logout(now, Some("kc-bob"), Some("bob"));
    let with = |change: &dyn Fn(&mut Value)| {
        let mut claims = good.clone();
        claims["jti"] = json!(next_jti());
        change(&mut claims);
        claims
    };
    let refused = [
        (
            "wrong aud",
            rs256("logout+jwt", &with(&|c| c["aud"] = json!("someone-else"))),
        ),
        (
            "wrong iss",
            rs256(
                "logout+jwt",
                &with(&|c| c["iss"] = json!("https://evil.test")),
            ),
        ),
        (
            "stale iat",
            rs256(
                "logout+jwt",
                &with(&|c| {
                    c["iat"] = json!(now - 3600);
                    c["exp"] = json!(now + 3600);
                }),
            ),
        ),
        (
            "iat from the future",
            rs256("logout+jwt", &with(&|c| c["iat"] = json!(now + 3600))),
        ),
        (
            "expired",
            rs256("logout+jwt", &with(&|c| c["exp"] = json!(now - 300))),
        ),
        (
            "a nonce (an ID token)",
            rs256("logout+jwt", &with(&|c| c["nonce"] = json!("n"))),
        ),
        (
            "no logout event",
            rs256("logout+jwt", &with(&|c| c["events"] = json!({"x": {}}))),
        ),
        (
            "neither sid nor sub",
            rs256(
                "logout+jwt",
                &with(&|c| {
                    if let Some(o) = c.as_object_mut() {
                        o.remove("sid");
                        o.remove("sub");
                    }
                }),
            ),
        ),
        (
            "no jti",
            rs256(
                "logout+jwt",
                &with(&|c| {
                    c.as_object_mut().map(|o| o.remove("jti"));
                }),
            ),
        ),
        (
            "alg none",
            sign("none", None, json!({"kid": "k1"}), &with(&|_| ())),
        ),
        (
            "HS256",
            sign(
                "HS256",
                Some("hs384.key"),
                json!({"kid": "k1"}),
                &with(&|_| ()),
            ),
        ),
        (
            // Issued before the key set was read: the kid is known to be absent (final; a
            // token issued since is answered 503 until a read settles it).
            "unknown kid",
            sign(
                "ES256",
                Some("p256.pem"),
                json!({"kid": "k9"}),
                &with(&|c| c["iat"] = json!(now - 5)),
            ),
        ),
        (
            "another key under k1",
            sign(
                "ES256",
                Some("p256.pem"),
                json!({"kid": "k1"}),
                &with(&|_| ()),
            ),
        ),
        ("a SET's typ", rs256("secevent+jwt", &with(&|_| ()))),
        ("garbage", "not.a.jwt".to_owned()),
    ];
    for (what, token) in &refused {
        let answer = logout(&a, token).await;
        assert_eq!(answer.status, 400, "{what}: {answer:?}");
        let body: Value = serde_json::from_str(&answer.body).expect("a JSON error");
        assert_eq!(body["error"], "invalid_request", "{what}");
        assert!(body["error_description"].is_string(), "{what}");
        assert!(
            !answer.body.contains(token.as_str()),
            "{what}: never echoes the token"
        );
    }
    // Malformed requests: no form, a huge body, a repeated parameter.
    let addr = a.http_addr.expect("http");
    let json_body = http_request(
        addr,
        "POST",
        "/oidc/backchannel-logout",
        &[],
        Some(("application/json", "{}")),
    )
    .await
    .expect("answer");
    assert_eq!(json_body.status, 400);
    let huge = format!("logout_token={}", "a".repeat(64 * 1024));
    let huge = http_request(
        addr,
        "POST",
        "/oidc/backchannel-logout",
        &[],
        Some(("application/x-www-form-urlencoded", &huge)),
    )
    .await
    .expect("answer");
    assert_eq!(huge.status, 400);
    let good_token = rs256("logout+jwt", &with(&|_| ()));
    let twice = format!("logout_token={good_token}&logout_token={good_token}");
    let twice = http_request(
        addr,
        "POST",
        "/oidc/backchannel-logout",
        &[],
        Some(("application/x-www-form-urlencoded", &twice)),
    )
    .await
    .expect("answer");
    assert_eq!(twice.status, 400);

    assert_eq!(a.count_rows("denylist").await, 0, "nothing stored");
    assert_eq!(a.count_rows("audit_log").await, 0);
    assert_eq!(a.verdict(&token).await, pb::Reason::Unspecified);

    // The good one works once; its replay is refused (on the other instance too).
    assert_eq!(logout(&a, &good_token).await.status, 200);
    assert_eq!(a.verdict(&token).await, pb::Reason::TokenRevoked);
    for app in [&a, &_b] {
        let replay = logout(app, &good_token).await;
        assert_eq!(replay.status, 400, "{replay:?}");
        assert!(replay.body.contains("replayed"), "{}", replay.body);
    }
    assert_eq!(a.count_rows("audit_log").await, 1);
    let metrics = crate::common::http_get(a.metrics_addr, "/metrics").await.1;
    assert!(
        metrics
            .contains(r#"method="backchannel_logout",result="invalid_argument",reason="REPLAYED""#),
        "{metrics}"
    );
}

#[tokio::test]
async fn security_events_revoke_ban_and_lift_on_every_instance() {
    crate::require!(Postgres, PythonJwt);
    let (a, b, _) = two_receivers(Backend::Postgres).await;
    let now = now_s(&a);
    let send = |claims: Value| rs256("secevent+jwt", &claims);

    // CAEP session-revoked with a complex subject: exactly that IdP session.
    let s1 = issue_for(&a, "carol", "idp-s1").await.expect("issue");
    let s2 = issue_for(&a, "carol", "idp-s2").await.expect("issue");
    let subject = json!({"format": "complex",
        "user": {"format": "iss_sub", "iss": TRANSMITTER, "sub": "carol"},
        "session": {"format": "opaque", "id": "idp-s1"}});
    let answer = push(
        &a,
        &send(set(now, &format!("{CAEP}session-revoked"), subject)),
    )
    .await;
    assert_eq!(answer.status, 202, "{answer:?}");
    b.sync_now().await;
    assert_eq!(b.verdict(&s1).await, pb::Reason::TokenRevoked);
    assert_eq!(b.verdict(&s2).await, pb::Reason::Unspecified);

    // CAEP credential-change: all of the user's tokens.
    a.clock.advance_ms(SEC);
    let answer = push(
        &b,
        &send(set(
            now,
            &format!("{CAEP}credential-change"),
            user_subject("carol"),
        )),
    )
    .await;
    assert_eq!(answer.status, 202, "{answer:?}");
    a.sync_now().await;
    assert_eq!(a.verdict(&s2).await, pb::Reason::UserRevoked);

    // RISC account-disabled: banned until account-enabled, on both instances.
    let dave = issue_for(&a, "dave", "").await.expect("issue");
    let answer = push(
        &a,
        &send(set(
            now,
            &format!("{RISC}account-disabled"),
            json!({"format": "opaque", "id": "dave"}),
        )),
    )
    .await;
    assert_eq!(answer.status, 202, "{answer:?}");
    b.sync_now().await;
    for app in [&a, &b] {
        assert_eq!(app.verdict(&dave).await, pb::Reason::UserBanned);
        let refused = issue_for(app, "dave", "").await.expect_err("banned");
        assert_status(
            &refused,
            tonic::Code::PermissionDenied,
            "REASON_USER_BANNED",
        );
    }
    a.clock.advance_ms(30 * DAY);
    let still = issue_for(&b, "dave", "")
        .await
        .expect_err("a month later, still banned");
    assert_status(&still, tonic::Code::PermissionDenied, "REASON_USER_BANNED");
    let later = now_s(&a);
    let answer = push(
        &b,
        &send(set(
            later,
            &format!("{RISC}account-enabled"),
            json!({"format": "opaque", "id": "dave"}),
        )),
    )
    .await;
    assert_eq!(answer.status, 202, "{answer:?}");
    a.sync_now().await;
    let back = issue_for(&a, "dave", "").await.expect("enabled again");
    assert_eq!(b.verdict(&back).await, pb::Reason::Unspecified);
    assert_eq!(a.verdict(&dave).await, pb::Reason::Expired);

    // RISC account-purged: everything of the user.
    a.clock.advance_ms(SEC);
    let later = now_s(&a);
    let answer = push(
        &a,
        &send(set(
            later,
            &format!("{RISC}account-purged"),
            json!({"format": "opaque", "id": "dave"}),
        )),
    )
    .await;
    assert_eq!(answer.status, 202);
    b.sync_now().await;
    assert_eq!(b.verdict(&back).await, pb::Reason::UserRevoked);

    // The stream's verification event and unknown events: accepted, ignored, counted.
    let verification = json!({"iss": TRANSMITTER, "aud": AUDIENCE, "iat": later, "jti": next_jti(),
        "events": {"https://schemas.openid.net/secevent/ssf/event-type/verification": {"state": "abc"}}});
    assert_eq!(push(&a, &send(verification)).await.status, 202);
    let unknown = set(
        later,
        &format!("{CAEP}token-claims-change"),
        user_subject("dave"),
    );
    assert_eq!(push(&a, &send(unknown)).await.status, 202);
    let metrics = crate::common::http_get(a.metrics_addr, "/metrics").await.1;
    assert_eq!(
        crate::common::metric_value(
            &metrics,
            "token_sidecar_idp_events_ignored_total{why=\"event_type\"}"
        ),
        Some(2.0),
        "{metrics}"
    );

    let trail = changes(&a, "", 0, "").await.changes;
    let kinds: Vec<&str> = trail.iter().map(|c| c.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "REVOKE_USER",
            "LIFT_BAN",
            "BAN_USER",
            "REVOKE_USER",
            "REVOKE_IDP_SESSION"
        ]
    );
    assert!(trail.iter().all(|c| c.who == format!("ssf:{TRANSMITTER}")));
    assert_eq!(trail[2].why, format!("{RISC}account-disabled"));
}

#[tokio::test]
async fn refused_security_events_get_rfc8935_errors_and_an_unknown_kid_refetches_the_keys() {
    crate::require!(Postgres, PythonJwt);
    let (a, _b, jwks) = two_receivers(Backend::Postgres).await;
    let token = issue_for(&a, "erin", "").await.expect("issue");
    let now = now_s(&a);
    let event = format!("{CAEP}credential-change");
    let claims = || set(now, &event, user_subject("erin"));
    let with = |change: &dyn Fn(&mut Value)| {
        let mut c = claims();
        change(&mut c);
        c
    };
    let cases = [
        (
            "wrong aud",
            rs256(
                "secevent+jwt",
                &with(&|c| c["aud"] = json!("https://other")),
            ),
            "invalid_audience",
        ),
        (
            "wrong iss",
            rs256(
                "secevent+jwt",
                &with(&|c| c["iss"] = json!("https://evil.test")),
            ),
            "invalid_issuer",
        ),
        (
            "stale iat",
            rs256("secevent+jwt", &with(&|c| c["iat"] = json!(now - 3600))),
            "invalid_request",
        ),
        (
            "alg none",
            sign("none", None, json!({"typ": "secevent+jwt"}), &claims()),
            "invalid_request",
        ),
        (
            // Issued before the key set was last read: the kid is known to be absent (final).
            "unknown kid",
            sign(
                "ES256",
                Some("p256.pem"),
                json!({"kid": "k2", "typ": "secevent+jwt"}),
                &with(&|c| c["iat"] = json!(now - 5)),
            ),
            "invalid_key",
        ),
        (
            "a logout token's typ",
            rs256("logout+jwt", &claims()),
            "invalid_request",
        ),
        (
            "email subject, not mapped",
            rs256(
                "secevent+jwt",
                &with(&|c| c["sub_id"] = json!({"format": "email", "email": "erin@example.com"})),
            ),
            "invalid_request",
        ),
        (
            "no events",
            rs256("secevent+jwt", &with(&|c| c["events"] = json!({}))),
            "invalid_request",
        ),
    ];
    for (what, set, err) in &cases {
        let answer = push(&a, set).await;
        assert_eq!(answer.status, 400, "{what}: {answer:?}");
        let body: Value = serde_json::from_str(&answer.body).expect("a JSON error");
        assert_eq!(body["err"], *err, "{what}: {body}");
        assert!(body["description"].is_string(), "{what}");
    }
    let addr = a.http_addr.expect("http");
    let wrong_type = http_request(
        addr,
        "POST",
        "/ssf/events",
        &[],
        Some(("application/jwt", &cases[0].1)),
    )
    .await
    .expect("answer");
    assert_eq!(wrong_type.status, 400);
    let oversized = http_request(
        addr,
        "POST",
        "/ssf/events",
        &[],
        Some(("application/secevent+jwt", &"a".repeat(64 * 1024))),
    )
    .await
    .expect("answer");
    assert_eq!(oversized.status, 400);
    assert_eq!(a.count_rows("user_cutoffs").await, 0, "nothing stored");
    assert_eq!(a.count_rows("audit_log").await, 0);

    // The transmitter rotates to a new key: a SET under the unknown kid makes the sidecar read
    // the key set again once a read is allowed (one per second per provider, whoever asks);
    // until then the answer is 503 with Retry-After — never a final 400 — and the retry works.
    write_jwks(&jwks, &[("k1", "rsa.pem"), ("k2", "p256.pem")]);
    let rotated = sign(
        "ES256",
        Some("p256.pem"),
        json!({"kid": "k2", "typ": "secevent+jwt"}),
        &claims(),
    );
    let mut answer = push(&a, &rotated).await;
    if answer.status == 503 {
        let wait: i64 = answer
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .expect("a 503 says when to retry");
        a.clock.advance_ms(wait * SEC);
        answer = push(&a, &rotated).await;
    }
    assert_eq!(answer.status, 202, "{answer:?}");
    assert_eq!(a.verdict(&token).await, pb::Reason::UserRevoked);
    let replayed = push(&a, &rotated).await;
    assert_eq!(replayed.status, 400);
    let body: Value = serde_json::from_str(&replayed.body).expect("json");
    assert_eq!(body["err"], "invalid_request");
    assert_eq!(a.count_rows("audit_log").await, 1);
}

#[tokio::test]
async fn the_audit_trail_says_who_and_why_pages_newest_first_and_outlives_the_denylist() {
    let dir = tempfile::tempdir().expect("dir");
    let admin = dir.path().join("admin");
    std::fs::write(&admin, "an-admin-credential-long-enough").expect("write");
    std::fs::set_permissions(&admin, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let app = Settings::new(Backend::Sqlite)
        .arg("--admin-token-file", &admin.display().to_string())
        .arg("--audit-retention", "30d")
        .spawn()
        .await;
    let issued = app
        .client
        .clone()
        .issue(authed(pb::IssueRequest {
            user_id: "frank".into(),
            ..Default::default()
        }))
        .await
        .expect("issue")
        .into_inner();
    // The holder revokes its own token's session (no credential): who is `token-holder`.
    app.client
        .clone()
        .revoke(pb::RevokeRequest {
            target: Some(pb::revoke_request::Target::Token(issued.token.clone())),
            reason: "signed out on the phone".into(),
        })
        .await
        .expect("revoke own token");
    // An admin bans, then lifts, with reasons.
    let ban_until = app.clock.now_ms() + DAY;
    app.client
        .clone()
        .revoke(authed(pb::RevokeRequest {
            target: Some(pb::revoke_request::Target::User(pb::UserRevocation {
                user_id: "frank".into(),
                until: Some(token_sidecar::api::convert::timestamp(ban_until)),
            })),
            reason: "ticket SEC-1234: account compromised".into(),
        }))
        .await
        .expect("ban");
    app.client
        .clone()
        .lift_ban(authed(pb::LiftBanRequest {
            user_id: "frank".into(),
            reason: "password reset done".into(),
        }))
        .await
        .expect("lift");
    // Refresh reuse detection revokes a session by itself.
    let second = app
        .client
        .clone()
        .issue(authed(pb::IssueRequest {
            user_id: "frank".into(),
            ..Default::default()
        }))
        .await
        .expect("issue")
        .into_inner();
    app.refresh(&second.token).await.expect("first refresh");
    app.clock.advance_ms(60 * SEC);
    let reused = app.refresh(&second.token).await.expect_err("reuse");
    assert_status(
        &reused,
        tonic::Code::Unauthenticated,
        "REASON_REFRESH_REUSED",
    );

    // A reason is bounded.
    let long = app
        .client
        .clone()
        .lift_ban(authed(pb::LiftBanRequest {
            user_id: "frank".into(),
            reason: "x".repeat(513),
        }))
        .await
        .expect_err("too long");
    assert_status(&long, tonic::Code::InvalidArgument, "INVALID_REASON");
    // ListChanges is privileged.
    let refused = app
        .client
        .clone()
        .list_changes(pb::ListChangesRequest::default())
        .await
        .expect_err("needs the credential");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    let page = |token: String| {
        let mut client = app.client.clone();
        async move {
            client
                .list_changes(authed(pb::ListChangesRequest {
                    user_id: "frank".into(),
                    page_size: 2,
                    page_token: token,
                }))
                .await
                .expect("list")
                .into_inner()
        }
    };
    let first = page(String::new()).await;
    assert_eq!(first.changes.len(), 2);
    assert!(!first.next_page_token.is_empty());
    let second_page = page(first.next_page_token.clone()).await;
    assert_eq!(second_page.changes.len(), 2);
    let rest = page(second_page.next_page_token.clone()).await;
    assert!(
        rest.changes.is_empty() && rest.next_page_token.is_empty(),
        "{rest:?}"
    );
    let all: Vec<_> = first.changes.iter().chain(&second_page.changes).collect();
    let summary: Vec<(&str, &str, &str)> = all
        .iter()
        .map(|c| (c.kind.as_str(), c.who.as_str(), c.why.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            (
                "REVOKE_SESSION",
                "reuse-detection",
                "an older token of the session was refreshed again"
            ),
            ("LIFT_BAN", "admin", "password reset done"),
            ("BAN_USER", "admin", "ticket SEC-1234: account compromised"),
            ("REVOKE_SESSION", "token-holder", "signed out on the phone"),
        ]
    );
    assert_eq!(
        all[2].until,
        Some(token_sidecar::api::convert::timestamp(ban_until))
    );
    assert_eq!(all[3].target, issued.session_id);
    let at = |c: &pb::Change| c.at.map(|t| (t.seconds, t.nanos));
    assert!(all.windows(2).all(|w| at(w[0]) >= at(w[1])), "newest first");
    let bad_token = app
        .client
        .clone()
        .list_changes(authed(pb::ListChangesRequest {
            page_token: "not-a-token".into(),
            ..Default::default()
        }))
        .await
        .expect_err("bad page token");
    assert_status(
        &bad_token,
        tonic::Code::InvalidArgument,
        "INVALID_PAGE_TOKEN",
    );

    // Past the refresh window the denylist rows go; the trail stays until its retention.
    app.clock.advance_ms(8 * DAY);
    app.purge_now().await;
    assert_eq!(app.count_rows("denylist").await, 0);
    assert_eq!(app.count_rows("audit_log").await, 4);
    app.clock.advance_ms(30 * DAY);
    app.purge_now().await;
    assert_eq!(app.count_rows("audit_log").await, 0);
}

/// A request with the admin credential of the audit test.
fn authed<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        "Bearer an-admin-credential-long-enough"
            .parse()
            .expect("header"),
    );
    request
}

#[tokio::test]
async fn receivers_need_the_http_listener_and_an_audience() {
    use clap::Parser;
    let jwks = format!("{ISSUER}={}", fixture("idp/none.json"));
    let missing_audience = token_sidecar::config::Config::try_parse_from([
        "token-sidecar",
        "--http-listen",
        "127.0.0.1:0",
        "--oidc-issuer",
        &jwks,
    ]);
    assert!(
        missing_audience.is_err(),
        "--oidc-issuer requires --oidc-client-id"
    );
    let no_http = Settings::new(Backend::Sqlite)
        .arg("--oidc-issuer", &jwks)
        .arg("--oidc-client-id", CLIENT_ID)
        .try_spawn()
        .await;
    let Err(error) = no_http else {
        panic!("started without an HTTP listener")
    };
    assert!(error.to_string().contains("--http-listen"), "{error}");
}

/// The JWKS URL path end to end with the built binary: fetched over HTTPS from a server whose
/// certificate the trust store (`SSL_CERT_FILE`) vouches for; with another trust store the keys
/// cannot be had and the provider is told to retry (503), nothing decided.
#[tokio::test]
async fn key_sets_are_fetched_over_https_from_a_trusted_server_only() {
    crate::require!(PythonJwt);
    let dir = tempfile::tempdir().expect("dir");
    write_jwks(&dir.path().join("jwks.json"), &[("k1", "rsa.pem")]);
    let port = crate::common::free_port();
    let _server = crate::common::https_file_server(dir.path(), port);
    let issuer = format!("https://localhost:{port}/realms/app");
    let source = format!("{issuer}=https://localhost:{port}/jwks.json");
    let sidecar = |ca: &str| {
        let http = crate::common::free_port();
        let env = [
            ("SSL_CERT_FILE", fixture(&format!("keys/tls/{ca}"))),
            ("TOKEN_SIDECAR_HTTP_LISTEN", format!("127.0.0.1:{http}")),
            ("TOKEN_SIDECAR_OIDC_ISSUERS", source.clone()),
            ("TOKEN_SIDECAR_OIDC_CLIENT_ID", CLIENT_ID.to_owned()),
        ];
        let home = tempfile::tempdir().expect("dir");
        async move {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let process = crate::common::SidecarProcess::start(home.path(), &env).await;
            (process, http, home)
        }
    };
    let logout_at = |http: u16, retry_unavailable: bool| {
        let now = token_sidecar::clock::wall_ms() / 1000;
        let mut claims = keycloak_logout(now, None, Some("grace"));
        claims["iss"] = json!(issuer);
        let token = rs256("logout+jwt", &claims);
        async move {
            let body = format!("logout_token={token}");
            // The server may need a moment to listen: retried, bounded.
            let mut answer = None;
            for _ in 0..50 {
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], http));
                match http_request(
                    addr,
                    "POST",
                    "/oidc/backchannel-logout",
                    &[],
                    Some(("application/x-www-form-urlencoded", &body)),
                )
                .await
                {
                    Ok(r) if r.status == 503 && retry_unavailable => {
                        answer = Some(r);
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                    Ok(r) => return r,
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
                }
            }
            answer.expect("an answer")
        }
    };
    let (trusted, http, _home) = sidecar("ca.pem").await;
    // Until the Python server listens the keys cannot be had either: 503, retried.
    let answer = logout_at(http, true).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    drop(trusted);
    let (mut untrusting, http, _home2) = sidecar("rogue-ca.pem").await;
    let answer = logout_at(http, false).await;
    assert_eq!(answer.status, 503, "{answer:?}");
    assert_eq!(answer.header("retry-after").as_deref(), Some("1"));
    untrusting
        .wait_for_line(
            "key set could not be read",
            std::time::Duration::from_secs(5),
        )
        .await;
    drop(untrusting);
}

/// The guide's "Your identity provider revokes for you" walkthrough, block by block, against a
/// sidecar started with the flags it shows (on the real clock: the block stamps `date +%s`).
#[tokio::test]
async fn the_readme_identity_provider_walkthrough_runs() {
    crate::require!(Grpcurl, PythonJwt);
    use crate::readme::{Marker, run_block, shell_blocks};
    const TEST: &str = "the_readme_identity_provider_walkthrough_runs";
    let root = env!("CARGO_MANIFEST_DIR");
    let doc = std::fs::read_to_string(format!("{root}/docs/guide.md")).expect("the guide");
    let dir = tempfile::tempdir().expect("dir");
    for linked in ["proto", "tests"] {
        std::os::unix::fs::symlink(format!("{root}/{linked}"), dir.path().join(linked))
            .expect("link");
    }
    let jwks = dir.path().join("idp-jwks.json");
    let app = Settings::new(Backend::Sqlite)
        .clock(token_sidecar::clock::ManualClock::new(
            token_sidecar::clock::wall_ms(),
        ))
        .arg("--http-listen", "127.0.0.1:0")
        .arg(
            "--oidc-issuer",
            &format!("https://idp.example.com/realms/app={}", jwks.display()),
        )
        .arg("--oidc-client-id", "token-app")
        .spawn()
        .await;
    let path = std::env::var("PATH").unwrap_or_default();
    let mut ran = 0;
    for block in shell_blocks(&doc) {
        if matches!(&block.marker, Marker::RunBy(test) if test == TEST) {
            run_block(
                &block,
                &format!("docs/guide.md:{}", block.line),
                dir.path(),
                &path,
                Some(&app),
            )
            .await;
            ran += 1;
        }
    }
    assert_eq!(ran, 2, "the guide's walkthrough has two blocks run here");
}

/// `check-config` reads every identity provider's key set once and says what the receivers will
/// use — or which issuer's keys cannot be used.
#[tokio::test]
async fn check_config_reads_the_identity_providers_key_sets() {
    crate::require!(PythonJwt);
    let dir = tempfile::tempdir().expect("dir");
    let jwks = dir.path().join("jwks.json");
    write_jwks(&jwks, &[("k1", "rsa.pem"), ("k2", "p256.pem")]);
    let db = format!("sqlite:{}", dir.path().join("c.db").display());
    let run = |source: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_token-sidecar"))
            .args([
                "check-config",
                "--database-url",
                &db,
                "--http-listen",
                "127.0.0.1:8080",
                "--oidc-issuer",
                &format!("{ISSUER}={source}"),
                "--oidc-client-id",
                CLIENT_ID,
            ])
            .current_dir(dir.path())
            .env_remove("DATABASE_URL")
            .env_remove("TOKEN_SIDECAR_KEYS")
            .env("RUST_LOG", "warn")
            .output()
            .expect("binary runs")
    };
    let good = run(&jwks.display().to_string());
    let out =
        String::from_utf8_lossy(&good.stdout).into_owned() + &String::from_utf8_lossy(&good.stderr);
    assert!(good.status.success(), "{out}");
    assert!(
        out.contains(&format!(
            "oidc back-channel logout: {ISSUER} (2 key(s) from {})",
            jwks.display()
        )) && out.contains("POST http://127.0.0.1:8080/oidc/backchannel-logout"),
        "{out}"
    );
    let missing = run("/no/such/jwks.json");
    let out = String::from_utf8_lossy(&missing.stdout).into_owned()
        + &String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success(), "{out}");
    assert!(
        out.contains(&format!("the key set of {ISSUER} cannot be used")),
        "{out}"
    );
}
