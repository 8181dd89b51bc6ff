//! The other roles' statements, alike on both backends: the audit trail, the identity
//! providers' events, session heads and the purge.
use sqlx::database::HasStatementCache;
use sqlx::{Database, Encode, FromRow, IntoArguments, Type};

use super::RowsAffected;
use crate::clock::{UnixMillis, UnixSeconds};
use crate::store::pipeline::Audited;
use crate::store::{
    AuditQuery, AuditRecord, ChangeSeq, PurgeHorizon, Purged, Rotation, RotationOutcome,
    SessionHead, StoreError, Superseded,
};

/// Deletes what can no longer refuse anything: denylist rows, session heads and received
/// events moot before `horizon.moot_before`, cutoffs older than `horizon.cutoffs_before`, audit
/// rows older than `horizon.audit_before`.
pub(in crate::store) async fn purge<DB>(
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
pub(in crate::store) async fn record_audit<DB>(
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
pub(in crate::store) async fn audit_trail<DB>(
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
pub(in crate::store) async fn remember_event<DB>(
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
pub(in crate::store) async fn event_seen<DB>(
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
pub(in crate::store) async fn rotate_with<DB>(
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
