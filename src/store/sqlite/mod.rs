//! The embedded SQLite store: single instance, for trying the sidecar out and local development.
//!
//! One process owns the file (SPEC §6): it holds an exclusive lock on `<file>.lock` (which names
//! its process id) for its life, so a second process — another `cargo run`, a restarted pod on
//! the same volume — refuses to start instead of writing revocations the first never sees. The
//! file's identity is checked before every write and by health: deleted or replaced under the
//! running process, it turns NOT_SERVING and writes are refused (they would land in a file no
//! one will read again).
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool};

use super::announcement::{Announcement, FleetKey, Link};
use super::pipeline::{Applied, Audited, Pipeline, WriteBackend, WriteOp, WriteTx};
use super::{
    Audit, AuditLog, AuditQuery, AuditRecord, Backend, Change, ChangeSeq, CutoffRecord,
    CutoffUpdate, DenyEntry, DenyKind, DenySink, EventLedger, LinkTag, Maintenance, PurgeHorizon,
    Purged, RevocationLog, RevocationReads, Rotation, RotationOutcome, SessionHeads, StoreError,
    sql,
};
use crate::clock::{UnixMillis, wall_ms};

mod owner;

use owner::Owner;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

type Session = sql::Session<sqlx::pool::PoolConnection<Sqlite>>;

/// Cutoffs and denylist in one SQLite file.
pub struct SqliteStore {
    pool: SqlitePool,
    /// None for an in-memory database.
    owner: Option<Arc<Owner>>,
    /// The steps every write takes.
    pipeline: Pipeline,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file named by a `sqlite:` URL, as its one owner.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: an acknowledged revocation survives a power cut.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5));
        let file = options.get_filename().to_path_buf();
        let in_memory = file.as_os_str().is_empty() || file.as_os_str() == ":memory:";
        let lock = match in_memory {
            true => None,
            false => Some(Owner::claim(&file).await?),
        };
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.clone())
            .await?;
        // One connection is held for the process's life (opened after the pool's first, so
        // they never race to switch the file to WAL): SQLite deletes the write-ahead log when
        // its last connection closes, and a log that comes and goes could not be watched.
        let keeper = match lock {
            Some(_) => Some(sqlx::ConnectOptions::connect(&options).await?),
            None => None,
        };
        let owner = match lock {
            Some(lock) => {
                let mut wal = file.as_os_str().to_owned();
                wal.push("-wal");
                let wal = PathBuf::from(wal);
                Some(Arc::new(Owner {
                    _lock: lock,
                    _keeper: parking_lot::Mutex::new(keeper),
                    identity: Owner::identity_of(&file)
                        .map_err(|e| StoreError::Owner(format!("{}: {e}", file.display())))?,
                    wal_identity: parking_lot::Mutex::new(Owner::identity_of(&wal).ok()),
                    wal,
                    file,
                }))
            }
            None => None,
        };
        Ok(Self {
            pool,
            owner,
            // SQLite's busy timeout bounds the wait for the write lock; nothing else waits.
            pipeline: Pipeline::new(Duration::from_secs(5), None),
        })
    }

    /// Copies the write-ahead log into the main file before a write is acknowledged, so that
    /// an acknowledged revocation survives even the log's deletion under the running process
    /// (then a crash): the main file alone holds it. (One more sync per write: the embedded
    /// store is for one instance and development, where that is cheap.)
    async fn checkpoint(&self) -> Result<(), StoreError> {
        if self.owner.is_none() {
            return Ok(());
        }
        let (busy, _, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(FULL)")
            .fetch_one(&mut *self.pool.acquire().await?)
            .await?;
        if busy != 0 {
            // A reader held the log: the write is committed (and synced) in it, and the next
            // write's checkpoint copies it; say so rather than fail the committed write.
            tracing::debug!("the SQLite checkpoint after a write was partial (a reader held it)");
        }
        self.check_identity()
    }
}

/// A write transaction holding SQLite's write lock and the next change number (taken from the
/// counter row inside it: a write that changes nothing rolls the counter back with it).
struct SqliteWrite {
    session: Session,
    seq: ChangeSeq,
}

impl SqliteWrite {
    /// Runs a write statement numbered with this transaction's change number; whether it wrote.
    async fn wrote(
        &mut self,
        query: sqlx::query::Query<'_, Sqlite, sqlx::sqlite::SqliteArguments>,
    ) -> Result<bool, StoreError> {
        Ok(query.execute(&mut *self.session).await?.rows_affected() == 1)
    }
}

#[async_trait]
impl WriteTx for SqliteWrite {
    async fn apply(&mut self, op: &WriteOp<'_>, who: &str) -> Result<Applied, StoreError> {
        let (seq, committed_ms) = (self.seq, wall_ms());
        match *op {
            WriteOp::RaiseCutoff { user_id, at_least } => {
                let raised = self
                    .wrote(
                        sqlx::query(
                            "INSERT INTO user_cutoffs (user_id, cutoff_unix_ms, change_seq,
                                                       changed_unix_ms, set_by)
                                 VALUES (?1, ?2, ?3, ?4, ?5)
                                 ON CONFLICT (user_id) DO UPDATE
                                     SET cutoff_unix_ms = excluded.cutoff_unix_ms,
                                         change_seq = excluded.change_seq,
                                         changed_unix_ms = excluded.changed_unix_ms,
                                         set_by = excluded.set_by,
                                         updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
                                     WHERE user_cutoffs.cutoff_unix_ms < excluded.cutoff_unix_ms",
                        )
                        .bind(user_id)
                        .bind(at_least)
                        .bind(seq)
                        .bind(committed_ms)
                        .bind(who),
                    )
                    .await?;
                if raised {
                    return Ok(Applied {
                        change: Some(Change::Cutoff {
                            seq,
                            committed_ms,
                            user_id: user_id.to_owned(),
                            cutoff_ms: at_least,
                        }),
                        in_force: None,
                    });
                }
                let in_force: (i64, i64) = sqlx::query_as(
                    "SELECT cutoff_unix_ms, change_seq FROM user_cutoffs WHERE user_id = ?1",
                )
                .bind(user_id)
                .fetch_one(&mut *self.session)
                .await?;
                Ok(Applied {
                    change: None,
                    in_force: Some(in_force),
                })
            }
            WriteOp::LiftBan {
                user_id,
                now,
                only_owner,
            } => {
                let lifted = self
                    .wrote(
                        sqlx::query(
                            "UPDATE user_cutoffs
                                 SET cutoff_unix_ms = ?2, change_seq = ?3, changed_unix_ms = ?4,
                                     set_by = ?5,
                                     updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
                                 WHERE user_id = ?1 AND cutoff_unix_ms > ?2
                                     AND (?6 IS NULL OR set_by = ?6)",
                        )
                        .bind(user_id)
                        .bind(now)
                        .bind(seq)
                        .bind(committed_ms)
                        .bind(who)
                        .bind(only_owner),
                    )
                    .await?;
                Ok(Applied {
                    change: lifted.then(|| Change::Cutoff {
                        seq,
                        committed_ms,
                        user_id: user_id.to_owned(),
                        cutoff_ms: now,
                    }),
                    in_force: None,
                })
            }
            WriteOp::Deny(entry) => {
                let inserted = self
                    .wrote(
                        sqlx::query(
                            "INSERT INTO denylist (kind, id, user_id, moot_after_unix_ms,
                                                   change_seq, changed_unix_ms)
                                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                                 ON CONFLICT (kind, id) DO NOTHING",
                        )
                        .bind(entry.kind.as_str())
                        .bind(&entry.id)
                        .bind(entry.user_id.as_deref())
                        .bind(entry.moot_after_ms)
                        .bind(seq)
                        .bind(committed_ms),
                    )
                    .await?;
                Ok(Applied {
                    change: inserted.then(|| Change::Denied {
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
    }

    async fn record_audit(&mut self, seq: ChangeSeq, row: &Audited<'_>) -> Result<(), StoreError> {
        sql::record_audit::<Sqlite>(&mut self.session, true, seq, row).await
    }

    /// The embedded store keeps no chain: one process owns the file, so no other instance's
    /// history can fork from its.
    async fn link(
        &mut self,
        _seq: ChangeSeq,
        _nonce: [u8; 16],
    ) -> Result<Option<(LinkTag, LinkTag)>, StoreError> {
        Ok(None)
    }

    async fn fleet(&mut self) -> Result<Option<Arc<FleetKey>>, StoreError> {
        Ok(None)
    }

    async fn announce(
        &mut self,
        _announcement: &Announcement,
        _sealed: Option<&str>,
    ) -> Result<(), StoreError> {
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
impl WriteBackend for SqliteStore {
    /// `BEGIN IMMEDIATE` takes the database's write lock at once (no deferred-upgrade
    /// deadlock); a transaction that fails closes its connection (see [`sql::Session`]), so
    /// that no later "commit" runs in a transaction SQLite already rolled back.
    async fn begin(&self) -> Result<Box<dyn WriteTx + '_>, StoreError> {
        self.check_identity()?;
        let mut session =
            Session::start(self.pool.acquire().await?, Some("BEGIN IMMEDIATE")).await?;
        let (seq,): (i64,) = sqlx::query_as(
            "UPDATE revocation_change_seq SET value = value + 1 WHERE id = 1 RETURNING value",
        )
        .fetch_one(&mut *session)
        .await?;
        Ok(Box::new(SqliteWrite { session, seq }))
    }

    async fn committed(&self, _written: Link) -> Result<bool, StoreError> {
        Ok(false)
    }

    /// One process owns the file and talks to it in-process: a COMMIT's answer is never lost
    /// on the way.
    fn answer_lost(&self, _error: &StoreError) -> bool {
        false
    }

    async fn after_commit(&self) -> Result<(), StoreError> {
        self.checkpoint().await
    }
}

#[async_trait]
impl Backend for SqliteStore {
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

    fn check_identity(&self) -> Result<(), StoreError> {
        self.owner.as_ref().map_or(Ok(()), |owner| owner.check())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.check_identity()?;
        sql::ping::<Sqlite>(&mut *self.pool.acquire().await?, true).await
    }
}

#[async_trait]
impl RevocationLog for SqliteStore {
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
}

#[async_trait]
impl RevocationReads for SqliteStore {
    async fn cutoff(&self, user_id: &str) -> Result<CutoffRecord, StoreError> {
        sql::cutoff::<Sqlite>(&mut *self.pool.acquire().await?, true, user_id).await
    }

    async fn cutoff_owner(&self, user_id: &str) -> Result<Option<String>, StoreError> {
        sql::cutoff_owner::<Sqlite>(&mut *self.pool.acquire().await?, true, user_id).await
    }

    async fn is_denied(&self, kind: DenyKind, id: &str) -> Result<bool, StoreError> {
        sql::is_denied::<Sqlite>(&mut *self.pool.acquire().await?, true, kind, id).await
    }
}

#[async_trait]
impl AuditLog for SqliteStore {
    async fn audit_trail(&self, query: AuditQuery<'_>) -> Result<Vec<AuditRecord>, StoreError> {
        sql::audit_trail::<Sqlite>(&mut *self.pool.acquire().await?, true, query).await
    }
}

#[async_trait]
impl EventLedger for SqliteStore {
    async fn remember_event(
        &self,
        source: &str,
        jti: &str,
        moot_after_ms: UnixMillis,
    ) -> Result<bool, StoreError> {
        self.check_identity()?;
        sql::remember_event::<Sqlite>(
            &mut *self.pool.acquire().await?,
            true,
            source,
            jti,
            moot_after_ms,
        )
        .await
    }

    async fn event_seen(&self, source: &str, jti: &str) -> Result<bool, StoreError> {
        sql::event_seen::<Sqlite>(&mut *self.pool.acquire().await?, true, source, jti).await
    }
}

#[async_trait]
impl SessionHeads for SqliteStore {
    async fn rotate_session(&self, rotation: &Rotation<'_>) -> Result<RotationOutcome, StoreError> {
        self.check_identity()?;
        let outcome =
            sql::rotate_with::<Sqlite>(&mut *self.pool.acquire().await?, true, rotation).await?;
        self.checkpoint().await?;
        Ok(outcome)
    }
}

#[async_trait]
impl Maintenance for SqliteStore {
    async fn purge(
        &self,
        horizon: PurgeHorizon,
        // One process owns the file: there is no fleet to share the round with.
        _round_ms: i64,
    ) -> Result<Purged, StoreError> {
        sql::purge::<Sqlite>(&mut *self.pool.acquire().await?, true, horizon).await
    }
}
