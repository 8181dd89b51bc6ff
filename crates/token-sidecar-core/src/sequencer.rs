//! Puts announced changes back in number order. Every committed change is announced once, and
//! numbers are taken without gaps (see the PostgreSQL store), so the change after the watermark
//! `W` is `W + 1`: one that arrives early waits here for the ones before it; when they do not
//! come within the gap wait, the instance catches up from the store instead.
//!
//! The look-ahead is bounded twice: at most [`MAX_PENDING`] changes wait, and a change still
//! waiting after a catch-up that did not reach it is dropped at the next one — the store did not
//! have it, so it was never committed there (another history's, or a writer's that failed), and
//! waiting for it would only repeat catch-ups.
use std::collections::BTreeMap;

use crate::model::ChangeSeq;
use crate::store::announcement::Announcement;

/// The most early changes held before giving up and catching up from the store.
const MAX_PENDING: usize = 4096;

/// Announced changes that arrived ahead of the watermark.
#[derive(Debug, Default)]
pub struct Sequencer {
    /// Each with whether a catch-up has already passed it by.
    pending: BTreeMap<ChangeSeq, (Announcement, bool)>,
}

/// What to do with an announcement.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    /// Apply these, in order: they continue the watermark.
    Apply(Vec<Announcement>),
    /// Some change before this one has not arrived: wait for it a little.
    Gap,
    /// Too many early changes: catch up from the store now.
    Overflow,
}

impl Sequencer {
    /// Takes one announced change, given the instance's watermark.
    pub fn offer(&mut self, watermark: ChangeSeq, announcement: Announcement) -> Offer {
        let seq = announcement.change.seq();
        if seq <= watermark {
            return Offer::Apply(Vec::new());
        }
        self.pending.insert(seq, (announcement, false));
        let ready = self.continuing(watermark);
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

    fn continuing(&mut self, watermark: ChangeSeq) -> Vec<Announcement> {
        let mut next = watermark;
        let mut ready = Vec::new();
        while let Some((announcement, _)) = self.pending.remove(&(next + 1)) {
            next += 1;
            ready.push(announcement);
        }
        ready
    }

    /// Whether some change is still waiting for an earlier one.
    pub fn has_gap(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Forgets everything (the instance is reloading).
    pub fn clear(&mut self) {
        self.pending.clear();
    }

    /// After a catch-up to `watermark`: forgets what it covered and what an earlier catch-up
    /// already passed by, and returns what now continues it (changes announced after the
    /// catch-up read the store).
    pub fn caught_up(&mut self, watermark: ChangeSeq) -> Vec<Announcement> {
        self.pending = self.pending.split_off(&(watermark + 1));
        let ready = self.continuing(watermark);
        self.pending.retain(|_, (_, passed)| !*passed);
        for (_, passed) in self.pending.values_mut() {
            *passed = true;
        }
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Change, DenyKind};

    fn change(seq: ChangeSeq) -> Announcement {
        Announcement {
            change: Change::Denied {
                seq,
                committed_ms: 0,
                kind: DenyKind::Token,
                id: format!("t{seq}"),
                moot_after_ms: 0,
            },
            prev: [0; 16],
            link: [0; 16],
        }
    }

    fn seq_of(a: &Announcement) -> ChangeSeq {
        a.change.seq()
    }

    fn seqs(offer: Offer) -> Vec<ChangeSeq> {
        match offer {
            Offer::Apply(changes) => changes.iter().map(seq_of).collect(),
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
        let released: Vec<_> = s.caught_up(7).iter().map(seq_of).collect();
        assert_eq!(released, [8, 9]);
        assert!(!s.has_gap());
    }

    #[test]
    fn a_change_the_store_never_had_is_dropped_at_the_second_catch_up() {
        let mut s = Sequencer::default();
        assert_eq!(s.offer(4, change(1_000_000)), Offer::Gap);
        // The store is at 4: the far-ahead number waits through one catch-up...
        assert!(s.caught_up(4).is_empty());
        assert!(s.has_gap());
        // ...one that arrives meanwhile is kept for a catch-up of its own...
        assert_eq!(s.offer(4, change(6)), Offer::Gap);
        // ...and at the next, only the one never passed by is left.
        assert!(s.caught_up(4).is_empty());
        assert!(s.has_gap(), "6 waits for its own second catch-up");
        assert!(s.caught_up(4).is_empty());
        assert!(!s.has_gap(), "nothing the store lacks waits for ever");
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
