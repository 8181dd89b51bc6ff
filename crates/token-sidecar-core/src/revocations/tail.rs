//! The tail: the newest changes this instance applied, in number order with the links it knows,
//! kept in memory so that the change feed (`GET /revocations/changes`) is answered without the
//! store while the instance is in step (SPEC §14), and so that a long-polling reader wakes the
//! moment a change is applied.
//!
//! It covers a range of change numbers `(start, covered]`: every change the store would list in
//! that range is held (a cutoff superseded later may be held twice, as the store listed it then
//! and now; applying both ends where the store's own page would). Announcements extend it one
//! number at a time; a catch-up extends it to the head it read when the tail was contiguous with
//! the watermark it started from, and otherwise starts it anew there. A reader whose `after`
//! lies before `start`, or whose anchor the tail cannot check, is answered from the store.
use std::collections::{BTreeMap, VecDeque};

use tokio::sync::watch;

use super::FeedPage;
use crate::model::LinkTag;
use crate::store::announcement::Link;
use crate::store::{Change, ChangeSeq};

/// How many changes the tail holds: past it the oldest go, and readers that far behind read the
/// store (once, then they follow the tail).
pub const TAIL_CAPACITY: usize = 100_000;

pub(super) struct Tail {
    held: parking_lot::Mutex<Held>,
    /// The newest number covered, for long-polling readers.
    covered: watch::Sender<ChangeSeq>,
}

#[derive(Default)]
struct Held {
    start: ChangeSeq,
    covered: ChangeSeq,
    changes: VecDeque<Change>,
    /// The store history's links this instance knows in `[start, covered]`.
    links: BTreeMap<ChangeSeq, LinkTag>,
    /// Nothing covered yet (before the first load, after a fork).
    empty: bool,
}

impl Default for Tail {
    fn default() -> Self {
        Self {
            held: parking_lot::Mutex::new(Held {
                empty: true,
                ..Held::default()
            }),
            covered: watch::channel(0).0,
        }
    }
}

impl Held {
    fn reset(&mut self, at: ChangeSeq, link: Option<Link>) {
        self.start = at;
        self.covered = at;
        self.changes.clear();
        self.links.clear();
        self.empty = false;
        self.know(link);
    }

    fn know(&mut self, link: Option<Link>) {
        if let Some(link) = link
            && link.seq >= self.start
            && link.seq <= self.covered
        {
            self.links.insert(link.seq, link.tag);
        }
    }

    fn push(&mut self, change: &Change) {
        let seq = change.seq();
        if seq <= self.covered {
            return;
        }
        self.changes.push_back(change.clone());
        self.covered = seq;
        while self.changes.len() > TAIL_CAPACITY {
            if let Some(oldest) = self.changes.pop_front() {
                self.start = oldest.seq();
            }
        }
        let start = self.start;
        self.links.retain(|seq, _| *seq >= start);
    }
}

impl Tail {
    /// Forgets everything (a forked history): nothing is answered from memory until the next
    /// load or catch-up covers a range again.
    pub(super) fn clear(&self) {
        let mut held = self.held.lock();
        *held = Held {
            empty: true,
            ..Held::default()
        };
    }

    /// The first load: everything up to `at` is applied (the snapshot); `link` is the newest
    /// link the store showed.
    pub(super) fn start_at(&self, at: ChangeSeq, link: Option<Link>) {
        self.held.lock().reset(at, link);
        self.covered.send_replace(at);
    }

    /// An announced change, applied in order with its link.
    pub(super) fn announced(&self, change: &Change, link: Link) {
        let mut held = self.held.lock();
        if held.empty {
            return;
        }
        let seq = change.seq();
        if seq > held.covered + 1 {
            // A number in between never reached this instance in order: cover from here.
            held.reset(seq - 1, None);
        }
        held.push(change);
        held.know(Some(link));
        let covered = held.covered;
        drop(held);
        self.covered.send_replace(covered);
    }

    /// A catch-up that started from `from` (the watermark then) applied `pages` and read the
    /// history up to `head`, whose newest link is `newest`.
    pub(super) fn caught_up(
        &self,
        from: ChangeSeq,
        pages: &[Change],
        head: ChangeSeq,
        newest: Option<Link>,
    ) {
        let mut held = self.held.lock();
        // Contiguous up to `from` at least (announcements may have gone further meanwhile):
        // the pages bring every change after it, so the range extends to the head read.
        if held.empty || held.covered < from {
            held.reset(head, newest);
        } else {
            for change in pages {
                held.push(change);
            }
            held.covered = held.covered.max(head);
            held.know(newest);
        }
        let covered = held.covered;
        drop(held);
        self.covered.send_replace(covered);
    }

    /// Waits until a change after `after` is covered, at most `wait`.
    pub(super) async fn wait_beyond(&self, after: ChangeSeq, wait: std::time::Duration) {
        let mut covered = self.covered.subscribe();
        let _ = tokio::time::timeout(wait, covered.wait_for(|c| *c > after)).await;
    }

    /// A page of at most `limit` changes after `after` for a reader that was given `anchor` at
    /// `after`, if memory can answer it: None when the store must (a reader behind the tail,
    /// or a link the tail does not know).
    pub(super) fn page(
        &self,
        after: ChangeSeq,
        anchor: Option<LinkTag>,
        limit: usize,
    ) -> Option<FeedPage> {
        let held = self.held.lock();
        // A reader starting from 0 reads the snapshot from the store (SPEC §14), in the store's
        // fair open lane: a reader that asks for everything again and again is paced by it.
        if held.empty || after == 0 || after < held.start || after > held.covered {
            return None;
        }
        match (anchor, held.links.get(&after)) {
            // The reader followed another history than the one applied here.
            (Some(anchor), Some(known)) if anchor != *known => return Some(FeedPage::Forked),
            (Some(_), Some(_)) => {}
            _ => return None,
        }
        let mut changes: Vec<Change> = held
            .changes
            .iter()
            .filter(|c| c.seq() > after)
            .take(limit)
            .cloned()
            .collect();
        // A page ends where the tail knows the link (the reader's next anchor).
        while let Some(last) = changes.last() {
            if held.links.contains_key(&last.seq()) {
                break;
            }
            changes.pop();
        }
        let end = changes.last().map_or(after, Change::seq);
        let link = held.links.get(&end).copied();
        if changes.is_empty() && held.changes.iter().any(|c| c.seq() > after) {
            // Nothing that ends on a known link: the store answers.
            return None;
        }
        Some(FeedPage::Changes { changes, link })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(seq: ChangeSeq) -> Change {
        Change::Cutoff {
            seq,
            committed_ms: 0,
            user_id: format!("u{seq}"),
            cutoff_ms: seq,
        }
    }

    fn link(seq: ChangeSeq) -> Link {
        Link {
            seq,
            tag: [u8::try_from(seq % 250).unwrap_or(0); 16],
        }
    }

    fn seqs(page: Option<FeedPage>) -> Option<Vec<ChangeSeq>> {
        match page? {
            FeedPage::Changes { changes, .. } => Some(changes.iter().map(Change::seq).collect()),
            FeedPage::Forked => None,
        }
    }

    #[test]
    fn the_tail_answers_only_what_it_covers_and_can_check() {
        let tail = Tail::default();
        assert!(
            tail.page(1, Some(link(1).tag), 10).is_none(),
            "nothing before a load"
        );
        tail.start_at(2, Some(link(2)));
        for seq in 3..=5 {
            tail.announced(&change(seq), link(seq));
        }
        assert_eq!(
            seqs(tail.page(2, Some(link(2).tag), 10)),
            Some(vec![3, 4, 5])
        );
        assert_eq!(seqs(tail.page(3, Some(link(3).tag), 1)), Some(vec![4]));
        assert!(
            tail.page(0, None, 10).is_none(),
            "from 0: the store's snapshot"
        );
        assert!(
            tail.page(1, Some(link(1).tag), 10).is_none(),
            "behind the tail"
        );
        assert!(tail.page(3, None, 10).is_none(), "no anchor to check");
        assert!(
            matches!(tail.page(4, Some([9; 16]), 10), Some(FeedPage::Forked)),
            "another history"
        );
        // A number that never came in order: covered anew from it.
        tail.announced(&change(8), link(8));
        assert!(tail.page(5, Some(link(5).tag), 10).is_none());
        // A catch-up from where the tail stands extends it to the head it read. Its changes
        // come without their links: a page must end on a known one, so the store answers
        // those (once), and the tail what follows.
        tail.caught_up(8, &[change(9), change(10)], 11, Some(link(11)));
        assert!(tail.page(8, Some(link(8).tag), 10).is_none());
        tail.caught_up(11, &[change(12)], 12, Some(link(12)));
        assert_eq!(seqs(tail.page(11, Some(link(11).tag), 10)), Some(vec![12]));
        tail.clear();
        assert!(
            tail.page(11, Some(link(11).tag), 10).is_none(),
            "a fork forgets"
        );

        // A fresh store: the tail covers from 0, yet a reader from 0 still reads the store.
        let fresh = Tail::default();
        fresh.start_at(0, None);
        fresh.announced(&change(1), link(1));
        assert!(fresh.page(0, None, 10).is_none());
        assert_eq!(seqs(fresh.page(1, Some(link(1).tag), 10)), Some(vec![]));
    }
}
