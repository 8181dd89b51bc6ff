//! The PostgreSQL store: the source of truth shared by every sidecar.
use std::time::Duration;

use async_trait::async_trait;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use super::{CutoffUpdate, DenyEntry, Purged, RevocationStore, StoreError, deny_status};
use crate::clock::UnixMillis;
use crate::policy::DenyStatus;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

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
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy(url)?;
        Ok(Self { pool })
    }

    /// The underlying pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

#[async_trait]
impl RevocationStore for PostgresStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        // sqlx holds a PostgreSQL advisory lock while migrating: concurrent starts serialise.
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn cutoff(&self, user_id: &str) -> Result<Option<UnixMillis>, StoreError> {
        let row: Option<(i64,)> =
            sqlx::query_as("SELECT cutoff_unix_ms FROM user_cutoffs WHERE user_id = $1")
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
        // One statement: the upsert and the "never lower it" guard are atomic, so concurrent
        // revocations of one user cannot undo each other.
        let (cutoff_ms, changed): (i64, bool) = sqlx::query_as(
            "WITH up AS (
                 INSERT INTO user_cutoffs (user_id, cutoff_unix_ms) VALUES ($1, $2)
                 ON CONFLICT (user_id) DO UPDATE
                     SET cutoff_unix_ms = EXCLUDED.cutoff_unix_ms,
                         change_seq = nextval('revocation_change_seq'),
                         updated_at = now()
                     WHERE user_cutoffs.cutoff_unix_ms < EXCLUDED.cutoff_unix_ms
                 RETURNING cutoff_unix_ms
             )
             SELECT cutoff_unix_ms, true FROM up
             UNION ALL
             SELECT cutoff_unix_ms, false FROM user_cutoffs
                 WHERE user_id = $1 AND NOT EXISTS (SELECT 1 FROM up)",
        )
        .bind(user_id)
        .bind(at_least)
        .fetch_one(&self.pool)
        .await?;
        Ok(CutoffUpdate { cutoff_ms, changed })
    }

    async fn lift_ban(&self, user_id: &str, now: UnixMillis) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE user_cutoffs
                 SET cutoff_unix_ms = $2, change_seq = nextval('revocation_change_seq'),
                     updated_at = now()
                 WHERE user_id = $1 AND cutoff_unix_ms > $2",
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
                 WHERE (kind = 'jti' AND id = $1) OR (kind = 'sid' AND id = $2)",
        )
        .bind(jti)
        .bind(sid)
        .fetch_all(&self.pool)
        .await?;
        Ok(deny_status(kinds.into_iter().map(|(k,)| k)))
    }

    async fn deny(&self, entry: &DenyEntry) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO denylist (kind, id, user_id, moot_after_unix_ms) VALUES ($1, $2, $3, $4)
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
        let denylist = sqlx::query("DELETE FROM denylist WHERE moot_after_unix_ms < $1")
            .bind(now)
            .execute(&self.pool)
            .await?
            .rows_affected();
        let cutoffs = sqlx::query("DELETE FROM user_cutoffs WHERE cutoff_unix_ms < $1")
            .bind(cutoffs_before)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(Purged { denylist, cutoffs })
    }
}
