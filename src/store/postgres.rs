//! The PostgreSQL store: the source of truth shared by every sidecar.
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Postgres, Transaction};

use super::{
    Change, ChangeSeq, CutoffRecord, CutoffUpdate, DenyEntry, DenyKind, DenySink, Purged,
    RevocationStore, Rotation, RotationOutcome, StoreError, sql,
};
use crate::clock::UnixMillis;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// The LISTEN/NOTIFY channel on which every committed change is announced (payload: its number).
pub const CHANGE_CHANNEL: &str = "token_sidecar_changes";

/// The advisory lock every writer holds from taking a change number until it commits, so that
/// numbers become visible in increasing order ("ts-chg" in ASCII).
const CHANGE_LOCK: i64 = 0x7473_2d63_6867;

/// Cutoffs and denylist in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// A pool that connects on first use, so the sidecar can start (NOT_SERVING) before the
    /// database is up. A short acquire timeout turns an outage into a prompt UNAVAILABLE.
    pub fn connect_lazy(url: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(2))
            .connect_lazy(url)?;
        Ok(Self { pool })
    }

    /// A transaction that holds the change lock.
    async fn writer(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(CHANGE_LOCK)
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }

    /// Ends a write: a change is announced (delivered to listeners at commit) and committed;
    /// no change rolls back.
    async fn finish(
        mut tx: Transaction<'static, Postgres>,
        change: Option<ChangeSeq>,
    ) -> Result<Option<ChangeSeq>, StoreError> {
        let Some(seq) = change else {
            tx.rollback().await?;
            return Ok(None);
        };
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANGE_CHANNEL)
            .bind(seq.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(seq))
    }
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
        // sqlx holds a PostgreSQL advisory lock while migrating: concurrent starts serialise.
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sql::ping(&self.pool).await
    }

    async fn cutoff(&self, user_id: &str) -> Result<CutoffRecord, StoreError> {
        sql::cutoff(&self.pool, user_id).await
    }

    async fn raise_cutoff(
        &self,
        user_id: &str,
        at_least: UnixMillis,
    ) -> Result<CutoffUpdate, StoreError> {
        let mut tx = self.writer().await?;
        // The upsert and its "never lower it" guard are one statement, so concurrent
        // revocations of one user cannot undo each other.
        let (cutoff_ms, seq, changed): (i64, i64, bool) = sqlx::query_as(
            "WITH up AS (
                 INSERT INTO user_cutoffs (user_id, cutoff_unix_ms) VALUES ($1, $2)
                 ON CONFLICT (user_id) DO UPDATE
                     SET cutoff_unix_ms = EXCLUDED.cutoff_unix_ms,
                         change_seq = nextval('revocation_change_seq'),
                         updated_at = now()
                     WHERE user_cutoffs.cutoff_unix_ms < EXCLUDED.cutoff_unix_ms
                 RETURNING cutoff_unix_ms, change_seq
             )
             SELECT cutoff_unix_ms, change_seq, true FROM up
             UNION ALL
             SELECT cutoff_unix_ms, change_seq, false FROM user_cutoffs
                 WHERE user_id = $1 AND NOT EXISTS (SELECT 1 FROM up)",
        )
        .bind(user_id)
        .bind(at_least)
        .fetch_one(&mut *tx)
        .await?;
        Self::finish(tx, changed.then_some(seq)).await?;
        Ok(CutoffUpdate {
            cutoff_ms,
            seq,
            changed,
        })
    }

    async fn lift_ban(
        &self,
        user_id: &str,
        now: UnixMillis,
    ) -> Result<Option<ChangeSeq>, StoreError> {
        let mut tx = self.writer().await?;
        let seq: Option<(i64,)> = sqlx::query_as(
            "UPDATE user_cutoffs
                 SET cutoff_unix_ms = $2, change_seq = nextval('revocation_change_seq'),
                     updated_at = now()
                 WHERE user_id = $1 AND cutoff_unix_ms > $2
                 RETURNING change_seq",
        )
        .bind(user_id)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        Self::finish(tx, seq.map(|(seq,)| seq)).await
    }

    async fn is_denied(&self, kind: DenyKind, id: &str) -> Result<bool, StoreError> {
        sql::is_denied(&self.pool, kind, id).await
    }

    async fn deny(&self, entry: &DenyEntry) -> Result<Option<ChangeSeq>, StoreError> {
        let mut tx = self.writer().await?;
        let seq: Option<(i64,)> = sqlx::query_as(
            "INSERT INTO denylist (kind, id, user_id, moot_after_unix_ms) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (kind, id) DO NOTHING
                 RETURNING change_seq",
        )
        .bind(entry.kind.as_str())
        .bind(&entry.id)
        .bind(entry.user_id.as_deref())
        .bind(entry.moot_after_ms)
        .fetch_optional(&mut *tx)
        .await?;
        Self::finish(tx, seq.map(|(seq,)| seq)).await
    }

    async fn changes_after(&self, after: ChangeSeq, limit: i64) -> Result<Vec<Change>, StoreError> {
        sql::changes_after(&self.pool, after, limit).await
    }

    async fn load_denylist(
        &self,
        now: UnixMillis,
        sink: &mut DenySink<'_>,
    ) -> Result<ChangeSeq, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await?;
        let (watermark,): (i64,) = sqlx::query_as(
            "SELECT GREATEST(
                 (SELECT COALESCE(MAX(change_seq), 0) FROM user_cutoffs),
                 (SELECT COALESCE(MAX(change_seq), 0) FROM denylist))",
        )
        .fetch_one(&mut *tx)
        .await?;
        sql::feed_denylist(&mut *tx, now, sink).await?;
        tx.commit().await?;
        Ok(watermark)
    }

    async fn rotate_session(&self, rotation: &Rotation<'_>) -> Result<RotationOutcome, StoreError> {
        sql::rotate_with(&self.pool, rotation).await
    }

    async fn purge(
        &self,
        now: UnixMillis,
        cutoffs_before: UnixMillis,
    ) -> Result<Purged, StoreError> {
        sql::purge(&self.pool, now, cutoffs_before).await
    }
}
