//! An in-memory store with the semantics of the SQL ones (one change sequence, "changes after
//! N" returning rows' current state, snapshots), for model tests of the caches and their sync.
//! It can commit queued writes while a snapshot is being read, as another instance would, and
//! fail over to a replica that missed the last changes (a forked history, with its own chain).
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;

use super::announcement::{Announcement, GENESIS, Link, LinkTag};
use super::{
    Audit, AuditQuery, AuditRecord, Change, ChangeSeq, CutoffRecord, CutoffUpdate, DenyEntry,
    DenyKind, DenySink, History, PurgeHorizon, Purged, RevocationStore, Rotation, RotationOutcome,
    StoreError, Superseded,
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

#[derive(Default, Clone)]
struct State {
    seq: ChangeSeq,
    /// The history chain: each change's link (random here: only equality matters).
    links: BTreeMap<ChangeSeq, LinkTag>,
    /// Every change as it was announced, in order.
    announced: Vec<Announcement>,
    cutoffs: HashMap<String, (UnixMillis, ChangeSeq)>,
    /// Who set each cutoff in force.
    owners: HashMap<String, String>,
    denylist: HashMap<(DenyKind, String), (UnixMillis, ChangeSeq)>,
    heads: HashMap<String, Superseded>,
    audit: Vec<AuditRecord>,
    events: HashMap<(String, String), UnixMillis>,
    during_next_snapshot: Vec<ForeignWrite>,
}

impl State {
    /// Takes the next change number, with a link of its own.
    fn next(&mut self) -> ChangeSeq {
        self.seq += 1;
        self.links.insert(self.seq, rand::random());
        self.seq
    }

    /// Records how `change` (numbered by [`State::next`]) was announced.
    fn announce(&mut self, change: Change) {
        let seq = change.seq();
        let prev = self
            .links
            .range(..seq)
            .next_back()
            .map_or(GENESIS, |(_, tag)| *tag);
        let link = self.links.get(&seq).copied().unwrap_or(GENESIS);
        self.announced.push(Announcement { change, prev, link });
    }

    fn raise_cutoff(&mut self, user_id: &str, at_least: UnixMillis) -> CutoffUpdate {
        match self.cutoffs.get(user_id) {
            Some(&(cutoff_ms, seq)) if cutoff_ms >= at_least => CutoffUpdate {
                cutoff_ms,
                seq,
                changed: false,
            },
            _ => {
                let seq = self.next();
                self.cutoffs.insert(user_id.to_owned(), (at_least, seq));
                self.announce(Change::Cutoff {
                    seq,
                    committed_ms: 0,
                    user_id: user_id.to_owned(),
                    cutoff_ms: at_least,
                });
                CutoffUpdate {
                    cutoff_ms: at_least,
                    seq,
                    changed: true,
                }
            }
        }
    }

    fn lift_ban(&mut self, user_id: &str, now: UnixMillis) -> Option<ChangeSeq> {
        if self.cutoffs.get(user_id)?.0 <= now {
            return None;
        }
        let seq = self.next();
        self.cutoffs.insert(user_id.to_owned(), (now, seq));
        self.announce(Change::Cutoff {
            seq,
            committed_ms: 0,
            user_id: user_id.to_owned(),
            cutoff_ms: now,
        });
        Some(seq)
    }

    fn deny(&mut self, entry: &DenyEntry) -> Option<ChangeSeq> {
        let key = (entry.kind, entry.id.clone());
        if self.denylist.contains_key(&key) {
            return None;
        }
        let seq = self.next();
        self.denylist.insert(key, (entry.moot_after_ms, seq));
        self.announce(Change::Denied {
            seq,
            committed_ms: 0,
            kind: entry.kind,
            id: entry.id.clone(),
            moot_after_ms: entry.moot_after_ms,
        });
        Some(seq)
    }

    fn record(
        &mut self,
        audit: &Audit,
        user_id: Option<&str>,
        target: Option<&str>,
        until_ms: Option<UnixMillis>,
    ) {
        let id = self.audit.len() as i64 + 1;
        self.audit.push(AuditRecord {
            id,
            at_ms: audit.at_ms,
            action: audit.action.as_str().to_owned(),
            user_id: user_id.map(str::to_owned),
            target: target.map(str::to_owned),
            until_ms,
            who: audit.who.clone(),
            why: audit.why.clone(),
        });
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
    /// An asynchronous replica: a copy of the state as it was when last refreshed.
    replica: Mutex<Option<State>>,
    /// The newest change written through the trait (an instance's own write).
    written: Mutex<Option<Link>>,
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

    fn wrote(&self, seq: ChangeSeq) {
        let tag = self.state().links.get(&seq).copied().unwrap_or(GENESIS);
        *self.written.lock() = Some(Link { seq, tag });
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
impl RevocationStore for MemoryStore {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

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

    async fn raise_cutoff(
        &self,
        user_id: &str,
        at_least: UnixMillis,
        audit: &Audit,
    ) -> Result<CutoffUpdate, StoreError> {
        let update = {
            let mut state = self.state();
            let update = state.raise_cutoff(user_id, at_least);
            if update.changed {
                state.owners.insert(user_id.to_owned(), audit.who.clone());
                state.record(audit, Some(user_id), None, Some(update.cutoff_ms));
            }
            update
        };
        if update.changed {
            self.wrote(update.seq);
        }
        Ok(update)
    }

    async fn lift_ban(
        &self,
        user_id: &str,
        now: UnixMillis,
        only_owner: Option<&str>,
        audit: &Audit,
    ) -> Result<Option<ChangeSeq>, StoreError> {
        let lifted = {
            let mut state = self.state();
            if only_owner
                .is_some_and(|owner| state.owners.get(user_id).map(String::as_str) != Some(owner))
            {
                return Ok(None);
            }
            let lifted = state.lift_ban(user_id, now);
            if lifted.is_some() {
                state.owners.insert(user_id.to_owned(), audit.who.clone());
                state.record(audit, Some(user_id), None, Some(now));
            }
            lifted
        };
        lifted.inspect(|&seq| self.wrote(seq));
        Ok(lifted)
    }

    async fn cutoff_owner(&self, user_id: &str) -> Result<Option<String>, StoreError> {
        Ok(self.state().owners.get(user_id).cloned())
    }

    async fn is_denied(&self, kind: DenyKind, id: &str) -> Result<bool, StoreError> {
        Ok(self.state().denylist.contains_key(&(kind, id.to_owned())))
    }

    async fn deny(
        &self,
        entry: &DenyEntry,
        audit: &Audit,
    ) -> Result<Option<ChangeSeq>, StoreError> {
        let denied = {
            let mut state = self.state();
            let denied = state.deny(entry);
            if denied.is_some() {
                state.record(audit, entry.user_id.as_deref(), Some(&entry.id), None);
            }
            denied
        };
        denied.inspect(|&seq| self.wrote(seq));
        Ok(denied)
    }

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

    fn last_written(&self) -> Option<Link> {
        *self.written.lock()
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
