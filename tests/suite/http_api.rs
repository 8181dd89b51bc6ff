//! The proxy-facing surfaces without a proxy: the gRPC `envoy.service.auth.v3.Authorization/Check`
//! answer in detail (header semantics, denials as denials), the HTTP forward-auth contract, RFC
//! 7662 introspection and RFC 7009 revocation with the cases from the RFCs' text, and bad
//! requests answered 400 in RFC 6749 style.
use std::collections::HashMap;

use crate::common::{Backend, MIN, Settings, TestApp, http_request};
use token_sidecar::api::ext_authz::pb;
use token_sidecar::api::pb::revoke_request::Target;
use token_sidecar::api::pb::{IssueRequest, Reason};

const ADMIN: &str = "an-admin-credential-long-enough";

async fn app_with(args: &[(&str, &str)]) -> TestApp {
    let dir = std::sync::Arc::new(tempfile::tempdir().expect("dir"));
    let credential = dir.path().join("admin");
    std::fs::write(&credential, ADMIN).expect("write");
    std::fs::set_permissions(
        &credential,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod");
    let mut settings = Settings::new(Backend::Sqlite)
        .arg("--http-listen", "127.0.0.1:0")
        .arg("--admin-token-file", &credential.display().to_string());
    for (k, v) in args {
        settings = settings.arg(k, v);
    }
    settings.spawn().await
}

/// Issue with the admin credential.
async fn issue(app: &TestApp, user: &str, claims: serde_json::Value) -> (String, String) {
    let serde_json::Value::Object(map) = claims else {
        panic!("claims object")
    };
    let mut request = tonic::Request::new(IssueRequest {
        user_id: user.into(),
        claims: Some(token_sidecar::api::convert::json_to_struct(map)),
        ttl: None,
        ..Default::default()
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {ADMIN}").parse().expect("header"),
    );
    let issued = app
        .client
        .clone()
        .issue(request)
        .await
        .expect("issue")
        .into_inner();
    (issued.token, issued.jti)
}

async fn check(app: &TestApp, authorization: Option<&str>) -> pb::CheckResponse {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut client =
        pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::new(channel);
    let mut headers = HashMap::new();
    if let Some(a) = authorization {
        headers.insert("authorization".to_string(), a.to_string());
    }
    let request = pb::CheckRequest {
        attributes: Some(pb::envoy::service::auth::v3::AttributeContext {
            request: Some(pb::envoy::service::auth::v3::attribute_context::Request {
                http: Some(
                    pb::envoy::service::auth::v3::attribute_context::HttpRequest {
                        headers,
                        method: "GET".into(),
                        path: "/".into(),
                        ..Default::default()
                    },
                ),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    client
        .check(request)
        .await
        .expect("Check answers")
        .into_inner()
}

#[tokio::test]
async fn ext_authz_check_allows_with_overwritten_headers_and_denies_as_a_denial() {
    let app = app_with(&[("--forward-claim", "role=x-user-role")]).await;
    let (token, jti) = issue(&app, "alice", serde_json::json!({"role": "admin"})).await;
    let allowed = check(&app, Some(&format!("Bearer {token}"))).await;
    assert_eq!(allowed.status.as_ref().map(|s| s.code), Some(0));
    let Some(pb::check_response::HttpResponse::OkResponse(ok)) = allowed.http_response else {
        panic!("an OK response: {allowed:?}")
    };
    let set: HashMap<String, (String, i32)> = ok
        .headers
        .iter()
        .filter_map(|h| {
            h.header
                .as_ref()
                .map(|v| (v.key.clone(), (v.value.clone(), h.append_action)))
        })
        .collect();
    let overwrite =
        pb::envoy::config::core::v3::header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd
            as i32;
    assert_eq!(set["x-user-id"], ("alice".to_string(), overwrite));
    assert_eq!(set["x-token-jti"], (jti, overwrite));
    assert_eq!(set["x-user-role"], ("admin".to_string(), overwrite));
    assert!(set.contains_key("x-session-id") && set.contains_key("x-token-exp"));
    // Our own token names no trusted issuer: only a client's copy of that header is removed.
    assert_eq!(ok.headers_to_remove, ["x-token-issuer"]);

    // A token without the forwarded claim: the client's own header is stripped.
    let (plain, _) = issue(&app, "bob", serde_json::json!({})).await;
    let allowed = check(&app, Some(&format!("bearer {plain}"))).await;
    let Some(pb::check_response::HttpResponse::OkResponse(ok)) = allowed.http_response else {
        panic!("an OK response")
    };
    assert_eq!(ok.headers_to_remove, ["x-token-issuer", "x-user-role"]);

    for (authorization, challenge) in [
        (None, "Bearer".to_string()),
        (
            Some("Bearer not.a.token".to_string()),
            "Bearer error=\"invalid_token\", error_description=\"REASON_MALFORMED\"".to_string(),
        ),
    ] {
        let denied = check(&app, authorization.as_deref()).await;
        assert_eq!(
            denied.status.as_ref().map(|s| s.code),
            Some(16),
            "UNAUTHENTICATED"
        );
        let Some(pb::check_response::HttpResponse::DeniedResponse(d)) = denied.http_response else {
            panic!("a denial, not an error")
        };
        assert_eq!(d.status.map(|s| s.code), Some(401));
        let value = d.headers.iter().find_map(|h| {
            h.header
                .as_ref()
                .filter(|v| v.key == "www-authenticate")
                .map(|v| v.value.clone())
        });
        assert_eq!(value, Some(challenge));
    }
}

#[tokio::test]
async fn forward_auth_answers_any_method_under_auth() {
    let app = app_with(&[]).await;
    let http = app.http_addr.expect("http");
    let (token, jti) = issue(&app, "alice", serde_json::json!({})).await;
    let auth = format!("Bearer {token}");
    for (method, path) in [
        ("GET", "/auth"),
        ("POST", "/auth/api/orders"),
        ("DELETE", "/auth/x"),
    ] {
        let r = http_request(http, method, path, &[("Authorization", &auth)], None)
            .await
            .expect("answer");
        assert_eq!(r.status, 200, "{method} {path}: {r:?}");
        assert_eq!(r.header("x-user-id").as_deref(), Some("alice"));
        assert_eq!(r.header("x-token-jti").as_deref(), Some(jti.as_str()));
    }
    let r = http_request(http, "GET", "/auth", &[], None)
        .await
        .expect("answer");
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate").as_deref(), Some("Bearer"));
    let r = http_request(http, "GET", "/elsewhere", &[("Authorization", &auth)], None)
        .await
        .expect("answer");
    assert_eq!(r.status, 404);
}

/// `POST /oauth2/revoke` with `token` as the form body.
async fn post_revoke(http: std::net::SocketAddr, token: &str) -> crate::common::HttpResponse {
    http_request(
        http,
        "POST",
        "/oauth2/revoke",
        &[],
        Some((FORM, &form(token))),
    )
    .await
    .expect("answer")
}

fn form(token: &str) -> String {
    format!("token={token}&token_type_hint=access_token")
}

const FORM: &str = "application/x-www-form-urlencoded";

#[tokio::test]
async fn introspection_follows_rfc_7662() {
    let app = app_with(&[]).await;
    let http = app.http_addr.expect("http");
    let admin = format!("Bearer {ADMIN}");
    let introspect = |token: String, credential: Option<String>| async move {
        let mut headers = Vec::new();
        if let Some(c) = &credential {
            headers.push(("Authorization", c.as_str()));
        }
        http_request(
            http,
            "POST",
            "/oauth2/introspect",
            &headers,
            Some((FORM, &form(&token))),
        )
        .await
        .expect("answer")
    };
    let (token, jti) = issue(&app, "alice", serde_json::json!({"role": "admin"})).await;
    let r = introspect(token.clone(), Some(admin.clone())).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    let body: serde_json::Value = serde_json::from_str(&r.body).expect("JSON");
    assert_eq!(body["active"], true);
    assert_eq!(body["sub"], "alice");
    assert_eq!(body["jti"], jti.as_str());
    assert_eq!(body["iss"], "token-sidecar");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["role"], "admin");
    assert!(body["sid"].is_string() && body["iat"].is_i64() && body["exp"].is_i64());

    // A DPoP-bound token (SPEC §15): its confirmation and its type, for a resource server that
    // checks the proof itself (RFC 9449 §6.2).
    let jkt = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs";
    let mut request = tonic::Request::new(IssueRequest {
        user_id: "dora".into(),
        dpop_jkt: jkt.into(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("authorization", admin.parse().expect("header"));
    let bound = app
        .client
        .clone()
        .issue(request)
        .await
        .expect("issue")
        .into_inner();
    let r = introspect(bound.token, Some(admin.clone())).await;
    let body: serde_json::Value = serde_json::from_str(&r.body).expect("JSON");
    assert_eq!(body["active"], true, "{body}");
    assert_eq!(body["token_type"], "DPoP");
    assert_eq!(body["cnf"], serde_json::json!({ "jkt": jkt }));

    // The caller must authenticate.
    for credential in [
        None,
        Some("Bearer wrong-credential-of-some-length".to_string()),
    ] {
        let r = introspect(token.clone(), credential).await;
        assert_eq!(r.status, 401, "{r:?}");
        assert!(r.header("www-authenticate").is_some());
    }
    // Every inactive token answers exactly {"active":false}.
    let (revoked, revoked_jti) = issue(&app, "bob", serde_json::json!({})).await;
    let mut request = tonic::Request::new(token_sidecar::api::pb::RevokeRequest {
        target: Some(Target::Jti(revoked_jti)),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("authorization", admin.parse().expect("header"));
    app.client.clone().revoke(request).await.expect("revoke");
    let (expiring, _) = issue(&app, "carol", serde_json::json!({})).await;
    app.clock.advance_ms(5 * MIN);
    for inactive in [
        revoked,
        expiring,
        "not.a.token".to_string(),
        "x".to_string(),
    ] {
        let r = introspect(inactive, Some(admin.clone())).await;
        assert_eq!((r.status, r.body.as_str()), (200, r#"{"active":false}"#));
    }
}

#[tokio::test]
async fn without_an_admin_credential_nobody_may_introspect() {
    let app = Settings::new(Backend::Sqlite)
        .arg("--http-listen", "127.0.0.1:0")
        .spawn()
        .await;
    let token = app.issue("alice").await.token;
    let body = form(&token);
    for headers in [
        vec![],
        vec![("Authorization", "Bearer anything-at-all-here")],
    ] {
        let r = http_request(
            app.http_addr.expect("http"),
            "POST",
            "/oauth2/introspect",
            &headers,
            Some((FORM, &body)),
        )
        .await
        .expect("answer");
        assert_eq!(r.status, 401, "{r:?}");
    }
    // Counted as what it is: introspection is not configured, not a bad credential.
    assert!(
        app.metrics.render().contains(
            "token_sidecar_rpc_requests_total{method=\"introspect\",result=\"unauthenticated\",reason=\"INTROSPECTION_NOT_CONFIGURED\"} 2"
        ),
        "{}",
        app.metrics.render()
    );
}

#[tokio::test]
async fn revocation_follows_rfc_7009_and_bad_requests_get_400() {
    let app = app_with(&[]).await;
    let http = app.http_addr.expect("http");
    let (token, _) = issue(&app, "alice", serde_json::json!({})).await;
    let r = post_revoke(http, &token).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(app.verdict(&token).await, Reason::TokenRevoked);
    // An invalid or unknown token is no error (RFC 7009 §2.2).
    for unknown in ["not.a.token", "x"] {
        let r = post_revoke(http, unknown).await;
        assert_eq!(r.status, 200);
    }
    let huge = "a".repeat(20 * 1024);
    let long_token = "a".repeat(9 * 1024);
    for (path, body) in [
        (
            "/oauth2/revoke",
            Some(("application/json", r#"{"token":"x"}"#)),
        ),
        ("/oauth2/revoke", None),
        (
            "/oauth2/revoke",
            Some((FORM, "token_type_hint=access_token")),
        ),
        ("/oauth2/revoke", Some((FORM, "token=a&token=b"))),
        ("/oauth2/revoke", Some((FORM, huge.as_str()))),
        (
            "/oauth2/introspect",
            Some((FORM, &*format!("token={long_token}"))),
        ),
    ] {
        let admin = format!("Bearer {ADMIN}");
        let r = http_request(http, "POST", path, &[("Authorization", &admin)], body)
            .await
            .expect("answer");
        assert_eq!(r.status, 400, "{path} {body:?}: {r:?}");
        let error: serde_json::Value = serde_json::from_str(&r.body).expect("JSON error");
        assert_eq!(error["error"], "invalid_request");
    }
}

#[tokio::test]
async fn revocation_answers_503_with_retry_after_when_nothing_was_committed() {
    crate::require!(Postgres);
    let (app, store) = crate::common::behind_store_proxy(
        Settings::new(Backend::Postgres).arg("--http-listen", "127.0.0.1:0"),
    )
    .await;
    let http = app.http_addr.expect("http");
    let token = app.issue("alice").await.token;
    store.cut();
    let r = post_revoke(http, &token).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.header("retry-after").is_some());
    store.restore();
}

/// SPEC §9 and §12: a resource server's introspection credential introspects and nothing else;
/// a custom claim never overrides a member RFC 7662 or RFC 7519 registers.
#[tokio::test]
async fn introspection_credentials_introspect_only_and_registered_members_stay_ours() {
    const RESOURCE_SERVER: &str = "a-resource-server-credential";
    let dir = tempfile::tempdir().expect("dir");
    let list = dir.path().join("introspection");
    std::fs::write(
        &list,
        format!("# resource servers\n{RESOURCE_SERVER}\nanother-resource-server-00\n"),
    )
    .expect("write");
    std::fs::set_permissions(&list, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let app = app_with(&[("--introspection-token-file", &list.display().to_string())]).await;
    let http = app.http_addr.expect("http");
    let claims = serde_json::json!({
        "active": false, "scope": "admin", "client_id": "root", "username": "someone-else",
        "token_type": "mac", "role": "reader"
    });
    let (token, jti) = issue(&app, "alice", claims).await;
    let bearer = format!("Bearer {RESOURCE_SERVER}");
    let r = http_request(
        http,
        "POST",
        "/oauth2/introspect",
        &[("Authorization", &bearer)],
        Some((FORM, &form(&token))),
    )
    .await
    .expect("answer");
    assert_eq!(r.status, 200, "{r:?}");
    let body: serde_json::Value = serde_json::from_str(&r.body).expect("JSON");
    assert_eq!(body["active"], true, "a valid token is active: {body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["jti"], jti.as_str());
    assert_eq!(body["role"], "reader", "other custom claims are kept");
    for registered in ["scope", "client_id", "username"] {
        assert!(
            body.get(registered).is_none(),
            "{registered} is not ours to vouch for: {body}"
        );
    }

    // The same credential is no admin credential.
    let mut request = tonic::Request::new(IssueRequest {
        user_id: "mallory".into(),
        claims: None,
        ttl: None,
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("authorization", bearer.parse().expect("header"));
    let refused = app
        .client
        .clone()
        .issue(request)
        .await
        .expect_err("not an admin");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let mut request = tonic::Request::new(token_sidecar::api::pb::LiftBanRequest {
        user_id: "mallory".into(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("authorization", bearer.parse().expect("header"));
    assert!(app.client.clone().lift_ban(request).await.is_err());
}

/// SPEC §9: more than one `Authorization` header is ambiguous — a proxy and the upstream might
/// each take another — so it is refused as MALFORMED, on `/auth` and on Check.
#[tokio::test]
async fn two_authorization_headers_are_refused_as_malformed() {
    let app = app_with(&[]).await;
    let http = app.http_addr.expect("http");
    let (token, _) = issue(&app, "alice", serde_json::json!({})).await;
    crate::common::assert_two_authorizations_are_malformed(http, "/auth", &token).await;
    let valid = format!("Bearer {token}");
    // Envoy joins repeated headers with a comma.
    let joined = format!("{valid},Bearer other");
    let answer = check(&app, Some(&joined)).await;
    assert_ne!(answer.status.expect("status").code, 0, "refused");
}
