//! Many sidecars on one PostgreSQL (SPEC §10): the connection budget, changes applied from
//! their announcements with no query, a missed announcement read from the store, NATS (and NATS
//! stopped under load), a database that is full at start, and poll mode through a real
//! PgBouncer.
use std::time::Duration;

use crate::common::{
    Backend, PgBouncer, PrivateNats, PrivatePostgres, SEC, Settings, SidecarProcess, TestApp,
    connections_to, database_name, eventually, free_port, http_get, metric_value, shared_nats_url,
};
use crate::sync::{rejected_with, revocations_reach_the_other_instance};
use token_sidecar::api::pb::{Reason, revoke_request::Target};
use token_sidecar::clock::ManualClock;
use token_sidecar::store::FEED_APPLICATION_NAME;
use token_sidecar::sync::LISTENER_APPLICATION_NAME;

const CONVERGE: Duration = Duration::from_secs(15);

/// Announcements only: no poll runs during a test (the staleness bound is an hour, so the
/// safety net is half an hour).
const ANNOUNCEMENTS_ONLY: [(&str, &str); 3] = [
    ("--max-staleness", "1h"),
    ("--sync-safety-poll-interval", "1h"),
    ("--sync-poll-interval", "1h"),
];

fn changes_queries(app: &TestApp) -> u64 {
    app.counter(r#"store_queries_total{kind="changes"}"#)
}

fn propagations(app: &TestApp) -> f64 {
    metric_value(
        &app.metrics.render(),
        "token_sidecar_sync_propagation_seconds_count",
    )
    .unwrap_or(0.0)
}

fn channel_up(app: &TestApp) -> bool {
    app.metrics.sync.channel_up.get() == 1
}

/// `count` instances on one fresh database sharing a clock, each with `args`.
async fn fleet(count: usize, args: &[(&str, &str)]) -> Vec<TestApp> {
    let clock = ManualClock::new(crate::common::T0_MS);
    let mut apps: Vec<TestApp> = Vec::new();
    for _ in 0..count {
        let mut settings = Settings::new(Backend::Postgres).clock(clock.clone());
        if let Some(first) = apps.first() {
            settings = settings.sharing(first);
        }
        for (flag, value) in args {
            settings = settings.arg(flag, value);
        }
        apps.push(settings.spawn().await);
    }
    apps
}

/// An idle sidecar in a sync mode holds one connection, named `sync_connection`, and its
/// polls run on it.
async fn an_idle_sidecar_holds_one_connection(mode: &[(&str, &str)], sync_connection: &str) {
    let mut settings = Settings::new(Backend::Postgres)
        .arg("--database-idle-timeout", "200ms")
        .arg("--sync-safety-poll-interval", "300ms")
        .arg("--sync-poll-interval", "300ms");
    for (flag, value) in mode {
        settings = settings.arg(flag, value);
    }
    let app = settings.spawn().await;
    // Use the pool: a revocation, and a Verify of a user whose cutoff is not cached.
    let t = app.issue("idle").await;
    app.revoke(Target::Jti(t.jti.clone()))
        .await
        .expect("revoke");
    let other = app.issue("someone-else").await;
    assert!(app.verify(&other.token).await.valid);
    let db = database_name(&app.database_url);
    eventually(CONVERGE, "pooled connections closed when idle", || async {
        connections_to(&db, sync_connection).await == (1, 1)
    })
    .await;
    // Idle: the polls run on that connection; nothing opens another.
    let before = changes_queries(&app);
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            connections_to(&db, sync_connection).await,
            (1, 1),
            "an idle sidecar holds only its {sync_connection} connection"
        );
    }
    let polls = changes_queries(&app) - before;
    assert!(
        (2..=8).contains(&polls),
        "polled {polls} times in 1.5 s at a 300 ms interval"
    );
    assert!(app.verify(&other.token).await.valid, "still serving");
    assert_eq!(app.verdict(&t.token).await, Reason::TokenRevoked);
}

#[tokio::test]
async fn an_idle_notify_sidecar_holds_its_listen_connection_only() {
    crate::require!(Postgres);
    an_idle_sidecar_holds_one_connection(&[], LISTENER_APPLICATION_NAME).await;
}

#[tokio::test]
async fn an_idle_poll_sidecar_holds_its_polling_connection_only() {
    crate::require!(Postgres);
    an_idle_sidecar_holds_one_connection(&[("--sync-mode", "poll")], FEED_APPLICATION_NAME).await;
}

#[tokio::test]
async fn an_idle_nats_sidecar_holds_its_polling_connection_only() {
    crate::require!(Postgres, Nats);
    let nats = shared_nats_url();
    an_idle_sidecar_holds_one_connection(
        &[("--sync-mode", "nats"), ("--nats-url", nats.as_str())],
        FEED_APPLICATION_NAME,
    )
    .await;
}

/// The most connections to `db` seen while `load` runs, sampled every 5 ms (the load is other
/// tasks; the wait is bounded by a minute).
async fn most_connections_while(load: &[tokio::task::JoinHandle<()>], db: &str) -> i64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut most = 0;
    while load.iter().any(|t| !t.is_finished()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the load did not finish within a minute"
        );
        most = most.max(connections_to(db, LISTENER_APPLICATION_NAME).await.0);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    most
}

#[tokio::test]
async fn under_load_the_connections_stay_within_their_bound() {
    crate::require!(Postgres);
    under_load_at_most(2).await;
}

#[tokio::test]
async fn a_budget_of_one_connection_listens_and_queries_on_it() {
    crate::require!(Postgres);
    under_load_at_most(1).await;
}

/// SPEC §10 under load, with the defaults: a burst of cache misses and writes on one sidecar
/// while another listens; each holds one connection throughout, and changes still arrive as
/// announcements (no catch-up query).
#[tokio::test]
async fn by_default_a_notify_sidecar_does_all_its_database_work_on_one_connection() {
    crate::require!(Postgres);
    let mut args = ANNOUNCEMENTS_ONLY.to_vec();
    args.push(("--cutoff-cache-ttl", "0s"));
    let apps = fleet(2, &args).await;
    let (a, b) = (&apps[0], &apps[1]);
    for app in &apps {
        eventually(CONVERGE, "listening", || async { channel_up(app) }).await;
    }
    let queries = (changes_queries(a), changes_queries(b));
    let db = database_name(&a.database_url);
    // b's changes reach a while a's one connection is busy with queries.
    let from_b: Vec<_> =
        futures::future::join_all((0..20).map(|i| async move { b.issue(&format!("b-{i}")).await }))
            .await;
    let load = {
        let mut tasks = Vec::new();
        for i in 0..16 {
            let mut client = a.client.clone();
            tasks.push(tokio::spawn(async move {
                for j in 0..10 {
                    let issued = client
                        .issue(token_sidecar::api::pb::IssueRequest {
                            user_id: format!("burst-{i}-{j}"),
                            ..Default::default()
                        })
                        .await
                        .expect("issue under load")
                        .into_inner();
                    let verified = client
                        .verify(token_sidecar::api::pb::VerifyRequest {
                            token: issued.token.clone(),
                            ..Default::default()
                        })
                        .await
                        .expect("verify under load")
                        .into_inner();
                    assert!(verified.valid);
                    client
                        .revoke(token_sidecar::api::pb::RevokeRequest {
                            target: Some(token_sidecar::api::pb::revoke_request::Target::Jti(
                                issued.jti,
                            )),
                            ..Default::default()
                        })
                        .await
                        .expect("revoke under load");
                }
            }));
        }
        tasks
    };
    for t in &from_b {
        b.revoke(Target::Jti(t.jti.clone()))
            .await
            .expect("revoke on b");
    }
    let most = most_connections_while(&load, &db).await;
    for task in load {
        task.await.expect("load task");
    }
    assert!(
        most <= 2,
        "{most} connections: two sidecars held more than one connection each under load"
    );
    eventually(CONVERGE, "each applied the other's revocations", || async {
        propagations(b) >= 160.0 && propagations(a) >= 20.0
    })
    .await;
    for t in &from_b {
        assert_eq!(a.verdict(&t.token).await, Reason::TokenRevoked);
    }
    assert_eq!(
        (changes_queries(a), changes_queries(b)),
        queries,
        "every change was applied from its announcement, with no catch-up query, also on the \
         instance whose connection was busy with queries when it arrived"
    );
    revocations_reach_the_other_instance(a, b).await;
}

async fn under_load_at_most(budget: i64) {
    let app = Settings::new(Backend::Postgres)
        .arg("--database-max-connections", &budget.to_string())
        // No cutoff cache: every Verify asks the store.
        .arg("--cutoff-cache-ttl", "0s")
        .spawn()
        .await;
    let tokens: Vec<String> = {
        let mut v = Vec::new();
        for i in 0..32 {
            v.push(app.issue(&format!("load-{i}")).await.token);
        }
        v
    };
    let db = database_name(&app.database_url);
    let load = {
        let mut tasks = Vec::new();
        for token in tokens {
            let mut client = app.client.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..40 {
                    let answer = client
                        .verify(token_sidecar::api::pb::VerifyRequest {
                            token: token.clone(),
                            ..Default::default()
                        })
                        .await
                        .expect("verify under load");
                    assert!(answer.into_inner().valid);
                }
            }));
        }
        tasks
    };
    let most = most_connections_while(&load, &db).await;
    for task in load {
        task.await.expect("load task");
    }
    assert!(
        most <= budget,
        "{most} connections: at most --database-max-connections {budget}, the listener's included"
    );
    assert!(app.counter(r#"store_queries_total{kind="cutoff"}"#) >= 32 * 40);
}

#[tokio::test]
async fn announced_changes_are_applied_without_a_query() {
    crate::require!(Postgres);
    let apps = fleet(3, &ANNOUNCEMENTS_ONLY).await;
    let (a, b, c) = (&apps[0], &apps[1], &apps[2]);
    for app in &apps {
        eventually(CONVERGE, "listening", || async { channel_up(app) }).await;
    }
    let queries: Vec<u64> = apps.iter().map(changes_queries).collect();
    revocations_reach_the_other_instance(a, b).await;
    eventually(CONVERGE, "c applied every change too", || async {
        propagations(c) >= 5.0
    })
    .await;
    let after: Vec<u64> = apps.iter().map(changes_queries).collect();
    assert_eq!(
        queries, after,
        "no instance read the change feed: every change came in its announcement"
    );
    assert!(
        propagations(b) >= 5.0,
        "commit-to-applied observed for each change"
    );
}

#[tokio::test]
async fn a_missed_announcement_is_read_from_the_store() {
    crate::require!(Postgres);
    let apps = fleet(2, &ANNOUNCEMENTS_ONLY).await;
    let (a, b) = (&apps[0], &apps[1]);
    eventually(CONVERGE, "listening", || async { channel_up(b) }).await;
    let silent = a.issue("gap").await;
    assert!(b.verify(&silent.token).await.valid);
    // A change committed with a number but never announced (as if its NOTIFY were lost).
    {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&a.database_url)
            .await
            .expect("connect");
        let mut tx = conn.begin().await.expect("begin");
        sqlx::query("SELECT pg_advisory_xact_lock(127931982391143)")
            .execute(&mut *tx)
            .await
            .expect("change lock");
        sqlx::query(
            "INSERT INTO denylist (kind, id, user_id, moot_after_unix_ms, change_seq)
                 VALUES ('jti', $1, 'gap', 9000000000000, nextval('revocation_change_seq'))",
        )
        .bind(&silent.jti)
        .execute(&mut *tx)
        .await
        .expect("silent insert");
        tx.commit().await.expect("commit");
    }
    let before = changes_queries(b);
    assert!(b.verify(&silent.token).await.valid, "b has not heard of it");
    // The next announced change shows b the gap; b reads both from the store.
    let next = a.issue("gap-2").await;
    a.revoke(Target::Jti(next.jti.clone()))
        .await
        .expect("revoke");
    rejected_with(b, &silent.token, Reason::TokenRevoked, "the missed change").await;
    rejected_with(b, &next.token, Reason::TokenRevoked, "the announced change").await;
    assert!(
        changes_queries(b) > before,
        "the gap was read from the store"
    );
}

#[tokio::test]
async fn revocations_reach_other_instances_through_nats() {
    crate::require!(Postgres, Nats);
    let nats = shared_nats_url();
    let mut args = ANNOUNCEMENTS_ONLY.to_vec();
    args.extend([("--sync-mode", "nats"), ("--nats-url", nats.as_str())]);
    let apps = fleet(2, &args).await;
    for app in &apps {
        eventually(CONVERGE, "subscribed to NATS", || async { channel_up(app) }).await;
    }
    let queries: Vec<u64> = apps.iter().map(changes_queries).collect();
    revocations_reach_the_other_instance(&apps[0], &apps[1]).await;
    apps[0].clock.advance_ms(SEC);
    revocations_reach_the_other_instance(&apps[1], &apps[0]).await;
    let after: Vec<u64> = apps.iter().map(changes_queries).collect();
    assert_eq!(
        queries, after,
        "every change came over NATS, none from the feed"
    );
    assert!(propagations(&apps[1]) >= 5.0);
}

#[tokio::test]
async fn nats_stopped_and_restarted_under_revoke_load_loses_nothing() {
    crate::require!(Postgres, Nats, NatsServer);
    let mut nats = PrivateNats::start().await;
    let args = [
        ("--sync-mode", "nats"),
        ("--nats-url", nats.url.as_str()),
        ("--sync-poll-interval", "200ms"),
    ];
    let apps = fleet(3, &args).await;
    for app in &apps {
        eventually(CONVERGE, "subscribed to NATS", || async { channel_up(app) }).await;
    }
    // Tokens every instance has verified (so their caches hold them as valid).
    let mut tokens = Vec::new();
    for i in 0..240 {
        let t = apps[i % 3].issue(&format!("user-{}", i % 17)).await;
        for app in &apps {
            assert!(app.verify(&t.token).await.valid);
        }
        tokens.push(t);
    }
    // Two writers revoke, one token after the other; NATS dies in the middle and comes back.
    let revoke_on = |app: &TestApp, jtis: Vec<String>| {
        let mut client = app.client.clone();
        async move {
            for jti in jtis {
                client
                    .revoke(token_sidecar::api::pb::RevokeRequest {
                        target: Some(Target::Jti(jti)),
                        ..Default::default()
                    })
                    .await
                    .expect("an acknowledged revocation");
            }
        }
    };
    let (first, second): (Vec<_>, Vec<_>) =
        tokens.iter().enumerate().partition(|(i, _)| i % 2 == 0);
    let first: Vec<String> = first.into_iter().map(|(_, t)| t.jti.clone()).collect();
    let second: Vec<String> = second.into_iter().map(|(_, t)| t.jti.clone()).collect();
    let load = async {
        tokio::join!(revoke_on(&apps[0], first), revoke_on(&apps[1], second));
    };
    let denied = || {
        apps[0].counter(r#"store_queries_total{kind="deny"}"#)
            + apps[1].counter(r#"store_queries_total{kind="deny"}"#)
    };
    let outage = async {
        // NATS dies after some revocations, stays dead while more are acknowledged, comes back
        // while the writers are still at it.
        eventually(CONVERGE, "revocations under way", || async {
            denied() >= 30
        })
        .await;
        nats.kill();
        eventually(CONVERGE, "instances notice NATS is gone", || async {
            apps.iter().all(|app| !channel_up(app))
        })
        .await;
        let at_outage = denied();
        eventually(
            CONVERGE,
            "revocations acknowledged while NATS is down",
            || async { denied() >= at_outage + 30 },
        )
        .await;
        nats.restart().await;
    };
    tokio::join!(load, outage);
    for app in &apps {
        eventually(CONVERGE, "back on NATS", || async { channel_up(app) }).await;
    }
    for (i, app) in apps.iter().enumerate() {
        for t in &tokens {
            rejected_with(
                app,
                &t.token,
                Reason::TokenRevoked,
                &format!("instance {i}"),
            )
            .await;
        }
    }
}

#[tokio::test]
async fn a_full_database_at_start_is_retried_reported_once_and_then_served() {
    crate::require!(PostgresBinaries);
    use sqlx::Connection;
    let pg = PrivatePostgres::start_with("-c max_connections=8");
    // Fill every slot (the test connects as a superuser, who may use the reserved ones too).
    let mut held = Vec::new();
    loop {
        match sqlx::PgConnection::connect(&pg.url).await {
            Ok(conn) => held.push(conn),
            Err(e) => {
                assert!(e.to_string().contains("too many clients"), "{e}");
                break;
            }
        }
        assert!(held.len() < 50, "max_connections was not applied");
    }
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("main.key"), crate::common::TEST_SECRET).expect("key");
    let metrics = format!("127.0.0.1:{}", free_port());
    let key = format!("main=HS256:{}", dir.path().join("main.key").display());
    let mut sidecar = SidecarProcess::start(
        dir.path(),
        &[
            ("DATABASE_URL", pg.url.as_str()),
            ("TOKEN_SIDECAR_KEYS", key.as_str()),
            ("TOKEN_SIDECAR_METRICS_LISTEN", metrics.as_str()),
        ],
    )
    .await;
    sidecar
        .wait_for_line("too many clients", Duration::from_secs(20))
        .await;
    // It keeps trying, NOT_SERVING, and says so in its metrics.
    let metrics_addr = metrics.parse().expect("addr");
    eventually(CONVERGE, "retried and counted", || async {
        let (_, body) = http_get(metrics_addr, "/metrics").await;
        metric_value(
            &body,
            "token_sidecar_store_not_ready_total{reason=\"too_many_connections\"}",
        )
        .unwrap_or(0.0)
            >= 3.0
    })
    .await;
    // A slot frees: SERVING soon after.
    held.pop();
    let channel = sidecar.connect().await;
    let mut client = token_sidecar::api::pb::token_service_client::TokenServiceClient::new(channel);
    let issued = client
        .issue(token_sidecar::api::pb::IssueRequest {
            user_id: "after-the-wait".into(),
            ..Default::default()
        })
        .await
        .expect("serves once it has a connection");
    assert!(!issued.into_inner().token.is_empty());
    drop(held);
    sidecar.signal("-TERM");
    let (exit, log) = sidecar.wait().await;
    assert!(exit.success(), "{log}");
    let reported = log
        .lines()
        .filter(|l| l.contains("store not ready") && l.contains("too many clients"))
        .count();
    assert_eq!(
        reported, 1,
        "the reason is logged once, not per retry:\n{log}"
    );
}

#[tokio::test]
async fn poll_mode_through_pgbouncer_serves_many_sidecars_on_few_connections() {
    crate::require!(Postgres, Pgbouncer);
    // Migrate directly (sqlx's migration lock needs a session), then leave.
    let first = Settings::new(Backend::Postgres).spawn().await;
    let url = first.database_url.clone();
    let dir = first.dir.clone();
    first.shutdown().await;
    let bouncer = PgBouncer::start(2).await;
    let through = bouncer.url_for(&url);
    let clock = ManualClock::new(crate::common::T0_MS);
    let mut apps = Vec::new();
    for _ in 0..6 {
        let mut settings = Settings::new(Backend::Postgres)
            .database_url(&through)
            .clock(clock.clone())
            .arg("--sync-mode", "poll")
            .arg("--sync-poll-interval", "100ms");
        settings.dir = Some(dir.clone());
        apps.push(settings.spawn().await);
    }
    let db = database_name(&url);
    // Writes through PgBouncer (the change lock is transaction-scoped), seen everywhere.
    revocations_reach_the_other_instance(&apps[0], &apps[1]).await;
    let t = apps[2].issue("bounced").await;
    for app in &apps {
        assert!(app.verify(&t.token).await.valid);
    }
    apps[3]
        .revoke(Target::Token(t.token.clone()))
        .await
        .expect("revoke through PgBouncer");
    for app in &apps {
        rejected_with(app, &t.token, Reason::TokenRevoked, "through PgBouncer").await;
    }
    let (all, _) = connections_to(&db, LISTENER_APPLICATION_NAME).await;
    assert!(
        all <= 2,
        "{all} server connections for 6 sidecars behind a pool of 2"
    );
}

/// Issue 28: one purger per `--purge-interval` for the fleet, not one per sidecar: the first
/// instance to tick takes the round (stamped on the fleet's clock), the others skip it until
/// the round has passed.
#[tokio::test]
async fn the_fleet_purges_once_per_round() {
    crate::require!(Postgres);
    let clock = ManualClock::new(crate::common::T0_MS);
    let a = Settings::new(Backend::Postgres)
        .clock(clock.clone())
        .spawn()
        .await;
    let b = Settings::new(Backend::Postgres)
        .sharing(&a)
        .clock(clock.clone())
        .spawn()
        .await;
    let round = Duration::from_secs(600);
    let purge = |app: &TestApp| {
        let horizon = app
            .running()
            .authority
            .policy()
            .purge_horizon(token_sidecar::clock::Clock::now_ms(&clock));
        let revocations = app.running().authority.revocations().clone();
        async move { revocations.purge(horizon, round).await.expect("purge") }
    };
    assert!(purge(&a).await.ran, "the first tick takes the round");
    assert!(!purge(&b).await.ran, "another instance skips it");
    assert!(
        !purge(&a).await.ran,
        "and so does the first, until the round has passed"
    );
    clock.advance_secs(600);
    assert!(
        purge(&b).await.ran,
        "the next round is the first ticker's again"
    );
}

/// Issue 46: no migration through a transaction pooler, ever. On an empty database a sidecar
/// behind PgBouncer (transaction mode) — or any sidecar told `--migrate never` — does not run
/// the migrator: it stays NOT_SERVING, says what to run, and becomes SERVING without a restart
/// once `token-sidecar migrate` ran on a direct URL.
#[tokio::test]
async fn behind_a_transaction_pooler_a_sidecar_waits_for_the_schema_instead_of_migrating() {
    crate::require!(Postgres, Pgbouncer);
    let direct = crate::common::fresh_postgres_database().await;
    let bouncer = PgBouncer::start(2).await;
    let through = bouncer.url_for(&direct);
    let pooled = Settings::new(Backend::Postgres)
        .database_url(&through)
        .arg("--database-pooler", "transaction")
        .arg("--sync-mode", "poll")
        .arg("--health-interval", "1s")
        .no_wait()
        .spawn()
        .await;
    let told = Settings::new(Backend::Postgres)
        .database_url(&direct)
        .arg("--migrate", "never")
        .arg("--health-interval", "1s")
        .no_wait()
        .spawn()
        .await;
    for app in [&pooled, &told] {
        eventually(
            Duration::from_secs(20),
            "the sidecar says the schema is behind",
            || async { app.counter(r#"store_not_ready_total{reason="schema_behind"}"#) >= 1 },
        )
        .await;
    }
    let admin = sqlx::PgPool::connect(&direct).await.expect("direct");
    let (table,): (Option<String>,) =
        sqlx::query_as("SELECT to_regclass('_sqlx_migrations')::text")
            .fetch_one(&admin)
            .await
            .expect("query");
    assert_eq!(table, None, "nothing was migrated");
    // What the log says to run, with a direct URL.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_token-sidecar"))
        .args(["migrate", "--database-url", &direct])
        .env_remove("DATABASE_URL")
        .output()
        .expect("migrate runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for app in [&pooled, &told] {
        app.wait_for_health(tonic_health::pb::health_check_response::ServingStatus::Serving)
            .await;
        let t = app.issue("after-the-job").await;
        assert!(app.verify(&t.token).await.valid);
    }
}
