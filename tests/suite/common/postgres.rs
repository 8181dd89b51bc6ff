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
    upstream: std::sync::Arc<parking_lot::Mutex<SocketAddr>>,
    commit_trap: std::sync::Arc<std::sync::atomic::AtomicBool>,
    commits_cut: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Round trips clients asked of the server: connection starts, simple queries and the
    /// Syncs that end extended-protocol ones (see [`RoundTrips`]).
    round_trips: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl StoreProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (cut, cut_rx) = tokio::sync::watch::channel(false);
        let target = std::sync::Arc::new(parking_lot::Mutex::new(upstream));
        let upstream = target.clone();
        let commit_trap = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let commits_cut = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (trap, counted) = (commit_trap.clone(), commits_cut.clone());
        let round_trips = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let trips = round_trips.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if *cut_rx.borrow() {
                    drop(client);
                    continue;
                }
                let mut cut_rx = cut_rx.clone();
                let upstream = *upstream.lock();
                let (trap, counted) = (trap.clone(), counted.clone());
                let trips = trips.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        () = pump(client, server, trap, counted, trips) => {}
                        _ = cut_rx.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Self {
            addr,
            cut,
            upstream: target,
            commit_trap,
            commits_cut,
            round_trips,
        }
    }

    /// Round trips asked of the server through this proxy so far (connections must not use
    /// TLS: `sslmode=disable`).
    pub fn round_trips(&self) -> usize {
        self.round_trips.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The next COMMIT of a write transaction (one that took the writers' lock) reaches the
    /// server, but its answer never reaches the client: the connection is cut right after.
    /// Statements must go unnamed (`statement-cache-capacity=0`), so that their text is seen.
    pub fn cut_after_next_commit(&self) {
        self.commit_trap
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// How many commits' answers were cut.
    pub fn commits_cut(&self) -> usize {
        self.commits_cut.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Follows a new primary, as a failover's virtual IP or Service does: every connection to
    /// the old one is dropped, new ones go to `upstream`.
    pub async fn follow(&self, upstream: SocketAddr) {
        self.cut();
        // Let every connection task see the cut before new ones are let through.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        *self.upstream.lock() = upstream;
        self.restore();
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

/// Copies bytes both ways until either side closes; a trapped COMMIT (see
/// [`StoreProxy::cut_after_next_commit`]) is forwarded and its answer swallowed.
async fn pump(
    client: tokio::net::TcpStream,
    server: tokio::net::TcpStream,
    trap: std::sync::Arc<std::sync::atomic::AtomicBool>,
    counted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    round_trips: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let contains =
        |haystack: &[u8], needle: &[u8]| haystack.windows(needle.len()).any(|w| w == needle);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let swallowing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swallow = swallowing.clone();
    let up = async move {
        let mut writing = false;
        let mut trips = RoundTrips::default();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let chunk = &buf[..n];
            round_trips.fetch_add(trips.feed(chunk), Ordering::SeqCst);
            writing |= contains(chunk, b"pg_advisory_xact_lock");
            if writing && contains(chunk, b"COMMIT") {
                writing = false;
                if trap.swap(false, Ordering::SeqCst) {
                    swallow.store(true, Ordering::SeqCst);
                    counted.fetch_add(1, Ordering::SeqCst);
                }
            }
            if server_write.write_all(chunk).await.is_err() {
                return;
            }
        }
    };
    let down = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match server_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            // The server answered the trapped COMMIT: it committed; the client never hears.
            if swallowing.load(Ordering::SeqCst) {
                return;
            }
            if client_write.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}

/// Counts the round trips in what a client sends (PostgreSQL's frontend protocol, unencrypted):
/// the start of a connection, each simple query (`Q`) and each `Sync` (`S`), which ends one
/// extended-protocol exchange — each waits for the server's answer.
#[derive(Default)]
pub struct RoundTrips {
    started: bool,
    pending: Vec<u8>,
}

impl RoundTrips {
    /// The round trips completed by `chunk` (messages may span chunks).
    pub fn feed(&mut self, chunk: &[u8]) -> usize {
        self.pending.extend_from_slice(chunk);
        let mut trips = 0;
        loop {
            let word = |at: usize| {
                self.pending
                    .get(at..at + 4)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
            };
            let (total, trip) = if self.started {
                let (Some(kind), Some(len)) = (self.pending.first().copied(), word(1)) else {
                    break;
                };
                (1 + len, kind == b'Q' || kind == b'S')
            } else {
                let (Some(len), Some(code)) = (word(0), word(4)) else {
                    break;
                };
                // SSLRequest, GSSENCRequest and CancelRequest come before (or instead of) a
                // StartupMessage.
                let startup = !matches!(code, 80_877_102..=80_877_104);
                (len, startup)
            };
            if total == 0 || self.pending.len() < total {
                break;
            }
            self.pending.drain(..total);
            self.started |= trip;
            trips += usize::from(trip);
        }
        trips
    }
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
