//! SPEC §14 at a million: a store holding 1,000,000 denied ids, loaded by a real Envoy's filter
//! from the feed's binary snapshot. Measured here: Envoy's resident memory per copy (the main
//! thread's VM and one worker's each hold one) against the same Envoy with an empty store, and
//! the seconds from Envoy's start until the copy is in step. The filter refuses a token whose id
//! is one of the million and admits a fresh one.
use std::time::{Duration, Instant};

use crate::common::{Backend, Settings, TestApp, eventually};
use crate::proxies::{Proxy, Running, WasmOptions, get, start_with, upstream, wait_ready};

const IDS: i64 = 1_000_000;

/// Envoy's resident memory, KiB.
fn rss_kib(proxy: &Running) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", proxy.pid())).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Starts an Envoy with the filter and waits until `auth` is admitted: the Envoy and how long
/// its copy took to load.
async fn loaded_envoy(app: &TestApp, upstream_port: u16, auth: &str) -> (Running, Duration) {
    let options = WasmOptions {
        poll_ms: 1_000,
        staleness_ms: 10_000,
        max_entries: 2_000_000,
        ..WasmOptions::default()
    };
    let started = Instant::now();
    let envoy = start_with(
        Proxy::EnvoyWasm,
        upstream_port,
        app.http_addr.expect("http").port(),
        options,
    );
    wait_ready(&envoy, Proxy::EnvoyWasm).await;
    eventually(Duration::from_secs(120), "the copy is loaded", || async {
        get(&envoy, &[("authorization", auth)]).await.status == 200
    })
    .await;
    (envoy, started.elapsed())
}

#[tokio::test]
async fn a_million_denied_ids_fit_in_a_few_mib_a_copy_and_refuse() {
    crate::require!(Postgres, Envoy, WasmFilter);
    let app = Settings::new(Backend::Postgres)
        .arg("--http-listen", "127.0.0.1:0")
        .arg("--token-ttl", "1h")
        .spawn()
        .await;
    let (app_port, _seen) = upstream().await;
    let fresh = app.issue("fresh").await;
    let auth = format!("Bearer {}", fresh.token);

    let (empty, _) = loaded_envoy(&app, app_port.port(), &auth).await;
    let empty_kib = rss_kib(&empty);
    drop(empty);

    // The million, written straight into the store (as a restore would): one is a real token's.
    let victim = app.issue("victim").await;
    let pool = sqlx::PgPool::connect(&app.database_url).await.expect("pg");
    let far = {
        use token_sidecar::clock::Clock;
        app.clock.now_ms() + 86_400_000
    };
    sqlx::query(
        "INSERT INTO denylist (kind, id, moot_after_unix_ms)
         SELECT 'jti', substr(md5(g::text), 1, 22), $1 FROM generate_series(1, $2) g",
    )
    .bind(far)
    .bind(IDS - 1)
    .execute(&pool)
    .await
    .expect("a million rows");
    sqlx::query("INSERT INTO denylist (kind, id, moot_after_unix_ms) VALUES ('jti', $1, $2)")
        .bind(&victim.jti)
        .bind(far)
        .execute(&pool)
        .await
        .expect("the victim's row");
    pool.close().await;

    let (full, took) = loaded_envoy(&app, app_port.port(), &auth).await;
    let full_kib = rss_kib(&full);
    let per_copy_mib = full_kib.saturating_sub(empty_kib) as f64 / 2.0 / 1024.0;
    println!(
        "{IDS} denied ids: Envoy RSS {empty_kib} KiB empty, {full_kib} KiB loaded: \
         {per_copy_mib:.1} MiB per copy; in step {took:?} after Envoy's start"
    );
    let r = get(
        &full,
        &[("authorization", &format!("Bearer {}", victim.token))],
    )
    .await;
    assert_eq!(r.status, 401, "the sampled id is refused: {r:?}");
    assert!(
        r.header("www-authenticate")
            .unwrap_or_default()
            .contains("REASON_TOKEN_REVOKED"),
        "{r:?}"
    );
    assert_eq!(get(&full, &[("authorization", &auth)]).await.status, 200);
    assert!(
        per_copy_mib <= 32.0,
        "{per_copy_mib:.1} MiB per copy for a million ids"
    );
}
