//! PostgreSQL for the tests: the shared local cluster (a fresh database per test), a private
//! cluster the fault tests may crash, an app behind a [`StoreProxy`], and a lock that holds
//! writes in flight.
use std::net::SocketAddr;

use super::app::{Settings, TestApp};
use super::process::free_port;
use super::store_proxy::StoreProxy;

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

/// A PostgreSQL cluster of the test's own (initdb in a temp dir, its own port), so that a test
/// can restart or crash the database under load without disturbing the shared server.
pub struct PrivatePostgres {
    pub url: String,
    dir: tempfile::TempDir,
    port: u16,
    settings: String,
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

fn as_postgres_user(program: &str, args: &[&str]) -> std::process::Output {
    as_postgres_user_at(&format!("{PG_BIN}/{program}"), args)
}

/// Runs a server program as the `postgres` user when we are root (PostgreSQL and PgBouncer
/// refuse to run as root).
pub fn as_postgres_user_at(path: &str, args: &[&str]) -> std::process::Output {
    let mut command = if is_root() {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--", path]);
        c
    } else {
        std::process::Command::new(path)
    };
    command
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {path} (PostgreSQL 15 server binaries needed): {e}"))
}

pub fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

impl PrivatePostgres {
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// A cluster started with these extra server options (`-c name=value ...`).
    pub fn start_with(settings: &str) -> Self {
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
            settings: settings.to_owned(),
        };
        pg.pg_ctl(&["start"]);
        pg
    }

    fn pg_ctl(&self, action: &[&str]) {
        let data = self.dir.path().join("data").display().to_string();
        let log = self.dir.path().join("log").display().to_string();
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=on {}",
            self.port,
            self.dir.path().display(),
            self.settings
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

    /// An asynchronous streaming replica of `primary` (`pg_basebackup -R`), started.
    pub fn replica_of(primary: &PrivatePostgres) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        if is_root() {
            let status = std::process::Command::new("chown")
                .args(["postgres:", &dir.path().display().to_string()])
                .status()
                .expect("chown");
            assert!(status.success(), "chown the replica directory to postgres");
        }
        let data = dir.path().join("data").display().to_string();
        let out = as_postgres_user(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &primary.port.to_string(),
                "-U",
                "postgres",
                "-D",
                &data,
                "-R",
                "-X",
                "stream",
                "--no-sync",
            ],
        );
        assert!(
            out.status.success(),
            "pg_basebackup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let replica = Self {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            dir,
            port,
            settings: primary.settings.clone(),
        };
        replica.pg_ctl(&["start"]);
        replica
    }

    /// Where the server listens.
    pub fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// Stops the server cleanly (a replica then stops receiving WAL).
    pub fn stop(&self) {
        self.pg_ctl(&["-m", "fast", "stop"]);
    }

    /// Starts a stopped server.
    pub fn start_again(&self) {
        self.pg_ctl(&["start"]);
    }

    /// Kills the server as a crash would, and leaves it down.
    pub fn kill(&self) {
        self.pg_ctl(&["-m", "immediate", "stop"]);
    }

    /// Promotes a replica to primary.
    pub fn promote(&self) {
        self.pg_ctl(&["promote"]);
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

/// The database name in a PostgreSQL URL.
pub fn database_name(url: &str) -> String {
    let path = url.rsplit('/').next().unwrap_or_default();
    path.split('?').next().unwrap_or_default().to_owned()
}

/// How many connections the server holds for `database`, in all and with this
/// `application_name`.
pub async fn connections_to(database: &str, application_name: &str) -> (i64, i64) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&postgres_admin_url())
        .await
        .expect("admin connection");
    sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE application_name = $2)
             FROM pg_stat_activity WHERE datname = $1",
    )
    .bind(database)
    .bind(application_name)
    .fetch_one(&mut conn)
    .await
    .expect("pg_stat_activity")
}

/// A PgBouncer of the test's own in transaction pooling, in front of the shared PostgreSQL,
/// with at most `pool_size` server connections per database.
pub struct PgBouncer {
    pub port: u16,
    dir: tempfile::TempDir,
}

const PGBOUNCER: &str = "/usr/sbin/pgbouncer";

impl PgBouncer {
    pub async fn start(pool_size: u32) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let upstream = postgres_addr();
        let d = dir.path().display();
        std::fs::write(dir.path().join("users.txt"), "\"postgres\" \"\"\n").expect("userlist");
        std::fs::write(
            dir.path().join("pgbouncer.ini"),
            format!(
                "[databases]\n* = host={} port={}\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
                 unix_socket_dir =\nauth_type = trust\nauth_file = {d}/users.txt\n\
                 pool_mode = transaction\ndefault_pool_size = {pool_size}\n\
                 max_client_conn = 2000\nlogfile = {d}/pgbouncer.log\npidfile = {d}/pgbouncer.pid\n\
                 ignore_startup_parameters = extra_float_digits,options\n",
                upstream.ip(),
                upstream.port()
            ),
        )
        .expect("pgbouncer.ini");
        if is_root() {
            let status = std::process::Command::new("chown")
                .args(["-R", "postgres:", &d.to_string()])
                .status()
                .expect("chown");
            assert!(
                status.success(),
                "chown the PgBouncer directory to postgres"
            );
        }
        let ini = format!("{d}/pgbouncer.ini");
        let out = as_postgres_user_at(PGBOUNCER, &["-d", &ini]);
        assert!(
            out.status.success(),
            "pgbouncer (Debian's pgbouncer package) did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for _ in 0..500 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Self { port, dir };
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("pgbouncer did not listen on {port}");
    }

    /// `url` (a database of the shared server) reached through this PgBouncer, with sqlx's
    /// statement cache off (transaction pooling cannot keep prepared statements).
    pub fn url_for(&self, url: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{}?statement-cache-capacity=0",
            self.port,
            database_name(url)
        )
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.path().join("pgbouncer.pid")) {
            let _ = std::process::Command::new("kill").arg(pid.trim()).status();
        }
    }
}
