//! What PostgreSQL and SQLite say alike: the read queries, the change feed, the session-head
//! rotation and the purge, with their row mapping, written once over sqlx's generic `Database`
//! (both accept `$N` placeholders). Only the writes that number changes differ per backend
//! (PostgreSQL: a sequence under an advisory lock, announced with NOTIFY; SQLite: a counter row
//! in the write transaction).
//!
//! `prepared` says whether statements may be kept prepared on the server: not behind a
//! transaction-pooling PgBouncer, where the next transaction may run on another server
//! connection (there every statement is sent unnamed).
use sqlx::database::HasStatementCache;
use sqlx::pool::PoolConnection;
use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, Type};

use super::pipeline::Audited;
use super::{
    AuditQuery, AuditRecord, Change, ChangeSeq, CutoffRecord, DenyKind, DenySink, PurgeHorizon,
    Purged, Rotation, RotationOutcome, SessionHead, StoreError, Superseded,
};
use crate::clock::{UnixMillis, UnixSeconds};

/// How many rows a statement changed; each backend has it, under no common trait.
pub(super) trait RowsAffected {
    fn rows(&self) -> u64;
}

impl RowsAffected for sqlx::postgres::PgQueryResult {
    fn rows(&self) -> u64 {
        self.rows_affected()
    }
}

impl RowsAffected for sqlx::sqlite::SqliteQueryResult {
    fn rows(&self) -> u64 {
        self.rows_affected()
    }
}

/// A connection one operation holds: a pooled one, or (PostgreSQL in notify mode) the
/// instance's one shared connection, which also listens (see `shared`).
pub(super) trait Lease: Send {
    type Db: Database;
    /// The connection to run statements on.
    fn conn(
        &mut self,
    ) -> impl Future<Output = Result<&mut <Self::Db as Database>::Connection, StoreError>> + Send;
    /// Marks the connection as not to be reused: it is closed when the lease ends.
    fn discard(&mut self);
}

impl<DB: Database> Lease for PoolConnection<DB> {
    type Db = DB;
    fn conn(&mut self) -> impl Future<Output = Result<&mut DB::Connection, StoreError>> + Send {
        std::future::ready(Ok(&mut **self))
    }
    fn discard(&mut self) {
        self.close_on_drop();
    }
}

/// One operation's connection; [`Session::done`] ends it.
///
/// It is reused only when its operation ended cleanly. One that was cancelled (the caller's
/// deadline passed) or failed is closed instead: a statement may still be waiting on the
/// server, or a transaction be open — or, in SQLite, already rolled back by the database
/// (`SQLITE_FULL`) while the driver believes it open — that the next user would run inside.
pub(super) struct Session<L: Lease> {
    lease: L,
    /// Whether this session began a transaction that is still open.
    open: bool,
    clean: bool,
}

impl<L> Session<L>
where
    L: Lease,
    for<'c> &'c mut <L::Db as Database>::Connection: Executor<'c, Database = L::Db>,
{
    /// A session on `lease`, inside a transaction begun with `begin` (e.g. `BEGIN`, or SQLite's
    /// `BEGIN IMMEDIATE`, which takes the write lock at once) if given. BEGIN and COMMIT go by
    /// the simple protocol: one message, which a transaction pooler cannot split.
    pub(super) async fn start(lease: L, begin: Option<&'static str>) -> Result<Self, StoreError> {
        let mut session = Self {
            lease,
            open: false,
            clean: false,
        };
        if let Some(begin) = begin {
            sqlx::raw_sql(begin).execute(session.conn().await?).await?;
            session.open = true;
        }
        Ok(session)
    }

    /// The connection to run the operation's statements on.
    pub(super) async fn conn(
        &mut self,
    ) -> Result<&mut <L::Db as Database>::Connection, StoreError> {
        self.lease.conn().await
    }

    /// Commits the transaction, if there is one, and lets the connection be reused.
    pub(super) async fn done(self) -> Result<(), StoreError> {
        self.end("COMMIT").await
    }

    /// Rolls the transaction back, if there is one, and lets the connection be reused.
    pub(super) async fn rollback(self) -> Result<(), StoreError> {
        self.end("ROLLBACK").await
    }

    async fn end(mut self, how: &'static str) -> Result<(), StoreError> {
        if self.open {
            sqlx::raw_sql(how).execute(self.conn().await?).await?;
            self.open = false;
        }
        self.clean = true;
        Ok(())
    }
}

impl<L: Lease> Drop for Session<L> {
    fn drop(&mut self) {
        if !self.clean {
            self.lease.discard();
        }
    }
}

/// A pooled session is its connection (SQLite's statements run on it directly).
impl<DB: Database> std::ops::Deref for Session<PoolConnection<DB>> {
    type Target = DB::Connection;
    fn deref(&self) -> &DB::Connection {
        &self.lease
    }
}

impl<DB: Database> std::ops::DerefMut for Session<PoolConnection<DB>> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        &mut self.lease
    }
}

/// Answers when the database is reachable.
pub(super) async fn ping<DB>(conn: &mut DB::Connection, prepared: bool) -> Result<(), StoreError>
where
    DB: Database + HasStatementCache,
    DB::Arguments: IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    sqlx::query("SELECT 1")
        .persistent(prepared)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Who set the user's cutoff in force, if recorded.
pub(super) async fn cutoff_owner<DB>(
    conn: &mut DB::Connection,
    prepared: bool,
    user_id: &str,
) -> Result<Option<String>, StoreError>
where
    DB: Database + HasStatementCache,
    DB::Arguments: IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    (Option<String>,): for<'r> FromRow<'r, DB::Row>,
{
    let row: Option<(Option<String>,)> =
        sqlx::query_as("SELECT set_by FROM user_cutoffs WHERE user_id = $1")
            .persistent(prepared)
            .bind(user_id)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(row.and_then(|(owner,)| owner))
}

/// The user's cutoff, with the change that set it.
pub(super) async fn cutoff<DB>(
    conn: &mut DB::Connection,
    prepared: bool,
    user_id: &str,
) -> Result<CutoffRecord, StoreError>
where
    DB: Database + HasStatementCache,
    DB::Arguments: IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    (i64, i64): for<'r> FromRow<'r, DB::Row>,
{
    let row: Option<(i64, i64)> =
        sqlx::query_as("SELECT cutoff_unix_ms, change_seq FROM user_cutoffs WHERE user_id = $1")
            .persistent(prepared)
            .bind(user_id)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(match row {
        Some((cutoff, seq)) => CutoffRecord {
            cutoff_ms: Some(cutoff),
            seq,
            link: None,
        },
        None => CutoffRecord {
            cutoff_ms: None,
            seq: 0,
            link: None,
        },
    })
}

/// Whether one token or session is denied.
pub(super) async fn is_denied<DB>(
    conn: &mut DB::Connection,
    prepared: bool,
    kind: DenyKind,
    id: &str,
) -> Result<bool, StoreError>
where
    DB: Database + HasStatementCache,
    DB::Arguments: IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    (i64,): for<'r> FromRow<'r, DB::Row>,
{
    let row: Option<(i64,)> =
        sqlx::query_as("SELECT CAST(1 AS BIGINT) FROM denylist WHERE kind = $1 AND id = $2")
            .persistent(prepared)
            .bind(kind.as_str())
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(row.is_some())
}

/// Committed changes numbered after `after`, in order, at most `limit`.
pub(super) async fn changes_after<'c, DB, E>(
    executor: E,
    prepared: bool,
    after: ChangeSeq,
    limit: i64,
) -> Result<Vec<Change>, StoreError>
where
    DB: Database + HasStatementCache,
    DB::Arguments: IntoArguments<DB>,
    E: sqlx::Executor<'c, Database = DB>,
    i64: for<'q> Encode<'q, DB> + Type<DB>,
    (String, String, i64, i64, i64): for<'r> FromRow<'r, DB::Row>,
{
    let rows: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(CHANGES_AFTER_SQL)
        .persistent(prepared)
        .bind(after)
        .bind(limit)
        .fetch_all(executor)
        .await?;
    rows.into_iter().map(change_from_row).collect()
}

/// Feeds every denylist row live at `now` to `sink`, inside the caller's snapshot.
pub(super) async fn feed_denylist<'c, DB, E>(
    executor: E,
    prepared: bool,
    now: UnixMillis,
    sink: &mut DenySink<'_>,
) -> Result<(), StoreError>
where
    DB: Database + HasStatementCache,
    DB::Arguments: IntoArguments<DB>,
    E: sqlx::Executor<'c, Database = DB> + 'c,
    i64: for<'q> Encode<'q, DB> + Type<DB>,
    (String, String, i64): for<'r> FromRow<'r, DB::Row>,
{
    use futures::TryStreamExt;
    let mut rows = sqlx::query_as::<_, (String, String, i64)>(
        "SELECT kind, id, moot_after_unix_ms FROM denylist WHERE moot_after_unix_ms >= $1",
    )
    .persistent(prepared)
    .bind(now)
    .fetch(executor);
    while let Some((kind, id, moot)) = rows.try_next().await? {
        sink(DenyKind::from_column(&kind)?, &id, moot);
    }
    Ok(())
}

/// Deletes what can no longer refuse anything: denylist rows, session heads and received
/// events moot before `horizon.moot_before`, cutoffs older than `horizon.cutoffs_before`, audit
/// rows older than `horizon.audit_before`.
pub(super) async fn purge<DB>(
    conn: &mut DB::Connection,
    prepared: bool,
    horizon: PurgeHorizon,
) -> Result<Purged, StoreError>
where
    DB: Database + HasStatementCache,
    DB::Arguments: IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    DB::QueryResult: RowsAffected,
    i64: for<'q> Encode<'q, DB> + Type<DB>,
{
    // Each table with the instant before which its rows may go; the counts kept in this order.
    let statements = [
        (
            "DELETE FROM session_heads WHERE moot_after_unix_ms < $1",
            horizon.moot_before,
        ),
        (
            "DELETE FROM received_events WHERE moot_after_unix_ms < $1",
            horizon.moot_before,
        ),
        (
            "DELETE FROM denylist WHERE moot_after_unix_ms < $1",
            horizon.moot_before,
        ),
        (
            "DELETE FROM user_cutoffs WHERE cutoff_unix_ms < $1",
            horizon.cutoffs_before,
        ),
        (
            "DELETE FROM audit_log WHERE at_unix_ms < $1",
            horizon.audit_before,
        ),
    ];
    let mut deleted = [0u64; 5];
    for (count, (sql, before)) in deleted.iter_mut().zip(statements) {
        *count = sqlx::query::<DB>(sql)
            .persistent(prepared)
            .bind(before)
            .execute(&mut *conn)
            .await?
            .rows();
    }
    let [_, _, denylist, cutoffs, audit] = deleted;
    Ok(Purged {
        denylist,
        cutoffs,
        audit,
        ran: true,
    })
}

/// Writes a change's audit row, inside the change's transaction.
pub(super) async fn record_audit<DB>(
    conn: &mut DB::Connection,
    prepared: bool,
    seq: ChangeSeq,
    row: &Audited<'_>,
) -> Result<(), StoreError>
where
    DB: Database + HasStatementCache,
    DB::Arguments: IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    i64: for<'q> Encode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    Option<i64>: for<'q> Encode<'q, DB> + Type<DB>,
{
    sqlx::query::<DB>(
        "INSERT INTO audit_log (change_seq, at_unix_ms, action, user_id, target, until_unix_ms,
                                who, why)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .persistent(prepared)
    .bind(seq)
    .bind(row.audit.at_ms)
    .bind(row.audit.action.as_str())
    .bind(row.user_id)
    .bind(row.target)
    .bind(row.until_ms)
    .bind(row.audit.who.as_str())
    .bind(row.audit.why.as_deref())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

type AuditRow = (
    i64,
    i64,
    String,
    Option<String>,
    Option<String>,
    Option<i64>,
    String,
    Option<String>,
);

/// A page of the audit trail, newest first.
pub(super) async fn audit_trail<DB>(
    conn: &mut DB::Connection,
    prepared: bool,
    query: AuditQuery<'_>,
) -> Result<Vec<AuditRecord>, StoreError>
where
    DB: Database + HasStatementCache,
    DB::Arguments: IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    i64: for<'q> Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    Option<i64>: for<'q> Encode<'q, DB> + Type<DB>,
    AuditRow: for<'r> FromRow<'r, DB::Row>,
{
    let rows: Vec<AuditRow> = sqlx::query_as(
        "SELECT id, at_unix_ms, action, user_id, target, until_unix_ms, who, why
             FROM audit_log
             WHERE (CAST($1 AS TEXT) IS NULL OR user_id = $1)
               AND (CAST($2 AS BIGINT) IS NULL OR id < $2)
             ORDER BY id DESC
             LIMIT $3",
    )
    .persistent(prepared)
    .bind(query.user_id)
    .bind(query.before)
    .bind(query.limit)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(id, at_ms, action, user_id, target, until_ms, who, why)| AuditRecord {
                id,
                at_ms,
                action,
                user_id,
                target,
                until_ms,
                who,
                why,
            },
        )
        .collect())
}

/// Remembers a received event; false if it was remembered already.
pub(super) async fn remember_event<DB>(
    conn: &mut DB::Connection,
    prepared: bool,
    source: &str,
    jti: &str,
    moot_after_ms: UnixMillis,
) -> Result<bool, StoreError>
where
    DB: Database + HasStatementCache,
    DB::Arguments: IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    DB::QueryResult: RowsAffected,
    i64: for<'q> Encode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
{
    let inserted = sqlx::query::<DB>(
        "INSERT INTO received_events (source, jti, moot_after_unix_ms) VALUES ($1, $2, $3)
             ON CONFLICT (source, jti) DO NOTHING",
    )
    .persistent(prepared)
    .bind(source)
    .bind(jti)
    .bind(moot_after_ms)
    .execute(&mut *conn)
    .await?;
    Ok(inserted.rows() == 1)
}

/// Whether an event was received already.
pub(super) async fn event_seen<DB>(
    conn: &mut DB::Connection,
    prepared: bool,
    source: &str,
    jti: &str,
) -> Result<bool, StoreError>
where
    DB: Database + HasStatementCache,
    DB::Arguments: IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    (i64,): for<'r> FromRow<'r, DB::Row>,
{
    let row: Option<(i64,)> = sqlx::query_as(
        "SELECT CAST(1 AS BIGINT) FROM received_events WHERE source = $1 AND jti = $2",
    )
    .persistent(prepared)
    .bind(source)
    .bind(jti)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.is_some())
}

/// Turns a `(kind, id, value, seq, committed)` change-feed row into a [`Change`].
pub(super) fn change_from_row(
    (kind, id, value, seq, committed_ms): (String, String, i64, i64, i64),
) -> Result<Change, StoreError> {
    Ok(if kind == "cutoff" {
        Change::Cutoff {
            seq,
            committed_ms,
            user_id: id,
            cutoff_ms: value,
        }
    } else {
        Change::Denied {
            seq,
            committed_ms,
            kind: DenyKind::from_column(&kind)?,
            id,
            moot_after_ms: value,
        }
    })
}

/// The change feed: both tables' rows changed after a number, as
/// `(kind, id, value, seq, committed)`. `kind` is `cutoff` for a cutoff row, else the denylist
/// kind.
pub(super) const CHANGES_AFTER_SQL: &str = "
    SELECT kind, id, value, seq, committed FROM (
        SELECT 'cutoff' AS kind, user_id AS id, cutoff_unix_ms AS value, change_seq AS seq,
               changed_unix_ms AS committed
            FROM user_cutoffs WHERE change_seq > $1
        UNION ALL
        SELECT kind, id, moot_after_unix_ms AS value, change_seq AS seq,
               changed_unix_ms AS committed
            FROM denylist WHERE change_seq > $1
    ) AS changes
    ORDER BY seq
    LIMIT $2";

/// The conditional rotation, in the SQL both backends speak: insert the session's first head,
/// or replace the head only while it is still the presented token. Returns a row when it wrote.
const ROTATE_SQL: &str = "
    INSERT INTO session_heads (session_id, user_id, newest_jti, minted_unix_ms, issued_at,
                               expires_at, moot_after_unix_ms, parent_jti, parent_minted_unix_ms)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
    ON CONFLICT (session_id) DO UPDATE
        SET parent_jti = session_heads.newest_jti,
            parent_minted_unix_ms = session_heads.minted_unix_ms,
            newest_jti = excluded.newest_jti, minted_unix_ms = excluded.minted_unix_ms,
            issued_at = excluded.issued_at, expires_at = excluded.expires_at
        WHERE session_heads.newest_jti = $8
    RETURNING session_id";

/// The session's newest token.
const SESSION_HEAD_SQL: &str = "
    SELECT newest_jti, minted_unix_ms, issued_at, expires_at, parent_jti, parent_minted_unix_ms
        FROM session_heads WHERE session_id = $1";

/// Runs [`ROTATE_SQL`], then reads the head it lost to; once more if that head vanished meanwhile.
pub(super) async fn rotate_with<DB>(
    conn: &mut DB::Connection,
    prepared: bool,
    rotation: &Rotation<'_>,
) -> Result<RotationOutcome, StoreError>
where
    DB: sqlx::Database + HasStatementCache,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    String: for<'r> sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    (String,): for<'r> sqlx::FromRow<'r, DB::Row>,
    (String, i64, i64, i64, String, i64): for<'r> sqlx::FromRow<'r, DB::Row>,
{
    for _ in 0..2 {
        let wrote: Option<(String,)> = sqlx::query_as(ROTATE_SQL)
            .persistent(prepared)
            .bind(rotation.session_id)
            .bind(rotation.user_id)
            .bind(rotation.new.jti.as_str())
            .bind(rotation.new.minted_ms)
            .bind(rotation.new.issued_at.get())
            .bind(rotation.new.expires_at.get())
            .bind(rotation.moot_after_ms)
            .bind(rotation.presented_jti)
            .bind(rotation.presented_minted_ms)
            .fetch_optional(&mut *conn)
            .await?;
        if wrote.is_some() {
            return Ok(RotationOutcome::Rotated);
        }
        let head: Option<(String, i64, i64, i64, String, i64)> = sqlx::query_as(SESSION_HEAD_SQL)
            .persistent(prepared)
            .bind(rotation.session_id)
            .fetch_optional(&mut *conn)
            .await?;
        if let Some((jti, minted_ms, issued_at, expires_at, parent_jti, parent_minted_ms)) = head {
            return Ok(RotationOutcome::Superseded(Superseded {
                newest: SessionHead {
                    jti,
                    minted_ms,
                    issued_at: UnixSeconds(issued_at),
                    expires_at: UnixSeconds(expires_at),
                },
                parent_jti,
                parent_minted_ms,
            }));
        }
    }
    Err(StoreError::Conflict)
}
