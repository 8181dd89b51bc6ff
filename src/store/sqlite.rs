//! The embedded SQLite store: single instance, for trying the sidecar out and local development.
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, SqlitePool, Transaction};

use super::{
    CHANGES_AFTER_SQL, Change, ChangeSeq, CutoffRecord, CutoffUpdate, DenyEntry, DenyKind,
    DenySink, Purged, RevocationStore, Rotation, RotationOutcome, StoreError, change_from_row,
    rotate_with,
};
use crate::clock::UnixMillis;

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
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn cutoff(&self, user_id: &str) -> Result<CutoffRecord, StoreError> {
        let row: Option<(i64, i64)> = sqlx::query_as(
            "SELECT cutoff_unix_ms, change_seq FROM user_cutoffs WHERE user_id = ?1",
        )
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some((cutoff, seq)) => CutoffRecord {
                cutoff_ms: Some(cutoff),
                seq,
            },
            None => CutoffRecord {
                cutoff_ms: None,
                seq: 0,
            },
        })
    }

    async fn raise_cutoff(
        &self,
        user_id: &str,
        at_least: UnixMillis,
    ) -> Result<CutoffUpdate, StoreError> {
        let (mut tx, seq) = self.writer().await?;
        let raised = sqlx::query(
            "INSERT INTO user_cutoffs (user_id, cutoff_unix_ms, change_seq) VALUES (?1, ?2, ?3)
                 ON CONFLICT (user_id) DO UPDATE
                     SET cutoff_unix_ms = excluded.cutoff_unix_ms,
                         change_seq = excluded.change_seq,
                         updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
                     WHERE user_cutoffs.cutoff_unix_ms < excluded.cutoff_unix_ms",
        )
        .bind(user_id)
        .bind(at_least)
        .bind(seq)
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
                 SET cutoff_unix_ms = ?2, change_seq = ?3,
                     updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
                 WHERE user_id = ?1 AND cutoff_unix_ms > ?2",
        )
        .bind(user_id)
        .bind(now)
        .bind(seq)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        Self::finish(tx, seq, lifted).await
    }

    async fn is_denied(&self, kind: DenyKind, id: &str) -> Result<bool, StoreError> {
        let row: Option<(i32,)> =
            sqlx::query_as("SELECT 1 FROM denylist WHERE kind = ?1 AND id = ?2")
                .bind(kind.as_str())
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.is_some())
    }

    async fn deny(&self, entry: &DenyEntry) -> Result<Option<ChangeSeq>, StoreError> {
        let (mut tx, seq) = self.writer().await?;
        let inserted = sqlx::query(
            "INSERT INTO denylist (kind, id, user_id, moot_after_unix_ms, change_seq)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (kind, id) DO NOTHING",
        )
        .bind(entry.kind.as_str())
        .bind(&entry.id)
        .bind(entry.user_id.as_deref())
        .bind(entry.moot_after_ms)
        .bind(seq)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        Self::finish(tx, seq, inserted).await
    }

    async fn changes_after(&self, after: ChangeSeq, limit: i64) -> Result<Vec<Change>, StoreError> {
        let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(CHANGES_AFTER_SQL)
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(change_from_row).collect())
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
        {
            let mut rows = sqlx::query(
                "SELECT kind, id, moot_after_unix_ms FROM denylist WHERE moot_after_unix_ms >= ?1",
            )
            .bind(now)
            .fetch(&mut *tx);
            while let Some(row) = rows.try_next().await? {
                let row: SqliteRow = row;
                let kind: &str = row.try_get(0)?;
                let id: &str = row.try_get(1)?;
                let moot: i64 = row.try_get(2)?;
                sink(DenyKind::from_column(kind), id, moot);
            }
        }
        tx.commit().await?;
        Ok(watermark)
    }

    async fn rotate_session(&self, rotation: &Rotation<'_>) -> Result<RotationOutcome, StoreError> {
        rotate_with(&self.pool, rotation).await
    }

    async fn purge(
        &self,
        now: UnixMillis,
        cutoffs_before: UnixMillis,
    ) -> Result<Purged, StoreError> {
        sqlx::query("DELETE FROM session_heads WHERE moot_after_unix_ms < ?1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        let denylist = sqlx::query("DELETE FROM denylist WHERE moot_after_unix_ms < ?1")
            .bind(now)
            .execute(&self.pool)
            .await?
            .rows_affected();
        let cutoffs = sqlx::query("DELETE FROM user_cutoffs WHERE cutoff_unix_ms < ?1")
            .bind(cutoffs_before)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(Purged { denylist, cutoffs })
    }
}
