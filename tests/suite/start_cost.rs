//! What one start costs the database (issue 46): a fleet of sidecar processes started at once
//! on one migrated database, each through its own counting proxy, and the round trips each asked
//! of PostgreSQL until it was SERVING. A start's round trips are a fixed handful — connect, the
//! schema check, the fleet's key, the history and the snapshot, LISTEN, a few clock readings —
//! and must not grow with the fleet: the twentieth instance pays what the first did.
use std::time::Instant;

use crate::common::process::SidecarProcess;
use crate::common::{Backend, Settings, StoreProxy, TEST_SECRET, fresh_postgres_database};

/// How many instances start together (CI-sized; `scripts/scale` goes to a thousand).
const FLEET: usize = 20;

/// The most round trips one start may ask of the store until it is SERVING. Measured here: 23
/// to 27 — the connection, LISTEN, BEGIN and COMMIT one each, and two for each of the schema
/// check, one clock reading, the fleet's identity and key (one statement), the history, the
/// snapshot's watermark and rows, and the first catch-up (sqlx prepares a statement on first
/// use). The budget leaves room for a poll or clock reading that lands before SERVING on a slow
/// machine, not for a start that multiplies its work.
const START_BUDGET: usize = 30;

#[tokio::test]
async fn a_start_costs_a_fixed_handful_of_round_trips_whatever_the_fleet() {
    crate::require!(Postgres);
    let url = fresh_postgres_database().await;
    // The schema, migrated by one direct start (the migrate Job's part).
    let first = Settings::new(Backend::Postgres)
        .database_url(&url)
        .spawn()
        .await;
    let dir = tempfile::tempdir().expect("dir");
    let key = dir.path().join("main.key");
    std::fs::write(&key, TEST_SECRET).expect("key");
    let keys = format!("main=HS256:{}", key.display());
    let addr = crate::common::postgres_addr();
    let mut proxies = Vec::new();
    for _ in 0..FLEET {
        proxies.push(StoreProxy::start(addr).await);
    }
    let started = Instant::now();
    let mut fleet = Vec::new();
    for proxy in &proxies {
        let through = format!("{}?sslmode=disable", proxy.url_for(&url));
        fleet.push(
            SidecarProcess::start(
                dir.path(),
                &[
                    ("DATABASE_URL", through.as_str()),
                    ("TOKEN_SIDECAR_KEYS", keys.as_str()),
                ],
            )
            .await,
        );
    }
    let mut costs = Vec::new();
    for (process, proxy) in fleet.iter().zip(&proxies) {
        let _channel = process.connect().await;
        costs.push(proxy.round_trips());
    }
    println!(
        "{FLEET} sidecars SERVING {:?} after the first start; round trips each until SERVING: {costs:?}",
        started.elapsed()
    );
    for (i, cost) in costs.iter().enumerate() {
        assert!(
            *cost <= START_BUDGET,
            "instance {i} asked {cost} round trips of the store before SERVING: {costs:?}"
        );
    }
    let (head, tail) = (costs[..5].iter().max(), costs[FLEET - 5..].iter().max());
    assert!(
        tail <= head.map(|h| h + 4).as_ref(),
        "the last to start paid more than the first: {costs:?}"
    );
    drop(first);
}
