//! The built binary as a user runs it: defaults with no set-up, a full session, logs free of
//! tokens and secrets, and a graceful exit 0 on SIGTERM.
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use token_sidecar::grpc::pb::{self, revoke_request::Target};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[tokio::test]
async fn default_run_serves_a_session_logs_no_secrets_and_exits_0_on_sigterm() {
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_token-sidecar"))
        .current_dir(dir.path())
        .env("TOKEN_SIDECAR_LISTEN", format!("127.0.0.1:{port}"))
        .env("TOKEN_SIDECAR_METRICS_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "debug")
        .env("TOKEN_SIDECAR_SHUTDOWN_GRACE", "2s")
        .env_remove("DATABASE_URL")
        .env_remove("TOKEN_SIDECAR_KEYS")
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary starts");
    let stderr = child.stderr.take().expect("stderr");
    let (lines_tx, mut lines_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line.clone());
            all.push(line);
        }
        all
    });
    // Wait (bounded) for the listening line rather than sleeping.
    let listening = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines_rx.recv().await {
            if line.contains("token-sidecar listening") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        listening,
        Ok(true),
        "the sidecar never said it was listening"
    );

    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel.clone());
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(Ok(update)) = watch.next().await {
            if update.status == ServingStatus::Serving as i32 {
                return;
            }
        }
    })
    .await
    .expect("SERVING within 30s");

    let mut api = pb::token_service_client::TokenServiceClient::new(channel);
    let issued = api
        .issue(pb::IssueRequest {
            user_id: "alice".into(),
            ..Default::default()
        })
        .await
        .expect("issue")
        .into_inner();
    let verdict = |api: &mut pb::token_service_client::TokenServiceClient<_>, token: String| {
        let mut api = api.clone();
        async move {
            api.verify(pb::VerifyRequest { token })
                .await
                .expect("verify")
                .into_inner()
        }
    };
    assert!(verdict(&mut api, issued.token.clone()).await.valid);
    api.revoke(pb::RevokeRequest {
        target: Some(Target::Token(issued.token.clone())),
    })
    .await
    .expect("revoke");
    let after = verdict(&mut api, issued.token.clone()).await;
    assert_eq!(after.reason, pb::Reason::TokenRevoked as i32);
    assert!(dir.path().join("token-sidecar.db").exists());
    assert!(dir.path().join("token-sidecar.db.dev-key").exists());

    // SIGHUP reloads keys (none are configured here) and the sidecar keeps serving.
    let status = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let hup = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = lines_rx.recv().await {
            if line.contains("SIGHUP") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(hup, Ok(true), "SIGHUP was not handled");
    assert!(
        verdict(&mut api, issued.token.clone()).await.reason == pb::Reason::TokenRevoked as i32
    );

    // The health Watch stream stays open on purpose: shutdown must not wait for it forever.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(exit.success(), "exit status {exit:?}");
    drop(watch);

    let log = reader.join().expect("log reader").join("\n");
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
    let (_, signature) = issued.token.rsplit_once('.').expect("jws");
    assert!(!log.contains(signature), "a token reached the log");
    let secret = std::fs::read(dir.path().join("token-sidecar.db.dev-key")).expect("key");
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    assert!(!log.contains(&hex), "the key reached the log");
}
