//! SPEC §14 at the scale of a pod's proxies: three Envoys with two workers each (nine Wasm VMs:
//! each Envoy's main thread and its workers) follow one sidecar's change feed while revocations
//! made on another sidecar flow back to back for a minute (`EDGE_LOAD_SECONDS`, default 60). Once every copy
//! is in step, reading the feed costs PostgreSQL nothing — `store_queries_total{kind="feed"}` on
//! the serving sidecar does not move — and every revocation is refused by every Envoy.
use std::time::{Duration, Instant};

use token_sidecar::api::pb::revoke_request::Target;

use crate::common::{Backend, Settings, eventually};
use crate::proxies::{Proxy, WasmOptions, get, refused_after, start_with, upstream, wait_ready};

const ENVOYS: usize = 3;
const WORKERS: u32 = 2;

#[tokio::test]
async fn three_envoys_in_step_cost_the_store_no_feed_query() {
    crate::require!(Postgres, Envoy, WasmFilter);
    let seconds: u64 = std::env::var("EDGE_LOAD_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let serving = Settings::new(Backend::Postgres)
        .arg("--http-listen", "127.0.0.1:0")
        .spawn()
        .await;
    let writer = Settings::new(Backend::Postgres)
        .sharing(&serving)
        .clock(serving.clock.clone())
        .spawn()
        .await;
    let (app_addr, _seen) = upstream().await;
    let options = WasmOptions {
        // Only the long poll can make a refusal fast; the staleness bound is never reached.
        poll_ms: 5_000,
        staleness_ms: 10_000,
        workers: WORKERS,
        ..WasmOptions::default()
    };
    let http = serving.http_addr.expect("http").port();
    let envoys: Vec<_> = (0..ENVOYS)
        .map(|_| start_with(Proxy::EnvoyWasm, app_addr.port(), http, options))
        .collect();
    for envoy in &envoys {
        wait_ready(envoy, Proxy::EnvoyWasm).await;
    }
    let warm = writer.issue("warm-up").await;
    let auth = format!("Bearer {}", warm.token);
    for envoy in &envoys {
        eventually(
            Duration::from_secs(30),
            "every Envoy is in step",
            || async { get(envoy, &[("authorization", &auth)]).await.status == 200 },
        )
        .await;
    }
    let feed_queries = || serving.counter(r#"store_queries_total{kind="feed"}"#);
    let feed_reads =
        || serving.counter(r#"rpc_requests_total{method="feed",result="ok",reason=""}"#);
    // Every VM reads from 0 from the store, and again when the first change wakes it; from then
    // on it follows the sidecar's tail. Settled: three revocations in a row — each waking every
    // VM's long poll, each refused by all — with no store read between them (events, not time).
    let mut revoked: u64 = 0;
    let mut quiet_rounds = 0;
    while quiet_rounds < 3 {
        assert!(revoked < 30, "the copies never followed the tail alone");
        let before = feed_queries();
        revoke_everywhere(&writer, &envoys, revoked).await;
        revoked += 1;
        quiet_rounds = if feed_queries() == before {
            quiet_rounds + 1
        } else {
            0
        };
    }
    let (queries_before, reads_before, revoked_before) = (feed_queries(), feed_reads(), revoked);

    // Revocations back to back for the whole window: each waits until every Envoy refuses it.
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    while started.elapsed() < Duration::from_secs(seconds) {
        slowest = slowest.max(revoke_everywhere(&writer, &envoys, revoked).await);
        revoked += 1;
    }
    let revoked = revoked - revoked_before;
    let reads = feed_reads() - reads_before;
    println!(
        "{ENVOYS} Envoys x {WORKERS} workers for {seconds} s: {revoked} revocations, each refused \
         by all within {slowest:?}; {reads} feed reads answered, {} of them from the store",
        feed_queries() - queries_before
    );
    assert!(revoked > 0);
    assert!(
        reads >= revoked,
        "the filters kept reading the feed: {reads} reads for {revoked} revocations"
    );
    assert_eq!(
        feed_queries(),
        queries_before,
        "reading the feed in step costs the store nothing"
    );
}

/// Issues a token on `writer`, revokes it there, and waits until every Envoy refuses it: how
/// long the slowest took.
async fn revoke_everywhere(
    writer: &crate::common::TestApp,
    envoys: &[crate::proxies::Running],
    n: u64,
) -> Duration {
    let t = writer.issue(&format!("user-{n}")).await;
    let auth = format!("Bearer {}", t.token);
    let at = Instant::now();
    writer
        .revoke(Target::Jti(t.jti.clone()))
        .await
        .expect("revoke on the other sidecar");
    let mut slowest = Duration::ZERO;
    for envoy in envoys {
        slowest = slowest.max(refused_after(envoy, &auth, at).await);
    }
    slowest
}
