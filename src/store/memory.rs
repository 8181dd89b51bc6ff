//! An in-memory store with the semantics of the SQL ones (one change sequence, "changes after
//! N" returning rows' current state, snapshots), for model tests of the caches and their sync.
//! It can commit queued writes while a snapshot is being read, as another instance would.
use parking_lot::Mutex;
use std::collections::HashMap;

use async_trait::async_trait;

use super::{
    Change, ChangeSeq, CutoffRecord, CutoffUpdate, DenyEntry, DenyKind, DenySink, Purged,
    RevocationStore, Rotation, RotationOutcome, StoreError, Superseded,
};
use crate::clock::UnixMillis;

/// A write made by an instance the test does not model.
#[derive(Debug, Clone)]
pub enum ForeignWrite {
    /// `C := max(C, at_least)`.
    RaiseCutoff(String, UnixMillis),
    /// `C := now` if `C > now`.
    LiftBan(String, UnixMillis),
    /// A denylist row.
    Deny(DenyEntry),
}

#[derive(Default)]
struct State {
    seq: ChangeSeq,
    cutoffs: HashMap<String, (UnixMillis, ChangeSeq)>,
    denylist: HashMap<(DenyKind, String), (UnixMillis, ChangeSeq)>,
    heads: HashMap<String, Superseded>,
    during_next_snapshot: Vec<ForeignWrite>,
}

impl State {
    fn raise_cutoff(&mut self, user_id: &str, at_least: UnixMillis) -> CutoffUpdate {
        match self.cutoffs.get(user_id) {
            Some(&(cutoff_ms, seq)) if cutoff_ms >= at_least => CutoffUpdate {
                cutoff_ms,
                seq,
                changed: false,
            },
            _ => {
                self.seq += 1;
                self.cutoffs
                    .insert(user_id.to_owned(), (at_least, self.seq));
                CutoffUpdate {
                    cutoff_ms: at_least,
                    seq: self.seq,
                    changed: true,
                }
            }
        }
    }

    fn lift_ban(&mut self, user_id: &str, now: UnixMillis) -> Option<ChangeSeq> {
        let row = self.cutoffs.get_mut(user_id)?;
        if row.0 <= now {
            return None;
        }
        self.seq += 1;
        *row = (now, self.seq);
        Some(self.seq)
    }

    fn deny(&mut self, entry: &DenyEntry) -> Option<ChangeSeq> {
        let key = (entry.kind, entry.id.clone());
        if self.denylist.contains_key(&key) {
            return None;
        }
        self.seq += 1;
        self.denylist.insert(key, (entry.moot_after_ms, self.seq));
        Some(self.seq)
    }

    fn commit(&mut self, write: &ForeignWrite) {
        match write {
            ForeignWrite::RaiseCutoff(user, at_least) => {
                self.raise_cutoff(user, *at_least);
            }
            ForeignWrite::LiftBan(user, now) => {
                self.lift_ban(user, *now);
            }
            ForeignWrite::Deny(entry) => {
                self.deny(entry);
            }
        }
    }
}

/// The store double.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

impl MemoryStore {
    fn state(&self) -> parking_lot::MutexGuard<'_, State> {
        self.state.lock()
    }

    /// Commits a write now.
    pub fn commit(&self, write: &ForeignWrite) {
        self.state().commit(write);
    }

    /// Commits `write` while the next snapshot is read: after the snapshot, before it returns.
    pub fn commit_during_next_snapshot(&self, write: ForeignWrite) {
        self.state().during_next_snapshot.push(write);
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
impl RevocationStore for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn is_shared(&self) -> bool {
        true
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn cutoff(&self, user_id: &str) -> Result<CutoffRecord, StoreError> {
        Ok(match self.state().cutoffs.get(user_id) {
            Some(&(cutoff, seq)) => CutoffRecord {
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
        Ok(self.state().raise_cutoff(user_id, at_least))
    }

    async fn lift_ban(
        &self,
        user_id: &str,
        now: UnixMillis,
    ) -> Result<Option<ChangeSeq>, StoreError> {
        Ok(self.state().lift_ban(user_id, now))
    }

    async fn is_denied(&self, kind: DenyKind, id: &str) -> Result<bool, StoreError> {
        Ok(self.state().denylist.contains_key(&(kind, id.to_owned())))
    }

    async fn deny(&self, entry: &DenyEntry) -> Result<Option<ChangeSeq>, StoreError> {
        Ok(self.state().deny(entry))
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

    async fn purge(
        &self,
        now: UnixMillis,
        cutoffs_before: UnixMillis,
    ) -> Result<Purged, StoreError> {
        let mut state = self.state();
        let (rows, users) = (state.denylist.len(), state.cutoffs.len());
        state.denylist.retain(|_, (moot, _)| *moot >= now);
        state
            .cutoffs
            .retain(|_, (cutoff, _)| *cutoff >= cutoffs_before);
        Ok(Purged {
            denylist: (rows - state.denylist.len()) as u64,
            cutoffs: (users - state.cutoffs.len()) as u64,
        })
    }
}
