//! The one write pipeline: the steps every backend's revocation writes take, written once.
//!
//! A write takes the store's write lock and its next change number, applies its statement,
//! and — only if it changed something — records its audit row, links the change into the
//! history chain, seals the announcement for the fleet, hands it to the store's own channel and
//! commits. When the answer to COMMIT is lost, the store is asked whether the change's link is
//! in its history (a link is a digest over a random nonce: no other write has it); an answer
//! that cannot be had within `--store-timeout` is [`StoreError::OutcomeUnknown`].
//!
//! A backend supplies only its dialect and its transaction ([`WriteBackend`], [`WriteTx`]).
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::announcement::{Announcement, FleetKey, GENESIS, Link};
use super::{Audit, Change, ChangeSeq, CutoffUpdate, DenyEntry, LinkTag, StoreError};
use crate::clock::UnixMillis;

/// How long to wait between two questions "did it commit?".
const RECHECK_EVERY: Duration = Duration::from_millis(50);

/// Announcements kept for a slow receiver of [`Pipeline::subscribe`] before it loses the oldest.
const ANNOUNCED_BACKLOG: usize = 4096;

/// A write to the numbered log.
#[derive(Debug, Clone, Copy)]
pub enum WriteOp<'a> {
    /// `C := max(C, at_least)` (SPEC §4 rule 2).
    RaiseCutoff {
        /// The user.
        user_id: &'a str,
        /// The cutoff wanted at least.
        at_least: UnixMillis,
    },
    /// `C := now` if `C > now` (and, with `only_owner`, only if that is who set it).
    LiftBan {
        /// The user.
        user_id: &'a str,
        /// The fleet's time.
        now: UnixMillis,
        /// Lift only a ban this owner set.
        only_owner: Option<&'a str>,
    },
    /// A denylist row, unless it is there already.
    Deny(&'a DenyEntry),
}

/// What a backend's statement did.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    /// The change it made, numbered with the store's next number (None: it changed nothing,
    /// and the transaction is rolled back).
    pub change: Option<Change>,
    /// For [`WriteOp::RaiseCutoff`] that changed nothing: the cutoff in force and the number of
    /// the change that set it.
    pub in_force: Option<(UnixMillis, ChangeSeq)>,
}

/// What a change touched, for its audit row.
#[derive(Debug, Clone, Copy)]
pub struct Audited<'a> {
    /// Who, why, when and which action.
    pub audit: &'a Audit,
    /// The user concerned, if known.
    pub user_id: Option<&'a str>,
    /// The token or session revoked.
    pub target: Option<&'a str>,
    /// The cutoff set.
    pub until_ms: Option<UnixMillis>,
}

impl<'a> Audited<'a> {
    /// The audit row of `change`, made by `op`.
    fn of(op: &WriteOp<'a>, change: &Change, audit: &'a Audit) -> Self {
        match *op {
            WriteOp::RaiseCutoff { user_id, .. } | WriteOp::LiftBan { user_id, .. } => Self {
                audit,
                user_id: Some(user_id),
                target: None,
                until_ms: match change {
                    Change::Cutoff { cutoff_ms, .. } => Some(*cutoff_ms),
                    Change::Denied { .. } => None,
                },
            },
            WriteOp::Deny(entry) => Self {
                audit,
                user_id: entry.user_id.as_deref(),
                target: Some(&entry.id),
                until_ms: None,
            },
        }
    }
}

/// One write transaction of a backend, holding the store's write lock (so it owns the next
/// change number until it ends).
#[async_trait]
pub trait WriteTx: Send {
    /// Runs `op`'s statement; a change it makes is numbered with the store's next number, and
    /// `who` becomes the owner of a cutoff it sets.
    async fn apply(&mut self, op: &WriteOp<'_>, who: &str) -> Result<Applied, StoreError>;
    /// Writes the change's audit row.
    async fn record_audit(&mut self, seq: ChangeSeq, row: &Audited<'_>) -> Result<(), StoreError>;
    /// Appends change `seq` to the history chain, its link a digest of the previous link and
    /// `nonce`: `(previous link, its link)`. None for a store that keeps no chain.
    async fn link(
        &mut self,
        seq: ChangeSeq,
        nonce: [u8; 16],
    ) -> Result<Option<(LinkTag, LinkTag)>, StoreError>;
    /// The fleet's key, to seal the announcement with (None: no other instance listens).
    async fn fleet(&mut self) -> Result<Option<Arc<FleetKey>>, StoreError>;
    /// Makes `announcement`'s number final and hands it (sealed, when there is a fleet) to
    /// the store's own channel, delivered at commit (PostgreSQL's NOTIFY).
    async fn announce(
        &mut self,
        announcement: &Announcement,
        sealed: Option<&str>,
    ) -> Result<(), StoreError>;
    /// Commits.
    async fn commit(self: Box<Self>) -> Result<(), StoreError>;
    /// Rolls back: the write changed nothing.
    async fn rollback(self: Box<Self>) -> Result<(), StoreError>;
}

/// A backend as the pipeline uses it: how to begin a write and how to ask about one.
#[async_trait]
pub trait WriteBackend: Send + Sync {
    /// Begins a write transaction holding the store's write lock, waiting at most the store's
    /// timeout for it.
    async fn begin(&self) -> Result<Box<dyn WriteTx + '_>, StoreError>;
    /// Whether the change whose link is `written` is in the store's history (asked after the
    /// answer to its COMMIT was lost, on another connection).
    async fn committed(&self, written: Link) -> Result<bool, StoreError>;
    /// Whether `error`, from COMMIT, means its answer was lost (the transaction may have
    /// committed) rather than a refusal.
    fn answer_lost(&self, error: &StoreError) -> bool;
    /// Work after an acknowledged commit, before the write is answered (SQLite copies its
    /// write-ahead log into the main file).
    async fn after_commit(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// The write pipeline a store owns: what its writes share (the newest own write, the
/// announcements for a sync mode that carries them itself) and the bounds they keep.
pub struct Pipeline {
    /// Waits on the store: COMMIT's answer, and the re-check after it was lost.
    store_timeout: Duration,
    /// A bound on the whole write (None: the backend's own waits suffice). Past it the server
    /// went silent mid-write: the outcome is unknown.
    whole_write: Option<Duration>,
    written: parking_lot::Mutex<Option<Link>>,
    announced: broadcast::Sender<String>,
}

impl Pipeline {
    /// A pipeline whose waits on the store are bounded by `store_timeout`, and whole writes by
    /// `whole_write`.
    pub fn new(store_timeout: Duration, whole_write: Option<Duration>) -> Self {
        Self {
            store_timeout,
            whole_write,
            written: parking_lot::Mutex::new(None),
            announced: broadcast::channel(ANNOUNCED_BACKLOG).0,
        }
    }

    /// The newest change written through this pipeline, with its link (only for a store that
    /// keeps a chain).
    pub fn last_written(&self) -> Option<Link> {
        *self.written.lock()
    }

    /// Every announcement this pipeline's writes made, sealed, once committed (for a sync mode
    /// that carries them itself, such as NATS). A receiver that lags loses the oldest; it then
    /// sees a gap and catches up from the store.
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.announced.subscribe()
    }

    /// [`super::RevocationLog::raise_cutoff`] on `backend`.
    pub async fn raise_cutoff(
        &self,
        backend: &dyn WriteBackend,
        user_id: &str,
        at_least: UnixMillis,
        audit: &Audit,
    ) -> Result<CutoffUpdate, StoreError> {
        let op = WriteOp::RaiseCutoff { user_id, at_least };
        let applied = self.write(backend, op, audit).await?;
        Ok(match (applied.change, applied.in_force) {
            (Some(change), _) => CutoffUpdate {
                cutoff_ms: match change {
                    Change::Cutoff { cutoff_ms, .. } => cutoff_ms,
                    Change::Denied { .. } => at_least,
                },
                seq: change.seq(),
                changed: true,
            },
            (None, Some((cutoff_ms, seq))) => CutoffUpdate {
                cutoff_ms,
                seq,
                changed: false,
            },
            // Nothing changed and nothing is in force cannot happen (a raise of no cutoff
            // inserts one); say so rather than invent a cutoff.
            (None, None) => return Err(StoreError::Conflict),
        })
    }

    /// [`super::RevocationLog::lift_ban`] on `backend`.
    pub async fn lift_ban(
        &self,
        backend: &dyn WriteBackend,
        user_id: &str,
        now: UnixMillis,
        only_owner: Option<&str>,
        audit: &Audit,
    ) -> Result<Option<ChangeSeq>, StoreError> {
        let op = WriteOp::LiftBan {
            user_id,
            now,
            only_owner,
        };
        Ok(self
            .write(backend, op, audit)
            .await?
            .change
            .map(|c| c.seq()))
    }

    /// [`super::RevocationLog::deny`] on `backend`.
    pub async fn deny(
        &self,
        backend: &dyn WriteBackend,
        entry: &DenyEntry,
        audit: &Audit,
    ) -> Result<Option<ChangeSeq>, StoreError> {
        Ok(self
            .write(backend, WriteOp::Deny(entry), audit)
            .await?
            .change
            .map(|c| c.seq()))
    }

    /// One write, bounded as a whole: past the bound the server went silent, and the write may
    /// have committed.
    async fn write(
        &self,
        backend: &dyn WriteBackend,
        op: WriteOp<'_>,
        audit: &Audit,
    ) -> Result<Applied, StoreError> {
        match self.whole_write {
            Some(bound) => tokio::time::timeout(bound, self.steps(backend, op, audit))
                .await
                .unwrap_or(Err(StoreError::OutcomeUnknown)),
            None => self.steps(backend, op, audit).await,
        }
    }

    async fn steps(
        &self,
        backend: &dyn WriteBackend,
        op: WriteOp<'_>,
        audit: &Audit,
    ) -> Result<Applied, StoreError> {
        let mut tx = backend.begin().await?;
        let applied = tx.apply(&op, &audit.who).await?;
        let Some(change) = applied.change.clone() else {
            tx.rollback().await?;
            return Ok(applied);
        };
        let seq = change.seq();
        tx.record_audit(seq, &Audited::of(&op, &change, audit))
            .await?;
        let nonce: [u8; 16] = rand::random();
        let chain = tx.link(seq, nonce).await?;
        let fleet = tx.fleet().await?;
        let (prev, link) = chain.unwrap_or((GENESIS, GENESIS));
        let announcement = Announcement { change, prev, link };
        let sealed = fleet.map(|fleet| fleet.seal(&announcement));
        tx.announce(&announcement, sealed.as_deref()).await?;
        let written = chain.map(|_| announcement.link());
        self.commit(backend, tx, written).await?;
        backend.after_commit().await?;
        if let Some(written) = written {
            let mut newest = self.written.lock();
            if newest.is_none_or(|w| w.seq < written.seq) {
                *newest = Some(written);
            }
        }
        if let Some(sealed) = sealed {
            // No receiver (no sync mode that carries announcements itself) is not an error.
            let _ = self.announced.send(sealed);
        }
        Ok(applied)
    }

    /// Commits. When COMMIT's answer is lost (the connection broke, or no answer came within
    /// the timeout), asks the store whether the change is in its history; if it cannot tell
    /// within the timeout, the outcome is unknown (a retry of an idempotent write is safe).
    async fn commit(
        &self,
        backend: &dyn WriteBackend,
        tx: Box<dyn WriteTx + '_>,
        written: Option<Link>,
    ) -> Result<(), StoreError> {
        let answer = match tokio::time::timeout(self.store_timeout, tx.commit()).await {
            Ok(answer) => answer,
            Err(_) => Err(StoreError::Timeout("waiting for COMMIT's answer")),
        };
        match (answer, written) {
            (Err(e), Some(written)) if backend.answer_lost(&e) => {
                tracing::warn!(error = %e, "the answer to a commit was lost; asking the database");
                self.recheck(backend, written).await
            }
            (answer, _) => answer,
        }
    }

    /// Asks until `--store-timeout` whether the write whose link is `written` committed. (Not a
    /// transaction id's status: after a crash an id whose WAL was lost can be handed out again
    /// and report another transaction's commit.)
    async fn recheck(&self, backend: &dyn WriteBackend, written: Link) -> Result<(), StoreError> {
        let deadline = tokio::time::Instant::now() + self.store_timeout;
        loop {
            if matches!(backend.committed(written).await, Ok(true)) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StoreError::OutcomeUnknown);
            }
            tokio::time::sleep(RECHECK_EVERY).await;
        }
    }
}

#[cfg(test)]
#[path = "pipeline_tests.rs"]
mod tests;
