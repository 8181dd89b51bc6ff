//! The API contract as a stranger sees it: bad input, error statuses with ErrorInfo, limits,
//! health, reflection, start-up rules.
use std::sync::Arc;
use std::time::Duration;

use crate::common::{
    Backend, MIN, SEC, Settings, T0_MS, TEST_SECRET, TestApp, assert_status, craft, good_header,
    good_payload,
};
use clap::Parser;
use futures::StreamExt;
use serde_json::json;
use token_sidecar::api::pb::{self, Reason, revoke_request::Target};
use token_sidecar::clock::ManualClock;
use token_sidecar::config::Config;
use token_sidecar::server::{self, StartupError};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

on_every_backend!(
    bad_tokens_get_a_reason_never_an_error,
    audience_is_required_when_configured,
    invalid_arguments_are_refused_with_error_info,
    requested_ttl_is_honoured_and_capped,
    revoke_of_a_bad_token_is_invalid_argument_with_its_reason,
    a_token_not_valid_yet_can_be_revoked,
    jwks_publishes_no_hmac_secret,
    reflection_lists_every_service_in_both_versions,
    health_listen_serves_only_health,
);

fn with(mut payload: serde_json::Value, key: &str, value: serde_json::Value) -> serde_json::Value {
    payload[key] = value;
    payload
}

fn without(mut payload: serde_json::Value, key: &str) -> serde_json::Value {
    if let Some(map) = payload.as_object_mut() {
        map.remove(key);
    }
    payload
}

async fn bad_tokens_get_a_reason_never_an_error(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let valid = app.issue("alice").await.token;
    let crafted = craft(&good_header(), &good_payload(), &TEST_SECRET);
    assert!(
        app.verify(&crafted).await.valid,
        "the crafting helper is sound"
    );

    let (head, _) = valid.rsplit_once('.').expect("three parts");
    let (_, sig) = crafted.rsplit_once('.').expect("three parts");
    let spliced = format!("{head}.{sig}");
    let t0 = T0_MS / 1000;
    let huge = format!("{}.{}", valid, "A".repeat(9 * 1024));
    let cases: Vec<(&str, String, Reason)> = vec![
        ("empty", String::new(), Reason::Malformed),
        ("garbage", "garbage".into(), Reason::Malformed),
        ("three dots", "a.b.c".into(), Reason::Malformed),
        ("two parts", head.into(), Reason::Malformed),
        ("over 8 KiB", huge, Reason::Malformed),
        ("signature of another token", spliced, Reason::BadSignature),
        (
            "another key",
            craft(&good_header(), &good_payload(), &[7u8; 32]),
            Reason::BadSignature,
        ),
        (
            "alg none",
            format!(
                "{}.",
                craft(
                    &json!({"alg": "none", "kid": "main"}),
                    &good_payload(),
                    &TEST_SECRET
                )
                .rsplit_once('.')
                .map(|(m, _)| m.to_owned())
                .unwrap_or_default()
            ),
            Reason::BadSignature,
        ),
        (
            "alg differs from the key's",
            craft(
                &json!({"alg": "HS512", "kid": "main"}),
                &good_payload(),
                &TEST_SECRET,
            ),
            Reason::BadSignature,
        ),
        (
            "unknown kid",
            craft(
                &json!({"alg": "HS256", "kid": "other"}),
                &good_payload(),
                &TEST_SECRET,
            ),
            Reason::BadSignature,
        ),
        (
            "wrong issuer",
            craft(
                &good_header(),
                &with(good_payload(), "iss", json!("evil")),
                &TEST_SECRET,
            ),
            Reason::WrongIssuer,
        ),
        (
            "missing sid",
            craft(
                &good_header(),
                &without(good_payload(), "sid"),
                &TEST_SECRET,
            ),
            Reason::MissingClaim,
        ),
        (
            "missing orig_iat",
            craft(
                &good_header(),
                &without(good_payload(), "orig_iat"),
                &TEST_SECRET,
            ),
            Reason::MissingClaim,
        ),
        (
            "exp as a string",
            craft(
                &good_header(),
                &with(good_payload(), "exp", json!("9999999999")),
                &TEST_SECRET,
            ),
            Reason::Malformed,
        ),
        (
            "expired",
            craft(
                &good_header(),
                &with(good_payload(), "exp", json!(t0)),
                &TEST_SECRET,
            ),
            Reason::Expired,
        ),
        (
            "not valid yet",
            craft(
                &good_header(),
                &with(good_payload(), "nbf", json!(t0 + 60)),
                &TEST_SECRET,
            ),
            Reason::NotYetValid,
        ),
    ];
    for (name, token, expected) in cases {
        let answer = app.verify(&token).await;
        assert!(!answer.valid, "{name}");
        assert_eq!(answer.reason, expected as i32, "{name}");
        assert!(answer.claims.is_none(), "{name}");
    }
    // A truncated token never verifies, whichever check catches it first.
    for cut in [1, 5, 20, valid.len() / 2] {
        let verdict = app.verdict(&valid[..valid.len() - cut]).await;
        assert!(
            matches!(verdict, Reason::Malformed | Reason::BadSignature),
            "cut {cut}: {verdict:?}"
        );
    }
}

async fn audience_is_required_when_configured(backend: Backend) {
    let app = Settings::new(backend)
        .arg("--audience", "api")
        .spawn()
        .await;
    let ours = app.issue("alice").await.token;
    assert!(app.verify(&ours).await.valid);
    let web = craft(
        &good_header(),
        &with(good_payload(), "aud", json!("web")),
        &TEST_SECRET,
    );
    assert_eq!(app.verdict(&web).await, Reason::WrongAudience);
    let none = craft(&good_header(), &good_payload(), &TEST_SECRET);
    assert_eq!(app.verdict(&none).await, Reason::MissingClaim);
    let listed = craft(
        &good_header(),
        &with(good_payload(), "aud", json!(["web", "api"])),
        &TEST_SECRET,
    );
    assert!(app.verify(&listed).await.valid);
}

async fn invalid_arguments_are_refused_with_error_info(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let issue = |user_id: String, claims: serde_json::Value, ttl_s: Option<i64>| {
        let serde_json::Value::Object(map) = claims else {
            panic!("claims must be an object")
        };
        app.issue_with(pb::IssueRequest {
            user_id,
            claims: Some(token_sidecar::api::convert::json_to_struct(map)),
            ttl: ttl_s.map(|seconds| prost_types::Duration { seconds, nanos: 0 }),
            ..Default::default()
        })
    };
    let e = issue(String::new(), json!({}), None)
        .await
        .expect_err("empty");
    assert_status(&e, Code::InvalidArgument, "INVALID_USER_ID");
    let e = issue("x".repeat(257), json!({}), None)
        .await
        .expect_err("long");
    assert_status(&e, Code::InvalidArgument, "INVALID_USER_ID");
    assert!(issue("x".repeat(256), json!({}), None).await.is_ok());
    for reserved in [
        "sub", "exp", "jti", "sid", "orig_iat", "iss", "aud", "iat", "nbf",
    ] {
        let e = issue("alice".into(), json!({ reserved: "x" }), None)
            .await
            .expect_err(reserved);
        assert_status(&e, Code::InvalidArgument, "RESERVED_CLAIM");
    }
    let e = issue("alice".into(), json!({"blob": "x".repeat(5000)}), None)
        .await
        .expect_err("huge claims");
    assert_status(&e, Code::InvalidArgument, "CLAIMS_TOO_LARGE");
    let e = issue("alice".into(), json!({}), Some(0))
        .await
        .expect_err("ttl 0");
    assert_status(&e, Code::InvalidArgument, "INVALID_TTL");
    let e = issue("alice".into(), json!({}), Some(-5))
        .await
        .expect_err("ttl < 0");
    assert_status(&e, Code::InvalidArgument, "INVALID_TTL");

    let e = app
        .client
        .clone()
        .revoke(pb::RevokeRequest {
            target: None,
            ..Default::default()
        })
        .await
        .expect_err("no target");
    assert_status(&e, Code::InvalidArgument, "MISSING_TARGET");
    let e = app
        .revoke(Target::Jti(String::new()))
        .await
        .expect_err("empty jti");
    assert_status(&e, Code::InvalidArgument, "INVALID_ID");
    let e = app
        .revoke(Target::SessionId("s".repeat(300)))
        .await
        .expect_err("long sid");
    assert_status(&e, Code::InvalidArgument, "INVALID_ID");
    // Ids we could never have minted (ours: 22 base64url characters, 128 bits).
    for id in [
        "null",
        "some-jti",
        "AAAAAAAAAAAAAAAAAAAAAB",
        "AAAAAAAAAAAAAAAAAAAAA=",
    ] {
        let e = app.revoke(Target::Jti(id.into())).await.expect_err(id);
        assert_status(&e, Code::InvalidArgument, "INVALID_ID");
        let e = app
            .revoke(Target::SessionId(id.into()))
            .await
            .expect_err(id);
        assert_status(&e, Code::InvalidArgument, "INVALID_ID");
    }
    // Invisible user ids, or ids padded with invisible characters.
    for user_id in [
        "\u{200B}",
        "\u{202E}",
        "\u{FEFF}alice",
        "alice\u{200B}",
        " alice",
        "alice\t",
    ] {
        let e = issue(user_id.into(), json!({}), None)
            .await
            .expect_err(user_id);
        assert_status(&e, Code::InvalidArgument, "INVALID_USER_ID");
    }
    // Claims nested beyond what protobuf decodes are the caller's mistake, not ours.
    let mut deep = prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue("leaf".into())),
    };
    for _ in 0..60 {
        let mut inner = prost_types::Struct::default();
        inner.fields.insert("n".into(), deep);
        deep = prost_types::Value {
            kind: Some(prost_types::value::Kind::StructValue(inner)),
        };
    }
    let mut claims = prost_types::Struct::default();
    claims.fields.insert("deep".into(), deep);
    let e = app
        .issue_with(pb::IssueRequest {
            user_id: "alice".into(),
            claims: Some(claims),
            ttl: None,
            ..Default::default()
        })
        .await
        .expect_err("nested too deep");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("decode"), "{e:?}");
    let e = app
        .revoke(Target::User(pb::UserRevocation::default()))
        .await
        .expect_err("no user");
    assert_status(&e, Code::InvalidArgument, "INVALID_USER_ID");
    let e = app
        .revoke(Target::User(pb::UserRevocation {
            user_id: "alice".into(),
            until: Some(prost_types::Timestamp {
                seconds: 1,
                nanos: 2_000_000_000,
            }),
        }))
        .await
        .expect_err("bad until");
    assert_status(&e, Code::InvalidArgument, "INVALID_TIMESTAMP");
    let e = app
        .client
        .clone()
        .lift_ban(pb::LiftBanRequest::default())
        .await
        .expect_err("lift nobody");
    assert_status(&e, Code::InvalidArgument, "INVALID_USER_ID");
    let e = app
        .client
        .clone()
        .get_user_status(pb::GetUserStatusRequest::default())
        .await
        .expect_err("status of nobody");
    assert_status(&e, Code::InvalidArgument, "INVALID_USER_ID");
    assert_eq!(app.count_rows("user_cutoffs").await, 0);
    assert_eq!(app.count_rows("denylist").await, 0);
}

async fn requested_ttl_is_honoured_and_capped(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let with_ttl = |seconds| {
        app.issue_with(pb::IssueRequest {
            user_id: "alice".into(),
            ttl: Some(prost_types::Duration { seconds, nanos: 0 }),
            ..Default::default()
        })
    };
    let short = with_ttl(60).await.expect("issue");
    assert_eq!(short.expires_at.map(|t| t.seconds), Some(T0_MS / 1000 + 60));
    let long = with_ttl(86_400).await.expect("issue");
    assert_eq!(
        long.expires_at.map(|t| t.seconds),
        Some((T0_MS + 5 * MIN) / 1000),
        "capped by --token-ttl"
    );
    app.clock.advance_ms(60 * SEC);
    assert_eq!(app.verdict(&short.token).await, Reason::Expired);
    assert!(app.verify(&long.token).await.valid);
}

async fn revoke_of_a_bad_token_is_invalid_argument_with_its_reason(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let e = app
        .revoke(Target::Token("garbage".into()))
        .await
        .expect_err("garbage");
    assert_status(&e, Code::InvalidArgument, "REASON_MALFORMED");
    let foreign = craft(&good_header(), &good_payload(), &[7u8; 32]);
    let e = app
        .revoke(Target::Token(foreign))
        .await
        .expect_err("foreign");
    assert_status(&e, Code::InvalidArgument, "REASON_BAD_SIGNATURE");
    assert_eq!(app.count_rows("denylist").await, 0);
}

async fn a_token_not_valid_yet_can_be_revoked(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let t0 = T0_MS / 1000;
    let early = craft(
        &good_header(),
        &with(good_payload(), "nbf", json!(t0 + 60)),
        &TEST_SECRET,
    );
    let done = app
        .revoke(Target::Token(early.clone()))
        .await
        .expect("revoke");
    assert!(done.stored, "it would become valid, so it is revoked");
    app.clock.advance_ms(61 * SEC);
    assert_eq!(app.verdict(&early).await, Reason::TokenRevoked);
}

async fn jwks_publishes_no_hmac_secret(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    assert_eq!(app.jwks().await, json!({"keys": []}));
}

async fn reflection_lists_every_service_in_both_versions(backend: Backend) {
    use tonic_reflection::pb::{v1, v1alpha};
    let app = TestApp::spawn(backend).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let wanted = [
        "tokensidecar.v1.TokenService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ];

    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut responses = client
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .expect("v1 reflection")
        .into_inner();
    let Some(Ok(response)) = responses.next().await else {
        panic!("no v1 reflection answer")
    };
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        response.message_response
    else {
        panic!("unexpected v1 reflection answer")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for name in wanted {
        assert!(
            names.iter().any(|n| n == name),
            "v1 lists {name}: {names:?}"
        );
    }

    let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "tokensidecar.v1.TokenService".into(),
            ),
        ),
    };
    let mut responses = client
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .expect("v1alpha reflection")
        .into_inner();
    let Some(Ok(response)) = responses.next().await else {
        panic!("no v1alpha reflection answer")
    };
    assert!(matches!(
        response.message_response,
        Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(ref f))
            if !f.file_descriptor_proto.is_empty()
    ));
}

async fn health_listen_serves_only_health(backend: Backend) {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let app = Settings::new(backend)
        .arg("--health-listen", "127.0.0.1:0")
        .spawn()
        .await;
    let addr = app.health_addr.expect("health listener");
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    for service in ["", "tokensidecar.v1.TokenService"] {
        let status = HealthClient::new(channel.clone())
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health")
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    let mut api = pb::token_service_client::TokenServiceClient::new(channel);
    let e = api
        .verify(pb::VerifyRequest {
            token: "x".into(),
            ..Default::default()
        })
        .await
        .expect_err("API is not on the health port");
    assert_eq!(e.code(), Code::Unimplemented);
}

#[tokio::test]
async fn postgres_without_a_key_refuses_to_start() {
    crate::require!(Postgres);
    let url = crate::common::fresh_postgres_database().await;
    let config = Config::try_parse_from([
        "token-sidecar",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        &url,
    ])
    .expect("parses");
    let err = server::start(config, Arc::new(ManualClock::new(T0_MS)))
        .await
        .err()
        .expect("refused");
    assert!(matches!(err, StartupError::NoKeyForPostgres));
    assert!(err.to_string().contains("--key"), "{err}");
}

#[tokio::test]
async fn an_unprotected_api_beyond_loopback_is_refused_unless_allowed() {
    let err = Settings::new(Backend::Sqlite)
        .arg("--listen", "0.0.0.0:0")
        .no_wait()
        .try_spawn()
        .await
        .err()
        .expect("refused");
    assert!(matches!(err, StartupError::InsecureRemote(_)), "{err}");
    assert!(err.to_string().contains("--allow-insecure-remote"), "{err}");

    // TLS alone encrypts; it does not authenticate callers.
    let tls = |name: &str| {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/keys/tls")
            .join(name)
            .display()
            .to_string()
    };
    let err = Settings::new(Backend::Sqlite)
        .arg("--listen", "0.0.0.0:0")
        .arg("--tls-cert", &tls("server.pem"))
        .arg("--tls-key", &tls("server.key"))
        .no_wait()
        .try_spawn()
        .await
        .err()
        .expect("server-side TLS alone is refused");
    assert!(matches!(err, StartupError::InsecureRemote(_)), "{err}");
    assert!(err.to_string().contains("--tls-client-ca"), "{err}");

    // Each of these makes it start: the explicit opt-in, or caller authentication (the admin
    // credential, or client certificates).
    let mutual = Settings::new(Backend::Sqlite)
        .arg("--listen", "0.0.0.0:0")
        .arg("--tls-cert", &tls("server.pem"))
        .arg("--tls-key", &tls("server.key"))
        .arg("--tls-client-ca", &tls("ca.pem"))
        .no_wait()
        .try_spawn()
        .await;
    assert!(mutual.is_ok(), "mutual TLS authenticates callers");
    let allowed = Settings::new(Backend::Sqlite)
        .arg("--listen", "0.0.0.0:0")
        .flag("--allow-insecure-remote")
        .spawn()
        .await;
    assert!(allowed.addr.ip().is_unspecified());
    // SPEC §12: the privileged RPCs are open only on a loopback-only API; beyond it, with no
    // caller authentication configured, nobody may call them.
    let refused = allowed
        .issue_with(pb::IssueRequest {
            user_id: "alice".into(),
            ..Default::default()
        })
        .await
        .expect_err("no caller may issue on an unauthenticated remote API");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(allowed.verify("x").await.reason == pb::Reason::Malformed as i32);
    let credential = allowed.dir.path().join("admin");
    std::fs::write(&credential, "a-long-enough-admin-credential\n").expect("write");
    std::fs::set_permissions(
        &credential,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod");
    let authenticated = Settings::new(Backend::Sqlite)
        .arg("--listen", "0.0.0.0:0")
        .arg("--admin-token-file", &credential.display().to_string())
        .spawn()
        .await;
    assert!(authenticated.addr.ip().is_unspecified());
}

#[tokio::test]
async fn oversized_messages_and_headers_get_clear_answers_and_the_server_keeps_serving() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let token = app.issue("alice").await.token;
    let mut client = app.client.clone();

    // A 1 MiB token is an answer (MALFORMED, the 8 KiB cap); a message over the gRPC limit is
    // refused before it is decoded.
    let huge = "A".repeat(1024 * 1024);
    assert_eq!(app.verdict(&huge).await, Reason::Malformed);
    let too_big = "A".repeat(server::MAX_MESSAGE_BYTES + 1);
    let status = client
        .verify(pb::VerifyRequest {
            token: too_big,
            ..Default::default()
        })
        .await
        .expect_err("over the message limit");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    // Metadata beyond the header-list limit never reaches a handler.
    let mut request = tonic::Request::new(pb::VerifyRequest {
        token: token.clone(),
        ..Default::default()
    });
    let padding = "x".repeat(server::MAX_HEADER_LIST_BYTES as usize);
    request
        .metadata_mut()
        .insert("x-padding", padding.parse().expect("ascii"));
    let refused = app.client.clone().verify(request).await;
    assert!(refused.is_err(), "an oversized header list is refused");

    assert!(app.verify(&token).await.valid, "the server still serves");
}

#[tokio::test]
async fn weak_keys_are_refused_at_start() {
    let dir = tempfile::tempdir().expect("dir");
    let key = dir.path().join("short.key");
    std::fs::write(&key, [1u8; 31]).expect("write");
    let config = Config::try_parse_from([
        "token-sidecar".to_owned(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--database-url".into(),
        format!("sqlite:{}", dir.path().join("db").display()),
        "--key".into(),
        format!("k=HS256:{}", key.display()),
    ])
    .expect("parses");
    let err = server::start(config, Arc::new(ManualClock::new(T0_MS)))
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("at least 32"), "{err}");
}

#[tokio::test]
async fn sqlite_without_a_key_keeps_a_private_dev_key_across_restarts() {
    let dir = tempfile::tempdir().expect("dir");
    let db = format!("sqlite:{}", dir.path().join("dev.db").display());
    let first = Settings::new(Backend::Sqlite)
        .database_url(&db)
        .without_key()
        .spawn()
        .await;
    let token = first.issue("alice").await.token;
    first.shutdown().await;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let key = dir.path().join("dev.db.dev-key");
        let mode = std::fs::metadata(&key)
            .expect("dev key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let second = Settings::new(Backend::Sqlite)
        .database_url(&db)
        .without_key()
        .spawn()
        .await;
    assert!(second.verify(&token).await.valid, "the key was kept");
}

#[tokio::test]
async fn many_sidecars_migrate_one_postgres_database_at_once() {
    crate::require!(Postgres);
    let url = crate::common::fresh_postgres_database().await;
    let clock = ManualClock::new(T0_MS);
    let apps = futures::future::join_all((0..4).map(|_| {
        Settings::new(Backend::Postgres)
            .database_url(&url)
            .clock(clock.clone())
            .spawn()
    }))
    .await;
    // They share one truth: issue on one, revoke on another, refused on a third.
    let issued = apps[0].issue("alice").await;
    assert!(apps[3].verify(&issued.token).await.valid);
    apps[1]
        .revoke(Target::Token(issued.token.clone()))
        .await
        .expect("revoke");
    crate::common::eventually(Duration::from_secs(10), "revocation reaches #2", || async {
        apps[2].verdict(&issued.token).await == Reason::TokenRevoked
    })
    .await;
    apps[3].revoke_user("bob", Some(T0_MS + MIN)).await;
    crate::common::eventually(Duration::from_secs(10), "ban reaches #0", || async {
        apps[0]
            .issue_with(pb::IssueRequest {
                user_id: "bob".into(),
                ..Default::default()
            })
            .await
            .is_err_and(|e| e.code() == Code::PermissionDenied)
    })
    .await;
}

#[tokio::test]
async fn an_unreachable_store_is_not_serving_and_answers_unavailable() {
    crate::require!(Postgres);
    let app = Settings::new(Backend::Postgres)
        .database_url("postgres://postgres@127.0.0.1:1/nowhere")
        .no_wait()
        .spawn()
        .await;
    app.wait_for_health(ServingStatus::NotServing).await;
    let token = craft(&good_header(), &good_payload(), &TEST_SECRET);
    let e = app
        .client
        .clone()
        .verify(pb::VerifyRequest {
            token: token.clone(),
            ..Default::default()
        })
        .await
        .expect_err("cannot answer safely");
    assert_status(&e, Code::Unavailable, "STORE_UNAVAILABLE");
    // A token that fails on its own still gets its verdict: no store is needed for that.
    assert_eq!(app.verdict("garbage").await, Reason::Malformed);
    let e = app
        .issue_with(pb::IssueRequest {
            user_id: "alice".into(),
            ..Default::default()
        })
        .await
        .expect_err("issue needs the store");
    assert_status(&e, Code::Unavailable, "STORE_UNAVAILABLE");
    let e = app.revoke(Target::Token(token)).await.expect_err("no ack");
    assert_status(&e, Code::Unavailable, "STORE_UNAVAILABLE");
}

/// Clients that connect and never speak are closed after `--handshake-timeout`; beyond
/// `--max-connections` new connections are closed at once; health keeps answering throughout.
#[tokio::test]
async fn silent_connections_are_bounded_and_closed_while_health_answers() {
    use tokio::io::AsyncReadExt;
    let app = Settings::new(Backend::Sqlite)
        .arg("--handshake-timeout", "1s")
        .arg("--max-connections", "100")
        .spawn()
        .await;
    let mut silent = Vec::new();
    for _ in 0..2_000 {
        if let Ok(stream) = tokio::net::TcpStream::connect(app.addr).await {
            silent.push(stream);
        }
    }
    let check = || async {
        let mut health = app.health.clone();
        health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|r| r.into_inner().status)
    };
    assert_eq!(check().await.ok(), Some(ServingStatus::Serving as i32));
    crate::common::eventually(
        Duration::from_secs(10),
        "over the bound: closed",
        || async {
            app.counter(r#"connections_refused_total{listener="api",why="limit"}"#) >= 1_800
        },
    )
    .await;
    crate::common::eventually(Duration::from_secs(10), "silent ones timed out", || async {
        app.counter(r#"connections_refused_total{listener="api",why="handshake_timeout"}"#) >= 99
    })
    .await;
    assert_eq!(check().await.ok(), Some(ServingStatus::Serving as i32));
    // Every silent connection has been closed by the server.
    for stream in silent.iter_mut().take(50) {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "closed: {read:?}");
    }
    drop(silent);
    // A new client is served again.
    let fresh = tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
        .expect("uri")
        .connect()
        .await
        .expect("a new connection is served");
    let mut client = pb::token_service_client::TokenServiceClient::new(fresh);
    assert!(
        client
            .verify(pb::VerifyRequest {
                token: "x".into(),
                ..Default::default()
            })
            .await
            .is_ok()
    );

    // The metrics port closes a connection that holds a partial request head.
    let mut partial = tokio::net::TcpStream::connect(app.metrics_addr)
        .await
        .expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut partial, b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), partial.read(&mut byte)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "closed: {read:?}");
    assert_eq!(
        app.counter(r#"connections_refused_total{listener="metrics",why="handshake_timeout"}"#),
        1
    );
}
