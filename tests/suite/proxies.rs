//! SPEC §9 with the real proxies, on loopback: Envoy with gRPC ext_authz (what Istio
//! configures), Envoy with HTTP ext_authz, nginx `auth_request` and Traefik `ForwardAuth`, each in
//! front of a small upstream that echoes the headers it received. For each: a valid token reaches
//! the upstream with the identity headers and a client-sent `x-user-id: mallory` does not; no
//! token, a forged, an expired and a revoked token get 401 with `WWW-Authenticate`; with the
//! sidecar's store down beyond the staleness bound the proxy fails closed. The configurations
//! are `tests/proxies/*`, the same the README shows. `scripts/test` installs the proxies.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{Backend, HttpResponse, MIN, SEC, Settings, StoreProxy, TestApp, http_request};
use axum::http::HeaderMap;
use token_sidecar::api::pb::revoke_request::Target;
use token_sidecar::clock::Clock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Proxy {
    EnvoyGrpc,
    /// Envoy's gRPC ext_authz behind mutual TLS, with the client's certificate (SPEC §15).
    EnvoyMtls,
    EnvoyHttp,
    /// Envoy judging tokens itself with the Wasm filter, fed by the sidecar's HTTP listener.
    EnvoyWasm,
    Nginx,
    Traefik,
}

impl Proxy {
    /// The filter answers from its own copy of the revocation state and the fleet's clock as
    /// its last read of the feed said: a change reaches it within its poll interval.
    fn eventually(self) -> bool {
        self == Proxy::EnvoyWasm
    }
}

/// The Wasm filter's poll interval and staleness bound in these tests (ms).
const WASM_POLL_MS: u64 = 100;
const WASM_STALENESS_MS: u64 = 1_500;

pub(crate) type Seen = Arc<Mutex<Vec<BTreeMap<String, Vec<String>>>>>;

/// The app behind the proxy: answers 200 and remembers every request's headers.
pub(crate) async fn upstream() -> (SocketAddr, Seen) {
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let app = axum::Router::new().fallback(move |headers: HeaderMap| {
        let record = record.clone();
        async move {
            let mut all: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (k, v) in &headers {
                all.entry(k.as_str().to_owned())
                    .or_default()
                    .push(v.to_str().unwrap_or_default().to_owned());
            }
            if let Ok(mut seen) = record.lock() {
                seen.push(all);
            }
            "hello from the app"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

/// A proxy process, killed on drop.
pub(crate) struct Running {
    child: std::process::Child,
    pub(crate) addr: SocketAddr,
    /// Envoy's admin port (the Wasm filter's configuration has one).
    pub(crate) admin: u16,
    dir: tempfile::TempDir,
}

impl Running {
    /// The proxy's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Wasm filter's settings that vary between tests (and Envoy's worker count).
#[derive(Debug, Clone, Copy)]
pub(crate) struct WasmOptions {
    pub(crate) audience: Option<&'static str>,
    pub(crate) when_stale: &'static str,
    pub(crate) poll_ms: u64,
    pub(crate) staleness_ms: u64,
    /// Envoy's `--concurrency`: its workers (each runs its own Wasm VM, as does the main thread).
    pub(crate) workers: u32,
    /// The most cutoffs and denied ids a copy holds.
    pub(crate) max_entries: u64,
    /// The sidecar's `--dpop-nonce`.
    pub(crate) dpop_nonce: bool,
}

impl Default for WasmOptions {
    fn default() -> Self {
        Self {
            audience: None,
            when_stale: "fail_closed",
            poll_ms: WASM_POLL_MS,
            staleness_ms: WASM_STALENESS_MS,
            workers: 1,
            max_entries: 1_000_000,
            dpop_nonce: false,
        }
    }
}

fn config(
    name: &str,
    ports: &[(&str, u16)],
    dir: &std::path::Path,
    wasm: WasmOptions,
) -> std::path::PathBuf {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/proxies")
        .join(name);
    let mut text = std::fs::read_to_string(&path).expect("proxy config");
    for (name, port) in ports {
        text = text.replace(name, &port.to_string());
    }
    text = text
        .replace("DIR", &dir.display().to_string())
        .replace(
            "CERTS_AT",
            &format!("{}/tests/keys/tls", env!("CARGO_MANIFEST_DIR")),
        )
        .replace(
            "WASM_FILE",
            &crate::common::services::wasm_filter().display().to_string(),
        )
        .replace("POLL_MS", &wasm.poll_ms.to_string())
        .replace("STALENESS_MS", &wasm.staleness_ms.to_string())
        .replace("MAX_ENTRIES", &wasm.max_entries.to_string())
        .replace("WHEN_STALE", wasm.when_stale)
        .replace("DPOP_NONCE", &wasm.dpop_nonce.to_string())
        .replace("LOCAL_JWKS", &test_key_jwks())
        .replace("AUDIENCE", &json_text(wasm.audience));
    let out = dir.join(name);
    std::fs::write(&out, text).expect("write config");
    out
}

fn json_text(text: Option<&str>) -> String {
    serde_json::to_string(&text).unwrap_or_default()
}

pub(crate) fn start(proxy: Proxy, app: u16, sidecar: u16) -> Running {
    start_with(proxy, app, sidecar, WasmOptions::default())
}

/// [`start`], with the Wasm filter's `wasm` settings.
pub(crate) fn start_with(proxy: Proxy, app: u16, sidecar: u16, wasm: WasmOptions) -> Running {
    let dir = tempfile::tempdir().expect("dir");
    let listen = crate::common::free_port();
    let admin = crate::common::free_port();
    let ports = [
        ("LISTEN", listen),
        ("APP", app),
        ("SIDECAR", sidecar),
        ("ADMIN", admin),
    ];
    let mut command = match proxy {
        Proxy::EnvoyGrpc | Proxy::EnvoyMtls | Proxy::EnvoyHttp | Proxy::EnvoyWasm => {
            let name = match proxy {
                Proxy::EnvoyGrpc => "envoy-grpc.yaml",
                Proxy::EnvoyMtls => "envoy-mtls.yaml",
                Proxy::EnvoyHttp => "envoy-http.yaml",
                _ => "envoy-wasm.yaml",
            };
            let mut c = std::process::Command::new("envoy");
            c.arg("-c")
                .arg(config(name, &ports, dir.path(), wasm))
                .args(["--disable-hot-restart", "-l", "error"])
                .args(["--concurrency", &wasm.workers.to_string()])
                .args(["--base-id", &listen.to_string()]);
            c
        }
        Proxy::Nginx => {
            let mut c = std::process::Command::new("nginx");
            c.arg("-p")
                .arg(dir.path())
                .arg("-e")
                .arg(dir.path().join("error.log"))
                .arg("-c")
                .arg(config("nginx.conf", &ports, dir.path(), wasm));
            c
        }
        Proxy::Traefik => {
            let mut c = std::process::Command::new("traefik");
            c.arg(format!("--entryPoints.web.address=127.0.0.1:{listen}"))
                .arg(format!(
                    "--providers.file.filename={}",
                    config("traefik.yaml", &ports, dir.path(), wasm).display()
                ))
                .args([
                    "--log.level=ERROR",
                    "--global.checkNewVersion=false",
                    "--global.sendAnonymousUsage=false",
                ]);
            c
        }
    };
    let child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{proxy:?} does not start ({e}); scripts/test installs envoy, nginx, traefik")
        });
    Running {
        child,
        addr: ([127, 0, 0, 1], listen).into(),
        admin,
        dir,
    }
}

/// The test sidecars' HS256 `main` key as a private JWKS, for the Wasm filter.
fn test_key_jwks() -> String {
    use base64::Engine;
    let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(crate::common::TEST_SECRET);
    format!(r#"{{"keys":[{{"kty":"oct","kid":"main","alg":"HS256","k":"{k}"}}]}}"#)
}

pub(crate) async fn get(proxy: &Running, headers: &[(&str, &str)]) -> HttpResponse {
    http_request(proxy.addr, "GET", "/hello", headers, None)
        .await
        .expect("the proxy answers")
}

/// For the Wasm filter: waits (bounded) until it has read the feed again after whatever the
/// test just changed — four more reads, as the main thread's and the worker's root contexts
/// each read. The ext_authz proxies ask the sidecar on every request: nothing to wait for.
async fn settle(app: &TestApp, which: Proxy) {
    if !which.eventually() {
        return;
    }
    let reads = || app.counter(r#"rpc_requests_total{method="feed",result="ok",reason=""}"#);
    let wanted = reads() + 4;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while reads() < wanted {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the filter stopped reading the feed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// [`get`] until `done` holds: at once for a proxy that asks the sidecar, within a bound for
/// the Wasm filter (its poll interval, or its staleness bound, and some slack).
async fn get_until(
    proxy: &Running,
    which: Proxy,
    headers: &[(&str, &str)],
    done: impl Fn(&HttpResponse) -> bool,
) -> HttpResponse {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(WASM_STALENESS_MS + 3_000);
    loop {
        let r = get(proxy, headers).await;
        if done(&r) || !which.eventually() || tokio::time::Instant::now() >= deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the proxy routes: it answers (401, as no token is sent) instead of refusing.
pub(crate) async fn wait_ready(proxy: &Running, which: Proxy) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http_request(proxy.addr, "GET", "/hello", &[], None).await
            && r.status == 401
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{which:?} did not start routing in 30s (log dir {})",
            proxy.dir.path().display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asks the proxy with `auth` until it answers 401 (reading the response head only: Envoy holds
/// a local reply's connection for its delayed close); how long since `started`. Panics past 3 s.
pub(crate) async fn refused_after(
    proxy: &Running,
    auth: &str,
    started: std::time::Instant,
) -> Duration {
    loop {
        let status = crate::common::http_status(proxy.addr, "/hello", &[("authorization", auth)])
            .await
            .expect("the proxy answers");
        if status == 401 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "not refused within 3 s: {status}"
        );
    }
}

/// The headers of the last request the upstream saw.
pub(crate) fn last_seen(seen: &Seen) -> BTreeMap<String, Vec<String>> {
    seen.lock()
        .expect("seen")
        .last()
        .cloned()
        .expect("a request reached the upstream")
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn scenario(which: Proxy) {
    let (app, store): (TestApp, StoreProxy) = crate::common::behind_store_proxy(
        Settings::new(Backend::Postgres)
            .arg("--http-listen", "127.0.0.1:0")
            .arg("--forward-claim", "role=x-user-role"),
    )
    .await;
    let (app_addr, seen) = upstream().await;
    let sidecar_port = match which {
        Proxy::EnvoyGrpc => app.addr.port(),
        _ => app.http_addr.expect("--http-listen").port(),
    };
    let proxy = start(which, app_addr.port(), sidecar_port);
    wait_ready(&proxy, which).await;
    if which.eventually() {
        // The filter has read the feed and the keys once: a token is judged, not 503.
        let t = app.issue("warm-up").await;
        let auth = bearer(&t.token);
        let r = get_until(&proxy, which, &[("authorization", &auth)], |r| {
            r.status == 200
        })
        .await;
        assert_eq!(r.status, 200, "{which:?} never got in step: {r:?}");
    }
    let reached = || seen.lock().map(|s| s.len()).unwrap_or_default();

    // A valid token reaches the app with the identity headers, and only the sidecar's.
    let t = app.issue("alice").await;
    let auth = bearer(&t.token);
    let r = get(
        &proxy,
        &[
            ("authorization", &auth),
            ("x-user-id", "mallory"),
            ("x-session-id", "forged"),
            ("x-token-issuer", "https://forged.example"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{which:?}: {r:?}");
    assert_eq!(r.body, "hello from the app");
    let headers = seen.lock().expect("seen").last().cloned().expect("reached");
    let one = |name: &str| headers.get(name).cloned().unwrap_or_default();
    assert_eq!(
        one("x-user-id"),
        vec!["alice".to_string()],
        "{which:?}: {headers:?}"
    );
    assert_eq!(one("x-session-id"), vec![t.session_id.clone()], "{which:?}");
    assert_eq!(one("x-token-jti"), vec![t.jti.clone()], "{which:?}");
    let exp = t.expires_at.as_ref().map(|e| e.seconds.to_string());
    assert_eq!(one("x-token-exp").first().cloned(), exp, "{which:?}");
    // Our own token names no trusted issuer: a client's x-token-issuer never reaches the app.
    assert!(
        one("x-token-issuer").iter().all(|v| v.is_empty()),
        "{which:?}: a smuggled x-token-issuer reached the app: {headers:?}"
    );

    // A forwarded claim the token does not carry cannot be smuggled in by the client; one it
    // carries arrives as the token says.
    let r = get(
        &proxy,
        &[("authorization", &auth), ("x-user-role", "admin")],
    )
    .await;
    assert_eq!(r.status, 200, "{which:?}: {r:?}");
    let headers = seen.lock().expect("seen").last().cloned().expect("reached");
    let role = headers.get("x-user-role").cloned().unwrap_or_default();
    assert!(
        role.iter().all(|v| v.is_empty()),
        "{which:?}: a smuggled x-user-role reached the app: {role:?}"
    );
    let mut claims = serde_json::Map::new();
    claims.insert("role".into(), "reader".into());
    let reader = app
        .issue_with(token_sidecar::api::pb::IssueRequest {
            user_id: "erin".into(),
            claims: Some(token_sidecar::api::convert::json_to_struct(claims)),
            ttl: None,
            ..Default::default()
        })
        .await
        .expect("issue");
    let r = get(
        &proxy,
        &[
            ("authorization", &bearer(&reader.token)),
            ("x-user-role", "admin"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{which:?}: {r:?}");
    let headers = seen.lock().expect("seen").last().cloned().expect("reached");
    assert_eq!(
        headers.get("x-user-role").cloned().unwrap_or_default(),
        vec!["reader".to_string()],
        "{which:?}"
    );

    // Refusals never reach the app.
    let before = reached();
    let r = get(&proxy, &[]).await;
    assert_eq!(r.status, 401, "{which:?}: no token: {r:?}");
    assert_eq!(r.header_count("www-authenticate"), 1, "{which:?}: {r:?}");
    assert_eq!(
        r.header("www-authenticate").as_deref(),
        Some("Bearer"),
        "{which:?}"
    );

    let forged = crate::common::craft(
        &crate::common::good_header(),
        &crate::common::good_payload(),
        &[7u8; 32],
    );
    let r = get(&proxy, &[("authorization", &bearer(&forged))]).await;
    assert_eq!(r.status, 401, "{which:?}: forged: {r:?}");
    assert_eq!(
        r.header_count("www-authenticate"),
        1,
        "{which:?}: one challenge: {r:?}"
    );
    let challenge = r.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.contains("error=\"invalid_token\"") && challenge.contains("REASON_BAD_SIGNATURE"),
        "{which:?}: {challenge}"
    );

    let revoked = app.issue("bob").await;
    app.revoke(Target::Jti(revoked.jti.clone()))
        .await
        .expect("revoke");
    settle(&app, which).await;
    let r = get(&proxy, &[("authorization", &bearer(&revoked.token))]).await;
    assert_eq!(r.status, 401, "{which:?}: revoked: {r:?}");
    assert!(
        r.header("www-authenticate")
            .unwrap_or_default()
            .contains("REASON_TOKEN_REVOKED"),
        "{which:?}"
    );
    if which == Proxy::EnvoyWasm {
        // SPEC §14: the filter's own metrics, at Envoy's /stats/prometheus, labelled. Decisions
        // are handed to Envoy on the filter's tick (its poll interval).
        let admin = ([127, 0, 0, 1], proxy.admin).into();
        let stats = || async {
            http_request(admin, "GET", "/stats/prometheus", &[], None)
                .await
                .expect("Envoy's admin answers")
                .body
        };
        let refusals = |stats: &str| -> f64 {
            stats
                .lines()
                .find(|l| {
                    l.starts_with("token_sidecar_filter_decisions{")
                        && l.contains(r#"reason="REASON_TOKEN_REVOKED""#)
                        && l.contains(r#"result="deny""#)
                })
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_default()
        };
        crate::common::eventually(
            Duration::from_millis(WASM_POLL_MS * 3 + 2_000),
            "the refusal is counted at /stats/prometheus",
            || async { refusals(&stats().await) >= 1.0 },
        )
        .await;
        let stats = stats().await;
        for gauge in [
            "token_sidecar_filter_entries",
            "token_sidecar_filter_staleness_ms",
        ] {
            assert!(
                stats.lines().any(|l| l.starts_with(gauge)),
                "{gauge} at /stats/prometheus:\n{stats}"
            );
        }
        assert!(
            stats
                .lines()
                .any(|l| l.starts_with(r#"token_sidecar_filter_feed_reads{result="ok"}"#)),
            "{stats}"
        );
    }

    // Rule 1 on every surface: "logout everywhere" and a ban.
    let everywhere = app.issue("frank").await;
    let banned = app.issue("grace").await;
    app.revoke(Target::User(token_sidecar::api::pb::UserRevocation {
        user_id: "frank".into(),
        until: None,
    }))
    .await
    .expect("revoke all");
    let ban_end = app.clock.now_ms() + 60 * MIN;
    app.revoke(Target::User(token_sidecar::api::pb::UserRevocation {
        user_id: "grace".into(),
        until: Some(token_sidecar::api::convert::timestamp(ban_end)),
    }))
    .await
    .expect("ban");
    settle(&app, which).await;
    for (token, reason) in [
        (&everywhere.token, "REASON_USER_REVOKED"),
        (&banned.token, "REASON_USER_BANNED"),
    ] {
        let r = get(&proxy, &[("authorization", &bearer(token))]).await;
        assert_eq!(r.status, 401, "{which:?}: {reason}: {r:?}");
        assert!(
            r.header("www-authenticate")
                .unwrap_or_default()
                .contains(reason),
            "{which:?}: {r:?}"
        );
    }

    let soon = app.issue("carol").await;
    app.clock.advance_ms(5 * MIN);
    settle(&app, which).await;
    let r = get(&proxy, &[("authorization", &bearer(&soon.token))]).await;
    assert_eq!(r.status, 401, "{which:?}: expired: {r:?}");
    assert!(
        r.header("www-authenticate")
            .unwrap_or_default()
            .contains("REASON_EXPIRED"),
        "{which:?}"
    );
    assert_eq!(reached(), before, "{which:?}: no refusal reached the app");

    // The store down beyond the staleness bound: the sidecar cannot answer, the proxy fails
    // closed.
    let fresh = app.issue("dave").await;
    assert_eq!(
        get(&proxy, &[("authorization", &bearer(&fresh.token))])
            .await
            .status,
        200
    );
    store.cut();
    app.clock.advance_ms(3 * SEC);
    if which.eventually() {
        // The filter measures its staleness on Envoy's own monotonic clock, which no test can
        // move: its bound is waited out.
        tokio::time::sleep(Duration::from_millis(WASM_STALENESS_MS + 500)).await;
    }
    let before = reached();
    let r = get(&proxy, &[("authorization", &bearer(&fresh.token))]).await;
    assert!(
        r.status >= 400 && r.status != 401,
        "{which:?}: fails closed, not as a bad token: {r:?}"
    );
    assert_eq!(reached(), before, "{which:?}: nothing reached the app");
    store.restore();
}

#[tokio::test]
async fn envoy_grpc_ext_authz() {
    crate::require!(Postgres, Envoy, Nginx, Traefik);
    scenario(Proxy::EnvoyGrpc).await;
}

#[tokio::test]
async fn envoy_http_ext_authz() {
    crate::require!(Postgres, Envoy, Nginx, Traefik);
    scenario(Proxy::EnvoyHttp).await;
}

/// The Wasm filter judges every case the ext_authz surfaces do, in Envoy, from its own copy of
/// the revocation state: the same headers, the same challenges, a revocation within its poll
/// interval, and 503 once the sidecar cannot be read for longer than its staleness bound.
#[tokio::test]
async fn envoy_wasm_filter() {
    crate::require!(Postgres, Envoy, WasmFilter);
    scenario(Proxy::EnvoyWasm).await;
}

#[tokio::test]
async fn nginx_auth_request() {
    crate::require!(Postgres, Envoy, Nginx, Traefik);
    scenario(Proxy::Nginx).await;
}

#[tokio::test]
async fn traefik_forward_auth() {
    crate::require!(Postgres, Envoy, Nginx, Traefik);
    scenario(Proxy::Traefik).await;
}

/// The attack catalogue (tests/suite/attacks.rs) through Envoy and the Wasm filter: every hostile
/// token a header can carry is refused 401 with the reason Verify gives it.
#[tokio::test]
async fn the_wasm_filter_refuses_the_attack_catalogue() {
    crate::require!(Envoy, WasmFilter);
    let (app, _keys) = crate::attacks::catalogue_app(
        Settings::new(Backend::Sqlite).arg("--http-listen", "127.0.0.1:0"),
    )
    .await;
    let (app_addr, seen) = upstream().await;
    let sidecar = app.http_addr.expect("--http-listen").port();
    let options = WasmOptions {
        audience: Some("api"),
        ..WasmOptions::default()
    };
    let proxy = start_with(Proxy::EnvoyWasm, app_addr.port(), sidecar, options);
    wait_ready(&proxy, Proxy::EnvoyWasm).await;
    let valid = app.issue("alice").await.token;
    let auth = bearer(&valid);
    let r = get_until(&proxy, Proxy::EnvoyWasm, &[("authorization", &auth)], |r| {
        r.status == 200
    })
    .await;
    assert_eq!(r.status, 200, "the filter never got in step: {r:?}");
    let reached = seen.lock().map(|s| s.len()).unwrap_or_default();

    let cases = crate::attacks::catalogue(&valid);
    let mut failures = Vec::new();
    let mut sent = 0;
    for (name, token, expected) in &cases {
        let header = bearer(token);
        if token.is_empty() || axum::http::HeaderValue::from_str(&header).is_err() {
            continue;
        }
        sent += 1;
        let answer = http_request(
            proxy.addr,
            "GET",
            "/hello",
            &[("authorization", &header)],
            None,
        )
        .await;
        // Envoy refuses headers over its 60 KiB limit itself before any filter runs: a 431, or
        // the connection reset while the client is still sending.
        if header.len() > 60 * 1024 {
            if answer.as_ref().is_ok_and(|r| r.status != 431) {
                failures.push(format!("{name}: {answer:?}"));
            }
            continue;
        }
        let r = answer.expect("the proxy answers");
        let challenge = r.header("www-authenticate").unwrap_or_default();
        if r.status != 401 || !challenge.contains(expected.as_str_name()) {
            failures.push(format!("{name}: {} {challenge}", r.status));
        }
    }
    assert!(
        sent >= 25,
        "{sent} of {} cases fit in a header",
        cases.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {sent} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(
        seen.lock().map(|s| s.len()).unwrap_or_default(),
        reached,
        "no attack reached the app"
    );
}

/// `when_stale: ask_sidecar`: a filter that cannot read the feed (here: the sidecar wants a feed
/// credential the filter does not have) pauses each request while the sidecar's `/auth`
/// decides — the identity headers are the sidecar's, revoked tokens are refused at once.
#[tokio::test]
async fn a_wasm_filter_out_of_step_can_ask_the_sidecar() {
    crate::require!(Envoy, WasmFilter);
    let dir = tempfile::tempdir().expect("dir");
    let feed = dir.path().join("feed");
    std::fs::write(&feed, "a-feed-credential-the-filter-lacks\n").expect("write");
    std::fs::set_permissions(&feed, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    // The filter has read no page, so it has no offset to the fleet's clock: it judges `exp`
    // on Envoy's own clock, which the sidecar's clock is set to here.
    let now = token_sidecar::clock::wall_ms();
    let app = Settings::new(Backend::Sqlite)
        .clock(token_sidecar::clock::ManualClock::new(now))
        .arg("--http-listen", "127.0.0.1:0")
        .arg("--feed-token-file", &feed.display().to_string())
        .spawn()
        .await;
    let (app_addr, seen) = upstream().await;
    let sidecar = app.http_addr.expect("--http-listen").port();
    let options = WasmOptions {
        when_stale: "ask_sidecar",
        ..WasmOptions::default()
    };
    let proxy = start_with(Proxy::EnvoyWasm, app_addr.port(), sidecar, options);
    wait_ready(&proxy, Proxy::EnvoyWasm).await;

    let t = app.issue("alice").await;
    let auth = bearer(&t.token);
    let r = get_until(
        &proxy,
        Proxy::EnvoyWasm,
        &[("authorization", &auth), ("x-user-id", "mallory")],
        |r| r.status == 200,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let headers = seen.lock().expect("seen").last().cloned().expect("reached");
    assert_eq!(
        headers.get("x-user-id").cloned().unwrap_or_default(),
        vec!["alice".to_string()]
    );
    assert_eq!(
        headers.get("x-token-jti").cloned().unwrap_or_default(),
        vec![t.jti.clone()]
    );

    app.revoke(Target::Jti(t.jti.clone()))
        .await
        .expect("revoke");
    let r = get(&proxy, &[("authorization", &auth)]).await;
    assert_eq!(r.status, 401, "the sidecar answered at once: {r:?}");
    assert!(
        r.header("www-authenticate")
            .unwrap_or_default()
            .contains("REASON_TOKEN_REVOKED")
    );
    let refused = |reason: &str| {
        app.counter(&format!(
            r#"rpc_requests_total{{method="feed",result="unauthenticated",reason="{reason}"}}"#
        ))
    };
    assert!(
        refused("INVALID_CREDENTIAL") + refused("MISSING_CREDENTIAL") > 0,
        "the filter did try the feed"
    );
}

/// Issue 42: `scripts/try-envoy-filter` is one command that shows the filter at work: a curl that
/// passes, then the same curl refused after a revocation (run here with the test build).
#[tokio::test]
async fn the_try_envoy_filter_script_shows_a_pass_then_a_refusal() {
    crate::require!(Envoy, WasmFilter, Grpcurl);
    let root = env!("CARGO_MANIFEST_DIR");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(format!("{root}/scripts/try-envoy-filter"))
            .env("TOKEN_SIDECAR_BIN", env!("CARGO_BIN_EXE_token-sidecar"))
            .output()
            .expect("scripts/try-envoy-filter runs")
    })
    .await
    .expect("joined");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let passed = stdout.find("hello alice (HTTP 200)").expect(&stdout);
    let refused = stdout.find("(HTTP 401)").expect(&stdout);
    assert!(passed < refused, "{stdout}");
    assert!(stdout.contains("REASON_TOKEN_REVOKED"), "{stdout}");
}

/// SPEC §14: a revocation made on another sidecar reaches the Envoy filter as soon as the
/// filter's sidecar applied it — the filter's read of the feed is a long poll the sidecar
/// answers from memory. With a poll interval of 5 s, only the long poll can explain a refusal
/// within a second; the figures (p50, p99 over 100 revocations) are printed for BENCHMARKS.md.
#[tokio::test]
async fn a_revocation_reaches_the_wasm_filter_in_milliseconds() {
    crate::require!(Postgres, Envoy, WasmFilter);
    let app = Settings::new(Backend::Postgres)
        .arg("--http-listen", "127.0.0.1:0")
        .spawn()
        .await;
    let writer = Settings::new(Backend::Postgres)
        .sharing(&app)
        .clock(app.clock.clone())
        .spawn()
        .await;
    let (app_addr, _seen) = upstream().await;
    let wasm = WasmOptions {
        poll_ms: 5_000,
        staleness_ms: 10_000,
        ..WasmOptions::default()
    };
    let proxy = start_with(
        Proxy::EnvoyWasm,
        app_addr.port(),
        app.http_addr.expect("http").port(),
        wasm,
    );
    wait_ready(&proxy, Proxy::EnvoyWasm).await;
    let mut tokens = Vec::new();
    for i in 0..130 {
        tokens.push(writer.issue(&format!("user-{i}")).await);
    }
    // In step (the first read comes with the first tick, 5 s): every token admitted.
    let first = bearer(&tokens[0].token);
    crate::common::eventually(Duration::from_secs(20), "the filter is in step", || async {
        get(&proxy, &[("authorization", &first)]).await.status == 200
    })
    .await;
    for t in &tokens {
        let r = get(&proxy, &[("authorization", &bearer(&t.token))]).await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    // Each Wasm VM (Envoy's main thread and its worker) reads from 0 from the store, and again
    // when the first change wakes it; from then on it follows the sidecar's tail. Settled: three
    // revocations in a row with no store read between them (events, not time) — a read that is
    // still on its way when one VM refuses is counted before the measured ones start.
    let store_reads = || app.counter(r#"store_queries_total{kind="feed"}"#);
    let mut tokens = tokens.into_iter();
    let mut quiet_rounds = 0;
    while quiet_rounds < 3 {
        let t = tokens
            .next()
            .expect("the copies never followed the tail alone");
        let before = store_reads();
        let started = std::time::Instant::now();
        writer
            .revoke(Target::Jti(t.jti.clone()))
            .await
            .expect("revoke on the other sidecar");
        refused_after(&proxy, &bearer(&t.token), started).await;
        quiet_rounds = if store_reads() == before {
            quiet_rounds + 1
        } else {
            0
        };
    }
    let feed_reads_before = store_reads();
    let mut took = Vec::new();
    for t in tokens.take(100) {
        let auth = bearer(&t.token);
        let started = std::time::Instant::now();
        writer
            .revoke(Target::Jti(t.jti.clone()))
            .await
            .expect("revoke on the other sidecar");
        // Within 3 s: the poll interval is 5 s, only the long poll can make it.
        took.push(refused_after(&proxy, &auth, started).await);
    }
    assert_eq!(took.len(), 100, "a hundred revocations measured");
    took.sort();
    let p50 = took[took.len() / 2];
    let p99 = took[took.len() * 99 / 100];
    println!(
        "revocation to refusal through Envoy's filter: p50 {p50:?}, p99 {p99:?} (100 revocations)"
    );

    assert!(
        p99 < Duration::from_millis(500),
        "a long poll answers when the change is applied: p99 {p99:?}"
    );
    assert_eq!(
        app.counter(r#"store_queries_total{kind="feed"}"#),
        feed_reads_before,
        "the filter's reads cost the store nothing while the sidecar is in step"
    );
}
