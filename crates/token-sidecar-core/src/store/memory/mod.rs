//! The memory backend: a real store of the write pipeline (one change sequence, a history
//! chain, audit rows, "changes after N" returning rows' current state, snapshots), held in this
//! process. It serves tests (a `memory:` database URL, the store conformance suite, the model
//! test of the caches and their sync) and the Envoy filter's unit tests; nothing survives the
//! process, so it is never a production store.
//!
//! For the model test it can also act as the rest of a fleet: commit writes of instances the test
//! does not model ([`ForeignWrite`]), commit queued writes while a snapshot is read, and fail over
//! to a replica that missed the last changes (a forked history, with its own chain).
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::announcement::{Announcement, FleetKey, Link, LinkTag};
use super::pipeline::{Applied, Audited, Pipeline, WriteBackend, WriteOp, WriteTx};
use super::{
    AuditLog, AuditQuery, AuditRecord, Backend, Change, ChangeSeq, CutoffRecord, CutoffUpdate,
    DenyEntry, DenyKind, DenySink, EventLedger, History, Maintenance, PurgeHorizon, Purged,
    RevocationLog, RevocationReads, Rotation, RotationOutcome, SessionHeads, StoreError,
    Superseded,
};
use crate::clock::UnixMillis;
pub use state::ForeignWrite;
use state::State;

mod state;

/// The memory backend.
pub struct MemoryStore {
    state: Mutex<State>,
    /// Writers one at a time, as the SQL stores' write lock makes them.
    writers: Arc<tokio::sync::Mutex<()>>,
    /// An asynchronous replica: a copy of the state as it was when last refreshed.
    replica: Mutex<Option<State>>,
    /// Whether it plays a store other instances share (the model test), so that staleness and
    /// the history chain are checked as on PostgreSQL.
    shared: bool,
    pipeline: Pipeline,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            writers: Arc::default(),
            replica: Mutex::default(),
            shared: false,
            pipeline: Pipeline::new(Duration::from_secs(5), None),
        }
    }
}

/// A write transaction on a copy of the state, which replaces the state at commit unless
/// another write committed meanwhile.
struct MemoryWrite<'a> {
    store: &'a MemoryStore,
    staged: State,
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

#[async_trait]
impl WriteTx for MemoryWrite<'_> {
    async fn apply(&mut self, op: &WriteOp<'_>, who: &str) -> Result<Applied, StoreError> {
        Ok(self.staged.apply(op, who))
    }

    async fn record_audit(&mut self, _seq: ChangeSeq, row: &Audited<'_>) -> Result<(), StoreError> {
        self.staged.record(row);
        Ok(())
    }

    async fn link(
        &mut self,
        seq: ChangeSeq,
        nonce: [u8; 16],
    ) -> Result<Option<(LinkTag, LinkTag)>, StoreError> {
        Ok(Some(self.staged.link(seq, nonce)))
    }

    async fn fleet(&mut self) -> Result<Option<Arc<FleetKey>>, StoreError> {
        Ok(None)
    }

    async fn announce(
        &mut self,
        announcement: &Announcement,
        _sealed: Option<&str>,
    ) -> Result<(), StoreError> {
        self.staged.seq = announcement.change.seq();
        self.staged.announced.push(announcement.clone());
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        let mut state = self.store.state();
        if state.version != self.staged.version {
            return Err(StoreError::Conflict);
        }
        let mut staged = self.staged;
        staged.version += 1;
        // Announcements made meanwhile on another history (a failover) stay announced.
        *state = staged;
        Ok(())
    }

    async fn rollback(self: Box<Self>) -> Result<(), StoreError> {
        Ok(())
    }
}

#[async_trait]
impl WriteBackend for MemoryStore {
    async fn begin(&self) -> Result<Box<dyn WriteTx + '_>, StoreError> {
        let turn = self.writers.clone().lock_owned().await;
        let staged = self.state().clone();
        Ok(Box::new(MemoryWrite {
            store: self,
            staged,
            _turn: turn,
        }))
    }

    async fn committed(&self, written: Link) -> Result<bool, StoreError> {
        Ok(self.state().links.get(&written.seq) == Some(&written.tag))
    }

    fn answer_lost(&self, _error: &StoreError) -> bool {
        false
    }
}

impl MemoryStore {
    /// A memory store that plays one other instances share (for the model test of the sync).
    pub fn shared() -> Self {
        Self {
            shared: true,
            ..Self::default()
        }
    }

    fn state(&self) -> parking_lot::MutexGuard<'_, State> {
        self.state.lock()
    }

    /// Commits a write of another instance now.
    pub fn commit(&self, write: &ForeignWrite) {
        self.state().commit(write);
    }

    /// Commits `write` while the next snapshot is read: after the snapshot, before it returns.
    pub fn commit_during_next_snapshot(&self, write: ForeignWrite) {
        self.state().during_next_snapshot.push(write);
    }

    /// The replica catches up with the primary (it will miss what is committed after this).
    pub fn replicate(&self) {
        let state = self.state().clone();
        *self.replica.lock() = Some(state);
    }

    /// A lossy failover: the replica, which missed every change since [`Self::replicate`], is
    /// promoted (without a replica, the database is re-created empty).
    pub fn fail_over(&self) {
        let mut promoted = self.replica.lock().take().unwrap_or_default();
        let mut state = self.state();
        // What was announced stays announced: a channel may deliver it late.
        promoted.announced = std::mem::take(&mut state.announced);
        promoted.version = state.version + 1;
        *state = promoted;
    }

    /// Every announcement made so far, on any history (a failover keeps the old ones: a
    /// channel may still deliver them).
    pub fn announcement(&self, k: usize) -> Option<Announcement> {
        let state = self.state();
        let log = &state.announced;
        (!log.is_empty()).then(|| log[k % log.len()].clone())
    }

    /// Commits what still waits for a snapshot.
    pub fn flush(&self) {
        let mut state = self.state();
        for write in std::mem::take(&mut state.during_next_snapshot) {
            state.commit(&write);
        }
    }

    /// Every user's cutoff.
    pub fn cutoffs(&self) -> HashMap<String, UnixMillis> {
        let state = self.state();
        state
            .cutoffs
            .iter()
            .map(|(user, (cutoff, _))| (user.clone(), *cutoff))
            .collect()
    }

    /// Every denylist row with its moot time.
    pub fn denylist(&self) -> HashMap<(DenyKind, String), UnixMillis> {
        let state = self.state();
        state
            .denylist
            .iter()
            .map(|(key, (moot, _))| (key.clone(), *moot))
            .collect()
    }
}

#[async_trait]
impl Backend for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn is_shared(&self) -> bool {
        self.shared
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[async_trait]
impl RevocationLog for MemoryStore {
    async fn raise_cutoff(
        &self,
        user_id: &str,
        at_least: UnixMillis,
        audit: &super::Audit,
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
        audit: &super::Audit,
    ) -> Result<Option<ChangeSeq>, StoreError> {
        self.pipeline
            .lift_ban(self, user_id, now, only_owner, audit)
            .await
    }

    async fn deny(
        &self,
        entry: &DenyEntry,
        audit: &super::Audit,
    ) -> Result<Option<ChangeSeq>, StoreError> {
        self.pipeline.deny(self, entry, audit).await
    }

    fn last_written(&self) -> Option<Link> {
        self.pipeline.last_written()
    }

    async fn history(
        &self,
        at: ChangeSeq,
        own: &[ChangeSeq],
    ) -> Result<Option<History>, StoreError> {
        let state = self.state();
        Ok(Some(History {
            head: state.seq,
            newest: state
                .links
                .last_key_value()
                .map(|(&seq, &tag)| Link { seq, tag }),
            at: state.links.get(&at).copied(),
            own_at: own
                .iter()
                .filter_map(|seq| {
                    Some(Link {
                        seq: *seq,
                        tag: *state.links.get(seq)?,
                    })
                })
                .collect(),
        }))
    }

    async fn changes_after(&self, after: ChangeSeq, limit: i64) -> Result<Vec<Change>, StoreError> {
        let state = self.state();
        let cutoffs = state
            .cutoffs
            .iter()
            .filter(|(_, (_, seq))| *seq > after)
            .map(|(user, &(cutoff_ms, seq))| Change::Cutoff {
                committed_ms: 0,
                seq,
                user_id: user.clone(),
                cutoff_ms,
            });
        let denied = state
            .denylist
            .iter()
            .filter(|(_, (_, seq))| *seq > after)
            .map(|((kind, id), &(moot_after_ms, seq))| Change::Denied {
                committed_ms: 0,
                seq,
                kind: *kind,
                id: id.clone(),
                moot_after_ms,
            });
        let mut changes: Vec<Change> = cutoffs.chain(denied).collect();
        changes.sort_by_key(Change::seq);
        changes.truncate(usize::try_from(limit).unwrap_or(0));
        Ok(changes)
    }

    async fn load_denylist(
        &self,
        now: UnixMillis,
        sink: &mut DenySink<'_>,
    ) -> Result<ChangeSeq, StoreError> {
        let mut state = self.state();
        for ((kind, id), (moot, _)) in &state.denylist {
            if *moot >= now {
                sink(*kind, id, *moot);
            }
        }
        let snapshot = state.seq;
        for write in std::mem::take(&mut state.during_next_snapshot) {
            state.commit(&write);
        }
        Ok(snapshot)
    }
}

#[async_trait]
impl RevocationReads for MemoryStore {
    async fn cutoff(&self, user_id: &str) -> Result<CutoffRecord, StoreError> {
        let state = self.state();
        Ok(match state.cutoffs.get(user_id) {
            Some(&(cutoff, seq)) => CutoffRecord {
                cutoff_ms: Some(cutoff),
                seq,
                link: state.links.get(&seq).copied(),
            },
            None => CutoffRecord {
                cutoff_ms: None,
                seq: 0,
                link: None,
            },
        })
    }

    async fn cutoff_owner(&self, user_id: &str) -> Result<Option<String>, StoreError> {
        Ok(self.state().owners.get(user_id).cloned())
    }

    async fn is_denied(&self, kind: DenyKind, id: &str) -> Result<bool, StoreError> {
        Ok(self.state().denylist.contains_key(&(kind, id.to_owned())))
    }
}

#[async_trait]
impl AuditLog for MemoryStore {
    async fn audit_trail(&self, query: AuditQuery<'_>) -> Result<Vec<AuditRecord>, StoreError> {
        let state = self.state();
        Ok(state
            .audit
            .iter()
            .rev()
            .filter(|r| {
                query
                    .user_id
                    .is_none_or(|u| r.user_id.as_deref() == Some(u))
            })
            .filter(|r| query.before.is_none_or(|before| r.id < before))
            .take(usize::try_from(query.limit).unwrap_or(0))
            .cloned()
            .collect())
    }
}

#[async_trait]
impl EventLedger for MemoryStore {
    async fn remember_event(
        &self,
        source: &str,
        jti: &str,
        moot_after_ms: UnixMillis,
    ) -> Result<bool, StoreError> {
        let key = (source.to_owned(), jti.to_owned());
        let mut state = self.state();
        if state.events.contains_key(&key) {
            return Ok(false);
        }
        state.events.insert(key, moot_after_ms);
        Ok(true)
    }

    async fn event_seen(&self, source: &str, jti: &str) -> Result<bool, StoreError> {
        Ok(self
            .state()
            .events
            .contains_key(&(source.to_owned(), jti.to_owned())))
    }
}

#[async_trait]
impl SessionHeads for MemoryStore {
    async fn rotate_session(&self, rotation: &Rotation<'_>) -> Result<RotationOutcome, StoreError> {
        let mut state = self.state();
        let (parent_jti, parent_minted_ms) = match state.heads.get(rotation.session_id) {
            Some(head) if head.newest.jti != rotation.presented_jti => {
                return Ok(RotationOutcome::Superseded(head.clone()));
            }
            Some(head) => (head.newest.jti.clone(), head.newest.minted_ms),
            None => (
                rotation.presented_jti.to_owned(),
                rotation.presented_minted_ms,
            ),
        };
        let head = Superseded {
            newest: rotation.new.clone(),
            parent_jti,
            parent_minted_ms,
        };
        state.heads.insert(rotation.session_id.to_owned(), head);
        Ok(RotationOutcome::Rotated)
    }
}

#[async_trait]
impl Maintenance for MemoryStore {
    async fn purge(&self, horizon: PurgeHorizon, _round_ms: i64) -> Result<Purged, StoreError> {
        let mut state = self.state();
        let (rows, users, audit) = (state.denylist.len(), state.cutoffs.len(), state.audit.len());
        state
            .denylist
            .retain(|_, (moot, _)| *moot >= horizon.moot_before);
        state
            .cutoffs
            .retain(|_, (cutoff, _)| *cutoff >= horizon.cutoffs_before);
        state.events.retain(|_, moot| *moot >= horizon.moot_before);
        state.audit.retain(|r| r.at_ms >= horizon.audit_before);
        Ok(Purged {
            denylist: (rows - state.denylist.len()) as u64,
            cutoffs: (users - state.cutoffs.len()) as u64,
            audit: (audit - state.audit.len()) as u64,
            ran: true,
        })
    }
}
