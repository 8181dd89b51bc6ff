//! The memory store's state, and the writes applied to it as the SQL stores' statements do.
use std::collections::{BTreeMap, HashMap};

use crate::clock::UnixMillis;
use crate::store::announcement::{Announcement, GENESIS, LinkTag};
use crate::store::pipeline::{Applied, Audited, WriteOp};
use crate::store::{AuditRecord, Change, ChangeSeq, DenyEntry, DenyKind, Superseded};

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
pub(super) struct State {
    /// Moves with every committed write, so that a transaction knows whether another write got
    /// in since it began.
    pub(super) version: u64,
    pub(super) seq: ChangeSeq,
    /// The history chain: each change's link (random here: only equality matters).
    pub(super) links: BTreeMap<ChangeSeq, LinkTag>,
    /// Every change as it was announced, in order.
    pub(super) announced: Vec<Announcement>,
    pub(super) cutoffs: HashMap<String, (UnixMillis, ChangeSeq)>,
    /// Who set each cutoff in force.
    pub(super) owners: HashMap<String, String>,
    pub(super) denylist: HashMap<(DenyKind, String), (UnixMillis, ChangeSeq)>,
    pub(super) heads: HashMap<String, Superseded>,
    pub(super) audit: Vec<AuditRecord>,
    pub(super) events: HashMap<(String, String), UnixMillis>,
    pub(super) during_next_snapshot: Vec<ForeignWrite>,
}

impl State {
    /// Applies `op` as the SQL stores' statements do, numbering a change it makes with the next
    /// number (not taken until the write commits).
    pub(super) fn apply(&mut self, op: &WriteOp<'_>, who: &str) -> Applied {
        let seq = self.seq + 1;
        let change = match *op {
            WriteOp::RaiseCutoff { user_id, at_least } => match self.cutoffs.get(user_id) {
                Some(&(cutoff_ms, seq)) if cutoff_ms >= at_least => {
                    return Applied {
                        change: None,
                        in_force: Some((cutoff_ms, seq)),
                    };
                }
                _ => {
                    self.cutoffs.insert(user_id.to_owned(), (at_least, seq));
                    self.owners.insert(user_id.to_owned(), who.to_owned());
                    Change::Cutoff {
                        seq,
                        committed_ms: crate::clock::wall_ms(),
                        user_id: user_id.to_owned(),
                        cutoff_ms: at_least,
                    }
                }
            },
            WriteOp::LiftBan {
                user_id,
                now,
                only_owner,
            } => {
                let running = self.cutoffs.get(user_id).is_some_and(|c| c.0 > now);
                let owned = only_owner.is_none_or(|owner| {
                    self.owners.get(user_id).map(String::as_str) == Some(owner)
                });
                if !running || !owned {
                    return Applied::default();
                }
                self.cutoffs.insert(user_id.to_owned(), (now, seq));
                self.owners.insert(user_id.to_owned(), who.to_owned());
                Change::Cutoff {
                    seq,
                    committed_ms: crate::clock::wall_ms(),
                    user_id: user_id.to_owned(),
                    cutoff_ms: now,
                }
            }
            WriteOp::Deny(entry) => {
                let key = (entry.kind, entry.id.clone());
                if self.denylist.contains_key(&key) {
                    return Applied::default();
                }
                self.denylist.insert(key, (entry.moot_after_ms, seq));
                Change::Denied {
                    seq,
                    committed_ms: crate::clock::wall_ms(),
                    kind: entry.kind,
                    id: entry.id.clone(),
                    moot_after_ms: entry.moot_after_ms,
                }
            }
        };
        Applied {
            change: Some(change),
            in_force: None,
        }
    }

    /// Links change `seq` into the chain with `tag`: the previous link and this one.
    pub(super) fn link(&mut self, seq: ChangeSeq, tag: LinkTag) -> (LinkTag, LinkTag) {
        let prev = self
            .links
            .range(..seq)
            .next_back()
            .map_or(GENESIS, |(_, tag)| *tag);
        self.links.insert(seq, tag);
        (prev, tag)
    }

    pub(super) fn record(&mut self, row: &Audited<'_>) {
        let id = self.audit.len() as i64 + 1;
        self.audit.push(AuditRecord {
            id,
            at_ms: row.audit.at_ms,
            action: row.audit.action.as_str().to_owned(),
            user_id: row.user_id.map(str::to_owned),
            target: row.target.map(str::to_owned),
            until_ms: row.until_ms,
            who: row.audit.who.clone(),
            why: row.audit.why.clone(),
        });
    }

    /// A write of an instance the test does not model: committed at once, with a link and an
    /// announcement of its own.
    pub(super) fn commit(&mut self, write: &ForeignWrite) {
        let op = match write {
            ForeignWrite::RaiseCutoff(user_id, at_least) => WriteOp::RaiseCutoff {
                user_id,
                at_least: *at_least,
            },
            ForeignWrite::LiftBan(user_id, now) => WriteOp::LiftBan {
                user_id,
                now: *now,
                only_owner: None,
            },
            ForeignWrite::Deny(entry) => WriteOp::Deny(entry),
        };
        if let Some(change) = self.apply(&op, "another instance").change {
            let seq = change.seq();
            let (prev, link) = self.link(seq, rand::random());
            self.seq = seq;
            self.version += 1;
            self.announced.push(Announcement { change, prev, link });
        }
    }
}
