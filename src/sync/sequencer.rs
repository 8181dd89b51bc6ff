//! Puts announced changes back in number order. Every committed change is announced once, and
//! numbers are taken without gaps (see the PostgreSQL store), so the change after the watermark
//! `W` is `W + 1`: one that arrives early waits here for the ones before it; when they do not
//! come within the gap wait, the instance catches up from the store instead.
use std::collections::BTreeMap;

use crate::store::{Change, ChangeSeq};

/// The most early changes held before giving up and catching up from the store.
const MAX_PENDING: usize = 10_000;

/// Announced changes that arrived ahead of the watermark.
#[derive(Debug, Default)]
pub struct Sequencer {
    pending: BTreeMap<ChangeSeq, Change>,
}

/// What to do with an announcement.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    /// Apply these, in order: they continue the watermark.
    Apply(Vec<Change>),
    /// Some change before this one has not arrived: wait for it a little.
    Gap,
    /// Too many early changes: catch up from the store now.
    Overflow,
}

impl Sequencer {
    /// Takes one announced change, given the instance's watermark.
    pub fn offer(&mut self, watermark: ChangeSeq, change: Change) -> Offer {
        let seq = change.seq();
        if seq <= watermark {
            return Offer::Apply(Vec::new());
        }
        self.pending.insert(seq, change);
        let mut next = watermark;
        let mut ready = Vec::new();
        while let Some(change) = self.pending.remove(&(next + 1)) {
            next += 1;
            ready.push(change);
        }
        if self.pending.len() > MAX_PENDING {
            self.pending.clear();
            return Offer::Overflow;
        }
        if ready.is_empty() {
            Offer::Gap
        } else {
            Offer::Apply(ready)
        }
    }

    /// Whether some change is still waiting for an earlier one.
    pub fn has_gap(&self) -> bool {
        !self.pending.is_empty()
    }

    /// After a catch-up to `watermark`: forgets what it covered and returns what now continues
    /// it (changes announced after the catch-up read the store).
    pub fn caught_up(&mut self, watermark: ChangeSeq) -> Vec<Change> {
        self.pending = self.pending.split_off(&(watermark + 1));
        let mut next = watermark;
        let mut ready = Vec::new();
        while let Some(change) = self.pending.remove(&(next + 1)) {
            next += 1;
            ready.push(change);
        }
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DenyKind;

    fn change(seq: ChangeSeq) -> Change {
        Change::Denied {
            seq,
            committed_ms: 0,
            kind: DenyKind::Token,
            id: format!("t{seq}"),
            moot_after_ms: 0,
        }
    }

    fn seqs(offer: Offer) -> Vec<ChangeSeq> {
        match offer {
            Offer::Apply(changes) => changes.iter().map(Change::seq).collect(),
            other => panic!("expected changes to apply, got {other:?}"),
        }
    }

    #[test]
    fn in_order_changes_apply_at_once() {
        let mut s = Sequencer::default();
        assert_eq!(seqs(s.offer(4, change(5))), [5]);
        assert_eq!(seqs(s.offer(5, change(6))), [6]);
        assert!(!s.has_gap());
    }

    #[test]
    fn what_is_already_applied_is_ignored() {
        let mut s = Sequencer::default();
        assert_eq!(seqs(s.offer(9, change(3))), Vec::<ChangeSeq>::new());
        assert!(!s.has_gap());
    }

    #[test]
    fn an_early_change_waits_for_the_ones_before_it() {
        let mut s = Sequencer::default();
        assert_eq!(s.offer(4, change(7)), Offer::Gap);
        assert_eq!(s.offer(4, change(6)), Offer::Gap);
        assert!(s.has_gap());
        assert_eq!(seqs(s.offer(4, change(5))), [5, 6, 7]);
        assert!(!s.has_gap());
    }

    #[test]
    fn a_catch_up_forgets_what_it_covered_and_releases_what_follows() {
        let mut s = Sequencer::default();
        assert_eq!(s.offer(4, change(6)), Offer::Gap);
        assert_eq!(s.offer(4, change(9)), Offer::Gap);
        assert_eq!(s.offer(4, change(8)), Offer::Gap);
        // The store had everything up to 7.
        let released: Vec<_> = s.caught_up(7).iter().map(Change::seq).collect();
        assert_eq!(released, [8, 9]);
        assert!(!s.has_gap());
    }

    #[test]
    fn too_many_early_changes_ask_for_a_catch_up() {
        let mut s = Sequencer::default();
        let mut last = Offer::Gap;
        for seq in 0..=(MAX_PENDING as i64) {
            last = s.offer(0, change(seq + 2));
        }
        assert_eq!(last, Offer::Overflow);
        assert!(!s.has_gap());
    }
}
