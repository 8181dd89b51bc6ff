//! The PostgreSQL store: the source of truth shared by every sidecar.
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;

use async_trait::async_trait;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool, Postgres};
use tokio::sync::broadcast;

use super::announcement::{self, Announcement, FleetKey, GENESIS, Link, MIN_SECRET_BYTES};
use super::shared::{SharedConnection, SharedLease};
use super::turnstile::{Turn, Turnstile};
use super::{
    Audit, AuditQuery, AuditRecord, Change, ChangeFeed, ChangeSeq, CutoffRecord, CutoffUpdate,
    DbErrorKind, DenyEntry, DenyKind, DenySink, History, PurgeHorizon, Purged, RevocationStore,
    Rotation, RotationOutcome, StoreError, sql,
};
use crate::clock::UnixMillis;
use crate::config::MigrateAtStart;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// The LISTEN/NOTIFY channel on which every committed change is announced (payload: the change,
/// see [`announcement`]).
pub const CHANGE_CHANNEL: &str = "token_sidecar_changes";

/// How long a query waits for a connection: an outage becomes a prompt UNAVAILABLE.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
/// One attempt within it (see [`PostgresStore::conn`]).
const ACQUIRE_ATTEMPT: Duration = Duration::from_millis(200);

/// One wait for the change lock; between attempts the connection serves others.
const LOCK_ATTEMPT: Duration = Duration::from_millis(100);
/// The pause between attempts, in which queued reads take the connection.
const LOCK_RETRY: Duration = Duration::from_millis(5);

/// The advisory lock every writer holds from taking a change number until it commits, so that
/// numbers become visible in increasing order ("ts-chg" in ASCII).
const CHANGE_LOCK: i64 = 0x7473_2d63_6867;

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
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    options: PgConnectOptions,
    /// Whether statements stay prepared on the server (not behind a transaction pooler).
    prepared: bool,
    /// Whether the budget leaves the sync task a connection of its own.
    own_sync_connection: bool,
    /// The connection that LISTENs (notify mode).
    listening: Option<Arc<SharedConnection>>,
    /// Whether every query and write runs on the listening connection (a budget of one).
    shared: bool,
    /// The fleet's key, read at first use.
    fleet: Arc<ArcSwapOption<FleetKey>>,
    sync_key_file: Option<PathBuf>,
    /// `--store-timeout`: the longest a write waits.
    store_timeout: Duration,
    /// Turns to write: fewer than the pool's connections, so that writes waiting on a lock
    /// never take the connection reads need.
    writers: Arc<tokio::sync::Semaphore>,
    /// Whose operation gets a pooled connection next (by lane; see [`Turnstile`]).
    turnstile: Arc<Turnstile>,
    /// The same in milliseconds, as PostgreSQL's settings take it.
    store_timeout_ms: String,
    /// Every announcement committed through this store (for NATS).
    announced: broadcast::Sender<String>,
    /// The newest change committed through this store.
    written: Arc<parking_lot::Mutex<Option<Link>>>,
    /// Why missing migrations are not applied here, if they are not (a transaction pooler, or
    /// `--migrate never`).
    no_migrations: Option<&'static str>,
}

impl PostgresStore {
    /// The connection that LISTENs for announced changes (notify mode), if there is one.
    pub fn listen_connection(&self) -> Option<Arc<SharedConnection>> {
        self.listening.clone()
    }

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
        let shared = settings.listen && !own_sync_connection;
        let listening = settings
            .listen
            .then(|| SharedConnection::new(options.clone(), ACQUIRE_TIMEOUT));
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
            shared,
            fleet: Arc::new(ArcSwapOption::empty()),
            sync_key_file: settings.sync_key_file,
            store_timeout: settings.store_timeout,
            // Writers leave reads a connection: a lock held elsewhere stalls writes only.
            writers: Arc::new(tokio::sync::Semaphore::new(
                (pooled as usize).saturating_sub(1).max(1),
            )),
            turnstile: Turnstile::new(pooled as usize),
            store_timeout_ms: settings.store_timeout.as_millis().max(1).to_string(),
            announced: broadcast::channel(4096).0,
            written: Arc::new(parking_lot::Mutex::new(None)),
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
        if self.shared
            && let Some(listening) = &self.listening
        {
            return Ok(PgLease::Shared(listening.lease().await?));
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
                Session::start(PgLease::Shared(listening.lease().await?), None).await
            }
            _ => self.session().await,
        }
    }

    /// How the sync task's own connection connects (named for pg_stat_activity).
    fn sync_options(&self) -> PgConnectOptions {
        self.options.clone().application_name(FEED_APPLICATION_NAME)
    }

    /// A transaction that holds the change lock. Its waits are bounded by `--store-timeout`
    /// (transaction-local settings, so they are safe behind a transaction pooler too): a lock
    /// held by anyone else — a sidecar frozen mid-transaction, a role that took the advisory
    /// lock — fails the write, which the caller answers UNAVAILABLE (Revoke is idempotent).
    async fn writer(&self) -> Result<Write, StoreError> {
        let turn = tokio::time::timeout(self.store_timeout, self.writers.clone().acquire_owned())
            .await
            .map_err(|_| StoreError::Timeout("waiting for a turn to write"))?
            .map_err(|_| StoreError::Timeout("the store is closing"))?;
        // The change lock is waited for in attempts, the connection given up between them: on
        // the one connection a sidecar holds, a lock someone else keeps would otherwise hold up
        // its reads too, not only its writes.
        let attempt = LOCK_ATTEMPT.min(self.store_timeout);
        let attempt_ms = attempt.as_millis().max(1).to_string();
        let deadline = tokio::time::Instant::now() + self.store_timeout;
        loop {
            let mut session = Session::start(self.conn().await?, Some("BEGIN")).await?;
            sqlx::query(
                "SELECT set_config('lock_timeout', $1, true),
                        set_config('statement_timeout', $2, true),
                        set_config('idle_in_transaction_session_timeout', $2, true)",
            )
            .persistent(self.prepared)
            .bind(&attempt_ms)
            .bind(&self.store_timeout_ms)
            .execute(session.conn().await?)
            .await?;
            // Once the lock is held, the write's own row locks wait up to --store-timeout.
            let locked = sqlx::query(
                "SELECT set_config('lock_timeout', $2, true)
                     FROM (SELECT pg_advisory_xact_lock($1)) AS locked",
            )
            .persistent(self.prepared)
            .bind(CHANGE_LOCK)
            .bind(&self.store_timeout_ms)
            .execute(session.conn().await?)
            .await;
            match locked {
                Ok(_) => {
                    return Ok(Write {
                        session,
                        _turn: turn,
                    });
                }
                Err(e) if lock_not_available(&e) && tokio::time::Instant::now() < deadline => {
                    session.rollback().await?;
                    tokio::time::sleep(LOCK_RETRY).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
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

    /// A write, bounded on this side too. Its own waits are bounded (lock and statement by the
    /// server, COMMIT and its re-check by [`PostgresStore::commit`]), so this fires only when
    /// the server went silent: the write may have committed, so the outcome is unknown.
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

    /// Commits a write. When the answer to COMMIT is lost (the connection broke, or no answer
    /// came within `--store-timeout`), asks the database whether the transaction committed;
    /// if it cannot tell within the timeout, the outcome is unknown (the caller says so: a
    /// retry of an idempotent write is safe).
    async fn commit(&self, write: Write, written: Link) -> Result<(), StoreError> {
        let answer = match tokio::time::timeout(self.store_timeout, write.session.done()).await {
            Ok(answer) => answer,
            Err(_) => Err(StoreError::Timeout("waiting for COMMIT's answer")),
        };
        match answer {
            Err(e) if connection_lost(&e) => {
                tracing::warn!(error = %e, "the answer to a commit was lost; asking the database");
                self.recheck(written).await
            }
            other => other,
        }
    }

    /// Whether the write whose chain link is `written` committed: its link (a digest over a
    /// random nonce, so no other write has it) is in the history. Asked on another connection
    /// until `--store-timeout`; not seen by then (it aborted, or the server has not yet noticed
    /// the broken connection), the outcome is unknown. (Not `txid_status`: after a crash a
    /// transaction id whose WAL was lost can be handed out again and report another
    /// transaction's commit.)
    async fn recheck(&self, written: Link) -> Result<(), StoreError> {
        let deadline = tokio::time::Instant::now() + self.store_timeout;
        loop {
            let found: Result<bool, StoreError> = async {
                let mut session = self.session().await?;
                let (found,): (bool,) = sqlx::query_as(
                    "SELECT EXISTS (SELECT 1 FROM change_chain WHERE seq = $1 AND tag = $2)",
                )
                .persistent(self.prepared)
                .bind(written.seq)
                .bind(&written.tag[..])
                .fetch_one(session.conn().await?)
                .await?;
                session.done().await?;
                Ok(found)
            }
            .await;
            if matches!(found, Ok(true)) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StoreError::OutcomeUnknown);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The fleet's key, read on `conn` at first use: the secret (`--sync-key-file`, else the
    /// one the migrations generated) and the database's identity.
    ///
    /// The identity is one a copy cannot keep: the id the migrations generated (a dump carries
    /// it along), the cluster's system identifier (another cluster has another) and the
    /// database's oid (a `CREATE DATABASE … TEMPLATE` copy has another). A promoted streaming
    /// replica has all three, so it keeps its fleet. A physical backup restored as a second
    /// cluster has them too: its history forks from ours with its first change, which the
    /// history chain shows.
    async fn fleet_on(&self, conn: &mut PgConnection) -> Result<Arc<FleetKey>, StoreError> {
        if let Some(fleet) = self.fleet.load_full() {
            return Ok(fleet);
        }
        let (identity,): (String,) = sqlx::query_as(
            "SELECT (SELECT id FROM store_identity LIMIT 1)
                 || ':' || (SELECT system_identifier FROM pg_control_system())::text
                 || ':' || (SELECT oid FROM pg_database WHERE datname = current_database())::text",
        )
        .persistent(self.prepared)
        .fetch_one(&mut *conn)
        .await?;
        let secret = match &self.sync_key_file {
            Some(path) => read_sync_key(path)?,
            None => {
                let (secret,): (Vec<u8>,) = sqlx::query_as("SELECT secret FROM sync_key LIMIT 1")
                    .persistent(self.prepared)
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(|e| {
                        StoreError::SyncKey(format!(
                            "cannot read the table sync_key ({e}); grant this role SELECT on it, \
                             or give --sync-key-file"
                        ))
                    })?;
                secret
            }
        };
        let fleet = Arc::new(FleetKey::new(&identity, &secret));
        self.fleet.store(Some(fleet.clone()));
        Ok(fleet)
    }

    /// Ends a write. A change takes its number (the writer wrote it with the sequence's next
    /// value, read under the change lock, and moves the sequence only now that the write is
    /// certain — so a write that changes nothing leaves no gap in the numbers, and a gap seen by a
    /// listener really means a missed announcement), takes the next link of the history chain,
    /// is announced with its content, sealed for the fleet (delivered to listeners at commit),
    /// and committed. No change rolls back.
    ///
    /// The chain: each change's link is a digest of the previous link and a random nonce. An
    /// instance remembers the link of the last change it applied; a store whose link at that
    /// number differs (or that has no change there) has another history — a lossy failover,
    /// a restore, a re-created database — even when its numbers have passed the instance's.
    async fn finish(
        &self,
        mut tx: Write,
        change: Option<Change>,
        audited: sql::Audited<'_>,
    ) -> Result<Option<Change>, StoreError> {
        let Some(change) = change else {
            tx.session.rollback().await?;
            return Ok(None);
        };
        sql::record_audit::<Postgres>(tx.conn().await?, self.prepared, change.seq(), audited)
            .await?;
        let fleet = self.fleet_on(tx.conn().await?).await?;
        let nonce: [u8; 16] = rand::random();
        let (prev, link): (Vec<u8>, Vec<u8>) = sqlx::query_as(
            "INSERT INTO change_chain (seq, prev, tag)
                 SELECT $1, p.tag, substr(sha256(p.tag || $2), 1, 16)
                     FROM (SELECT COALESCE(
                         (SELECT tag FROM change_chain ORDER BY seq DESC LIMIT 1), $3) AS tag) p
                 RETURNING prev, tag",
        )
        .persistent(self.prepared)
        .bind(change.seq())
        .bind(&nonce[..])
        .bind(&GENESIS[..])
        .fetch_one(tx.conn().await?)
        .await?;
        let announced = Announcement {
            change: change.clone(),
            prev: announcement::link_tag(&prev).unwrap_or(GENESIS),
            link: announcement::link_tag(&link).unwrap_or(GENESIS),
        };
        let sealed = fleet.seal(&announced);
        sqlx::query("SELECT setval('revocation_change_seq', $1), pg_notify($2, $3)")
            .persistent(self.prepared)
            .bind(change.seq())
            .bind(CHANGE_CHANNEL)
            .bind(&sealed)
            .execute(tx.conn().await?)
            .await?;
        self.commit(tx, announced.link()).await?;
        {
            let mut written = self.written.lock();
            if written.is_none_or(|w| w.seq < announced.change.seq()) {
                *written = Some(announced.link());
            }
        }
        // No receiver (no sync mode that carries announcements itself) is not an error.
        let _ = self.announced.send(sealed);
        Ok(Some(change))
    }
}

/// The sync key in `path`: at least [`MIN_SECRET_BYTES`] bytes, a trailing newline ignored.
pub fn read_sync_key(path: &std::path::Path) -> Result<Vec<u8>, StoreError> {
    let mut secret = crate::secret_file::read(path)
        .map_err(|e| StoreError::SyncKey(format!("{}: {e}", path.display())))?;
    while secret.last().is_some_and(|b| b.is_ascii_whitespace()) {
        secret.pop();
    }
    if secret.len() < MIN_SECRET_BYTES {
        return Err(StoreError::SyncKey(format!(
            "{}: shorter than {MIN_SECRET_BYTES} bytes",
            path.display()
        )));
    }
    Ok(secret)
}

/// Where the history stands (see [`PostgresStore::finish`]), in one statement (one snapshot):
/// the newest change's number — over the chain and both tables, as writers of the version
/// before the chain numbered changes without links — the newest link, and the links at `at` and
/// `own`.
/// The history columns: head, newest link (seq, tag), the link at `$1`, and the links at the
/// numbers in `$2` (as two arrays).
const HISTORY_SQL: &str = "
    SELECT GREATEST(COALESCE(n.seq, 0),
                    (SELECT COALESCE(MAX(change_seq), 0) FROM user_cutoffs),
                    (SELECT COALESCE(MAX(change_seq), 0) FROM denylist)) AS head,
           n.seq AS newest_seq, n.tag AS newest_tag,
           (SELECT tag FROM change_chain WHERE seq = $1) AS at_tag,
           (SELECT COALESCE(array_agg(seq ORDER BY seq), '{}') FROM change_chain
                WHERE seq = ANY($2)) AS own_seqs,
           (SELECT COALESCE(array_agg(tag ORDER BY seq), '{}') FROM change_chain
                WHERE seq = ANY($2)) AS own_tags
        FROM (SELECT 1) AS one
        LEFT JOIN (SELECT seq, tag FROM change_chain ORDER BY seq DESC LIMIT 1) AS n ON true";

type HistoryRow = (
    i64,
    Option<i64>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Vec<i64>,
    Vec<Vec<u8>>,
);

fn history_from_row(
    (head, newest_seq, newest_tag, at_tag, own_seqs, own_tags): HistoryRow,
) -> History {
    let newest = match (
        newest_seq,
        newest_tag.as_deref().and_then(announcement::link_tag),
    ) {
        (Some(seq), Some(tag)) => Some(Link { seq, tag }),
        _ => None,
    };
    History {
        head,
        newest,
        at: at_tag.as_deref().and_then(announcement::link_tag),
        own_at: own_seqs
            .into_iter()
            .zip(own_tags)
            .filter_map(|(seq, tag)| {
                Some(Link {
                    seq,
                    tag: announcement::link_tag(&tag)?,
                })
            })
            .collect(),
    }
}

/// Where the history stands (see [`PostgresStore::finish`]), in one statement (one snapshot):
/// the newest change's number — over the chain and both tables, as writers of the version
/// before the chain numbered changes without links — the newest link, and the links at `at` and
/// `own`.
async fn history_on<'c, E>(
    executor: E,
    prepared: bool,
    at: ChangeSeq,
    own: &[ChangeSeq],
) -> Result<History, StoreError>
where
    E: sqlx::Executor<'c, Database = Postgres>,
{
    let row: HistoryRow = sqlx::query_as(HISTORY_SQL)
        .persistent(prepared)
        .bind(at)
        .bind(own)
        .fetch_one(executor)
        .await?;
    Ok(history_from_row(row))
}

/// The history and the first page of changes after `after`, in one statement: a catch-up costs
/// one round trip, and both are read from one snapshot.
pub(super) async fn history_and_changes_on<'c, E>(
    executor: E,
    prepared: bool,
    at: ChangeSeq,
    own: &[ChangeSeq],
    after: ChangeSeq,
    limit: i64,
) -> Result<(History, Vec<Change>), StoreError>
where
    E: sqlx::Executor<'c, Database = Postgres>,
{
    type Row = (
        i64,
        Option<i64>,
        Option<Vec<u8>>,
        Option<Vec<u8>>,
        Vec<i64>,
        Vec<Vec<u8>>,
        Option<String>,
        Option<String>,
        Option<i64>,
        Option<i64>,
        Option<i64>,
    );
    let statement = format!(
        "SELECT h.*, c.kind, c.id, c.value, c.seq, c.committed
             FROM ({HISTORY_SQL}) AS h
             LEFT JOIN LATERAL ({}) AS c ON true
             ORDER BY c.seq",
        sql::CHANGES_AFTER_SQL
            .replace("$1", "$3")
            .replace("$2", "$4")
    );
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(statement))
        .persistent(prepared)
        .bind(at)
        .bind(own)
        .bind(after)
        .bind(limit)
        .fetch_all(executor)
        .await?;
    let mut history = None;
    let mut changes = Vec::with_capacity(rows.len());
    for (
        head,
        newest_seq,
        newest_tag,
        at_tag,
        own_seqs,
        own_tags,
        kind,
        id,
        value,
        seq,
        committed,
    ) in rows
    {
        if history.is_none() {
            history = Some(history_from_row((
                head, newest_seq, newest_tag, at_tag, own_seqs, own_tags,
            )));
        }
        if let (Some(kind), Some(id), Some(value), Some(seq), Some(committed)) =
            (kind, id, value, seq, committed)
        {
            changes.push(sql::change_from_row((kind, id, value, seq, committed)));
        }
    }
    let history = history.ok_or(StoreError::from(sqlx::Error::RowNotFound))?;
    Ok((history, changes))
}

/// The `application_name` of the sync task's own polling connection (in poll and nats modes).
pub const FEED_APPLICATION_NAME: &str = "token-sidecar-feed";

/// The sync task's polling connection.
struct Feed {
    conn: PgConnection,
    prepared: bool,
}

#[async_trait]
impl ChangeFeed for Feed {
    async fn changes_after(
        &mut self,
        after: ChangeSeq,
        limit: i64,
    ) -> Result<Vec<Change>, StoreError> {
        if self.prepared {
            return sql::changes_after(&mut self.conn, true, after, limit).await;
        }
        // Behind a transaction pooler: parse and execute on one server connection.
        let mut tx = self.conn.begin().await?;
        let changes = sql::changes_after(&mut *tx, false, after, limit).await?;
        tx.commit().await?;
        Ok(changes)
    }

    async fn history_and_changes(
        &mut self,
        at: ChangeSeq,
        own: &[ChangeSeq],
        after: ChangeSeq,
        limit: i64,
    ) -> Result<(Option<History>, Vec<Change>), StoreError> {
        if self.prepared {
            let (history, changes) =
                history_and_changes_on(&mut self.conn, true, at, own, after, limit).await?;
            return Ok((Some(history), changes));
        }
        let mut tx = self.conn.begin().await?;
        let (history, changes) =
            history_and_changes_on(&mut *tx, false, at, own, after, limit).await?;
        tx.commit().await?;
        Ok((Some(history), changes))
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
    Shared(SharedLease),
}

impl sql::Lease for PgLease {
    type Db = Postgres;

    async fn conn(&mut self) -> Result<&mut PgConnection, StoreError> {
        match self {
            PgLease::Pooled { conn, .. } => Ok(&mut **conn),
            PgLease::Shared(lease) => lease.conn().await,
        }
    }

    fn discard(&mut self) {
        match self {
            PgLease::Pooled { conn, .. } => conn.close_on_drop(),
            PgLease::Shared(lease) => lease.discard(),
        }
    }
}

type Session = sql::Session<PgLease>;

/// A write transaction holding the change lock, and its turn to write.
struct Write {
    session: Session,
    _turn: tokio::sync::OwnedSemaphorePermit,
}

impl Write {
    async fn conn(&mut self) -> Result<&mut PgConnection, StoreError> {
        self.session.conn().await
    }
}

/// Whether PostgreSQL gave up waiting for a lock (`lock_timeout`).
fn lock_not_available(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03"))
}

/// Whether an error means the connection, not the statement, failed: the statement's outcome is
/// then unknown.
fn connection_lost(error: &StoreError) -> bool {
    match error {
        StoreError::Database(db) => {
            db.kind() == DbErrorKind::Connection
                // Class 08 (connection exception) and 57P0x (the server shutting down).
                || db
                    .code()
                    .is_some_and(|code| code.starts_with("08") || code.starts_with("57P"))
        }
        StoreError::Timeout(_) => true,
        _ => false,
    }
}

/// The database's clock in Unix milliseconds, as SQL: the one clock changes are stamped on.
macro_rules! db_now_ms {
    () => {
        "(extract(epoch FROM clock_timestamp()) * 1000)::bigint"
    };
}

/// The number the next change takes, read (not taken) under the change lock.
macro_rules! next_seq {
    () => {
        "SELECT CASE WHEN is_called THEN last_value + 1 ELSE last_value END AS seq
             FROM revocation_change_seq"
    };
}

#[async_trait]
impl RevocationStore for PostgresStore {
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

    async fn fleet(&self) -> Result<Option<Arc<FleetKey>>, StoreError> {
        if let Some(fleet) = self.fleet.load_full() {
            return Ok(Some(fleet));
        }
        let mut session = self.session().await?;
        let fleet = self.fleet_on(session.conn().await?).await?;
        session.done().await?;
        Ok(Some(fleet))
    }

    fn forget_fleet(&self) {
        self.fleet.store(None);
    }

    fn announcements(&self) -> Option<broadcast::Receiver<String>> {
        Some(self.announced.subscribe())
    }

    async fn history(
        &self,
        at: ChangeSeq,
        own: &[ChangeSeq],
    ) -> Result<Option<History>, StoreError> {
        let mut session = self.session().await?;
        let history = history_on(session.conn().await?, self.prepared, at, own).await?;
        session.done().await?;
        Ok(Some(history))
    }

    async fn history_and_changes(
        &self,
        at: ChangeSeq,
        own: &[ChangeSeq],
        after: ChangeSeq,
        limit: i64,
    ) -> Result<(Option<History>, Vec<Change>), StoreError> {
        let mut session = self.session().await?;
        let (history, changes) =
            history_and_changes_on(session.conn().await?, self.prepared, at, own, after, limit)
                .await?;
        session.done().await?;
        Ok((Some(history), changes))
    }

    fn last_written(&self) -> Option<Link> {
        *self.written.lock()
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

    fn as_any(&self) -> &dyn std::any::Any {
        self
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

    async fn cutoff(&self, user_id: &str) -> Result<CutoffRecord, StoreError> {
        self.bounded_read(async {
            let mut session = self.session().await?;
            // With the link of the change that set it: a read ahead of the instance's watermark is
            // checked against the history like the instance's own writes.
            let row: Option<(i64, i64, Option<Vec<u8>>)> = sqlx::query_as(
                "SELECT c.cutoff_unix_ms, c.change_seq, l.tag
                 FROM user_cutoffs c LEFT JOIN change_chain l ON l.seq = c.change_seq
                 WHERE c.user_id = $1",
            )
            .persistent(self.prepared)
            .bind(user_id)
            .fetch_optional(session.conn().await?)
            .await?;
            session.done().await?;
            Ok(match row {
                Some((cutoff, seq, tag)) => CutoffRecord {
                    cutoff_ms: Some(cutoff),
                    seq,
                    link: tag.as_deref().and_then(announcement::link_tag),
                },
                None => CutoffRecord {
                    cutoff_ms: None,
                    seq: 0,
                    link: None,
                },
            })
        })
        .await
    }

    async fn raise_cutoff(
        &self,
        user_id: &str,
        at_least: UnixMillis,
        audit: &Audit,
    ) -> Result<CutoffUpdate, StoreError> {
        self.bounded_write(async {
            let mut tx = self.writer().await?;
            // The upsert and its "never lower it" guard are one statement, so concurrent
            // revocations of one user cannot undo each other (nor a purge race it).
            let (cutoff_ms, seq, committed_ms, changed): (i64, i64, i64, bool) =
                sqlx::query_as(concat!(
                    "WITH next AS (",
                    next_seq!(),
                    "),
             up AS (
                 INSERT INTO user_cutoffs (user_id, cutoff_unix_ms, change_seq, changed_unix_ms, set_by)
                     VALUES ($1, $2, (SELECT seq FROM next), ",
                    db_now_ms!(),
                    ", $3)
                 ON CONFLICT (user_id) DO UPDATE
                     SET cutoff_unix_ms = EXCLUDED.cutoff_unix_ms,
                         change_seq = EXCLUDED.change_seq,
                         changed_unix_ms = EXCLUDED.changed_unix_ms,
                         set_by = EXCLUDED.set_by,
                         updated_at = now()
                     WHERE user_cutoffs.cutoff_unix_ms < EXCLUDED.cutoff_unix_ms
                 RETURNING cutoff_unix_ms, change_seq, changed_unix_ms
             )
             SELECT cutoff_unix_ms, change_seq, changed_unix_ms, true FROM up
             UNION ALL
             SELECT cutoff_unix_ms, change_seq, changed_unix_ms, false FROM user_cutoffs
                 WHERE user_id = $1 AND NOT EXISTS (SELECT 1 FROM up)"
                ))
                .persistent(self.prepared)
                .bind(user_id)
                .bind(at_least)
                .bind(&audit.who)
                .fetch_one(tx.conn().await?)
                .await?;
            let change = changed.then(|| Change::Cutoff {
                seq,
                committed_ms,
                user_id: user_id.to_owned(),
                cutoff_ms,
            });
            let audited = sql::Audited {
                audit,
                user_id: Some(user_id),
                target: None,
                until_ms: Some(cutoff_ms),
            };
            self.finish(tx, change, audited).await?;
            Ok(CutoffUpdate {
                cutoff_ms,
                seq,
                changed,
            })
        })
        .await
    }

    async fn lift_ban(
        &self,
        user_id: &str,
        now: UnixMillis,
        only_owner: Option<&str>,
        audit: &Audit,
    ) -> Result<Option<ChangeSeq>, StoreError> {
        self.bounded_write(async {
            let mut tx = self.writer().await?;
            let seq: Option<(i64, i64)> = sqlx::query_as(concat!(
                "UPDATE user_cutoffs
                 SET cutoff_unix_ms = $2, change_seq = (",
                next_seq!(),
                "),
                     changed_unix_ms = ",
                db_now_ms!(),
                ", updated_at = now(), set_by = $3
                 WHERE user_id = $1 AND cutoff_unix_ms > $2
                     AND ($4::text IS NULL OR set_by = $4)
                 RETURNING change_seq, changed_unix_ms"
            ))
            .persistent(self.prepared)
            .bind(user_id)
            .bind(now)
            .bind(&audit.who)
            .bind(only_owner)
            .fetch_optional(tx.conn().await?)
            .await?;
            let change = seq.map(|(seq, committed_ms)| Change::Cutoff {
                seq,
                committed_ms,
                user_id: user_id.to_owned(),
                cutoff_ms: now,
            });
            let audited = sql::Audited {
                audit,
                user_id: Some(user_id),
                target: None,
                until_ms: Some(now),
            };
            Ok(self.finish(tx, change, audited).await?.map(|c| c.seq()))
        })
        .await
    }

    async fn cutoff_owner(&self, user_id: &str) -> Result<Option<String>, StoreError> {
        self.bounded_read(async {
            let mut session = self.session().await?;
            let owner =
                sql::cutoff_owner::<Postgres>(session.conn().await?, self.prepared, user_id)
                    .await?;
            session.done().await?;
            Ok(owner)
        })
        .await
    }

    async fn is_denied(&self, kind: DenyKind, id: &str) -> Result<bool, StoreError> {
        self.bounded_read(async {
            let mut session = self.session().await?;
            let answer =
                sql::is_denied::<Postgres>(session.conn().await?, self.prepared, kind, id).await?;
            session.done().await?;
            Ok(answer)
        })
        .await
    }

    async fn deny(
        &self,
        entry: &DenyEntry,
        audit: &Audit,
    ) -> Result<Option<ChangeSeq>, StoreError> {
        self.bounded_write(async {
            let mut tx = self.writer().await?;
            let seq: Option<(i64, i64)> = sqlx::query_as(concat!(
                "INSERT INTO denylist (kind, id, user_id, moot_after_unix_ms, change_seq,
                                   changed_unix_ms)
                 VALUES ($1, $2, $3, $4, (",
                next_seq!(),
                "), ",
                db_now_ms!(),
                ")
                 ON CONFLICT (kind, id) DO NOTHING
                 RETURNING change_seq, changed_unix_ms"
            ))
            .persistent(self.prepared)
            .bind(entry.kind.as_str())
            .bind(&entry.id)
            .bind(entry.user_id.as_deref())
            .bind(entry.moot_after_ms)
            .fetch_optional(tx.conn().await?)
            .await?;
            let change = seq.map(|(seq, committed_ms)| Change::Denied {
                seq,
                committed_ms,
                kind: entry.kind,
                id: entry.id.clone(),
                moot_after_ms: entry.moot_after_ms,
            });
            let audited = sql::Audited {
                audit,
                user_id: entry.user_id.as_deref(),
                target: Some(&entry.id),
                until_ms: None,
            };
            Ok(self.finish(tx, change, audited).await?.map(|c| c.seq()))
        })
        .await
    }

    async fn release_idle(&self, keep: usize) {
        while self.pool.num_idle() > keep {
            let Some(conn) = self.pool.try_acquire() else {
                return;
            };
            let _ = conn.close().await;
        }
    }

    async fn open_feed(&self) -> Result<Option<Box<dyn ChangeFeed>>, StoreError> {
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

    async fn changes_after(&self, after: ChangeSeq, limit: i64) -> Result<Vec<Change>, StoreError> {
        let mut session = self.session().await?;
        let answer = sql::changes_after(session.conn().await?, self.prepared, after, limit).await?;
        session.done().await?;
        Ok(answer)
    }

    async fn load_denylist(
        &self,
        now: UnixMillis,
        sink: &mut DenySink<'_>,
    ) -> Result<ChangeSeq, StoreError> {
        let mut tx = Session::start(self.conn().await?, Some("BEGIN")).await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .persistent(self.prepared)
            .execute(tx.conn().await?)
            .await?;
        let (watermark,): (i64,) = sqlx::query_as(
            "SELECT GREATEST(
                 (SELECT COALESCE(MAX(change_seq), 0) FROM user_cutoffs),
                 (SELECT COALESCE(MAX(change_seq), 0) FROM denylist))",
        )
        .persistent(self.prepared)
        .fetch_one(tx.conn().await?)
        .await?;
        sql::feed_denylist(tx.conn().await?, self.prepared, now, sink).await?;
        tx.done().await?;
        Ok(watermark)
    }

    async fn rotate_session(&self, rotation: &Rotation<'_>) -> Result<RotationOutcome, StoreError> {
        let mut session = self.session().await?;
        let answer =
            sql::rotate_with::<Postgres>(session.conn().await?, self.prepared, rotation).await?;
        session.done().await?;
        Ok(answer)
    }

    async fn audit_trail(&self, query: AuditQuery<'_>) -> Result<Vec<AuditRecord>, StoreError> {
        self.bounded_read(async {
            let mut session = self.session().await?;
            let answer =
                sql::audit_trail::<Postgres>(session.conn().await?, self.prepared, query).await?;
            session.done().await?;
            Ok(answer)
        })
        .await
    }

    async fn remember_event(
        &self,
        source: &str,
        jti: &str,
        moot_after_ms: UnixMillis,
    ) -> Result<bool, StoreError> {
        self.bounded_write(async {
            let mut session = self.session().await?;
            let answer = sql::remember_event::<Postgres>(
                session.conn().await?,
                self.prepared,
                source,
                jti,
                moot_after_ms,
            )
            .await?;
            session.done().await?;
            Ok(answer)
        })
        .await
    }

    async fn event_seen(&self, source: &str, jti: &str) -> Result<bool, StoreError> {
        self.bounded_read(async {
            let mut session = self.session().await?;
            let answer =
                sql::event_seen::<Postgres>(session.conn().await?, self.prepared, source, jti)
                    .await?;
            session.done().await?;
            Ok(answer)
        })
        .await
    }

    async fn purge(&self, horizon: PurgeHorizon, round_ms: i64) -> Result<Purged, StoreError> {
        let now = horizon.moot_before;
        let mut session = self.session().await?;
        // One purger per round for the fleet: whoever finds the last round old enough takes it.
        // (A tick arrives a little early or late: 90 % of the round is old enough.)
        let taken: Option<(i32,)> = sqlx::query_as(
            "UPDATE purge_round SET last_unix_ms = $1
                 WHERE id = 1 AND last_unix_ms <= $1 - $2
                 RETURNING 1",
        )
        .persistent(self.prepared)
        .bind(now)
        .bind(round_ms / 10 * 9)
        .fetch_optional(session.conn().await?)
        .await?;
        if taken.is_none() {
            session.done().await?;
            return Ok(Purged::default());
        }
        let answer = sql::purge::<Postgres>(session.conn().await?, self.prepared, horizon).await?;
        // The chain's links are kept a day (an instance whose anchor is gone reloads), and the
        // newest always.
        sqlx::query(
            "DELETE FROM change_chain
                 WHERE seq < (SELECT MAX(seq) FROM change_chain)
                   AND committed_at < now() - interval '1 day'",
        )
        .persistent(self.prepared)
        .execute(session.conn().await?)
        .await?;
        session.done().await?;
        Ok(answer)
    }
}
