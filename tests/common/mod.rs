//! Shared helper: spawns a real sidecar (real tonic server on an ephemeral port, a fresh
//! database) with a manual clock, and a real gRPC client connected to it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use futures::StreamExt;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
use tonic_types::StatusExt;

use token_sidecar::clock::ManualClock;
use token_sidecar::config::Config;
use token_sidecar::grpc::pb;
use token_sidecar::grpc::pb::token_service_client::TokenServiceClient;
use token_sidecar::server::{self, RunningSidecar, SERVICE_NAME};

/// 2026-01-01T00:00:00Z: where every test clock starts.
pub const T0_MS: i64 = 1_767_225_600_000;
pub const SEC: i64 = 1_000;
pub const MIN: i64 = 60 * SEC;
pub const DAY: i64 = 24 * 60 * MIN;

/// Which store a scenario runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// The PostgreSQL server the tests create their databases in.
pub fn postgres_admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Creates a fresh, empty PostgreSQL database and returns its URL.
pub async fn fresh_postgres_database() -> String {
    use sqlx::Connection;
    let admin = postgres_admin_url();
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is not reachable at {admin} ({e}). Start it (scripts/test does: \
             pg_ctlcluster --skip-systemctl-redirect 15 main start) or set TEST_DATABASE_URL."
            )
        });
    let name = format!(
        "ts_test_{}",
        token_sidecar::token::new_random_id()
            .to_ascii_lowercase()
            .replace(['-', '_'], "x")
    );
    // The name is ours: "ts_test_" and lowercase base64url letters and digits.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let (base, _) = admin
        .rsplit_once('/')
        .expect("admin URL has a database name");
    format!("{base}/{name}")
}

/// One running sidecar and a client for it.
pub struct TestApp {
    pub client: TokenServiceClient<Channel>,
    pub health: HealthClient<Channel>,
    pub clock: ManualClock,
    pub addr: SocketAddr,
    pub health_addr: Option<SocketAddr>,
    pub http_addr: Option<SocketAddr>,
    pub metrics_addr: SocketAddr,
    pub metrics: Arc<token_sidecar::metrics::Metrics>,
    pub backend: Backend,
    pub database_url: String,
    pub dir: Arc<tempfile::TempDir>,
    running: Option<RunningSidecar>,
}

/// Builds the argument list a test sidecar starts with.
pub struct Settings {
    pub backend: Backend,
    pub args: Vec<String>,
    pub database_url: Option<String>,
    pub dir: Option<Arc<tempfile::TempDir>>,
    pub clock: Option<ManualClock>,
    pub wait_until_serving: bool,
    pub with_key: bool,
    pub tls: Option<tonic::transport::ClientTlsConfig>,
}

impl Settings {
    pub fn new(backend: Backend) -> Self {
        Self {
            backend,
            args: Vec::new(),
            database_url: None,
            dir: None,
            clock: None,
            wait_until_serving: true,
            with_key: true,
            tls: None,
        }
    }

    pub fn flag(mut self, flag: &str) -> Self {
        self.args.push(flag.into());
        self
    }

    pub fn arg(mut self, flag: &str, value: &str) -> Self {
        self.args.push(flag.into());
        self.args.push(value.into());
        self
    }

    /// Shares a database (and key directory) with another app.
    pub fn sharing(mut self, other: &TestApp) -> Self {
        self.database_url = Some(other.database_url.clone());
        self.dir = Some(other.dir.clone());
        self
    }

    pub fn database_url(mut self, url: &str) -> Self {
        self.database_url = Some(url.into());
        self
    }

    pub fn clock(mut self, clock: ManualClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Connects over TLS with this client configuration.
    pub fn tls(mut self, tls: tonic::transport::ClientTlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Starts with no `--key`, as a first-time user would.
    pub fn without_key(mut self) -> Self {
        self.with_key = false;
        self
    }

    pub fn no_wait(mut self) -> Self {
        self.wait_until_serving = false;
        self
    }

    pub async fn spawn(self) -> TestApp {
        match self.try_spawn().await {
            Ok(app) => app,
            Err(e) => panic!("sidecar did not start: {e}"),
        }
    }

    pub async fn try_spawn(self) -> Result<TestApp, server::StartupError> {
        let dir = match self.dir {
            Some(dir) => dir,
            None => Arc::new(tempfile::tempdir().expect("temp dir")),
        };
        let database_url = match (self.database_url, self.backend) {
            (Some(url), _) => url,
            (None, Backend::Postgres) => fresh_postgres_database().await,
            (None, Backend::Sqlite) => format!("sqlite:{}", dir.path().join("test.db").display()),
        };
        let key = dir.path().join("main.key");
        if !key.exists() {
            std::fs::write(&key, TEST_SECRET).expect("write key");
        }
        let mut args: Vec<String> = vec!["token-sidecar".into()];
        if !self.args.iter().any(|a| a == "--listen") {
            args.extend(["--listen".into(), "127.0.0.1:0".into()]);
        }
        args.extend([
            "--metrics-listen".into(),
            "127.0.0.1:0".into(),
            "--database-url".into(),
            database_url.clone(),
        ]);
        if self.with_key && !self.args.iter().any(|a| a == "--key") {
            args.push("--key".into());
            args.push(format!("main=HS256:{}", key.display()));
        }
        args.extend(self.args);
        let config = Config::try_parse_from(&args).expect("test config parses");
        let clock = self.clock.unwrap_or_else(|| ManualClock::new(T0_MS));
        let running = server::start(config, Arc::new(clock.clone())).await?;
        let addr = running.addr;
        let health_addr = running.health_addr;
        let http_addr = running.http_addr;
        let metrics_addr = running.metrics_addr;
        let metrics = running.metrics.clone();
        let channel = match self.tls {
            None => Channel::from_shared(format!("http://{addr}"))
                .expect("uri")
                .connect()
                .await
                .expect("connect to the sidecar"),
            Some(tls) => Channel::from_shared(format!("https://localhost:{}", addr.port()))
                .expect("uri")
                .tls_config(tls)
                .expect("tls config")
                .connect()
                .await
                .expect("connect to the sidecar over TLS"),
        };
        let app = TestApp {
            client: TokenServiceClient::new(channel.clone()),
            health: HealthClient::new(channel),
            clock,
            addr,
            health_addr,
            http_addr,
            metrics_addr,
            metrics,
            backend: self.backend,
            database_url,
            dir,
            running: Some(running),
        };
        if self.wait_until_serving {
            app.wait_for_health(ServingStatus::Serving).await;
        }
        Ok(app)
    }
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Self {
        Settings::new(backend).spawn().await
    }

    /// Waits (through the health Watch stream, with a deadline) for a status.
    pub async fn wait_for_health(&self, wanted: ServingStatus) {
        let mut health = self.health.clone();
        let watch = async {
            let mut stream = health
                .watch(HealthCheckRequest {
                    service: SERVICE_NAME.into(),
                })
                .await
                .expect("health watch")
                .into_inner();
            while let Some(update) = stream.next().await {
                if update.expect("health update").status == wanted as i32 {
                    return;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), watch)
            .await
            .unwrap_or_else(|_| panic!("sidecar did not report {wanted:?} within 30s"));
    }

    /// Re-reads the key files now (what SIGHUP does).
    /// Applies the store's committed changes now (what a poll tick does).
    pub async fn sync_now(&self) {
        if let Some(running) = &self.running {
            let synced = running.authority.revocations().catch_up().await;
            synced.expect("catch up with the store");
        }
    }

    /// Runs the background purge now (what a purge tick does).
    pub async fn purge_now(&self) {
        use token_sidecar::clock::Clock;
        if let Some(running) = &self.running {
            let before = running
                .authority
                .policy()
                .cutoff_purgeable_before(self.clock.now_ms());
            let purged = running.authority.revocations().purge(before).await;
            purged.expect("purge");
        }
    }

    pub fn reload_keys(&self) -> Result<bool, token_sidecar::token::KeyError> {
        match &self.running {
            Some(running) => running.reload_keys(),
            None => Ok(false),
        }
    }

    pub async fn jwks(&self) -> serde_json::Value {
        let json = self
            .client
            .clone()
            .get_jwks(pb::GetJwksRequest {})
            .await
            .expect("jwks")
            .into_inner()
            .jwks_json;
        serde_json::from_str(&json).expect("JWKS is JSON")
    }

    pub async fn shutdown(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await.expect("clean shutdown");
        }
    }

    pub async fn issue(&self, user_id: &str) -> pb::IssueResponse {
        self.issue_with(pb::IssueRequest {
            user_id: user_id.into(),
            ..Default::default()
        })
        .await
        .expect("issue")
    }

    pub async fn issue_with(
        &self,
        req: pb::IssueRequest,
    ) -> Result<pb::IssueResponse, tonic::Status> {
        self.client.clone().issue(req).await.map(|r| r.into_inner())
    }

    pub async fn verify(&self, token: &str) -> pb::VerifyResponse {
        self.client
            .clone()
            .verify(pb::VerifyRequest {
                token: token.into(),
            })
            .await
            .expect("verify answers")
            .into_inner()
    }

    /// The reason Verify gives (`Unspecified` when valid).
    pub async fn verdict(&self, token: &str) -> pb::Reason {
        let r = self.verify(token).await;
        assert_eq!(r.valid, r.reason == pb::Reason::Unspecified as i32);
        pb::Reason::try_from(r.reason).expect("known reason")
    }

    pub async fn refresh(&self, token: &str) -> Result<pb::RefreshResponse, tonic::Status> {
        self.client
            .clone()
            .refresh(pb::RefreshRequest {
                token: token.into(),
            })
            .await
            .map(|r| r.into_inner())
    }

    pub async fn revoke(
        &self,
        target: pb::revoke_request::Target,
    ) -> Result<pb::RevokeResponse, tonic::Status> {
        self.client
            .clone()
            .revoke(pb::RevokeRequest {
                target: Some(target),
            })
            .await
            .map(|r| r.into_inner())
    }

    pub async fn revoke_user(&self, user_id: &str, until_ms: Option<i64>) -> pb::RevokeResponse {
        self.revoke(pb::revoke_request::Target::User(pb::UserRevocation {
            user_id: user_id.into(),
            until: until_ms.map(token_sidecar::grpc::timestamp),
        }))
        .await
        .expect("revoke user")
    }

    pub async fn lift_ban(&self, user_id: &str) -> bool {
        self.client
            .clone()
            .lift_ban(pb::LiftBanRequest {
                user_id: user_id.into(),
            })
            .await
            .expect("lift ban")
            .into_inner()
            .lifted
    }

    pub async fn user_status(&self, user_id: &str) -> pb::GetUserStatusResponse {
        self.client
            .clone()
            .get_user_status(pb::GetUserStatusRequest {
                user_id: user_id.into(),
            })
            .await
            .expect("user status")
            .into_inner()
    }

    /// Rows in a table of the store, read straight from the database.
    pub async fn count_rows(&self, table: &str) -> i64 {
        assert!(
            table.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "table name {table:?}"
        );
        let sql = format!("SELECT COUNT(*) FROM {table}");
        match self.backend {
            Backend::Postgres => {
                let pool = sqlx::PgPool::connect(&self.database_url).await.expect("pg");
                let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
                    .fetch_one(&pool)
                    .await
                    .expect("count");
                pool.close().await;
                n
            }
            Backend::Sqlite => {
                let pool = sqlx::SqlitePool::connect(&self.database_url)
                    .await
                    .expect("sqlite");
                let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
                    .fetch_one(&pool)
                    .await
                    .expect("count");
                pool.close().await;
                n
            }
        }
    }
}

/// Asserts a status's code and the reason in its `google.rpc.ErrorInfo`.
pub fn assert_status(status: &tonic::Status, code: tonic::Code, reason: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    let details = status.get_error_details();
    let info = details
        .error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.reason, reason, "{status:?}");
    assert_eq!(info.domain, "token-sidecar");
}

/// Generates one `#[tokio::test]` per backend for each scenario function.
#[macro_export]
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::common::Backend::Postgres).await
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::common::Backend::Sqlite).await
                }
            )*
        }
    };
}

/// The secret every test sidecar's `main` key holds.
pub const TEST_SECRET: [u8; 32] = [42u8; 32];

/// Signs an arbitrary header and payload with HS256 and `secret`: for hand-made tokens.
pub fn craft(header: &serde_json::Value, payload: &serde_json::Value, secret: &[u8]) -> String {
    use base64::Engine;
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let message = format!("{}.{}", b64(header), b64(payload));
    let key = jsonwebtoken::EncodingKey::from_secret(secret).expect("key");
    let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
        .expect("sign");
    format!("{message}.{sig}")
}

/// A payload that is valid at T0 for the default configuration.
pub fn good_payload() -> serde_json::Value {
    let t0 = T0_MS / 1000;
    serde_json::json!({
        "iss": "token-sidecar", "sub": "crafted", "jti": "crafted-jti", "sid": "crafted-sid",
        "iat": t0, "exp": t0 + 300, "orig_iat": t0 as f64,
    })
}

/// The header our sidecars' `main` key expects.
pub fn good_header() -> serde_json::Value {
    serde_json::json!({"alg": "HS256", "typ": "JWT", "kid": "main"})
}

/// Waits until `check` holds, polling every few milliseconds, for at most `deadline`. Only for
/// what crosses to another instance through PostgreSQL (propagation); rules move the clock.
pub async fn eventually<F, Fut>(deadline: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = std::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    let waited = tokio::time::timeout(deadline, async {
        loop {
            tick.tick().await;
            if check().await {
                return started.elapsed();
            }
        }
    })
    .await;
    waited.unwrap_or_else(|_| panic!("{what}: not within {deadline:?}"))
}

/// A plain HTTP/1.1 GET (the metrics port); returns the status line + headers and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let response = http_request(addr, "GET", path, &[], None)
        .await
        .expect("an HTTP response");
    (response.head, response.body)
}

/// An HTTP/1.1 answer as it came over the wire.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl HttpResponse {
    /// The first value of a header (names compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// One HTTP/1.1 request over a fresh connection (`Connection: close`), read to the end; `Err`
/// when nothing answers (e.g. a proxy not listening yet).
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<(&str, &str)>,
) -> std::io::Result<HttpResponse> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    match body {
        Some((content_type, body)) => request.push_str(&format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )),
        None => request.push_str("\r\n"),
    }
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 10s"))??;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "not HTTP"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no status"))?;
    Ok(HttpResponse {
        status,
        head: head.to_string(),
        body: body.to_string(),
    })
}

/// The address of the local PostgreSQL the tests use.
pub fn postgres_addr() -> SocketAddr {
    let url = postgres_admin_url();
    let host_port = url
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or("127.0.0.1:5432");
    host_port
        .parse()
        .unwrap_or_else(|_| ([127, 0, 0, 1], 5432).into())
}

/// A sidecar on a fresh PostgreSQL database reached through a [`StoreProxy`] that the test can
/// cut, with a 2 s staleness bound.
pub async fn behind_store_proxy(settings: Settings) -> (TestApp, StoreProxy) {
    let proxy = StoreProxy::start(postgres_addr()).await;
    let url = proxy.url_for(&fresh_postgres_database().await);
    let app = settings
        .database_url(&url)
        .arg("--max-staleness", "2s")
        .arg("--health-interval", "1s")
        .arg("--sync-poll-interval", "200ms")
        .spawn()
        .await;
    (app, proxy)
}

/// A connection holding `denylist` locked in an open transaction, so that every store write to
/// it waits (in flight) until the test sends COMMIT or ROLLBACK on this connection.
pub async fn lock_denylist(database_url: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    let mut blocker = sqlx::PgConnection::connect(database_url)
        .await
        .expect("connect");
    sqlx::query("BEGIN")
        .execute(&mut blocker)
        .await
        .expect("begin");
    sqlx::query("LOCK TABLE denylist IN ACCESS EXCLUSIVE MODE")
        .execute(&mut blocker)
        .await
        .expect("lock");
    blocker
}

/// The value of an unlabelled metric in Prometheus text.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A TCP proxy in front of PostgreSQL that a test can cut (every connection dropped, new ones
/// refused) and restore, to simulate a store outage without touching the shared server.
pub struct StoreProxy {
    pub addr: SocketAddr,
    cut: tokio::sync::watch::Sender<bool>,
}

impl StoreProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (cut, cut_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if *cut_rx.borrow() {
                    drop(client);
                    continue;
                }
                let mut cut_rx = cut_rx.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut_rx.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Self { addr, cut }
    }

    /// The database URL `url` rewritten to go through this proxy.
    pub fn url_for(&self, url: &str) -> String {
        url.replace("127.0.0.1:5432", &self.addr.to_string())
    }

    pub fn cut(&self) {
        let _ = self.cut.send(true);
    }

    pub fn restore(&self) {
        let _ = self.cut.send(false);
    }
}

/// A port nothing listens on right now (the OS picks it; the caller binds it soon after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A PostgreSQL cluster of the test's own (initdb in a temp dir, its own port), so that a test
/// can restart or crash the database under load without disturbing the shared server.
pub struct PrivatePostgres {
    pub url: String,
    dir: tempfile::TempDir,
    port: u16,
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

fn as_postgres_user(program: &str, args: &[&str]) -> std::process::Output {
    let path = format!("{PG_BIN}/{program}");
    let mut command = if is_root() {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--", &path]);
        c
    } else {
        std::process::Command::new(&path)
    };
    command
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {path} (PostgreSQL 15 server binaries needed): {e}"))
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

impl PrivatePostgres {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        if is_root() {
            let status = std::process::Command::new("chown")
                .args(["postgres:", &dir.path().display().to_string()])
                .status()
                .expect("chown");
            assert!(status.success(), "chown the cluster directory to postgres");
        }
        let data_s = data.display().to_string();
        let out = as_postgres_user(
            "initdb",
            &["-D", &data_s, "-A", "trust", "-U", "postgres", "--no-sync"],
        );
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let pg = Self {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            dir,
            port,
        };
        pg.pg_ctl(&["start"]);
        pg
    }

    fn pg_ctl(&self, action: &[&str]) {
        let data = self.dir.path().join("data").display().to_string();
        let log = self.dir.path().join("log").display().to_string();
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=on",
            self.port,
            self.dir.path().display()
        );
        let mut args = vec!["-D", &data, "-l", &log, "-o", &options, "-w", "-t", "60"];
        args.extend_from_slice(action);
        let out = as_postgres_user("pg_ctl", &args);
        assert!(
            out.status.success(),
            "pg_ctl {action:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Kills the server the way a crash does (no checkpoint), then starts it again; committed
    /// transactions must survive.
    pub fn crash_and_restart(&self) {
        self.pg_ctl(&["-m", "immediate", "stop"]);
        self.pg_ctl(&["start"]);
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data").display().to_string();
        let _ = as_postgres_user("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
    }
}

/// The built binary running as a child process, its stderr collected line by line.
pub struct SidecarProcess {
    child: Option<std::process::Child>,
    pub pid: u32,
    pub port: u16,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    reader: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl SidecarProcess {
    /// Starts the binary with `env` (plus a free API port) in `dir`, and waits (bounded) until
    /// it says it listens.
    pub async fn start(dir: &std::path::Path, env: &[(&str, &str)]) -> Self {
        use std::io::BufRead;
        let port = free_port();
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_token-sidecar"));
        command
            .current_dir(dir)
            .env("TOKEN_SIDECAR_LISTEN", format!("127.0.0.1:{port}"))
            .env("TOKEN_SIDECAR_METRICS_LISTEN", "127.0.0.1:0")
            .env_remove("DATABASE_URL")
            .env_remove("TOKEN_SIDECAR_KEYS")
            .stderr(std::process::Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("binary starts");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel::<String>();
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line.clone());
                all.push(line);
            }
            all
        });
        let mut process = Self {
            pid: child.id(),
            child: Some(child),
            port,
            lines,
            reader: Some(reader),
        };
        process
            .wait_for_line("token-sidecar listening", Duration::from_secs(30))
            .await;
        process
    }

    /// Waits (bounded) for a log line containing `text`.
    pub async fn wait_for_line(&mut self, text: &str, deadline: Duration) {
        let found = tokio::time::timeout(deadline, async {
            while let Some(line) = self.lines.recv().await {
                if line.contains(text) {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(found, Ok(true), "the sidecar never logged {text:?}");
    }

    /// A channel to the API, once health says SERVING.
    pub async fn connect(&self) -> Channel {
        let channel = Channel::from_shared(format!("http://127.0.0.1:{}", self.port))
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
        channel
    }

    /// Sends a signal (`-TERM`, `-HUP`) to the process.
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &self.pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit; returns its status and every line it logged.
    pub async fn wait(mut self) -> (std::process::ExitStatus, String) {
        let mut child = self.child.take().expect("running");
        let exit = tokio::task::spawn_blocking(move || child.wait())
            .await
            .expect("join")
            .expect("wait");
        let log = self
            .reader
            .take()
            .expect("reader")
            .join()
            .expect("log reader")
            .join("\n");
        (exit, log)
    }
}

impl Drop for SidecarProcess {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
