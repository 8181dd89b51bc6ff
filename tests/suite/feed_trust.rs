//! The change feed trusts no one (SPEC §10): forged NOTIFYs from a role that can only connect,
//! forged, oversized and replayed NATS messages, a copy of the database sharing a NATS server,
//! and a store whose history forked under the instances (the last changes lost, their numbers
//! taken again).
use std::time::Duration;

use futures::StreamExt;
use sqlx::Connection;

use crate::common::{
    Backend, MIN, PrivateNats, PrivatePostgres, SEC, Settings, StoreProxy, T0_MS, TestApp,
    eventually, fresh_postgres_database, postgres_addr, postgres_admin_url,
};
use crate::sync::rejected_with;
use token_sidecar::api::pb::{Reason, revoke_request::Target};
use token_sidecar::clock::ManualClock;

const SETTLE: Duration = Duration::from_secs(10);

/// No poll runs during the test: whatever moves, moves by announcement.
const ANNOUNCEMENTS_ONLY: [(&str, &str); 3] = [
    ("--max-staleness", "1h"),
    ("--sync-safety-poll-interval", "1h"),
    ("--sync-poll-interval", "1h"),
];

fn rejected(app: &TestApp, why: &'static str) -> u64 {
    app.counter(&format!(
        "sync_announcements_rejected_total{{why=\"{}\"}}",
        why
    ))
}

fn watermark(app: &TestApp) -> i64 {
    app.metrics.sync.watermark.get()
}

async fn instances(
    url: &str,
    clock: &ManualClock,
    count: usize,
    args: &[(&str, &str)],
) -> Vec<TestApp> {
    let mut apps = Vec::new();
    for _ in 0..count {
        let mut settings = Settings::new(Backend::Postgres)
            .database_url(url)
            .clock(clock.clone());
        for (flag, value) in args {
            settings = settings.arg(flag, value);
        }
        apps.push(settings.spawn().await);
    }
    apps
}

/// `url` with another user.
fn as_user(url: &str, user: &str) -> String {
    url.replacen("postgres://postgres@", &format!("postgres://{user}@"), 1)
}

#[tokio::test]
async fn a_role_that_can_only_connect_cannot_move_an_instance_by_notify() {
    crate::require!(Postgres);
    let url = fresh_postgres_database().await;
    let clock = ManualClock::new(T0_MS);
    let apps = instances(&url, &clock, 2, &ANNOUNCEMENTS_ONLY).await;
    let (a, b) = (&apps[0], &apps[1]);
    // bob is banned for an hour; b has heard it.
    let bob = a.issue("bob").await;
    a.revoke_user("bob", Some(T0_MS + 60 * MIN)).await;
    rejected_with(b, &bob.token, Reason::UserBanned, "the ban reaches b").await;
    eventually(SETTLE, "b applied the ban's announcement", || async {
        watermark(b) >= 1
    })
    .await;
    let before = watermark(b);
    let queries = b.counter(r#"store_queries_total{kind="changes"}"#);

    // A role with LOGIN only: it cannot read a table, but it can NOTIFY on any channel.
    let role = format!("ts_spray_{}", rand_suffix());
    let mut admin = sqlx::PgConnection::connect(&postgres_admin_url())
        .await
        .expect("admin");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE ROLE {role} LOGIN")))
        .execute(&mut admin)
        .await
        .expect("create role");
    let mut spray = sqlx::PgConnection::connect(&as_user(&url, &role))
        .await
        .expect("as the role");
    assert!(
        sqlx::query("SELECT * FROM sync_key")
            .execute(&mut spray)
            .await
            .is_err(),
        "the fleet's secret is not readable by any role that can connect"
    );
    // The old format, and the new one with a made-up fleet and MAC: a cutoff at 0 for bob
    // (lifting his ban), at every number ahead.
    for n in 1..=1000 {
        for payload in [
            format!("1 {n} 0 cutoff 0 bob"),
            format!(
                "2 0123456789abcdef AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA {n} 0 \
                 {z} {z} cutoff 0 bob",
                z = "0".repeat(32)
            ),
        ] {
            sqlx::query("SELECT pg_notify('token_sidecar_changes', $1)")
                .bind(payload)
                .execute(&mut spray)
                .await
                .expect("notify");
        }
    }
    eventually(SETTLE, "2000 forgeries dropped", || async {
        rejected(b, "malformed") + rejected(b, "foreign") >= 2000
    })
    .await;
    assert_eq!(watermark(b), before, "no forged number moved the watermark");
    assert_eq!(
        b.counter(r#"store_queries_total{kind="changes"}"#),
        queries,
        "forgeries are dropped without a query"
    );
    assert_eq!(
        b.verdict(&bob.token).await,
        Reason::UserBanned,
        "bob is still banned on b"
    );
    let issued = b
        .client
        .clone()
        .issue(token_sidecar::api::pb::IssueRequest {
            user_id: "bob".into(),
            ..Default::default()
        })
        .await;
    assert!(issued.is_err(), "Issue(bob) is still refused on b");

    // Genuine announcements still work: a session revoked on a reaches b.
    let carol = a.issue("carol").await;
    assert!(b.verify(&carol.token).await.valid);
    a.revoke(Target::Token(carol.token.clone()))
        .await
        .expect("revoke");
    rejected_with(
        b,
        &carol.token,
        Reason::TokenRevoked,
        "a genuine revocation",
    )
    .await;
    drop(spray);
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP ROLE IF EXISTS {role}")))
        .execute(&mut admin)
        .await;
}

fn rand_suffix() -> String {
    token_sidecar::token::new_random_id()
        .to_ascii_lowercase()
        .replace(['-', '_'], "x")
}

#[tokio::test]
async fn forged_oversized_and_replayed_nats_messages_move_nothing() {
    crate::require!(Postgres, Nats, NatsServer);
    let nats = PrivateNats::start().await;
    let proxy = StoreProxy::start(postgres_addr()).await;
    let url = fresh_postgres_database().await;
    let clock = ManualClock::new(T0_MS);
    let nats_args = [
        ("--sync-mode", "nats"),
        ("--nats-url", nats.url.as_str()),
        ("--sync-safety-poll-interval", "1h"),
        ("--sync-poll-interval", "1h"),
        ("--max-staleness", "2s"),
        ("--health-interval", "1s"),
    ];
    let a = instances(&url, &clock, 1, &nats_args).await.remove(0);
    // b reaches PostgreSQL through a proxy the test can cut.
    let mut b = Settings::new(Backend::Postgres)
        .database_url(&proxy.url_for(&url))
        .clock(clock.clone());
    for (flag, value) in nats_args {
        b = b.arg(flag, value);
    }
    let b = b.spawn().await;
    eventually(SETTLE, "both on NATS", || async {
        a.metrics.sync.channel_up.get() == 1 && b.metrics.sync.channel_up.get() == 1
    })
    .await;

    // A client of the open server hears a genuine announcement.
    let listener = async_nats::connect(nats.url.as_str()).await.expect("nats");
    let mut heard = listener
        .subscribe("token-sidecar.changes.>")
        .await
        .expect("subscribe");
    let t = a.issue("dave").await;
    assert!(b.verify(&t.token).await.valid);
    a.revoke(Target::Token(t.token.clone()))
        .await
        .expect("revoke");
    let genuine = tokio::time::timeout(SETTLE, heard.next())
        .await
        .expect("an announcement")
        .expect("a message");
    let subject = genuine.subject.to_string();
    rejected_with(
        &b,
        &t.token,
        Reason::TokenRevoked,
        "the revocation over NATS",
    )
    .await;
    let text = String::from_utf8_lossy(&genuine.payload).into_owned();
    assert!(text.starts_with("2 "), "sealed announcements: {text}");
    let before = watermark(&b);

    // Forged: the genuine message altered (a ban of dave, a far-ahead number), garbage, and
    // 1 MiB messages.
    let publisher = async_nats::connect(nats.url.as_str()).await.expect("nats");
    let fields: Vec<&str> = text.splitn(10, ' ').collect();
    let altered = |seq: i64| {
        let mut f = fields.clone();
        let seq = seq.to_string();
        f[3] = &seq;
        f.join(" ")
    };
    for payload in [
        altered(before + 1),
        altered(before + 1_000_000),
        "1 9 0 cutoff 0 dave".into(),
    ] {
        publisher
            .publish(subject.clone(), payload.into())
            .await
            .expect("publish");
    }
    for _ in 0..20 {
        publisher
            .publish(subject.clone(), vec![b'x'; 1 << 20].into())
            .await
            .expect("publish");
    }
    publisher.flush().await.expect("flush");
    eventually(SETTLE, "forgeries counted", || async {
        rejected(&b, "unauthenticated") >= 2 && rejected(&b, "oversized") >= 20
    })
    .await;
    assert_eq!(watermark(&b), before, "nothing forged moved the watermark");

    // Cut b from PostgreSQL; replaying the genuine message must not count as being in step.
    proxy.cut();
    clock.advance_ms(3 * SEC);
    for _ in 0..10 {
        publisher
            .publish(subject.clone(), genuine.payload.clone())
            .await
            .expect("replay");
    }
    publisher.flush().await.expect("flush");
    let other = a.issue("erin").await;
    eventually(
        SETTLE,
        "b stale and failing closed despite the replays",
        || async { b.verify_status(&other.token).await == Some(tonic::Code::Unavailable) },
    )
    .await;
}

#[tokio::test]
async fn a_copy_of_the_database_is_another_fleet_on_a_shared_nats_server() {
    crate::require!(Postgres, Nats, NatsServer);
    let nats = PrivateNats::start().await;
    let url = fresh_postgres_database().await;
    let clock = ManualClock::new(T0_MS);
    let nats_args = [("--sync-mode", "nats"), ("--nats-url", nats.url.as_str())];
    // Migrate it, then copy it as a staging restore would (no connection may be open).
    instances(&url, &clock, 1, &nats_args)
        .await
        .remove(0)
        .shutdown()
        .await;
    let copy = format!("{url}_copy");
    let name = crate::common::database_name(&url);
    let mut admin = sqlx::PgConnection::connect(&postgres_admin_url())
        .await
        .expect("admin");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    )))
    .execute(&mut admin)
    .await
    .expect("terminate");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE {name}_copy TEMPLATE {name}"
    )))
    .execute(&mut admin)
    .await
    .expect("copy");

    let production = instances(&url, &clock, 2, &nats_args).await;
    let staging = instances(&copy, &clock, 1, &nats_args).await;
    let t = production[0].issue("frank").await;
    assert!(production[1].verify(&t.token).await.valid);
    // A revoke-all on staging.
    staging[0].revoke_user("frank", None).await;
    // Production's own revocation still reaches its other instance.
    let g = production[0].issue("grace").await;
    assert!(production[1].verify(&g.token).await.valid);
    production[0]
        .revoke(Target::Token(g.token.clone()))
        .await
        .expect("revoke");
    rejected_with(
        &production[1],
        &g.token,
        Reason::TokenRevoked,
        "production's revocation",
    )
    .await;
    for app in &production {
        assert!(
            app.verify(&t.token).await.valid,
            "staging's revoke-all never reaches production"
        );
    }
}

#[tokio::test]
async fn a_store_that_lost_its_last_changes_and_reuses_their_numbers_is_reloaded() {
    crate::require!(Postgres);
    let url = fresh_postgres_database().await;
    let clock = ManualClock::new(T0_MS);
    let args = [
        ("--sync-safety-poll-interval", "300ms"),
        ("--max-staleness", "1h"),
    ];
    let apps = instances(&url, &clock, 2, &args).await;
    let (a, b) = (&apps[0], &apps[1]);
    let kept = a.issue("heidi").await;
    a.revoke(Target::Token(kept.token.clone()))
        .await
        .expect("revoke");
    rejected_with(b, &kept.token, Reason::TokenRevoked, "the kept revocation").await;
    let mut admin = sqlx::PgConnection::connect(&url).await.expect("admin");
    let (mark,): (i64,) = sqlx::query_as("SELECT last_value FROM revocation_change_seq")
        .fetch_one(&mut admin)
        .await
        .expect("sequence");
    // Three revocations a replica never received; tokens to revoke after the failover.
    let (lost, after) = before_the_fork(a, b).await;
    // The lossy failover, as the promoted replica sees the data: the last three changes gone,
    // the sequence where the replica left it.
    let mut tx = admin.begin().await.expect("begin");
    for statement in [
        "DELETE FROM denylist WHERE change_seq > $1",
        "DELETE FROM user_cutoffs WHERE change_seq > $1",
        "DELETE FROM change_chain WHERE seq > $1",
        "SELECT setval('revocation_change_seq', $1)",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .bind(mark)
            .execute(&mut *tx)
            .await
            .expect("rewind");
    }
    tx.commit().await.expect("commit");
    // After the failover: new revocations take the lost numbers (and one more).
    revoked_after_the_fork_reach_the_other(a, b, &after, SETTLE).await;
    // Every instance agrees with one started now on every token.
    let tokens: Vec<_> = lost.iter().chain(&after).chain([&kept]).collect();
    agree_with_a_fresh_instance(&url, &clock, &[], &[a, b], &tokens).await;
}

/// Before a fork: three tokens revoked on `a` and seen revoked by `b` (the changes the fork
/// will lose), and four tokens `b` has verified and cached, to be revoked after it.
async fn before_the_fork(
    a: &TestApp,
    b: &TestApp,
) -> (
    Vec<token_sidecar::api::pb::IssueResponse>,
    Vec<token_sidecar::api::pb::IssueResponse>,
) {
    let mut lost = Vec::new();
    for i in 0..3 {
        lost.push(a.issue(&format!("lost{i}")).await);
    }
    let mut after = Vec::new();
    for i in 0..4 {
        let t = a.issue(&format!("after{i}")).await;
        assert!(b.verify(&t.token).await.valid);
        after.push(t);
    }
    for t in &lost {
        a.revoke(Target::Token(t.token.clone()))
            .await
            .expect("revoke");
        rejected_with(b, &t.token, Reason::TokenRevoked, "seen before the fork").await;
    }
    (lost, after)
}

/// After a fork: `tokens` revoked on `a` (retried while `a` itself reloads, as a client would
/// retry the idempotent Revoke, for up to `ack_within`) are refused by `b`, which noticed.
async fn revoked_after_the_fork_reach_the_other(
    a: &TestApp,
    b: &TestApp,
    tokens: &[token_sidecar::api::pb::IssueResponse],
    ack_within: Duration,
) {
    for t in tokens {
        eventually(ack_within, "the revocation is acknowledged", || async {
            a.revoke(Target::Token(t.token.clone())).await.is_ok()
        })
        .await;
    }
    for t in tokens {
        eventually(
            SETTLE,
            "b refuses what was revoked after the fork",
            || async { b.try_verdict(&t.token).await == Ok(Reason::TokenRevoked) },
        )
        .await;
    }
    assert!(b.metrics.sync.forks.get() >= 1, "b noticed the fork");
}

/// Every one of `apps` comes to give, for every token, the verdict of an instance started now.
async fn agree_with_a_fresh_instance(
    url: &str,
    clock: &ManualClock,
    args: &[(&str, &str)],
    apps: &[&TestApp],
    tokens: &[&token_sidecar::api::pb::IssueResponse],
) {
    let fresh = instances(url, clock, 1, args).await.remove(0);
    for t in tokens {
        let truth = fresh.verdict(&t.token).await;
        for app in apps {
            eventually(SETTLE, "agrees with a fresh instance", || async {
                app.try_verdict(&t.token).await == Ok(truth)
            })
            .await;
        }
    }
}

#[tokio::test]
async fn nats_as_production_runs_it_accounts_tls_and_no_credential_in_a_log() {
    crate::require!(Postgres, Nats, NatsServer);
    let nkey = nkeys::KeyPair::new_user();
    let nats = PrivateNats::start_with_accounts_and_tls(&nkey.public_key()).await;
    let ca = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys/tls/ca.pem");
    let ca = ca.display().to_string();
    let with_password = nats
        .url
        .replacen("tls://", "tls://token-sidecar:fleet-secret@", 1);
    let url = fresh_postgres_database().await;
    let clock = ManualClock::new(T0_MS);
    let args = [
        ("--sync-mode", "nats"),
        ("--nats-url", with_password.as_str()),
        ("--nats-tls-ca", ca.as_str()),
        ("--sync-safety-poll-interval", "1h"),
        ("--sync-poll-interval", "1h"),
        ("--max-staleness", "1h"),
    ];
    let apps = instances(&url, &clock, 2, &args).await;
    let (a, b) = (&apps[0], &apps[1]);
    eventually(SETTLE, "both on NATS over TLS", || async {
        a.metrics.sync.channel_up.get() == 1 && b.metrics.sync.channel_up.get() == 1
    })
    .await;
    let queries = b.counter(r#"store_queries_total{kind="changes"}"#);
    let t = a.issue("kim").await;
    assert!(b.verify(&t.token).await.valid);
    a.revoke(Target::Token(t.token.clone()))
        .await
        .expect("revoke");
    rejected_with(
        b,
        &t.token,
        Reason::TokenRevoked,
        "the revocation over TLS NATS",
    )
    .await;
    assert_eq!(
        b.counter(r#"store_queries_total{kind="changes"}"#),
        queries,
        "it came in its announcement"
    );
    // Another account on the same server hears nothing of the fleet's.
    let other = async_nats::ConnectOptions::new()
        .user_and_password("other".into(), "other".into())
        .add_root_certificates(ca.clone().into())
        .require_tls(true)
        .connect(nats.url.as_str())
        .await
        .expect("the other account connects");
    let mut heard = other
        .subscribe("token-sidecar.changes.>")
        .await
        .expect("subscribe");
    other.flush().await.expect("flush");
    let u = a.issue("kim").await;
    a.revoke(Target::Token(u.token.clone()))
        .await
        .expect("revoke");
    rejected_with(b, &u.token, Reason::TokenRevoked, "the second revocation").await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), heard.next())
            .await
            .is_err(),
        "another account never hears the fleet's announcements"
    );
    // An instance authenticating with an nkey seed file instead hears the fleet too.
    let seed_file = a.dir.path().join("nats.nk");
    std::fs::write(&seed_file, format!("{}\n", nkey.seed().expect("seed"))).expect("seed file");
    let seed_path = seed_file.display().to_string();
    let by_nkey = instances(
        &url,
        &clock,
        1,
        &[
            ("--sync-mode", "nats"),
            ("--nats-url", nats.url.as_str()),
            ("--nats-nkey-file", seed_path.as_str()),
            ("--nats-tls-ca", ca.as_str()),
            ("--sync-safety-poll-interval", "1h"),
            ("--sync-poll-interval", "1h"),
            ("--max-staleness", "1h"),
        ],
    )
    .await
    .remove(0);
    eventually(SETTLE, "the nkey instance on NATS", || async {
        by_nkey.metrics.sync.channel_up.get() == 1
    })
    .await;
    // A wrong password is refused by the server, and the log names the URL without it.
    let wrong = nats
        .url
        .replacen("tls://", "tls://token-sidecar:wrong-pw@", 1);
    let shown = token_sidecar::sync::redacted(&wrong);
    assert!(
        !shown.contains("wrong-pw") && shown.contains("127.0.0.1"),
        "{shown}"
    );
}

/// The lossy failover for real: a primary and an asynchronous streaming replica of our own, the
/// replica stopped while three revocations commit on the primary, the primary killed, the
/// replica promoted, and the address (a TCP proxy) following the new primary.
#[tokio::test]
async fn a_lossy_failover_to_a_streaming_replica_is_detected_and_reloaded() {
    crate::require!(Postgres, PostgresBinaries);
    let primary = PrivatePostgres::start();
    let replica = PrivatePostgres::replica_of(&primary);
    let proxy = StoreProxy::start(primary.addr()).await;
    let url = format!("postgres://postgres@{}/postgres", proxy.addr);
    let clock = ManualClock::new(T0_MS);
    let args = [
        ("--sync-safety-poll-interval", "300ms"),
        ("--sync-poll-interval", "200ms"),
        ("--max-staleness", "1h"),
        ("--health-interval", "1s"),
    ];
    let apps = instances(&url, &clock, 2, &args).await;
    let (a, b) = (&apps[0], &apps[1]);
    let kept = a.issue("kept").await;
    a.revoke(Target::Token(kept.token.clone()))
        .await
        .expect("revoke");
    rejected_with(
        b,
        &kept.token,
        Reason::TokenRevoked,
        "a revocation both have",
    )
    .await;
    // Let the replica receive it, then stop it: it misses what follows.
    let on_replica = sqlx::PgPool::connect(&replica.url).await.expect("replica");
    eventually(SETTLE, "the replica has the first revocation", || async {
        let n: Result<(i64,), _> = sqlx::query_as("SELECT count(*) FROM denylist")
            .fetch_one(&on_replica)
            .await;
        matches!(n, Ok((1,)))
    })
    .await;
    on_replica.close().await;
    replica.stop();
    let (lost, after) = before_the_fork(a, b).await;
    // The failover.
    primary.kill();
    replica.start_again();
    replica.promote();
    proxy.follow(replica.addr()).await;
    revoked_after_the_fork_reach_the_other(a, b, &after, Duration::from_secs(30)).await;
    let tokens: Vec<_> = lost.iter().chain(&after).chain([&kept]).collect();
    agree_with_a_fresh_instance(&url, &clock, &args, &[a, b], &tokens).await;
}

/// A genuine-looking announcement (sealed with the fleet's real key, as a compromised writer or
/// a bug could send) of a number the store never had: one catch-up to look for it, one more to
/// drop it, and no poll storm.
#[tokio::test]
async fn a_far_ahead_number_costs_two_catch_ups_not_a_poll_storm() {
    crate::require!(Postgres);
    use token_sidecar::store::Change;
    use token_sidecar::store::announcement::{Announcement, FleetKey};
    let url = fresh_postgres_database().await;
    let clock = ManualClock::new(T0_MS);
    let apps = instances(&url, &clock, 1, &ANNOUNCEMENTS_ONLY).await;
    let b = &apps[0];
    let mut admin = sqlx::PgConnection::connect(&url).await.expect("admin");
    let (secret, identity): (Vec<u8>, String) = sqlx::query_as(
        "SELECT (SELECT secret FROM sync_key),
                (SELECT id FROM store_identity)
                  || ':' || (SELECT system_identifier FROM pg_control_system())::text
                  || ':' || (SELECT oid FROM pg_database WHERE datname = current_database())::text",
    )
    .fetch_one(&mut admin)
    .await
    .expect("the fleet's key, as the sidecars' role reads it");
    let fleet = FleetKey::new(&identity, &secret);
    let payload = fleet.seal(&Announcement {
        change: Change::Cutoff {
            seq: 1_000_000,
            committed_ms: 0,
            user_id: "mallory".into(),
            cutoff_ms: T0_MS + 60 * MIN,
        },
        prev: [0; 16],
        link: [0; 16],
    });
    let catch_ups = || {
        token_sidecar::metrics::Metrics::render(&b.metrics)
            .lines()
            .filter(|l| l.starts_with("token_sidecar_sync_catch_ups_total{why=\"gap\"}"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    eventually(SETTLE, "listening", || async {
        b.metrics.sync.channel_up.get() == 1
    })
    .await;
    let before = catch_ups();
    sqlx::query("SELECT pg_notify('token_sidecar_changes', $1)")
        .bind(&payload)
        .execute(&mut admin)
        .await
        .expect("notify");
    // A negative claim ("no storm") needs a window: the sync task retries every 250 ms at most,
    // so a storm would show 8 catch-ups in it.
    eventually(SETTLE, "the first catch-up", || async {
        catch_ups() > before
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spent = catch_ups() - before;
    assert!(
        (1.0..=2.0).contains(&spent),
        "{spent} catch-ups for one far-ahead number (rejected: {:?})",
        [
            "foreign",
            "unauthenticated",
            "malformed",
            "invalid_id",
            "other_history"
        ]
        .map(|why| rejected(b, why))
    );
    assert_eq!(watermark(b), 0, "nothing the store lacks is applied");
    let t = b.issue("mallory").await;
    assert!(
        b.verify(&t.token).await.valid,
        "the unknown change moved no cache"
    );
}

/// `--sync-key-file`: a fleet that manages its secret shares one file; one instance with
/// another secret hears nothing of theirs; a short key refuses to start.
#[tokio::test]
async fn a_sync_key_file_replaces_the_generated_secret() {
    crate::require!(Postgres);
    let dir = tempfile::tempdir().expect("temp dir");
    let key = dir.path().join("sync.key");
    std::fs::write(&key, format!("{}\n", "k".repeat(48))).expect("key");
    let other = dir.path().join("other.key");
    std::fs::write(&other, "o".repeat(48)).expect("key");
    let short = dir.path().join("short.key");
    std::fs::write(&short, "too short").expect("key");
    let (key, other, short) = (
        key.display().to_string(),
        other.display().to_string(),
        short.display().to_string(),
    );
    let url = fresh_postgres_database().await;
    let clock = ManualClock::new(T0_MS);
    let mut args = ANNOUNCEMENTS_ONLY.to_vec();
    args.push(("--sync-key-file", key.as_str()));
    let apps = instances(&url, &clock, 2, &args).await;
    let mut args = ANNOUNCEMENTS_ONLY.to_vec();
    args.push(("--sync-key-file", other.as_str()));
    let stranger = instances(&url, &clock, 1, &args).await.remove(0);
    for app in apps.iter().chain([&stranger]) {
        eventually(SETTLE, "listening", || async {
            app.metrics.sync.channel_up.get() == 1
        })
        .await;
    }
    let t = apps[0].issue("lena").await;
    assert!(apps[1].verify(&t.token).await.valid);
    apps[0]
        .revoke(Target::Token(t.token.clone()))
        .await
        .expect("revoke");
    rejected_with(
        &apps[1],
        &t.token,
        Reason::TokenRevoked,
        "the same key file",
    )
    .await;
    eventually(SETTLE, "the stranger drops it", || async {
        rejected(&stranger, "unauthenticated") >= 1
    })
    .await;
    assert_eq!(
        watermark(&stranger),
        0,
        "nothing applied under another secret"
    );
    let refused = Settings::new(Backend::Postgres)
        .database_url(&url)
        .arg("--sync-key-file", &short)
        .try_spawn()
        .await;
    let Err(error) = refused else {
        panic!("a 9-byte sync key must refuse to start")
    };
    assert!(
        error.to_string().contains("shorter than 32 bytes"),
        "{error}"
    );
}
