//! The PostgreSQL store: the source of truth shared by every sidecar.
//!
//! Its rooms: connections and the budget here; the write pipeline's dialect and the log in
//! [`write`]; the history chain and the sync task's polling connection in [`history`]; the
//! fleet's key in [`fleet`]; the other roles in [`reads`]; the one connection that LISTENs (and,
//! with a budget of one, carries everything) in [`listener`].
mod fleet;
mod history;
mod listener;
mod reads;
mod write;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool, Postgres};

use super::pipeline::Pipeline;
use super::turnstile::{Turn, Turnstile};
use super::{Backend, ChangeFeed, StoreError, sql};
use crate::config::MigrateAtStart;
use fleet::FleetSource;
use history::Feed;
use listener::ListenerLease;

pub use fleet::read_sync_key;
pub use history::FEED_APPLICATION_NAME;
pub use listener::{Heard, LISTENER_APPLICATION_NAME, ListenerFeed, ListeningConnection};
pub use write::CHANGE_CHANNEL;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// How long a query waits for a connection: an outage becomes a prompt UNAVAILABLE.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
/// One attempt within it (see [`PostgresStore::conn`]).
const ACQUIRE_ATTEMPT: Duration = Duration::from_millis(200);

/// How many connections the store's pool may hold, and for how long an idle one is kept
/// (SPEC §10: an idle sidecar holds at most one connection, its change listener's); and where
/// the fleet's announcement secret comes from.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// At most this many connections under load.
    pub max_connections: u32,
    /// Pooled connections idle this long are closed.
    pub idle_timeout: Duration,
    /// `--store-timeout`: the longest a write waits for a lock or a statement.
    pub store_timeout: Duration,
    /// `--sync-key-file`: the fleet's secret, instead of the one the migrations generated.
    pub sync_key_file: Option<PathBuf>,
    /// Whether the instance LISTENs for changes (notify mode). With one connection, that
    /// connection then carries every query and write as well.
    pub listen: bool,
    /// Whether missing migrations are applied (`--migrate`; `token-sidecar migrate` always).
    pub migrate: MigrateAtStart,
    /// Whether the URL leads through a transaction pooler (`--database-pooler transaction`).
    pub transaction_pooler: bool,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_connections: 1,
            idle_timeout: Duration::from_secs(5),
            store_timeout: Duration::from_secs(5),
            sync_key_file: None,
            listen: true,
            migrate: MigrateAtStart::Auto,
            transaction_pooler: false,
        }
    }
}

/// Cutoffs and denylist in PostgreSQL.
pub struct PostgresStore {
    pool: PgPool,
    options: PgConnectOptions,
    /// Whether statements stay prepared on the server (not behind a transaction pooler).
    prepared: bool,
    /// Whether the budget leaves the sync task a connection of its own.
    own_sync_connection: bool,
    /// The connection that LISTENs (notify mode).
    listening: Option<Arc<ListeningConnection>>,
    /// Whether every query and write runs on the listening connection (a budget of one).
    all_on_listener: bool,
    /// The fleet's key, read at first use.
    fleet: FleetSource,
    /// `--store-timeout`: the longest a write waits.
    store_timeout: Duration,
    /// Turns to write: fewer than the pool's connections, so that writes waiting on a lock
    /// never take the connection reads need.
    writers: Arc<tokio::sync::Semaphore>,
    /// Whose operation gets a pooled connection next (by lane; see [`Turnstile`]).
    turnstile: Arc<Turnstile>,
    /// The same in milliseconds, as PostgreSQL's settings take it.
    store_timeout_ms: String,
    /// The steps every write takes (and what the writes share).
    pipeline: Pipeline,
    /// Why missing migrations are not applied here, if they are not (a transaction pooler, or
    /// `--migrate never`).
    no_migrations: Option<&'static str>,
}

impl PostgresStore {
    /// A pool that connects on first use, so the sidecar can start (NOT_SERVING) before the
    /// database is up. A short acquire timeout turns an outage into a prompt UNAVAILABLE.
    pub fn connect_lazy(url: &str, settings: PoolSettings) -> Result<Self, StoreError> {
        // `statement-cache-capacity=0` is how a URL says "behind a transaction pooler": sqlx
        // still names its statements then, which collide on a shared server connection, so
        // every statement is sent unnamed instead.
        let prepared = !url.contains("statement-cache-capacity=0") && !settings.transaction_pooler;
        let mut options = PgConnectOptions::from_str(url)?;
        if prepared {
            // The server notices a sidecar whose host vanished (and frees its locks) within
            // about a minute, not after the kernel's default two hours. (A pooler would refuse
            // these startup options; it keeps its own server connections.)
            options = options.options([
                ("tcp_keepalives_idle", "30"),
                ("tcp_keepalives_interval", "10"),
                ("tcp_keepalives_count", "3"),
            ]);
        }
        // One connection of the budget is the sync task's own (LISTEN, or its polls), unless the
        // budget is one: then in notify mode the listening connection is the only one and
        // carries every query too; in the other modes the sync task polls through the pool.
        let own_sync_connection = settings.max_connections > 1;
        let all_on_listener = settings.listen && !own_sync_connection;
        let listening = settings
            .listen
            .then(|| ListeningConnection::new(options.clone(), ACQUIRE_TIMEOUT));
        let pooled = settings.max_connections.saturating_sub(1).max(1);
        // In nats and poll modes with a budget of one, the pool's one connection is also the
        // one the sync task polls on: kept while idle (an idle sidecar holds it, as it would
        // its LISTEN), and named as the polling connection.
        let polls_through_pool = !own_sync_connection && !settings.listen;
        let (idle_timeout, pool_options) = if polls_through_pool {
            (
                None,
                options.clone().application_name(FEED_APPLICATION_NAME),
            )
        } else {
            (Some(settings.idle_timeout), options.clone())
        };
        let pool = PgPoolOptions::new()
            .max_connections(pooled)
            .min_connections(0)
            .idle_timeout(idle_timeout)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(pool_options);
        Ok(Self {
            pool,
            options,
            prepared,
            own_sync_connection,
            listening,
            all_on_listener,
            fleet: FleetSource::new(settings.sync_key_file),
            store_timeout: settings.store_timeout,
            // Writers leave reads a connection: a lock held elsewhere stalls writes only.
            writers: Arc::new(tokio::sync::Semaphore::new(
                (pooled as usize).saturating_sub(1).max(1),
            )),
            turnstile: Turnstile::new(pooled as usize),
            store_timeout_ms: settings.store_timeout.as_millis().max(1).to_string(),
            // A write's own waits are bounded (lock and statement by the server, COMMIT and
            // its re-check by the pipeline): the whole bound fires only when the server went
            // silent, and then the outcome is unknown.
            pipeline: Pipeline::new(
                settings.store_timeout,
                Some(settings.store_timeout * 3 + ACQUIRE_TIMEOUT),
            ),
            no_migrations: match (settings.migrate, settings.transaction_pooler) {
                (MigrateAtStart::Always, _) | (MigrateAtStart::Auto, false) => None,
                (MigrateAtStart::Auto, true) => Some(
                    "--database-pooler transaction: a transaction pooler cannot carry the \
                     migrator's session",
                ),
                (MigrateAtStart::Never, _) => Some("--migrate never"),
            },
        })
    }

    /// A pooled connection. Tried in short attempts: a connection dropped a moment ago goes back
    /// to the pool from a spawned task, so an attempt right after finds none idle and opens
    /// another — and on a database that is full, sqlx would keep trying that until its acquire
    /// timeout while our own connection sits idle. The next short attempt takes the idle one.
    async fn conn(&self) -> Result<PgLease, StoreError> {
        if self.all_on_listener
            && let Some(listening) = &self.listening
        {
            return Ok(PgLease::Listener(listening.lease().await?));
        }
        let turn = self.turnstile.turn(ACQUIRE_TIMEOUT).await?;
        Ok(PgLease::Pooled {
            conn: self.pooled().await?,
            _turn: turn,
        })
    }

    /// A connection of the pool (see [`PostgresStore::conn`]).
    async fn pooled(&self) -> Result<PoolConnection<Postgres>, StoreError> {
        let deadline = tokio::time::Instant::now() + ACQUIRE_TIMEOUT;
        loop {
            match tokio::time::timeout(ACQUIRE_ATTEMPT, self.pool.acquire()).await {
                Ok(Ok(conn)) => return Ok(conn),
                Ok(Err(sqlx::Error::PoolTimedOut)) | Err(_)
                    if tokio::time::Instant::now() < deadline => {}
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => return Err(sqlx::Error::PoolTimedOut.into()),
            }
        }
    }

    /// A connection for one operation. Behind a transaction pooler it is a transaction: sqlx
    /// sends an unnamed statement's parse and its execution in two round trips, and only inside
    /// a transaction does the pooler keep them on one server connection.
    async fn session(&self) -> Result<Session, StoreError> {
        Session::start(self.conn().await?, (!self.prepared).then_some("BEGIN")).await
    }

    /// A session for the instance's own upkeep (health pings, clock readings): on the listening
    /// connection where there is one, so that an idle sidecar keeps no pooled connection alive
    /// whatever its budget.
    async fn upkeep_session(&self) -> Result<Session, StoreError> {
        match (&self.listening, self.prepared) {
            (Some(listening), true) => {
                Session::start(PgLease::Listener(listening.lease().await?), None).await
            }
            _ => self.session().await,
        }
    }

    /// How the sync task's own connection connects (named for pg_stat_activity).
    fn sync_options(&self) -> PgConnectOptions {
        self.options.clone().application_name(FEED_APPLICATION_NAME)
    }

    /// A read, bounded on this side too: a server that vanished mid-statement (no answer, no
    /// reset) would otherwise hold it until TCP gives up, many minutes later.
    async fn bounded_read<T>(
        &self,
        read: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.store_timeout + ACQUIRE_TIMEOUT, read).await {
            Ok(answer) => answer,
            Err(_) => Err(StoreError::Timeout("a read got no answer")),
        }
    }

    /// A write outside the numbered log (a received event), bounded on this side too: past the
    /// bound the server went silent, and the write may have committed.
    async fn bounded_write<T>(
        &self,
        write: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let bound = self.store_timeout * 3 + ACQUIRE_TIMEOUT;
        match tokio::time::timeout(bound, write).await {
            Ok(answer) => answer,
            Err(_) => Err(StoreError::OutcomeUnknown),
        }
    }
}

/// The connection one operation holds: the pool's, or the listening one (a budget of one).
enum PgLease {
    /// A pooled connection, and the turn it was taken in (held for the lease: dropped after
    /// it, it lets the next in line have a connection).
    Pooled {
        conn: PoolConnection<Postgres>,
        _turn: Turn,
    },
    Listener(ListenerLease),
}

impl sql::Lease for PgLease {
    type Db = Postgres;

    async fn conn(&mut self) -> Result<&mut PgConnection, StoreError> {
        match self {
            PgLease::Pooled { conn, .. } => Ok(&mut **conn),
            PgLease::Listener(lease) => lease.conn().await,
        }
    }

    fn discard(&mut self) {
        match self {
            PgLease::Pooled { conn, .. } => conn.close_on_drop(),
            PgLease::Listener(lease) => lease.discard(),
        }
    }
}

type Session = sql::Session<PgLease>;

#[async_trait]
impl Backend for PostgresStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn is_shared(&self) -> bool {
        true
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        // Usually every migration is in already (the migrate Job ran them): then no lock is
        // taken, so a fleet starting at once does not queue on it, and a transaction-pooling
        // PgBouncer (which cannot carry sqlx's session lock) is never asked to.
        let mut session = self.session().await?;
        let applied: Result<Vec<(i64,)>, sqlx::Error> =
            sqlx::query_as("SELECT version FROM _sqlx_migrations WHERE success")
                .persistent(self.prepared)
                .fetch_all(session.conn().await?)
                .await;
        // A missing table fails the transaction, which then rolls back as it ends.
        if applied.is_ok() {
            session.done().await?;
        } else {
            drop(session);
        }
        if let Ok(applied) = &applied
            && MIGRATOR
                .iter()
                .all(|m| applied.iter().any(|(v,)| *v == m.version))
        {
            return Ok(());
        }
        if let Some(why) = self.no_migrations {
            let missing: Vec<i64> = MIGRATOR
                .iter()
                .map(|m| m.version)
                .filter(|v| {
                    applied
                        .as_ref()
                        .is_ok_and(|applied| !applied.iter().any(|(a,)| a == v))
                        || applied.is_err()
                })
                .collect();
            return Err(StoreError::SchemaBehind(format!(
                "the schema lacks {} migration(s) (up to {}); this sidecar does not migrate ({why}): \
                 run `token-sidecar migrate --database-url <a direct URL>` (or the migrate Job); it \
                 becomes SERVING when the schema arrives",
                missing.len(),
                missing.last().copied().unwrap_or_default()
            )));
        }
        // sqlx holds a PostgreSQL advisory lock while migrating: concurrent starts serialise.
        let mut session = Session::start(self.conn().await?, None).await?;
        MIGRATOR
            .run_direct(None, session.conn().await?, false)
            .await?;
        session.done().await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut session = self.upkeep_session().await?;
        let answer = sql::ping::<Postgres>(session.conn().await?, self.prepared).await?;
        session.done().await?;
        Ok(answer)
    }

    async fn clock_us(&self) -> Result<Option<i64>, StoreError> {
        let mut session = self.upkeep_session().await?;
        // clock_timestamp(), not now(): the time of the answer, not of the transaction's start.
        let (us,): (i64,) =
            sqlx::query_as("SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint")
                .persistent(self.prepared)
                .fetch_one(session.conn().await?)
                .await?;
        session.done().await?;
        Ok(Some(us))
    }

    async fn why_unreachable(&self) -> Option<StoreError> {
        // The pool retries a database that is full until its acquire timeout and then reports
        // only "pool timed out"; one connection of our own hears PostgreSQL's reason.
        match PgConnection::connect_with(&self.options).await {
            Ok(conn) => {
                let _ = conn.close().await;
                None
            }
            Err(e) => Some(e.into()),
        }
    }
}

/// What the sync task needs of PostgreSQL (see `SyncTransport`).
impl PostgresStore {
    /// The connection that LISTENs for announced changes (notify mode), if there is one.
    pub fn listen_connection(&self) -> Option<Arc<ListeningConnection>> {
        self.listening.clone()
    }

    /// Every announcement committed through this store, sealed.
    pub fn announcements(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.pipeline.subscribe()
    }

    /// Closes idle pooled connections beyond `keep` now.
    pub async fn release_idle(&self, keep: usize) {
        while self.pool.num_idle() > keep {
            let Some(conn) = self.pool.try_acquire() else {
                return;
            };
            let _ = conn.close().await;
        }
    }

    /// The sync task's own polling connection, when the budget leaves one.
    pub async fn open_feed(&self) -> Result<Option<Box<dyn ChangeFeed>>, StoreError> {
        if !self.own_sync_connection {
            return Ok(None);
        }
        // Its own connection, not the pool's: the pool's close when idle and stay free for
        // queries (on a database with one free slot, queries keep it and this waits).
        let conn = PgConnection::connect_with(&self.sync_options()).await?;
        Ok(Some(Box::new(Feed {
            conn,
            prepared: self.prepared,
        })))
    }
}
