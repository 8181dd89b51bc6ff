//! PostgreSQL for the tests: the shared local cluster (a fresh database per test), a private
//! cluster the fault tests may crash, a TCP proxy that cuts the store away, and a lock that holds
//! writes in flight.
use std::net::SocketAddr;

use super::app::{Settings, TestApp};
use super::process::free_port;

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
