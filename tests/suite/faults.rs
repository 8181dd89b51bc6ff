//! Faults: the database crashes and comes back while two sidecars take Revoke and Verify load.
//! Every Revoke that answered OK must be in the database afterwards and refused by every
//! instance, and both instances must recover without a restart.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::{Backend, PrivatePostgres, Settings, TestApp};
use token_sidecar::api::pb::{self, Reason, revoke_request::Target};
use tonic_health::pb::health_check_response::ServingStatus;

/// Where the test is with the database: revokers wait for their phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Before,
    Crashing,
    Restarted,
}

/// A revocation that was acknowledged, and the token it must kill.
struct Acknowledged {
    token: String,
    kind: &'static str,
    id: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_crash_under_load_loses_no_acknowledged_revocation() {
    crate::require!(Postgres, PostgresBinaries);
    let pg = Arc::new(
        tokio::task::spawn_blocking(PrivatePostgres::start)
            .await
            .expect("join"),
    );
    let a = Settings::new(Backend::Postgres)
        .database_url(&pg.url)
        .arg("--health-interval", "1s")
        .spawn()
        .await;
    let b = Settings::new(Backend::Postgres)
        .sharing(&a)
        .arg("--health-interval", "1s")
        .spawn()
        .await;
    let apps = Arc::new([a, b]);

    let mut issued = Vec::new();
    for user in 0..20 {
        for _ in 0..30 {
            issued.push(apps[0].issue(&format!("user-{user}")).await);
        }
    }
    let issued = Arc::new(issued);

    let stop = Arc::new(AtomicBool::new(false));
    let verified = Arc::new(AtomicUsize::new(0));
    let verify_errors = Arc::new(AtomicUsize::new(0));
    let verifiers: Vec<_> = (0..4)
        .map(|v| {
            let (apps, issued, stop) = (apps.clone(), issued.clone(), stop.clone());
            let (verified, verify_errors) = (verified.clone(), verify_errors.clone());
            tokio::spawn(async move {
                let mut i = v;
                while !stop.load(Ordering::Relaxed) {
                    let token = &issued[i % issued.len()].token;
                    let mut client = apps[i % 2].client.clone();
                    match client
                        .verify(pb::VerifyRequest {
                            token: token.clone(),
                            ..Default::default()
                        })
                        .await
                    {
                        Ok(_) => verified.fetch_add(1, Ordering::Relaxed),
                        Err(_) => verify_errors.fetch_add(1, Ordering::Relaxed),
                    };
                    i += 7;
                }
            })
        })
        .collect();

    // Eight revokers, each through both instances, by jti and by token (its session). Each does
    // the first third of its share before the crash, the second third while the database goes
    // down and comes back, the last third once it is back: phases, not pacing.
    let (phase, phases) = tokio::sync::watch::channel(Phase::Before);
    let progress = Arc::new(AtomicUsize::new(0));
    let revokers: Vec<_> = (0..8)
        .map(|r| {
            let (apps, issued, progress) = (apps.clone(), issued.clone(), progress.clone());
            let mut phases = phases.clone();
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                let (mut failed, mut after_restart) = (0usize, 0usize);
                let share: Vec<_> = issued.iter().enumerate().skip(r).step_by(8).collect();
                for (n, &(i, t)) in share.iter().enumerate() {
                    let wanted =
                        [Phase::Before, Phase::Crashing, Phase::Restarted][n * 3 / share.len()];
                    phases
                        .wait_for(|now| *now >= wanted)
                        .await
                        .expect("the test drives the phases");
                    let (target, kind, id) = if i % 2 == 0 {
                        (Target::Jti(t.jti.clone()), "jti", t.jti.clone())
                    } else {
                        (Target::Token(t.token.clone()), "sid", t.session_id.clone())
                    };
                    match apps[i % 2].revoke(target).await {
                        Ok(_) => {
                            after_restart += usize::from(wanted == Phase::Restarted);
                            acknowledged.push(Acknowledged {
                                token: t.token.clone(),
                                kind,
                                id,
                            });
                        }
                        Err(status) => {
                            assert_eq!(
                                status.code(),
                                tonic::Code::Unavailable,
                                "a failed Revoke says UNAVAILABLE: {status:?}"
                            );
                            failed += 1;
                        }
                    }
                    progress.fetch_add(1, Ordering::Relaxed);
                }
                (acknowledged, failed, after_restart)
            })
        })
        .collect();

    crate::common::eventually(Duration::from_secs(60), "a third revoked", || {
        let progress = progress.clone();
        async move { progress.load(Ordering::Relaxed) >= issued_len_third() }
    })
    .await;
    let crashed_at = std::time::Instant::now();
    phase.send_replace(Phase::Crashing);
    let pg_restart = pg.clone();
    tokio::task::spawn_blocking(move || pg_restart.crash_and_restart())
        .await
        .expect("join");
    let outage = crashed_at.elapsed();
    phase.send_replace(Phase::Restarted);

    let mut acknowledged = Vec::new();
    let mut failed = 0;
    let mut after_restart = 0;
    for revoker in revokers {
        let (acks, fails, acked_after_restart) = revoker.await.expect("join");
        acknowledged.extend(acks);
        failed += fails;
        after_restart += acked_after_restart;
    }
    stop.store(true, Ordering::Relaxed);
    for verifier in verifiers {
        verifier.await.expect("join");
    }

    // Both instances recover by themselves: SERVING, and a new Revoke is acknowledged.
    for app in apps.iter() {
        app.wait_for_health(ServingStatus::Serving).await;
        crate::common::eventually(
            Duration::from_secs(30),
            "revoke after recovery",
            || async move {
                let t = app.issue("after-crash").await;
                app.revoke(Target::Jti(t.jti)).await.is_ok()
            },
        )
        .await;
    }

    let mut conn = {
        use sqlx::Connection;
        sqlx::PgConnection::connect(&pg.url).await.expect("connect")
    };
    let mut missing = 0;
    for ack in &acknowledged {
        let found: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM denylist WHERE kind = $1 AND id = $2)",
        )
        .bind(ack.kind)
        .bind(&ack.id)
        .fetch_one(&mut conn)
        .await
        .expect("query");
        if !found {
            missing += 1;
        }
    }
    println!(
        "postgres crash after {} of {} revokes (stop+start {outage:?}): {} acknowledged, {} found \
         in the database, {missing} missing ({after_restart} acknowledged after the restart); \
         {failed} answered UNAVAILABLE; {} verifies answered, {} errors",
        issued_len_third(),
        issued.len(),
        acknowledged.len(),
        acknowledged.len() - missing,
        verified.load(Ordering::Relaxed),
        verify_errors.load(Ordering::Relaxed),
    );
    // First the store (a lost acknowledgement says so), then what every instance answers.
    assert_eq!(missing, 0, "an acknowledged revocation was lost");
    for app in apps.iter() {
        for ack in &acknowledged {
            crate::common::eventually(Duration::from_secs(30), "revoked everywhere", || async {
                app.verdict(&ack.token).await == Reason::TokenRevoked
            })
            .await;
        }
    }
    assert!(
        after_restart > 0,
        "revocations are acknowledged again after the restart"
    );
    assert!(
        acknowledged.len() > issued_len_third(),
        "revocations were acknowledged before and after the crash"
    );
}

fn issued_len_third() -> usize {
    600 / 3
}

/// A caller's deadline bounds a Revoke stuck behind a locked table: the answer comes by the
/// deadline and is not OK (nothing acknowledged); once the table is free a retry succeeds.
#[tokio::test]
async fn a_revoke_stuck_in_the_store_answers_by_the_callers_deadline() {
    crate::require!(Postgres);
    let app = TestApp::spawn(Backend::Postgres).await;
    let t = app.issue("alice").await;
    let mut blocker = crate::common::lock_denylist(&app.database_url).await;

    let mut request = tonic::Request::new(pb::RevokeRequest {
        target: Some(Target::Jti(t.jti.clone())),
        ..Default::default()
    });
    request.set_timeout(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let answer = app.client.clone().revoke(request).await;
    let waited = started.elapsed();
    let status = answer.expect_err("no commit, no OK");
    assert!(
        matches!(
            status.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "{status:?}"
    );
    assert!(
        waited < Duration::from_secs(3),
        "answered after {waited:?}, not by the 300 ms deadline"
    );

    sqlx::query("ROLLBACK")
        .execute(&mut blocker)
        .await
        .expect("release");
    app.revoke(Target::Jti(t.jti.clone()))
        .await
        .expect("a retry once the store is free");
    assert_eq!(app.verdict(&t.token).await, Reason::TokenRevoked);
}

/// Anyone holding the writers' advisory lock — a role with no grants at all can take it, and a
/// sidecar frozen mid-transaction holds it — fails writes within `--store-timeout`, not at the
/// caller's deadline; reads and health stay truthful; the pool recovers once it is released.
#[tokio::test]
async fn a_held_writers_lock_fails_writes_within_the_store_timeout() {
    crate::require!(Postgres);
    use sqlx::Connection;
    let app = crate::common::Settings::new(Backend::Postgres)
        .arg("--store-timeout", "1s")
        .spawn()
        .await;
    let tokens: Vec<_> = futures::future::join_all((0..6).map(|i| {
        let app = &app;
        async move { app.issue(&format!("held-{i}")).await }
    }))
    .await;
    let mut holder = sqlx::PgConnection::connect(&app.database_url)
        .await
        .expect("connect");
    // "ts-chg" in ASCII: the writers' advisory lock.
    sqlx::query("SELECT pg_advisory_lock(128038031550567)")
        .execute(&mut holder)
        .await
        .expect("take the writers' lock");
    for t in &tokens[..5] {
        let started = std::time::Instant::now();
        // No client deadline: the bound is the sidecar's own.
        let status = app
            .revoke(Target::Jti(t.jti.clone()))
            .await
            .expect_err("no commit, no OK");
        let waited = started.elapsed();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(
            waited < Duration::from_secs(3),
            "answered after {waited:?} with a 1 s store timeout"
        );
    }
    // Writes the caller gave up on (its deadline is shorter than the store timeout): their
    // connections are closed, not handed back to the pool with a statement still waiting.
    for t in &tokens[..4] {
        let mut request = tonic::Request::new(pb::RevokeRequest {
            target: Some(Target::Jti(t.jti.clone())),
            ..Default::default()
        });
        request.set_timeout(Duration::from_millis(100));
        app.client
            .clone()
            .revoke(request)
            .await
            .expect_err("cancelled by the caller's deadline");
    }
    assert!(
        app.counter(r#"store_write_failures_total{why="timeout"}"#) >= 5,
        "failing writes show in token_sidecar_store_write_failures_total"
    );
    // Reads never wait behind the writers' lock, not even while every writer waits on it.
    let waiting: Vec<_> = tokens
        .iter()
        .map(|t| {
            let app_client = app.client.clone();
            let jti = t.jti.clone();
            tokio::spawn(async move {
                let _ = app_client
                    .clone()
                    .revoke(pb::RevokeRequest {
                        target: Some(Target::Jti(jti)),
                        ..Default::default()
                    })
                    .await;
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let fresh = app.issue("reader").await;
    assert!(app.verify(&fresh.token).await.valid);
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "a read of an uncached user waited {:?} behind the writes",
        started.elapsed()
    );
    for w in waiting {
        w.await.expect("join");
    }
    // Health says SERVING.
    app.wait_for_health(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    sqlx::query("SELECT pg_advisory_unlock_all()")
        .execute(&mut holder)
        .await
        .expect("release");
    // Nine failed writes leaked no connection: every one of the six revokes now commits.
    for t in &tokens {
        app.revoke(Target::Jti(t.jti.clone()))
            .await
            .expect("once the lock is free");
        assert_eq!(app.verdict(&t.token).await, Reason::TokenRevoked);
    }
}

/// SPEC §5 Revoke: the connection breaks after COMMIT was sent. The sidecar asks the database
/// whether the transaction committed and answers OK when it did — not "nothing was changed".
#[tokio::test]
async fn a_commit_whose_answer_is_lost_is_rechecked_and_acknowledged() {
    crate::require!(Postgres);
    let proxy = crate::common::StoreProxy::start(crate::common::postgres_addr()).await;
    let direct = crate::common::fresh_postgres_database().await;
    let app = crate::common::Settings::new(Backend::Postgres)
        .database_url(&format!(
            "{}?statement-cache-capacity=0",
            proxy.url_for(&direct)
        ))
        .spawn()
        .await;
    let t = app.issue("alice").await;
    proxy.cut_after_next_commit();
    let answer = app
        .revoke(Target::Jti(t.jti.clone()))
        .await
        .expect("it committed, so it is acknowledged");
    assert!(answer.stored);
    assert!(
        proxy.commits_cut() >= 1,
        "the commit's answer was really lost"
    );
    assert_eq!(app.verdict(&t.token).await, Reason::TokenRevoked);
    // The store has it, for every instance.
    let fresh = crate::common::Settings::new(Backend::Postgres)
        .database_url(&direct)
        .spawn()
        .await;
    assert_eq!(fresh.verdict(&t.token).await, Reason::TokenRevoked);
}
