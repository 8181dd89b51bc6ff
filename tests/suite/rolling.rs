//! SPEC §12, a rolling update as Kubernetes does it: two sidecars (processes of the built binary
//! on one PostgreSQL) behind a real Envoy as one ext_authz cluster with active gRPC health
//! checking of `tokensidecar.v1.TokenService` every 0.5 s (`tests/proxies/envoy-rolling.yaml`),
//! steady load from h2load through Envoy, and SIGTERM to one sidecar started with a drain delay a
//! little above the health-check interval: no request fails, and it exits 0 within the delay plus
//! the grace.
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::{SidecarProcess, free_port, http_request};
use token_sidecar::api::pb;

/// What h2load and the stopped sidecar reported.
#[derive(Debug)]
struct Rolled {
    requests: u64,
    failed: u64,
    not_2xx: u64,
    exited_ok: bool,
    exit_after: Duration,
}

/// A sidecar process on `database_url` with the test key, and `env` on top.
async fn sidecar(database_url: &str, env: &[(&str, &str)]) -> (SidecarProcess, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("dir");
    let key_spec = crate::common::write_test_key(dir.path());
    let mut all = vec![
        ("DATABASE_URL", database_url),
        ("TOKEN_SIDECAR_KEYS", key_spec.as_str()),
        ("TOKEN_SIDECAR_LOG_FORMAT", "text"),
    ];
    all.extend_from_slice(env);
    let process = SidecarProcess::start(dir.path(), &all).await;
    process.connect().await;
    (process, dir)
}

/// The app behind Envoy: 200 to everything.
async fn app() -> SocketAddr {
    crate::common::serve_router(axum::Router::new().fallback(|| async { "hello from the app" }))
        .await
}

/// Kills the child on drop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn envoy(listen: u16, app: u16, a: u16, b: u16, dir: &std::path::Path) -> Child {
    let template =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/proxies/envoy-rolling.yaml");
    let text = std::fs::read_to_string(template)
        .expect("config")
        .replace("SIDECAR_A", &a.to_string())
        .replace("SIDECAR_B", &b.to_string())
        .replace("LISTEN", &listen.to_string())
        .replace("APP", &app.to_string());
    let config = dir.join("envoy.yaml");
    std::fs::write(&config, text).expect("write");
    let child = std::process::Command::new("envoy")
        .arg("-c")
        .arg(&config)
        .args(["--disable-hot-restart", "--concurrency", "1", "-l", "error"])
        .args(["--base-id", &listen.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("envoy starts (scripts/test installs it)");
    Child(child)
}

/// The number before `label` in h2load's line starting with `line`.
fn figure(output: &str, line: &str, label: &str) -> u64 {
    output
        .lines()
        .find(|l| l.trim_start().starts_with(line))
        .and_then(|l| {
            l.split(',')
                .map(str::trim)
                .find_map(|part| part.strip_suffix(label).map(str::trim))
                .map(|n| n.rsplit(' ').next().unwrap_or(n).to_owned())
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {label:?} in h2load's {line:?}:\n{output}"))
}

async fn rolling_update(drain_delay: &str) -> Rolled {
    let database_url = crate::common::fresh_postgres_database().await;
    let (leaving, _a) = sidecar(
        &database_url,
        &[
            ("TOKEN_SIDECAR_DRAIN_DELAY", drain_delay),
            ("TOKEN_SIDECAR_SHUTDOWN_GRACE", "5s"),
        ],
    )
    .await;
    let (staying, _b) = sidecar(&database_url, &[]).await;
    let api = pb::token_service_client::TokenServiceClient::new(leaving.connect().await);
    let token = api
        .clone()
        .issue(pb::IssueRequest {
            user_id: "alice".into(),
            ..Default::default()
        })
        .await
        .expect("issue")
        .into_inner()
        .token;
    let bearer = format!("Bearer {token}");

    let app = app().await;
    let listen = free_port();
    let dir = tempfile::tempdir().expect("dir");
    let _envoy = envoy(listen, app.port(), leaving.port, staying.port, dir.path());
    let proxy = SocketAddr::from(([127, 0, 0, 1], listen));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) =
            http_request(proxy, "GET", "/hello", &[("authorization", &bearer)], None).await
            && r.status == 200
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Envoy did not route with the token in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Both endpoints healthy before the load starts.
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let authorization = format!("authorization: {bearer}");
    let url = format!("http://{proxy}/hello");
    let load = tokio::task::spawn_blocking(move || {
        std::process::Command::new("h2load")
            .args(["-D", "5", "-c", "4", "-m", "4", "-t", "1", "-H"])
            .arg(&authorization)
            .arg(&url)
            .output()
            .expect("h2load runs (scripts/test installs nghttp2-client)")
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let signalled = Instant::now();
    leaving.signal("-TERM");
    let (exit, log) = tokio::time::timeout(Duration::from_secs(20), leaving.wait())
        .await
        .expect("the stopped sidecar exits");
    let exit_after = signalled.elapsed();
    let output = load.await.expect("join");
    let output = String::from_utf8_lossy(&output.stdout).into_owned();
    let rolled = Rolled {
        requests: figure(&output, "requests:", "done"),
        failed: figure(&output, "requests:", "failed") + figure(&output, "requests:", "errored"),
        not_2xx: figure(&output, "status codes:", "3xx")
            + figure(&output, "status codes:", "4xx")
            + figure(&output, "status codes:", "5xx"),
        exited_ok: exit.success(),
        exit_after,
    };
    drop(staying);
    println!("drain delay {drain_delay}: {rolled:?}");
    assert!(rolled.exited_ok, "{log}");
    rolled
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_behind_envoy_drops_no_request() {
    crate::require!(Postgres, Envoy);
    // A little above the 0.5 s health-check interval.
    let rolled = rolling_update("1500ms").await;
    assert!(rolled.requests > 500, "steady load: {rolled:?}");
    assert_eq!(
        (rolled.failed, rolled.not_2xx),
        (0, 0),
        "no request failed: {rolled:?}"
    );
    assert!(
        rolled.exit_after >= Duration::from_millis(1500)
            && rolled.exit_after < Duration::from_millis(1500 + 5_000),
        "exits within the drain delay plus the grace: {rolled:?}"
    );
}

/// For BENCHMARKS.md: the same without a drain delay (what a sidecar that stops accepting at
/// once costs). `cargo test --test suite -- --ignored --nocapture rolling::measure`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run by hand"]
async fn measure_rolling_update_with_and_without_drain_delay() {
    crate::require!(Postgres, Envoy);
    for drain in ["0s", "1500ms"] {
        let rolled = rolling_update(drain).await;
        println!(
            "drain delay {drain}: {} requests, {} failed, {} not 2xx, exit after {:?}",
            rolled.requests, rolled.failed, rolled.not_2xx, rolled.exit_after
        );
    }
}
