//! The embedded SQLite store: single instance, for trying the sidecar out and local development.
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};

use super::{
    Change, ChangeSeq, CutoffRecord, CutoffUpdate, DenyEntry, DenyKind, DenySink, Purged,
    RevocationStore, Rotation, RotationOutcome, StoreError, sql,
};
use crate::clock::{UnixMillis, wall_ms};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// Cutoffs and denylist in one SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file named by a `sqlite:` URL.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: an acknowledged revocation survives a power cut.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        Ok(Self { pool })
    }

    /// A write transaction holding the next change number. Its first statement writes, so the
    /// database's write lock is taken at once (no deferred-upgrade deadlock).
    async fn writer(&self) -> Result<(Transaction<'static, Sqlite>, ChangeSeq), StoreError> {
        let mut tx = self.pool.begin().await?;
        let (seq,): (i64,) = sqlx::query_as(
            "UPDATE revocation_change_seq SET value = value + 1 WHERE id = 1 RETURNING value",
        )
        .fetch_one(&mut *tx)
        .await?;
        Ok((tx, seq))
    }

    async fn finish(
        tx: Transaction<'static, Sqlite>,
        seq: ChangeSeq,
        changed: bool,
    ) -> Result<Option<ChangeSeq>, StoreError> {
        if changed {
            tx.commit().await?;
            Ok(Some(seq))
        } else {
            tx.rollback().await?;
            Ok(None)
        }
    }
}

#[async_trait]
impl RevocationStore for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn is_shared(&self) -> bool {
        false
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sql::ping::<Sqlite>(&mut *self.pool.acquire().await?, true).await
    }

    async fn cutoff(&self, user_id: &str) -> Result<CutoffRecord, StoreError> {
        sql::cutoff::<Sqlite>(&mut *self.pool.acquire().await?, true, user_id).await
    }

    async fn raise_cutoff(
        &self,
        user_id: &str,
        at_least: UnixMillis,
    ) -> Result<CutoffUpdate, StoreError> {
        let (mut tx, seq) = self.writer().await?;
        let raised = sqlx::query(
            "INSERT INTO user_cutoffs (user_id, cutoff_unix_ms, change_seq, changed_unix_ms)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (user_id) DO UPDATE
                     SET cutoff_unix_ms = excluded.cutoff_unix_ms,
                         change_seq = excluded.change_seq,
                         changed_unix_ms = excluded.changed_unix_ms,
                         updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
                     WHERE user_cutoffs.cutoff_unix_ms < excluded.cutoff_unix_ms",
        )
        .bind(user_id)
        .bind(at_least)
        .bind(seq)
        .bind(wall_ms())
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if raised {
            Self::finish(tx, seq, true).await?;
            return Ok(CutoffUpdate {
                cutoff_ms: at_least,
                seq,
                changed: true,
            });
        }
        let (cutoff_ms, current_seq): (i64, i64) = sqlx::query_as(
            "SELECT cutoff_unix_ms, change_seq FROM user_cutoffs WHERE user_id = ?1",
        )
        .bind(user_id)
        .fetch_one(&mut *tx)
        .await?;
        Self::finish(tx, seq, false).await?;
        Ok(CutoffUpdate {
            cutoff_ms,
            seq: current_seq,
            changed: false,
        })
    }

    async fn lift_ban(
        &self,
        user_id: &str,
        now: UnixMillis,
    ) -> Result<Option<ChangeSeq>, StoreError> {
        let (mut tx, seq) = self.writer().await?;
        let lifted = sqlx::query(
            "UPDATE user_cutoffs
                 SET cutoff_unix_ms = ?2, change_seq = ?3, changed_unix_ms = ?4,
                     updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
                 WHERE user_id = ?1 AND cutoff_unix_ms > ?2",
        )
        .bind(user_id)
        .bind(now)
        .bind(seq)
        .bind(wall_ms())
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        Self::finish(tx, seq, lifted).await
    }

    async fn is_denied(&self, kind: DenyKind, id: &str) -> Result<bool, StoreError> {
        sql::is_denied::<Sqlite>(&mut *self.pool.acquire().await?, true, kind, id).await
    }

    async fn deny(&self, entry: &DenyEntry) -> Result<Option<ChangeSeq>, StoreError> {
        let (mut tx, seq) = self.writer().await?;
        let inserted = sqlx::query(
            "INSERT INTO denylist (kind, id, user_id, moot_after_unix_ms, change_seq,
                                   changed_unix_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (kind, id) DO NOTHING",
        )
        .bind(entry.kind.as_str())
        .bind(&entry.id)
        .bind(entry.user_id.as_deref())
        .bind(entry.moot_after_ms)
        .bind(seq)
        .bind(wall_ms())
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        Self::finish(tx, seq, inserted).await
    }

    async fn changes_after(&self, after: ChangeSeq, limit: i64) -> Result<Vec<Change>, StoreError> {
        sql::changes_after(&self.pool, true, after, limit).await
    }

    async fn load_denylist(
        &self,
        now: UnixMillis,
        sink: &mut DenySink<'_>,
    ) -> Result<ChangeSeq, StoreError> {
        // A read transaction in WAL mode sees one snapshot throughout.
        let mut tx = self.pool.begin().await?;
        let (watermark,): (i64,) =
            sqlx::query_as("SELECT value FROM revocation_change_seq WHERE id = 1")
                .fetch_one(&mut *tx)
                .await?;
        sql::feed_denylist(&mut *tx, true, now, sink).await?;
        tx.commit().await?;
        Ok(watermark)
    }

    async fn rotate_session(&self, rotation: &Rotation<'_>) -> Result<RotationOutcome, StoreError> {
        sql::rotate_with::<Sqlite>(&mut *self.pool.acquire().await?, true, rotation).await
    }

    async fn purge(
        &self,
        now: UnixMillis,
        cutoffs_before: UnixMillis,
    ) -> Result<Purged, StoreError> {
        sql::purge::<Sqlite>(&mut *self.pool.acquire().await?, true, now, cutoffs_before).await
    }
}
