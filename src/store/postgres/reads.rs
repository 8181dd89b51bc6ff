//! PostgreSQL's answers to the roles other than the log: reads on a cache miss, the audit
//! trail, the identity providers' events, session heads and the purge.
use async_trait::async_trait;
use sqlx::Postgres;

use super::PostgresStore;
use crate::store::announcement;
use crate::store::{
    AuditLog, AuditQuery, AuditRecord, CutoffRecord, DenyKind, EventLedger, Maintenance,
    PurgeHorizon, Purged, RevocationReads, Rotation, RotationOutcome, SessionHeads, StoreError,
    sql,
};
use token_sidecar_core::clock::UnixMillis;

#[async_trait]
impl RevocationReads for PostgresStore {
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
}

#[async_trait]
impl AuditLog for PostgresStore {
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
}

#[async_trait]
impl EventLedger for PostgresStore {
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
}

#[async_trait]
impl SessionHeads for PostgresStore {
    async fn rotate_session(&self, rotation: &Rotation<'_>) -> Result<RotationOutcome, StoreError> {
        let mut session = self.session().await?;
        let answer =
            sql::rotate_with::<Postgres>(session.conn().await?, self.prepared, rotation).await?;
        session.done().await?;
        Ok(answer)
    }
}

#[async_trait]
impl Maintenance for PostgresStore {
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
