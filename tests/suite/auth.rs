//! Caller authentication for privileged RPCs (`--admin-token-file`) and load shedding.
use crate::common::{Backend, Settings, TestApp, assert_status};
use token_sidecar::api::pb::{self, revoke_request::Target};
use tonic::Code;

const CREDENTIAL: &str = "s3cret-admin-credential-0123456789";

fn authed<T>(message: T, credential: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(c) = credential
        && let Ok(value) = format!("Bearer {c}").parse()
    {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

async fn guarded() -> TestApp {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("admin");
    std::fs::write(&path, format!("{CREDENTIAL}\n")).expect("write");
    let app = Settings::new(Backend::Sqlite)
        .arg("--admin-token-file", &path.display().to_string())
        .spawn()
        .await;
    drop(dir);
    app
}

#[tokio::test]
async fn privileged_rpcs_need_the_admin_credential_and_the_rest_stay_open() {
    let app = guarded().await;
    let mut c = app.client.clone();
    let issue = || pb::IssueRequest {
        user_id: "alice".into(),
        ..Default::default()
    };
    let e = c
        .issue(authed(issue(), None))
        .await
        .expect_err("no credential");
    assert_status(&e, Code::Unauthenticated, "MISSING_CREDENTIAL");
    let e = c
        .issue(authed(issue(), Some("wrong-credential-0123456789")))
        .await
        .expect_err("wrong credential");
    assert_status(&e, Code::Unauthenticated, "INVALID_CREDENTIAL");
    let issued = c
        .issue(authed(issue(), Some(CREDENTIAL)))
        .await
        .expect("issue with the credential")
        .into_inner();

    // Open to whoever holds the token.
    assert!(app.verify(&issued.token).await.valid);
    let refreshed = app.refresh(&issued.token).await.expect("refresh is open");
    assert!(app.verify(&refreshed.token).await.valid);
    c.get_jwks(pb::GetJwksRequest {})
        .await
        .expect("jwks is open");

    // Privileged revocations.
    for target in [
        Target::Jti(issued.jti.clone()),
        Target::SessionId(issued.session_id.clone()),
        Target::User(pb::UserRevocation {
            user_id: "alice".into(),
            until: None,
        }),
    ] {
        let request = pb::RevokeRequest {
            target: Some(target.clone()),
            ..Default::default()
        };
        let e = c
            .revoke(authed(request.clone(), None))
            .await
            .expect_err("privileged");
        assert_status(&e, Code::Unauthenticated, "MISSING_CREDENTIAL");
        c.revoke(authed(request, Some(CREDENTIAL)))
            .await
            .expect("with the credential");
    }
    for (name, result) in [
        (
            "LiftBan",
            c.lift_ban(authed(
                pb::LiftBanRequest {
                    user_id: "alice".into(),
                    ..Default::default()
                },
                None,
            ))
            .await
            .map(|_| ()),
        ),
        (
            "GetUserStatus",
            c.get_user_status(authed(
                pb::GetUserStatusRequest {
                    user_id: "alice".into(),
                },
                None,
            ))
            .await
            .map(|_| ()),
        ),
    ] {
        let e = result.expect_err(name);
        assert_status(&e, Code::Unauthenticated, "MISSING_CREDENTIAL");
    }
    c.get_user_status(authed(
        pb::GetUserStatusRequest {
            user_id: "alice".into(),
        },
        Some(CREDENTIAL),
    ))
    .await
    .expect("status with the credential");

    // Revoking a token one holds needs no credential.
    let other = c
        .issue(authed(issue(), Some(CREDENTIAL)))
        .await
        .expect("issue")
        .into_inner();
    app.revoke(Target::Token(other.token.clone()))
        .await
        .expect("own token");
}

#[tokio::test]
async fn a_short_admin_credential_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("admin");
    std::fs::write(&path, "short\n").expect("write");
    let err = Settings::new(Backend::Sqlite)
        .arg("--admin-token-file", &path.display().to_string())
        .no_wait()
        .try_spawn()
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("shorter than 16"), "{err}");
}

#[tokio::test]
async fn excess_load_is_shed_with_resource_exhausted_and_counted() {
    let app = Settings::new(Backend::Sqlite)
        .arg("--max-concurrent-requests", "1")
        .spawn()
        .await;
    let token = app.issue("alice").await.token;
    // Two connections: the bound is on the whole server, not per connection.
    let second = tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let calls = (0..300).map(|i| {
        let mut c = if i % 2 == 0 {
            app.client.clone()
        } else {
            pb::token_service_client::TokenServiceClient::new(second.clone())
        };
        let token = token.clone();
        async move {
            c.verify(pb::VerifyRequest {
                token,
                ..Default::default()
            })
            .await
        }
    });
    let health_checks = (0..50).map(|_| {
        let mut h = app.health.clone();
        async move {
            h.check(tonic_health::pb::HealthCheckRequest::default())
                .await
        }
    });
    let (results, health) = futures::future::join(
        futures::future::join_all(calls),
        futures::future::join_all(health_checks),
    )
    .await;
    let shed: Vec<&tonic::Status> = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .filter(|s| s.code() == Code::ResourceExhausted)
        .collect();
    let other_errors = results
        .iter()
        .filter(|r| matches!(r, Err(s) if s.code() != Code::ResourceExhausted))
        .count();
    assert!(!shed.is_empty(), "nothing was shed");
    assert_eq!(other_errors, 0);
    assert_status(shed[0], Code::ResourceExhausted, "OVERLOADED");
    assert!(
        results
            .iter()
            .any(|r| r.as_ref().is_ok_and(|v| v.get_ref().valid))
    );
    assert!(
        health.iter().all(|h| h.is_ok()),
        "health checks are never shed"
    );
    assert_eq!(app.metrics.edge.shed_requests.get(), shed.len() as u64);
    assert_eq!(app.metrics.edge.requests_in_flight.get(), 0);
}

/// The admin credential is re-read like the keys: a rotated credential replaces the old one at
/// once; an unusable file keeps the current one.
#[tokio::test]
async fn a_rotated_admin_credential_replaces_the_old_one() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("admin");
    std::fs::write(&path, format!("{CREDENTIAL}\n")).expect("write");
    let app = Settings::new(Backend::Sqlite)
        .arg("--admin-token-file", &path.display().to_string())
        .spawn()
        .await;
    let mut c = app.client.clone();
    let issue = || pb::IssueRequest {
        user_id: "alice".into(),
        ..Default::default()
    };
    assert!(c.issue(authed(issue(), Some(CREDENTIAL))).await.is_ok());
    let rotated = "a-rotated-admin-credential-9876543210";
    std::fs::write(&path, rotated).expect("write");
    assert!(app.reload_secrets().is_empty());
    let e = c
        .issue(authed(issue(), Some(CREDENTIAL)))
        .await
        .expect_err("the old credential is gone");
    assert_status(&e, Code::Unauthenticated, "INVALID_CREDENTIAL");
    assert!(c.issue(authed(issue(), Some(rotated))).await.is_ok());
    std::fs::write(&path, "short").expect("write");
    assert_eq!(
        app.reload_secrets().len(),
        1,
        "an unusable credential is reported"
    );
    assert!(
        c.issue(authed(issue(), Some(rotated))).await.is_ok(),
        "and the current one kept"
    );
}
