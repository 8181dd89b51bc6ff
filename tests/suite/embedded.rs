//! The embedded SQLite store as its users meet it (SPEC §6): one process owns the file, a file
//! deleted under the process turns it NOT_SERVING, and a full disk never yields an
//! acknowledgement that a restart forgets.
use crate::common::{Backend, Settings, SidecarProcess, free_port};
use token_sidecar::api::pb::{self, Reason, revoke_request::Target};
use tonic_health::pb::health_check_response::ServingStatus;

#[tokio::test]
async fn a_second_process_on_the_same_sqlite_file_refuses_to_start_naming_the_first() {
    let dir = tempfile::tempdir().expect("dir");
    // The README's first command, twice in one directory: the second has another port.
    let first = SidecarProcess::start(dir.path(), &[]).await;
    let second = std::process::Command::new(env!("CARGO_BIN_EXE_token-sidecar"))
        .current_dir(dir.path())
        .env("TOKEN_SIDECAR_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("TOKEN_SIDECAR_METRICS_LISTEN", "127.0.0.1:0")
        .env_remove("DATABASE_URL")
        .env_remove("TOKEN_SIDECAR_KEYS")
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("in use by process {}", first.pid)),
        "names the holder: {stderr}"
    );
    // The first is unharmed and still owns it.
    let api = pb::token_service_client::TokenServiceClient::new(first.connect().await);
    api.clone()
        .issue(pb::IssueRequest {
            user_id: "alice".into(),
            ..Default::default()
        })
        .await
        .expect("the owner still serves");
    first.signal("-TERM");
    let (exit, _) = first.wait().await;
    assert!(exit.success());
    // Once it has exited, the file is free for the next process.
    let next = SidecarProcess::start(dir.path(), &[]).await;
    next.connect().await;
}

#[tokio::test]
async fn the_sqlite_file_deleted_under_a_running_process_turns_it_not_serving_and_refuses_writes() {
    let app = Settings::new(Backend::Sqlite)
        .arg("--health-interval", "1s")
        .spawn()
        .await;
    let token = app.issue("alice").await;
    let file = app.dir.path().join("test.db");
    std::fs::remove_file(&file).expect("delete the database file");

    let refused = app
        .revoke(Target::Jti(token.jti.clone()))
        .await
        .expect_err("a revocation into a deleted file is never acknowledged");
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert!(
        refused.message().contains("deleted"),
        "{}",
        refused.message()
    );
    app.wait_for_health(ServingStatus::NotServing).await;
    assert!(app.counter(r#"store_write_failures_total{why="file_lost"}"#) >= 1);

    // A file put in its place is another file: still refused.
    std::fs::write(&file, b"").expect("replace");
    let refused = app
        .revoke(Target::Jti(token.jti))
        .await
        .expect_err("a replaced file is not the one opened");
    assert!(
        refused.message().contains("replaced"),
        "{}",
        refused.message()
    );
}

/// A tmpfs of `size` mounted for the test's life (root is needed; the test machine has it).
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().expect("dir");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount runs");
        assert!(status.success(), "mounting a tmpfs needs root");
        Self(dir)
    }

    /// Writes a file until the filesystem is full.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.0.path().join("filler");
        let mut file = std::fs::File::create(&path).expect("filler");
        let chunk = vec![0u8; 4096];
        while file.write_all(&chunk).and_then(|()| file.flush()).is_ok() {}
        let _ = file.sync_all();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

#[tokio::test]
async fn sqlite_on_a_full_disk_never_acknowledges_a_revocation_a_restart_forgets() {
    let disk = Tmpfs::mount("2m");
    let url = format!("sqlite:{}", disk.0.path().join("db").display());
    let app = Settings::new(Backend::Sqlite)
        .database_url(&url)
        .spawn()
        .await;
    let mut tokens = Vec::new();
    for i in 0..120 {
        tokens.push(app.issue(&format!("user-{i}")).await);
    }

    let filler = disk.fill();
    // Revoke until the full disk refuses one (SQLite may still have room in pages it holds).
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    let mut next = tokens.iter();
    for t in next.by_ref() {
        match app.revoke(Target::Jti(t.jti.clone())).await {
            Ok(answer) => {
                assert!(answer.stored);
                acknowledged.push(t.clone());
            }
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                refused += 1;
                if refused == 3 {
                    break;
                }
            }
        }
    }
    assert!(refused >= 1, "the full disk refused a write");
    assert!(app.counter(r#"store_write_failures_total{why="error"}"#) >= 1);

    // Space again: what is acknowledged now must be durable too (before, the connection that
    // failed went back to the pool and its "commits" released only a savepoint).
    std::fs::remove_file(filler).expect("free the disk");
    for t in next.take(40) {
        let answer = app
            .revoke(Target::Jti(t.jti.clone()))
            .await
            .expect("with space, revocations commit");
        assert!(answer.stored);
        acknowledged.push(t.clone());
    }
    app.shutdown().await;

    let restarted = Settings::new(Backend::Sqlite)
        .database_url(&url)
        .spawn()
        .await;
    for t in &acknowledged {
        assert_eq!(
            restarted.verdict(&t.token).await,
            Reason::TokenRevoked,
            "an acknowledged revocation survived the restart"
        );
    }
}

#[tokio::test]
async fn a_write_ahead_log_deleted_under_a_running_process_loses_no_acknowledged_revocation() {
    let dir = tempfile::tempdir().expect("dir");
    let first = SidecarProcess::start(dir.path(), &[]).await;
    let api = pb::token_service_client::TokenServiceClient::new(first.connect().await);
    let issue = |user: &'static str| {
        let mut api = api.clone();
        async move {
            api.issue(pb::IssueRequest {
                user_id: user.into(),
                ..Default::default()
            })
            .await
            .expect("issue")
            .into_inner()
        }
    };
    let revoke = |jti: String| {
        let mut api = api.clone();
        async move {
            api.revoke(pb::RevokeRequest {
                target: Some(Target::Jti(jti)),
                ..Default::default()
            })
            .await
        }
    };
    let before = issue("alice").await;
    let after = issue("bob").await;
    revoke(before.jti.clone())
        .await
        .expect("acknowledged before the log is deleted");
    let wal = dir.path().join("token-sidecar.db-wal");
    assert!(wal.exists(), "the embedded store runs in WAL mode");
    std::fs::remove_file(&wal).expect("delete the write-ahead log");
    let answer = revoke(after.jti.clone()).await;
    let refused = answer
        .as_ref()
        .expect_err("a write after the log is gone is refused");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("-wal"), "{}", refused.message());

    // A crash: no shutdown, no checkpoint on exit.
    first.signal("-KILL");
    let _ = first.wait().await;
    let second = SidecarProcess::start(dir.path(), &[]).await;
    let api = pb::token_service_client::TokenServiceClient::new(second.connect().await);
    let verdict = api
        .clone()
        .verify(pb::VerifyRequest {
            token: before.token,
            ..Default::default()
        })
        .await
        .expect("verify")
        .into_inner();
    assert_eq!(
        verdict.reason,
        Reason::TokenRevoked as i32,
        "the revocation acknowledged before the crash survived it"
    );
}
