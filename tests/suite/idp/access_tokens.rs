//! Tokens from trusted issuers (SPEC §16, issue 44): an identity provider's own access tokens —
//! shaped like Keycloak's, signed by PyJWT (`tests/idp/sign.py`), never by our code — verified by
//! Verify and `/auth`, and revoked by our rules: Revoke{token}, RFC 7009, revoke-all, a ban, and
//! the provider's back-channel logout of their session.
use std::path::Path;

use serde_json::{Value, json};
use token_sidecar::api::pb;

use super::{CLIENT_ID, ISSUER, fixture, keycloak_logout, logout, sign, write_jwks};
use crate::common::{Backend, SEC, Settings, TestApp, http_request};

const PREFIX: &str = "kc:";
const API: &str = "orders-api";
const OTHER: &str = "https://login.other.test";

pub(super) fn now_s(app: &TestApp) -> i64 {
    token_sidecar::clock::Clock::now_ms(&app.clock) / 1000
}

/// An access token as Keycloak mints one (realm roles, `azp`, `typ: Bearer`), signed RS256 by
/// the provider's key `k1`.
pub(super) fn access_claims(app: &TestApp, sub: &str, sid: &str) -> Value {
    let now = now_s(app);
    json!({
        "iss": ISSUER, "sub": sub, "aud": ["account", API], "azp": "web-app",
        "typ": "Bearer", "iat": now, "exp": now + 300, "auth_time": now,
        "jti": format!("{sub}-{sid}-{now}"), "sid": sid, "scope": "openid profile",
        "realm_access": {"roles": ["user"]},
    })
}

pub(super) fn signed(claims: &Value) -> String {
    sign(
        "RS256",
        Some("rsa.pem"),
        json!({"kid": "k1", "typ": "JWT"}),
        claims,
    )
}

/// A sidecar trusting the provider's access tokens (audience [`API`], prefix `kc:`) and its
/// back-channel logouts (the same prefix), and a second issuer with the same subjects.
pub(super) async fn trusting(dir: &Path) -> TestApp {
    trusting_with(dir, &[]).await
}

async fn trusting_with(dir: &Path, more: &[(&str, &str)]) -> TestApp {
    let jwks = dir.join("jwks.json");
    write_jwks(&jwks, &[("k1", "rsa.pem")]);
    let other = dir.join("other.json");
    write_jwks(&other, &[("o1", "p256.pem")]);
    let settings = Settings::new(Backend::Sqlite)
        .arg("--http-listen", "127.0.0.1:0")
        .arg(
            "--trusted-issuer",
            &format!(
                "{ISSUER}={},audience={API},subject-prefix={PREFIX}",
                jwks.display()
            ),
        )
        .arg(
            "--trusted-issuer",
            &format!(
                "{OTHER}={},audience=*,subject-prefix=other:",
                other.display()
            ),
        )
        .arg(
            "--oidc-issuer",
            &format!("{ISSUER}={},subject-prefix={PREFIX}", jwks.display()),
        )
        .arg("--oidc-client-id", CLIENT_ID);
    let settings = more.iter().fold(settings, |settings, (flag, value)| {
        settings.arg(flag, value)
    });
    settings.spawn().await
}

async fn auth(app: &TestApp, token: &str) -> crate::common::HttpResponse {
    let bearer = format!("Bearer {token}");
    http_request(
        app.http_addr.expect("http listener"),
        "GET",
        "/auth",
        &[("Authorization", &bearer)],
        None,
    )
    .await
    .expect("/auth answers")
}

#[tokio::test]
async fn a_providers_access_token_is_verified_with_its_keys_and_named_as_its_user() {
    crate::require!(PythonJwt);
    let dir = tempfile::tempdir().expect("dir");
    let app = trusting(dir.path()).await;
    let token = signed(&access_claims(&app, "f3a1", "kc-session-1"));

    let answer = app.verify(&token).await;
    assert!(answer.valid, "{answer:?}");
    let claims = answer.claims.expect("claims");
    assert_eq!(claims.user_id, "kc:f3a1");
    assert_eq!(claims.issuer, ISSUER);
    assert_eq!(claims.idp_session_id, "kc:kc-session-1");
    let extra = claims.extra.expect("extra");
    assert!(extra.fields.contains_key("azp"), "{extra:?}");
    assert!(extra.fields.contains_key("realm_access"), "{extra:?}");

    let through = auth(&app, &token).await;
    assert_eq!(through.status, 200, "{through:?}");
    assert_eq!(through.header("x-user-id").as_deref(), Some("kc:f3a1"));
    assert_eq!(through.header("x-token-issuer").as_deref(), Some(ISSUER));
    // Our own tokens carry no issuer header (and a client's own is stripped upstream).
    let ours = app.issue("alice").await.token;
    let through = auth(&app, &ours).await;
    assert_eq!(through.status, 200, "{through:?}");
    assert_eq!(through.header("x-token-issuer"), None);
    assert_eq!(
        app.verify(&ours).await.claims.expect("claims").issuer,
        "token-sidecar"
    );
}

#[tokio::test]
async fn what_the_provider_did_not_sign_for_us_is_refused_with_its_reason() {
    crate::require!(PythonJwt);
    let dir = tempfile::tempdir().expect("dir");
    let app = trusting(dir.path()).await;
    let good = access_claims(&app, "f3a1", "s");
    let with = |change: &dyn Fn(&mut Value)| {
        let mut claims = good.clone();
        change(&mut claims);
        claims
    };
    let wrong_audience = signed(&with(&|c| c["aud"] = json!(["account", "billing-api"])));
    let expired = signed(&with(&|c| {
        c["iat"] = json!(now_s(&app) - 900);
        c["exp"] = json!(now_s(&app) - 600);
    }));
    let other_key = sign(
        "RS256",
        Some("rsa.pem"),
        json!({"kid": "o1"}),
        &with(&|c| c["iss"] = json!(OTHER)),
    );
    let none = sign("none", None, json!({"kid": "k1"}), &good);
    // HS256 keyed with the provider's public key (PyJWT refuses to build this, rightly).
    let confused = {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some("k1".into());
        let public = std::fs::read(fixture("keys/rsa.pub.pem")).expect("public key");
        let key = jsonwebtoken::EncodingKey::from_secret(&public).expect("secret");
        jsonwebtoken::encode(&header, &good, &key).expect("sign")
    };
    let no_exp = signed(&with(&|c| {
        c.as_object_mut().map(|m| m.remove("exp"));
    }));
    for (token, reason) in [
        (&wrong_audience, pb::Reason::WrongAudience),
        (&expired, pb::Reason::Expired),
        (&other_key, pb::Reason::BadSignature),
        (&none, pb::Reason::BadSignature),
        (&confused, pb::Reason::BadSignature),
        (&no_exp, pb::Reason::MissingClaim),
    ] {
        assert_eq!(app.verdict(token).await, reason, "{reason:?}");
        let through = auth(&app, token).await;
        assert_eq!(through.status, 401, "{reason:?}: {through:?}");
    }
    // Refresh is for our own tokens only, and says so.
    let refused = app
        .refresh(&signed(&good))
        .await
        .expect_err("a provider's token is not refreshed here");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("refresh it there"),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_providers_tokens_are_revoked_by_our_rules() {
    crate::require!(PythonJwt);
    let dir = tempfile::tempdir().expect("dir");
    let app = trusting(dir.path()).await;
    let one = signed(&access_claims(&app, "u1", "s1"));
    let two = signed(&access_claims(&app, "u2", "s2"));
    let other_session = signed(&access_claims(&app, "u2", "s3"));

    // Revoke{token}: that token, nothing else of its user.
    app.revoke(pb::revoke_request::Target::Token(one.clone()))
        .await
        .expect("revoke a provider's token");
    assert_eq!(app.verdict(&one).await, pb::Reason::TokenRevoked);
    assert_eq!(auth(&app, &one).await.status, 401);
    assert_eq!(app.verdict(&two).await, pb::Reason::Unspecified);

    // RFC 7009, by the token's holder.
    let body = format!("token={two}&token_type_hint=access_token");
    let revoked = http_request(
        app.http_addr.expect("http"),
        "POST",
        "/oauth2/revoke",
        &[],
        Some(("application/x-www-form-urlencoded", &body)),
    )
    .await
    .expect("revocation answers");
    assert_eq!(revoked.status, 200, "{revoked:?}");
    assert_eq!(app.verdict(&two).await, pb::Reason::TokenRevoked);
    assert_eq!(app.verdict(&other_session).await, pb::Reason::Unspecified);

    // The provider's back-channel logout of session s3 ends its access tokens.
    let logout_token = super::rs256(
        "logout+jwt",
        &keycloak_logout(now_s(&app), Some("s3"), Some("u2")),
    );
    assert_eq!(logout(&app, &logout_token).await.status, 200);
    assert_eq!(app.verdict(&other_session).await, pb::Reason::TokenRevoked);

    // Revoke-all of the user `kc:u4`: every token of a sign-in made before it; a new sign-in
    // after it works; a second issuer's `u4` is another user.
    let before = signed(&access_claims(&app, "u4", "s4"));
    let elsewhere = sign(
        "ES256",
        Some("p256.pem"),
        json!({"kid": "o1"}),
        &json!({"iss": OTHER, "sub": "u4", "iat": now_s(&app), "exp": now_s(&app) + 300}),
    );
    assert_eq!(app.verdict(&elsewhere).await, pb::Reason::Unspecified);
    app.clock.advance_ms(2 * SEC);
    app.revoke_user("kc:u4", None).await;
    assert_eq!(app.verdict(&before).await, pb::Reason::UserRevoked);
    assert_eq!(app.verdict(&elsewhere).await, pb::Reason::Unspecified);
    app.clock.advance_ms(2 * SEC);
    // A fresh access token from the old sign-in (the provider refreshed it): still refused.
    let mut refreshed = access_claims(&app, "u4", "s4");
    refreshed["auth_time"] = json!(now_s(&app) - 4);
    assert_eq!(
        app.verdict(&signed(&refreshed)).await,
        pb::Reason::UserRevoked
    );
    let new_sign_in = signed(&access_claims(&app, "u4", "s5"));
    assert_eq!(app.verdict(&new_sign_in).await, pb::Reason::Unspecified);

    // A ban refuses every token of the user while it runs.
    app.revoke_user(
        "kc:u4",
        Some(token_sidecar::clock::Clock::now_ms(&app.clock) + 3_600 * SEC),
    )
    .await;
    assert_eq!(app.verdict(&new_sign_in).await, pb::Reason::UserBanned);
    assert_eq!(auth(&app, &new_sign_in).await.status, 401);
}

/// Discovery end to end with the built binary: the issuer's metadata and key set served over
/// HTTPS (trusted through `SSL_CERT_FILE`), and a key rotation at the provider picked up when a
/// token names the new `kid` — without waiting for the periodic read.
#[tokio::test]
async fn discovery_over_https_finds_the_keys_and_follows_a_rotation() {
    crate::require!(PythonJwt);
    let dir = tempfile::tempdir().expect("dir");
    let port = crate::common::free_port();
    let issuer = format!("https://localhost:{port}");
    let well_known = dir.path().join(".well-known");
    std::fs::create_dir_all(&well_known).expect("mkdir");
    std::fs::write(
        well_known.join("openid-configuration"),
        json!({"issuer": issuer, "jwks_uri": format!("{issuer}/jwks.json")}).to_string(),
    )
    .expect("write metadata");
    let jwks = dir.path().join("jwks.json");
    write_jwks(&jwks, &[("k1", "rsa.pem")]);
    let _server = crate::common::https_file_server(dir.path(), port);
    let http = crate::common::free_port();
    let env = [
        ("SSL_CERT_FILE", fixture("keys/tls/ca.pem")),
        ("TOKEN_SIDECAR_HTTP_LISTEN", format!("127.0.0.1:{http}")),
        (
            "TOKEN_SIDECAR_TRUSTED_ISSUERS",
            format!("{issuer}=discovery,audience={API}"),
        ),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let home = tempfile::tempdir().expect("dir");
    let mut sidecar = crate::common::SidecarProcess::start(home.path(), &env).await;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], http));
    let token_of = |alg: &str, pem: &str, kid: &str| {
        let now = token_sidecar::clock::wall_ms() / 1000;
        sign(
            alg,
            Some(pem),
            json!({"kid": kid}),
            &json!({"iss": issuer, "sub": "dana", "aud": API, "iat": now, "exp": now + 300}),
        )
    };
    let status = |token: String| async move {
        let bearer = format!("Bearer {token}");
        http_request(addr, "GET", "/auth", &[("Authorization", &bearer)], None)
            .await
            .map(|r| r.status)
            .unwrap_or(0)
    };
    // The sidecar is NOT_SERVING until the keys are read (a proxy sends nothing before).
    crate::common::eventually(
        std::time::Duration::from_secs(15),
        "the provider's token is admitted once its keys are read",
        || async { status(token_of("RS256", "rsa.pem", "k1")).await == 200 },
    )
    .await;
    sidecar
        .wait_for_line(
            "a trusted issuer's key set read",
            std::time::Duration::from_secs(1),
        )
        .await;
    // The provider rotates to an EC key and signs with it at once.
    write_jwks(&jwks, &[("k2", "p256.pem")]);
    crate::common::eventually(
        std::time::Duration::from_secs(10),
        "the rotated key is read on its first use",
        || async { status(token_of("ES256", "p256.pem", "k2")).await == 200 },
    )
    .await;
    // The old key is gone with the old set.
    assert_eq!(status(token_of("RS256", "rsa.pem", "k1")).await, 401);
    drop(sidecar);
}

/// RFC 7662 introspection of a provider's token: active, its issuer, our user id, and the
/// provider's own `scope`, `client_id`, `jti` and `sid` passed through (its word, not a custom
/// claim of an Issue caller's).
#[tokio::test]
async fn introspection_answers_for_a_providers_token_in_its_words() {
    crate::require!(PythonJwt);
    const RESOURCE_SERVER: &str = "orders-api-introspection-credential";
    let dir = tempfile::tempdir().expect("dir");
    let list = dir.path().join("introspection");
    std::fs::write(&list, format!("{RESOURCE_SERVER}\n")).expect("write");
    std::fs::set_permissions(&list, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let app = trusting_with(
        dir.path(),
        &[("--introspection-token-file", &list.display().to_string())],
    )
    .await;
    let mut claims = access_claims(&app, "f3a1", "kc-session-9");
    claims["client_id"] = json!("web-app");
    let token = signed(&claims);
    let introspect = |token: String| {
        let http = app.http_addr.expect("http");
        async move {
            let bearer = format!("Bearer {RESOURCE_SERVER}");
            let form = format!("token={token}");
            let r = http_request(
                http,
                "POST",
                "/oauth2/introspect",
                &[("Authorization", &bearer)],
                Some(("application/x-www-form-urlencoded", &form)),
            )
            .await
            .expect("introspection answers");
            assert_eq!(r.status, 200, "{r:?}");
            serde_json::from_str::<Value>(&r.body).expect("JSON")
        }
    };
    let body = introspect(token.clone()).await;
    assert_eq!(body["active"], true, "{body}");
    assert_eq!(body["iss"], ISSUER);
    assert_eq!(body["sub"], "kc:f3a1");
    assert_eq!(body["scope"], "openid profile");
    assert_eq!(body["client_id"], "web-app");
    assert_eq!(body["jti"], claims["jti"]);
    assert_eq!(body["sid"], "kc-session-9");
    assert_eq!(body["token_type"], "Bearer");
    app.revoke(pb::revoke_request::Target::Token(token.clone()))
        .await
        .expect("revoke");
    assert_eq!(introspect(token).await, json!({"active": false}));
}
