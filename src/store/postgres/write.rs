//! PostgreSQL's dialect of the write pipeline: the change lock, each write's statement, the
//! history chain, NOTIFY — and the numbered log read back.
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::{PgConnection, Postgres};

use super::history::{history_and_changes_on, history_on};
use super::{PostgresStore, Session};
use crate::store::announcement::{self, Announcement, FleetKey, GENESIS, Link};
use crate::store::pipeline::{Applied, Audited, WriteBackend, WriteOp, WriteTx};
use crate::store::{
    Audit, Change, ChangeSeq, CutoffUpdate, DbErrorKind, DenyEntry, DenySink, History, LinkTag,
    RevocationLog, StoreError, sql,
};
use token_sidecar_core::clock::UnixMillis;

/// The LISTEN/NOTIFY channel on which every committed change is announced (payload: the change,
/// see [`announcement`]).
pub const CHANGE_CHANNEL: &str = "token_sidecar_changes";

/// One wait for the change lock; between attempts the connection serves others.
const LOCK_ATTEMPT: std::time::Duration = std::time::Duration::from_millis(100);
/// The pause between attempts, in which queued reads take the connection.
const LOCK_RETRY: std::time::Duration = std::time::Duration::from_millis(5);

/// The advisory lock every writer holds from taking a change number until it commits, so that
/// numbers become visible in increasing order ("ts-chg" in ASCII).
const CHANGE_LOCK: i64 = 0x7473_2d63_6867;

/// The database's clock in Unix milliseconds, as SQL: the one clock changes are stamped on.
macro_rules! db_now_ms {
    () => {
        "(extract(epoch FROM clock_timestamp()) * 1000)::bigint"
    };
}

/// The number the next change takes, read (not taken) under the change lock: the sequence moves
/// only once the write is certain ([`WriteTx::announce`]), so a write that changes nothing
/// leaves no gap, and a gap a listener sees really means a missed announcement.
macro_rules! next_seq {
    () => {
        "SELECT CASE WHEN is_called THEN last_value + 1 ELSE last_value END AS seq
             FROM revocation_change_seq"
    };
}

/// A write transaction holding the change lock, and its turn to write.
pub(super) struct PgWrite<'a> {
    store: &'a PostgresStore,
    session: Session,
    _turn: tokio::sync::OwnedSemaphorePermit,
}

impl PgWrite<'_> {
    async fn conn(&mut self) -> Result<&mut PgConnection, StoreError> {
        self.session.conn().await
    }

    async fn raise(
        &mut self,
        user_id: &str,
        at_least: UnixMillis,
        who: &str,
    ) -> Result<Applied, StoreError> {
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
            .persistent(self.store.prepared)
            .bind(user_id)
            .bind(at_least)
            .bind(who)
            .fetch_one(self.conn().await?)
            .await?;
        Ok(match changed {
            true => Applied {
                change: Some(Change::Cutoff {
                    seq,
                    committed_ms,
                    user_id: user_id.to_owned(),
                    cutoff_ms,
                }),
                in_force: None,
            },
            false => Applied {
                change: None,
                in_force: Some((cutoff_ms, seq)),
            },
        })
    }

    async fn lift(
        &mut self,
        user_id: &str,
        now: UnixMillis,
        only_owner: Option<&str>,
        who: &str,
    ) -> Result<Applied, StoreError> {
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
        .persistent(self.store.prepared)
        .bind(user_id)
        .bind(now)
        .bind(who)
        .bind(only_owner)
        .fetch_optional(self.conn().await?)
        .await?;
        Ok(Applied {
            change: seq.map(|(seq, committed_ms)| Change::Cutoff {
                seq,
                committed_ms,
                user_id: user_id.to_owned(),
                cutoff_ms: now,
            }),
            in_force: None,
        })
    }

    async fn deny(&mut self, entry: &DenyEntry) -> Result<Applied, StoreError> {
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
        .persistent(self.store.prepared)
        .bind(entry.kind.as_str())
        .bind(&entry.id)
        .bind(entry.user_id.as_deref())
        .bind(entry.moot_after_ms)
        .fetch_optional(self.conn().await?)
        .await?;
        Ok(Applied {
            change: seq.map(|(seq, committed_ms)| Change::Denied {
                seq,
                committed_ms,
                kind: entry.kind,
                id: entry.id.clone(),
                moot_after_ms: entry.moot_after_ms,
            }),
            in_force: None,
        })
    }
}

#[async_trait]
impl WriteTx for PgWrite<'_> {
    async fn apply(&mut self, op: &WriteOp<'_>, who: &str) -> Result<Applied, StoreError> {
        match *op {
            WriteOp::RaiseCutoff { user_id, at_least } => self.raise(user_id, at_least, who).await,
            WriteOp::LiftBan {
                user_id,
                now,
                only_owner,
            } => self.lift(user_id, now, only_owner, who).await,
            WriteOp::Deny(entry) => self.deny(entry).await,
        }
    }

    async fn record_audit(&mut self, seq: ChangeSeq, row: &Audited<'_>) -> Result<(), StoreError> {
        let prepared = self.store.prepared;
        sql::record_audit::<Postgres>(self.conn().await?, prepared, seq, row).await
    }

    async fn link(
        &mut self,
        seq: ChangeSeq,
        nonce: [u8; 16],
    ) -> Result<Option<(LinkTag, LinkTag)>, StoreError> {
        let (prev, link): (Vec<u8>, Vec<u8>) = sqlx::query_as(
            "INSERT INTO change_chain (seq, prev, tag)
                 SELECT $1, p.tag, substr(sha256(p.tag || $2), 1, 16)
                     FROM (SELECT COALESCE(
                         (SELECT tag FROM change_chain ORDER BY seq DESC LIMIT 1), $3) AS tag) p
                 RETURNING prev, tag",
        )
        .persistent(self.store.prepared)
        .bind(seq)
        .bind(&nonce[..])
        .bind(&GENESIS[..])
        .fetch_one(self.conn().await?)
        .await?;
        Ok(Some((
            announcement::link_tag(&prev).unwrap_or(GENESIS),
            announcement::link_tag(&link).unwrap_or(GENESIS),
        )))
    }

    async fn fleet(&mut self) -> Result<Option<Arc<FleetKey>>, StoreError> {
        let store = self.store;
        Ok(Some(
            store
                .fleet
                .key_on(self.conn().await?, store.prepared)
                .await?,
        ))
    }

    async fn announce(
        &mut self,
        announcement: &Announcement,
        sealed: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query("SELECT setval('revocation_change_seq', $1), pg_notify($2, $3)")
            .persistent(self.store.prepared)
            .bind(announcement.change.seq())
            .bind(CHANGE_CHANNEL)
            .bind(sealed.unwrap_or_default())
            .execute(self.conn().await?)
            .await?;
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        self.session.done().await
    }

    async fn rollback(self: Box<Self>) -> Result<(), StoreError> {
        self.session.rollback().await
    }
}

#[async_trait]
impl WriteBackend for PostgresStore {
    /// A transaction that holds the change lock. Its waits are bounded by `--store-timeout`
    /// (transaction-local settings, so they are safe behind a transaction pooler too): a lock
    /// held by anyone else — a sidecar frozen mid-transaction, a role that took the advisory
    /// lock — fails the write, which the caller answers UNAVAILABLE (Revoke is idempotent).
    async fn begin(&self) -> Result<Box<dyn WriteTx + '_>, StoreError> {
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
                    return Ok(Box::new(PgWrite {
                        store: self,
                        session,
                        _turn: turn,
                    }));
                }
                Err(e) if lock_not_available(&e) && tokio::time::Instant::now() < deadline => {
                    session.rollback().await?;
                    tokio::time::sleep(LOCK_RETRY).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn committed(&self, written: Link) -> Result<bool, StoreError> {
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

    /// Whether an error means the connection, not the statement, failed: the statement's
    /// outcome is then unknown.
    fn answer_lost(&self, error: &StoreError) -> bool {
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
}

/// Whether PostgreSQL gave up waiting for a lock (`lock_timeout`).
fn lock_not_available(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03"))
}

#[async_trait]
impl RevocationLog for PostgresStore {
    async fn raise_cutoff(
        &self,
        user_id: &str,
        at_least: UnixMillis,
        audit: &Audit,
    ) -> Result<CutoffUpdate, StoreError> {
        self.pipeline
            .raise_cutoff(self, user_id, at_least, audit)
            .await
    }

    async fn lift_ban(
        &self,
        user_id: &str,
        now: UnixMillis,
        only_owner: Option<&str>,
        audit: &Audit,
    ) -> Result<Option<ChangeSeq>, StoreError> {
        self.pipeline
            .lift_ban(self, user_id, now, only_owner, audit)
            .await
    }

    async fn deny(
        &self,
        entry: &DenyEntry,
        audit: &Audit,
    ) -> Result<Option<ChangeSeq>, StoreError> {
        self.pipeline.deny(self, entry, audit).await
    }

    async fn changes_after(&self, after: ChangeSeq, limit: i64) -> Result<Vec<Change>, StoreError> {
        let mut session = self.session().await?;
        let answer = sql::changes_after(session.conn().await?, self.prepared, after, limit).await?;
        session.done().await?;
        Ok(answer)
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
        self.pipeline.last_written()
    }

    async fn load_denylist(
        &self,
        now: UnixMillis,
        sink: &mut DenySink<'_>,
    ) -> Result<ChangeSeq, StoreError> {
        // One snapshot for the watermark and the rows; its mode in the BEGIN itself (one round
        // trip: a fleet starting at once pays it a thousand times).
        let mut tx = Session::start(
            self.conn().await?,
            Some("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"),
        )
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

    async fn fleet(&self) -> Result<Option<Arc<FleetKey>>, StoreError> {
        if let Some(fleet) = self.fleet.cached() {
            return Ok(Some(fleet));
        }
        let mut session = self.session().await?;
        let fleet = self
            .fleet
            .key_on(session.conn().await?, self.prepared)
            .await?;
        session.done().await?;
        Ok(Some(fleet))
    }

    fn forget_fleet(&self) {
        self.fleet.forget();
    }
}
