//! The embedded SQLite store: single instance, for trying the sidecar out and local development.
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::{CutoffUpdate, DenyEntry, Purged, RevocationStore, StoreError, deny_status};
use crate::clock::UnixMillis;
use crate::policy::DenyStatus;

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
}

#[async_trait]
impl RevocationStore for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn cutoff(&self, user_id: &str) -> Result<Option<UnixMillis>, StoreError> {
        let row: Option<(i64,)> =
            sqlx::query_as("SELECT cutoff_unix_ms FROM user_cutoffs WHERE user_id = ?1")
                .bind(user_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(c,)| c))
    }

    async fn raise_cutoff(
        &self,
        user_id: &str,
        at_least: UnixMillis,
    ) -> Result<CutoffUpdate, StoreError> {
        // The guarded upsert is atomic; the follow-up read only runs when it changed nothing,
        // and a cutoff can only have grown since.
        let raised: Option<(i64,)> = sqlx::query_as(
            "INSERT INTO user_cutoffs (user_id, cutoff_unix_ms) VALUES (?1, ?2)
                 ON CONFLICT (user_id) DO UPDATE
                     SET cutoff_unix_ms = excluded.cutoff_unix_ms,
                         updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
                     WHERE user_cutoffs.cutoff_unix_ms < excluded.cutoff_unix_ms
                 RETURNING cutoff_unix_ms",
        )
        .bind(user_id)
        .bind(at_least)
        .fetch_optional(&self.pool)
        .await?;
        if let Some((cutoff_ms,)) = raised {
            return Ok(CutoffUpdate {
                cutoff_ms,
                changed: true,
            });
        }
        let cutoff_ms = self.cutoff(user_id).await?.unwrap_or(at_least);
        Ok(CutoffUpdate {
            cutoff_ms,
            changed: false,
        })
    }

    async fn lift_ban(&self, user_id: &str, now: UnixMillis) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE user_cutoffs
                 SET cutoff_unix_ms = ?2, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
                 WHERE user_id = ?1 AND cutoff_unix_ms > ?2",
        )
        .bind(user_id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn denied(&self, jti: &str, sid: &str) -> Result<DenyStatus, StoreError> {
        let kinds: Vec<(String,)> = sqlx::query_as(
            "SELECT kind FROM denylist
                 WHERE (kind = 'jti' AND id = ?1) OR (kind = 'sid' AND id = ?2)",
        )
        .bind(jti)
        .bind(sid)
        .fetch_all(&self.pool)
        .await?;
        Ok(deny_status(kinds.into_iter().map(|(k,)| k)))
    }

    async fn deny(&self, entry: &DenyEntry) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO denylist (kind, id, user_id, moot_after_unix_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (kind, id) DO NOTHING",
        )
        .bind(entry.kind.as_str())
        .bind(&entry.id)
        .bind(entry.user_id.as_deref())
        .bind(entry.moot_after_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn purge(
        &self,
        now: UnixMillis,
        cutoffs_before: UnixMillis,
    ) -> Result<Purged, StoreError> {
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
