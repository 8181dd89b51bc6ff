//! The built binary as a user runs it: defaults with no set-up, a full session, logs free of
//! tokens and secrets, and a graceful exit 0 on SIGTERM — also with RPCs in flight.
use std::time::Duration;

use crate::common::SidecarProcess;
use token_sidecar::api::pb::{self, revoke_request::Target};
use tonic::transport::Channel;

type Api = pb::token_service_client::TokenServiceClient<Channel>;

async fn verdict(api: &Api, token: &str) -> pb::VerifyResponse {
    api.clone()
        .verify(pb::VerifyRequest {
            token: token.to_string(),
            ..Default::default()
        })
        .await
        .expect("verify")
        .into_inner()
}

fn with_bearer<T>(message: T, credential: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {credential}").parse().expect("ascii"),
    );
    request
}

#[tokio::test]
async fn default_run_serves_a_session_logs_no_secrets_and_exits_0_on_sigterm() {
    let dir = tempfile::tempdir().expect("dir");
    let mut sidecar = SidecarProcess::start(
        dir.path(),
        &[
            ("RUST_LOG", "debug"),
            ("TOKEN_SIDECAR_SHUTDOWN_GRACE", "2s"),
        ],
    )
    .await;
    let channel = sidecar.connect().await;
    // The health Watch stream stays open on purpose: shutdown must not wait for it forever.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let watch = health
        .watch(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("watch");

    let api = Api::new(channel);
    let issued = api
        .clone()
        .issue(pb::IssueRequest {
            user_id: "alice".into(),
            ..Default::default()
        })
        .await
        .expect("issue")
        .into_inner();
    assert!(verdict(&api, &issued.token).await.valid);
    api.clone()
        .revoke(pb::RevokeRequest {
            target: Some(Target::Token(issued.token.clone())),
            ..Default::default()
        })
        .await
        .expect("revoke");
    let after = verdict(&api, &issued.token).await;
    assert_eq!(after.reason, pb::Reason::TokenRevoked as i32);
    assert!(dir.path().join("token-sidecar.db").exists());
    assert!(dir.path().join("token-sidecar.db.dev-key").exists());

    // SIGHUP reloads keys (none are configured here) and the sidecar keeps serving.
    sidecar.signal("-HUP");
    sidecar
        .wait_for_line("SIGHUP", Duration::from_secs(10))
        .await;
    assert_eq!(
        verdict(&api, &issued.token).await.reason,
        pb::Reason::TokenRevoked as i32
    );

    sidecar.signal("-TERM");
    let (exit, log) = sidecar.wait().await;
    assert!(exit.success(), "exit status {exit:?}");
    drop(watch);

    assert!(log.contains("embedded SQLite"), "says it runs on SQLite");
    assert!(
        log.contains("development HS256 key"),
        "warns about the dev key"
    );
    // Request logs carry method, result, user and jti — never the token.
    assert!(
        log.lines().any(|l| l.contains("rpc")
            && l.contains("Issue")
            && l.contains("alice")
            && l.contains(&issued.jti)),
        "no request log line for the Issue"
    );
    // A revocation's line says whose session ended, and which.
    assert!(
        log.lines().any(|l| l.contains("method=\"Revoke\"")
            && l.contains("user_id=alice")
            && l.contains("session_id=")),
        "the Revoke line names the user and the session:\n{log}"
    );
    let (_, signature) = issued.token.rsplit_once('.').expect("jws");
    assert!(!log.contains(signature), "a token reached the log");
    let secret = std::fs::read(dir.path().join("token-sidecar.db.dev-key")).expect("key");
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    assert!(!log.contains(&hex), "the key reached the log");
}

/// Every RPC the API offers, successes and failures, with secrets configured: the log (JSON and
/// text, at debug level) holds none of the tokens, key material or the admin credential.
#[tokio::test]
async fn logs_over_a_full_scenario_hold_no_token_key_or_credential() {
    crate::require!(Postgres);
    let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys");
    for format in ["json", "text"] {
        let dir = tempfile::tempdir().expect("dir");
        let hs_key = dir.path().join("hs.key");
        let hs_secret = "an-hmac-secret-that-is-long-enough-0123456789";
        std::fs::write(&hs_key, hs_secret).expect("write");
        let credential = "the-admin-credential-0123456789abcdef";
        let credential_file = dir.path().join("admin");
        std::fs::write(&credential_file, credential).expect("write");
        for file in [&hs_key, &credential_file] {
            std::fs::set_permissions(file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .expect("chmod");
        }
        let database_url = crate::common::fresh_postgres_database().await;
        let key_list = format!(
            "es=ES256:{keys}/p256.pem,rsa=RS256:{keys}/rsa.pem,hs=HS256:{}",
            hs_key.display()
        );
        let sidecar = SidecarProcess::start(
            dir.path(),
            &[
                ("RUST_LOG", "debug"),
                ("TOKEN_SIDECAR_LOG_FORMAT", format),
                ("DATABASE_URL", &database_url),
                ("TOKEN_SIDECAR_KEYS", &key_list),
                (
                    "TOKEN_SIDECAR_ADMIN_TOKEN_FILE",
                    &credential_file.display().to_string(),
                ),
            ],
        )
        .await;
        let api = Api::new(sidecar.connect().await);
        let mut tokens = Vec::new();
        let issue = |user: &str| {
            let mut api = api.clone();
            let request = with_bearer(
                pb::IssueRequest {
                    user_id: user.into(),
                    claims: Some(prost_types::Struct::default()),
                    ttl: None,
                    ..Default::default()
                },
                credential,
            );
            async move { api.issue(request).await.map(|r| r.into_inner()) }
        };
        let first = issue("alice").await.expect("issue");
        tokens.push(first.token.clone());
        assert!(verdict(&api, &first.token).await.valid);
        let refreshed = api
            .clone()
            .refresh(pb::RefreshRequest {
                token: first.token.clone(),
                ..Default::default()
            })
            .await
            .expect("refresh")
            .into_inner();
        tokens.push(refreshed.token.clone());
        // A forged signature, a tampered payload, garbage: answers, and still nothing logged.
        let (head, _) = first.token.rsplit_once('.').expect("jws");
        let forged = format!("{head}.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
        tokens.push(forged.clone());
        assert!(!verdict(&api, &forged).await.valid);
        let wrong = api
            .clone()
            .issue(with_bearer(
                pb::IssueRequest {
                    user_id: "mallory".into(),
                    ..Default::default()
                },
                "a-wrong-credential-guess-0000000000",
            ))
            .await
            .expect_err("wrong credential");
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
        api.clone()
            .revoke(pb::RevokeRequest {
                target: Some(Target::Token(refreshed.token.clone())),
                ..Default::default()
            })
            .await
            .expect("revoke token");
        assert!(
            api.clone()
                .refresh(pb::RefreshRequest {
                    token: first.token.clone(),
                    ..Default::default()
                })
                .await
                .is_err()
        );
        let second = issue("bob").await.expect("issue");
        tokens.push(second.token.clone());
        api.clone()
            .revoke(with_bearer(
                pb::RevokeRequest {
                    target: Some(Target::Jti(second.jti.clone())),
                    ..Default::default()
                },
                credential,
            ))
            .await
            .expect("revoke jti");
        api.clone()
            .revoke(with_bearer(
                pb::RevokeRequest {
                    target: Some(Target::User(pb::UserRevocation {
                        user_id: "bob".into(),
                        until: Some(prost_types::Timestamp {
                            seconds: 4_102_444_800,
                            nanos: 0,
                        }),
                    })),
                    ..Default::default()
                },
                credential,
            ))
            .await
            .expect("ban");
        assert!(issue("bob").await.is_err(), "banned");
        api.clone()
            .get_user_status(with_bearer(
                pb::GetUserStatusRequest {
                    user_id: "bob".into(),
                },
                credential,
            ))
            .await
            .expect("status");
        api.clone()
            .lift_ban(with_bearer(
                pb::LiftBanRequest {
                    user_id: "bob".into(),
                    ..Default::default()
                },
                credential,
            ))
            .await
            .expect("lift");
        api.clone()
            .get_jwks(pb::GetJwksRequest {})
            .await
            .expect("jwks");

        sidecar.signal("-TERM");
        let (exit, log) = sidecar.wait().await;
        assert!(exit.success(), "exit status {exit:?}");
        assert!(log.lines().count() > 10, "the scenario was logged:\n{log}");
        for token in &tokens {
            for (i, part) in token.split('.').enumerate() {
                assert!(
                    !log.contains(part),
                    "{format} log holds part {i} of a token:\n{log}"
                );
            }
        }
        for secret in [hs_secret, credential, "a-wrong-credential-guess"] {
            assert!(!log.contains(secret), "{format} log holds a secret");
        }
        for pem in ["p256.pem", "rsa.pem"] {
            let text = std::fs::read_to_string(format!("{keys}/{pem}")).expect("pem");
            for line in text.lines().filter(|l| !l.starts_with("-----")) {
                assert!(!log.contains(line), "{format} log holds {pem} material");
            }
        }
        assert!(
            !log.contains("PRIVATE KEY"),
            "{format} log mentions a PEM body"
        );
    }
}

/// SIGTERM while Revokes are blocked inside the database: the sidecar stops accepting, lets the
/// in-flight RPCs finish (they answer OK once they commit), then exits 0.
#[tokio::test]
async fn sigterm_under_load_finishes_in_flight_rpcs_and_exits_0() {
    crate::require!(Postgres);
    let dir = tempfile::tempdir().expect("dir");
    let key_spec = crate::common::write_test_key(dir.path());
    let database_url = crate::common::fresh_postgres_database().await;
    let metrics_addr = std::net::SocketAddr::from(([127, 0, 0, 1], crate::common::free_port()));
    let metrics_listen = metrics_addr.to_string();
    let sidecar = SidecarProcess::start(
        dir.path(),
        &[
            ("DATABASE_URL", &database_url),
            ("TOKEN_SIDECAR_KEYS", &key_spec),
            ("TOKEN_SIDECAR_METRICS_LISTEN", &metrics_listen),
            ("TOKEN_SIDECAR_SHUTDOWN_GRACE", "30s"),
            // The Revokes wait on the test's lock for as long as the test holds it.
            ("TOKEN_SIDECAR_STORE_TIMEOUT", "60s"),
        ],
    )
    .await;
    let api = Api::new(sidecar.connect().await);
    let mut issued = Vec::new();
    for i in 0..40 {
        let token = api
            .clone()
            .issue(pb::IssueRequest {
                user_id: format!("user-{i}"),
                ..Default::default()
            })
            .await
            .expect("issue")
            .into_inner();
        issued.push(token);
    }

    // Hold the denylist so that every Revoke stays in flight inside the sidecar.
    let mut blocker = crate::common::lock_denylist(&database_url).await;
    let revokes: Vec<_> = issued
        .iter()
        .map(|t| {
            let mut api = api.clone();
            let jti = t.jti.clone();
            tokio::spawn(async move {
                api.revoke(pb::RevokeRequest {
                    target: Some(Target::Jti(jti)),
                    ..Default::default()
                })
                .await
            })
        })
        .collect();
    // Every Revoke is in flight inside the sidecar (waiting on the lock or for a connection).
    crate::common::eventually(
        Duration::from_secs(20),
        "40 revokes in flight",
        || async move {
            let (_, body) = crate::common::http_get(metrics_addr, "/metrics").await;
            crate::common::metric_value(&body, "token_sidecar_requests_in_flight") == Some(40.0)
        },
    )
    .await;
    let verifies: Vec<_> = issued
        .iter()
        .map(|t| {
            let api = api.clone();
            let token = t.token.clone();
            tokio::spawn(async move {
                let mut answered = 0;
                for _ in 0..50 {
                    match api
                        .clone()
                        .verify(pb::VerifyRequest {
                            token: token.clone(),
                            ..Default::default()
                        })
                        .await
                    {
                        Ok(_) => answered += 1,
                        Err(_) => break,
                    }
                }
                answered
            })
        })
        .collect();
    sidecar.signal("-TERM");
    // Stopping waits for the in-flight Revokes: the process is still alive while they block.
    let mut sidecar = sidecar;
    sidecar
        .wait_for_line("shutting down", Duration::from_secs(10))
        .await;
    assert!(
        std::path::Path::new(&format!("/proc/{}", sidecar.pid)).exists(),
        "exited with RPCs in flight"
    );
    sqlx::query("COMMIT")
        .execute(&mut blocker)
        .await
        .expect("release");

    let mut acknowledged = 0;
    for revoke in revokes {
        let answer = revoke.await.expect("join");
        assert!(answer.is_ok(), "an in-flight Revoke failed: {answer:?}");
        acknowledged += 1;
    }
    for verify in verifies {
        verify.await.expect("join");
    }
    let (exit, _) = sidecar.wait().await;
    assert!(exit.success(), "exit status {exit:?}");
    let stored: i64 = {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&database_url)
            .await
            .expect("connect");
        sqlx::query_scalar("SELECT count(*) FROM denylist WHERE kind = 'jti'")
            .fetch_one(&mut c)
            .await
            .expect("count")
    };
    assert_eq!(acknowledged, 40);
    assert_eq!(stored, 40, "every acknowledged revocation is committed");
}

/// A database that is unreachable for longer than a minute at start: the binary stays up, its
/// liveness name SERVING and TokenService NOT_SERVING, and becomes SERVING by itself once the
/// database is reachable — no restart needed (what a pod's startup budget relies on).
#[tokio::test]
async fn a_database_unreachable_for_over_a_minute_at_start_is_waited_for() {
    crate::require!(Postgres);
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let store = crate::common::StoreProxy::start(crate::common::postgres_addr()).await;
    store.cut();
    let url = store.url_for(&crate::common::fresh_postgres_database().await);
    let dir = tempfile::tempdir().expect("dir");
    let key = dir.path().join("main.key");
    std::fs::write(&key, crate::common::TEST_SECRET).expect("key");
    let keys = format!("main=HS256:{}", key.display());
    let process = SidecarProcess::start(
        dir.path(),
        &[
            ("DATABASE_URL", url.as_str()),
            ("TOKEN_SIDECAR_KEYS", keys.as_str()),
            ("TOKEN_SIDECAR_HEALTH_INTERVAL", "1s"),
        ],
    )
    .await;
    let channel = Channel::from_shared(format!("http://127.0.0.1:{}", process.port))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let status = |service: &'static str| {
        let mut health = HealthClient::new(channel.clone());
        async move {
            health
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .map(|r| r.into_inner().status)
                .ok()
        }
    };
    // Waiting on another process (the database), with a deadline: not a rule under test. Over a
    // minute by default (past every one-minute timeout on the way to the store);
    // TEST_STARTUP_OUTAGE_SECS shortens it on a laptop.
    let outage = std::env::var("TEST_STARTUP_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(65);
    tokio::time::sleep(Duration::from_secs(outage)).await;
    assert_eq!(
        status("liveness").await,
        Some(ServingStatus::Serving as i32)
    );
    assert_eq!(
        status("tokensidecar.v1.TokenService").await,
        Some(ServingStatus::NotServing as i32)
    );
    store.restore();
    crate::common::eventually(Duration::from_secs(30), "SERVING by itself", || async {
        status("tokensidecar.v1.TokenService").await == Some(ServingStatus::Serving as i32)
    })
    .await;
    assert_eq!(
        status("liveness").await,
        Some(ServingStatus::Serving as i32)
    );
    process.signal("-TERM");
    let (exit, _) = process.wait().await;
    assert!(exit.success());
}

/// SPEC §12: on SIGTERM an open Watch sees NOT_SERVING at once, the server ends the stream, and
/// with the default drain delay the process exits 0 within 2 s although the Watch was open.
#[tokio::test]
async fn sigterm_turns_watches_not_serving_at_once_then_ends_them_and_exits_0() {
    use futures::StreamExt;
    use tonic_health::pb::health_check_response::ServingStatus;
    let dir = tempfile::tempdir().expect("dir");
    let sidecar = SidecarProcess::start(dir.path(), &[]).await;
    let channel = sidecar.connect().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let mut watches = Vec::new();
    for name in ["tokensidecar.v1.TokenService", "", "liveness"] {
        let mut stream = health
            .watch(tonic_health::pb::HealthCheckRequest {
                service: name.into(),
            })
            .await
            .expect("watch")
            .into_inner();
        let first = stream.next().await.expect("first").expect("status");
        assert_eq!(first.status, ServingStatus::Serving as i32, "{name:?}");
        watches.push((name, stream));
    }
    let signalled = std::time::Instant::now();
    sidecar.signal("-TERM");
    for (name, stream) in watches.iter_mut().take(2) {
        let update = tokio::time::timeout(Duration::from_millis(100), stream.next())
            .await
            .unwrap_or_else(|_| panic!("{name:?}: no update within 100 ms of SIGTERM"))
            .expect("an update")
            .expect("status");
        assert_eq!(update.status, ServingStatus::NotServing as i32, "{name:?}");
    }
    // The server ends every Watch (liveness included: it never said NOT_SERVING).
    for (name, stream) in &mut watches {
        let end = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = stream.next().await {}
        })
        .await;
        assert!(end.is_ok(), "{name:?}: the server ended the stream");
    }
    let (exit, log) = sidecar.wait().await;
    assert!(exit.success(), "{log}");
    assert!(
        signalled.elapsed() < Duration::from_secs(2),
        "exited {:?} after SIGTERM",
        signalled.elapsed()
    );
}

/// `--drain-delay`: after SIGTERM health says NOT_SERVING, yet requests — on open connections
/// and new ones — are answered until the delay has passed; then the process exits 0.
#[tokio::test]
async fn during_the_drain_delay_requests_are_still_answered() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let dir = tempfile::tempdir().expect("dir");
    let sidecar =
        SidecarProcess::start(dir.path(), &[("TOKEN_SIDECAR_DRAIN_DELAY", "1500ms")]).await;
    let api = Api::new(sidecar.connect().await);
    let signalled = std::time::Instant::now();
    sidecar.signal("-TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fresh =
        tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{}", sidecar.port))
            .expect("uri")
            .connect()
            .await
            .expect("a new connection during the drain delay");
    let status = tonic_health::pb::health_client::HealthClient::new(fresh.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health answers")
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::NotServing as i32);
    let liveness = tonic_health::pb::health_client::HealthClient::new(fresh.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: "liveness".into(),
        })
        .await
        .expect("health answers")
        .into_inner()
        .status;
    assert_eq!(
        liveness,
        ServingStatus::Serving as i32,
        "liveness stays SERVING"
    );
    assert_eq!(verdict(&api, "x").await.reason(), pb::Reason::Malformed);
    assert_eq!(
        verdict(&Api::new(fresh), "x").await.reason(),
        pb::Reason::Malformed
    );
    let (exit, log) = sidecar.wait().await;
    assert!(exit.success(), "{log}");
    let took = signalled.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(4),
        "exited {took:?} after SIGTERM with a 1.5 s drain delay"
    );
    assert!(log.contains("drain delay"), "{log}");
}

#[tokio::test]
async fn a_callers_newlines_and_escapes_never_forge_a_log_line() {
    // Values a privileged caller controls, shaped to forge an `audit` line and colour a
    // terminal; refused (INVALID_ARGUMENT) or stored, they are logged only escaped.
    const FORGED: &str = "FORGED-LINE";
    let hostile = format!("eve\n2026-12-07T00:00:00Z INFO audit: {FORGED} who=admin\r\u{1b}[31m");
    for format in ["text", "json"] {
        let dir = tempfile::tempdir().expect("dir");
        let sidecar =
            SidecarProcess::start(dir.path(), &[("TOKEN_SIDECAR_LOG_FORMAT", format)]).await;
        let api = Api::new(sidecar.connect().await);
        let refused = api
            .clone()
            .issue(pb::IssueRequest {
                user_id: hostile.clone(),
                ..Default::default()
            })
            .await
            .expect_err("an id with control characters");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        let lifted = api
            .clone()
            .lift_ban(pb::LiftBanRequest {
                user_id: hostile.clone(),
                ..Default::default()
            })
            .await;
        assert_eq!(
            lifted.expect_err("refused").code(),
            tonic::Code::InvalidArgument
        );
        for target in [
            Target::Jti(hostile.clone()),
            Target::SessionId(hostile.clone()),
            Target::User(pb::UserRevocation {
                user_id: hostile.clone(),
                until: None,
            }),
        ] {
            let answer = api
                .clone()
                .revoke(pb::RevokeRequest {
                    target: Some(target),
                    ..Default::default()
                })
                .await;
            assert_eq!(
                answer.expect_err("refused").code(),
                tonic::Code::InvalidArgument
            );
        }
        // A reason may hold a newline (it is prose); the audit line still holds it escaped.
        api.clone()
            .revoke(pb::RevokeRequest {
                target: Some(Target::User(pb::UserRevocation {
                    user_id: "frank".into(),
                    until: None,
                })),
                reason: format!("fraud\n{FORGED} action=LIFT_BAN"),
            })
            .await
            .expect("revoke-all with a multi-line reason");
        sidecar.signal("-TERM");
        let (status, log) = sidecar.wait().await;
        assert!(status.success(), "{log}");
        assert!(
            log.contains(FORGED),
            "{format}: the values were logged:\n{log}"
        );
        for line in log.lines() {
            assert!(
                !line.trim_start().starts_with("2026-12-07T00:00:00Z") && !line.starts_with(FORGED),
                "{format}: a forged line: {line:?}"
            );
            assert!(!line.contains('\u{1b}'), "{format}: a raw escape: {line:?}");
            assert!(
                !line.contains('\r'),
                "{format}: a raw carriage return: {line:?}"
            );
            if format == "json" {
                assert!(
                    serde_json::from_str::<serde_json::Value>(line).is_ok(),
                    "one JSON object per line: {line:?}"
                );
            }
        }
    }
}
