//! A real sidecar in the test process: a real tonic server on an ephemeral port, a fresh
//! database, a manual clock, and a real gRPC client connected to it.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use futures::StreamExt;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

use token_sidecar::api::pb;
use token_sidecar::api::pb::token_service_client::TokenServiceClient;
use token_sidecar::clock::ManualClock;
use token_sidecar::config::Config;
use token_sidecar::server::{self, RunningSidecar, SERVICE_NAME};

use super::postgres::fresh_postgres_database;
use super::tokens::TEST_SECRET;

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
    /// The core's memory store (`memory:`): one process, nothing kept.
    Memory,
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

    /// Shares a database (and key directory) with another app. One process owns a SQLite
    /// file (SPEC §6), so on SQLite the other app shares the keys and gets a file of its own.
    pub fn sharing(mut self, other: &TestApp) -> Self {
        self.database_url = Some(match self.backend {
            Backend::Postgres => other.database_url.clone(),
            Backend::Memory => "memory:".to_owned(),
            Backend::Sqlite => {
                static NEXT: std::sync::atomic::AtomicUsize =
                    std::sync::atomic::AtomicUsize::new(0);
                let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                format!(
                    "sqlite:{}",
                    other.dir.path().join(format!("other-{n}.db")).display()
                )
            }
        });
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
            (None, Backend::Memory) => "memory:".to_owned(),
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

    /// A counter as `/metrics` shows it, e.g. `store_queries_total{kind="changes"}` (the
    /// `token_sidecar_` prefix added); 0 while the series has not been counted.
    pub fn counter(&self, series: &str) -> u64 {
        let name = format!("token_sidecar_{series}");
        crate::common::process::metric_value(&self.metrics.render(), &name).unwrap_or(0.0) as u64
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

    /// The running sidecar (for its authority and revocation state).
    pub fn running(&self) -> &RunningSidecar {
        self.running.as_ref().expect("running")
    }

    /// Runs the background purge now (what a purge tick does).
    pub async fn purge_now(&self) {
        use token_sidecar::clock::Clock;
        if let Some(running) = &self.running {
            let horizon = running
                .authority
                .policy()
                .purge_horizon(self.clock.now_ms());
            // As a purge tick that finds the round its own (no other instance purged).
            let purged = running
                .authority
                .revocations()
                .purge(horizon, std::time::Duration::ZERO)
                .await;
            purged.expect("purge");
        }
    }

    /// Re-reads every secret file now (what SIGHUP does); the problems, one line each.
    pub fn reload_secrets(&self) -> Vec<String> {
        match &self.running {
            Some(running) => running.reload_secrets(),
            None => Vec::new(),
        }
    }

    pub async fn read_issuer_keys(&self) -> Result<bool, String> {
        match &self.running {
            Some(running) => running.read_issuer_keys().await,
            None => Ok(false),
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
            running.shutdown().await;
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
                ..Default::default()
            })
            .await
            .expect("verify answers")
            .into_inner()
    }

    /// The reason Verify gives, or the status code when it does not answer (UNAVAILABLE while
    /// the instance cannot answer safely).
    pub async fn try_verdict(&self, token: &str) -> Result<pb::Reason, tonic::Code> {
        let answer = self
            .client
            .clone()
            .verify(pb::VerifyRequest {
                token: token.into(),
                ..Default::default()
            })
            .await
            .map_err(|status| status.code())?
            .into_inner();
        Ok(pb::Reason::try_from(answer.reason).expect("known reason"))
    }

    /// The status code Verify fails with, or None when it answers.
    pub async fn verify_status(&self, token: &str) -> Option<tonic::Code> {
        self.try_verdict(token).await.err()
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
                ..Default::default()
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
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner())
    }

    pub async fn revoke_user(&self, user_id: &str, until_ms: Option<i64>) -> pb::RevokeResponse {
        self.revoke(pb::revoke_request::Target::User(pb::UserRevocation {
            user_id: user_id.into(),
            until: until_ms.map(token_sidecar::api::convert::timestamp),
        }))
        .await
        .expect("revoke user")
    }

    pub async fn lift_ban(&self, user_id: &str) -> bool {
        self.client
            .clone()
            .lift_ban(pb::LiftBanRequest {
                user_id: user_id.into(),
                ..Default::default()
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
            Backend::Memory => {
                // No tables to read: the store's own answers count its rows (a change per
                // current row, an audit record per change).
                let store = self
                    .running
                    .as_ref()
                    .expect("a running sidecar")
                    .authority
                    .revocations()
                    .store()
                    .clone();
                let changes = store.changes_after(0, i64::MAX).await.expect("changes");
                let n = match table {
                    "user_cutoffs" => changes
                        .iter()
                        .filter(|c| matches!(c, token_sidecar::store::Change::Cutoff { .. }))
                        .count(),
                    "denylist" => changes
                        .iter()
                        .filter(|c| matches!(c, token_sidecar::store::Change::Denied { .. }))
                        .count(),
                    "audit_log" => store
                        .audit_trail(token_sidecar::store::AuditQuery {
                            user_id: None,
                            before: None,
                            limit: i64::MAX,
                        })
                        .await
                        .expect("audit")
                        .len(),
                    other => panic!("the memory store has no table {other}"),
                };
                i64::try_from(n).expect("count")
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
