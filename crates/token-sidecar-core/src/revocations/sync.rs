//! The replica: how the caches follow the store's numbered log — the first load, catch-ups,
//! authenticated announcements, and the checks that the store's history is still the one
//! applied here (a lossy failover, a restore or a re-created database is not).
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use async_trait::async_trait;

use super::{CHANGES_PAGE, MAX_OWN, OutageMode, Revocations};
use crate::store::announcement::{Announcement, Link, Rejected};
use crate::store::{
    Backend, Change, ChangeFeed, ChangeSeq, History, RevocationLog, RevocationStore, StoreError,
};

/// Where this instance stands in the store's numbered log: what it applied, the history it
/// applied it on, what it wrote itself, and when it was last in step.
pub(super) struct Replica {
    pub(super) watermark: AtomicI64,
    /// The store history's link at the last change applied whose link is known: checked
    /// against the store at every contact (see [`History::continues`]).
    pub(super) anchor: parking_lot::Mutex<Option<Link>>,
    /// This instance's own writes not yet covered by the anchor: checked likewise, so that a
    /// write the store lost in a failover is not kept in the caches (at most [`MAX_OWN`]).
    pub(super) own: parking_lot::Mutex<BTreeMap<ChangeSeq, Link>>,
    /// The newest change number this instance has seen in any form (applied, written, read).
    pub(super) seen: AtomicI64,
    /// When it was last in step, on the monotonic clock.
    pub(super) last_sync_mono_ms: AtomicI64,
    pub(super) loaded: AtomicBool,
    /// Loads run one at a time (health's and the sync task's after a forked history).
    pub(super) loading: tokio::sync::Mutex<()>,
}

impl Default for Replica {
    fn default() -> Self {
        Self {
            watermark: AtomicI64::new(0),
            anchor: parking_lot::Mutex::new(None),
            own: parking_lot::Mutex::new(BTreeMap::new()),
            seen: AtomicI64::new(0),
            last_sync_mono_ms: AtomicI64::new(i64::MIN / 2),
            loaded: AtomicBool::new(false),
            loading: tokio::sync::Mutex::new(()),
        }
    }
}

struct StoreFeed<'a>(&'a dyn RevocationStore);

#[async_trait]
impl ChangeFeed for StoreFeed<'_> {
    async fn changes_after(
        &mut self,
        after: ChangeSeq,
        limit: i64,
    ) -> Result<Vec<Change>, StoreError> {
        self.0.changes_after(after, limit).await
    }

    async fn history_and_changes(
        &mut self,
        at: ChangeSeq,
        own: &[ChangeSeq],
        after: ChangeSeq,
        limit: i64,
    ) -> Result<(Option<History>, Vec<Change>), StoreError> {
        if !self.0.is_shared() {
            // No chain to check: the changes alone.
            return Ok((None, self.0.changes_after(after, limit).await?));
        }
        self.0.history_and_changes(at, own, after, limit).await
    }
}

impl Revocations {
    /// Applies an authenticated announcement that continues the watermark (the sequencer put
    /// it in order), unless it is on another history than the one applied here: its `prev` is
    /// not the link of the change before it. Moving the watermark counts as being in step
    /// (SPEC §10) when `in_step` says the channel is live.
    pub async fn apply_announced(
        &self,
        announcement: &Announcement,
        in_step: bool,
    ) -> Result<(), Rejected> {
        let seq = announcement.change.seq();
        {
            let anchor = self.replica.anchor.lock();
            if let Some(anchor) = *anchor
                && anchor.seq + 1 == seq
                && anchor.tag != announcement.prev
            {
                return Err(Rejected::OtherHistory);
            }
        }
        let before = self.watermark();
        self.apply(&announcement.change).await;
        if seq > before {
            self.tail
                .announced(&announcement.change, announcement.link());
            let mut anchor = self.replica.anchor.lock();
            if anchor.is_none_or(|a| a.seq < seq) {
                *anchor = Some(announcement.link());
            }
            drop(anchor);
            if in_step {
                self.mark_synced();
            }
        }
        Ok(())
    }

    /// Remembers that the store had the change behind a cached read: a store whose history
    /// ends before it, or has another change there, at the next contact has lost it, and the
    /// caches must be reloaded. What the anchor covers needs no note (the chain vouches for
    /// every change before a link).
    pub(super) fn seen(&self, record: &crate::store::CutoffRecord) {
        self.replica.seen.fetch_max(record.seq, Ordering::AcqRel);
        let anchored = self.replica.anchor.lock().map_or(0, |a| a.seq);
        if let Some(tag) = record.link
            && record.seq > anchored
        {
            self.note(Link {
                seq: record.seq,
                tag,
            });
        }
    }

    /// The newest change number this instance has met in any form.
    pub(super) fn newest_seen(&self) -> ChangeSeq {
        self.replica
            .seen
            .load(Ordering::Acquire)
            .max(self.watermark())
    }

    pub(super) fn note(&self, link: Link) {
        let mut known = self.replica.own.lock();
        // A number met twice is kept as first met: the check then finds the store's history
        // changed under it.
        known.entry(link.seq).or_insert(link);
        if known.len() > MAX_OWN {
            known.pop_first();
        }
    }

    /// Remembers the store's newest change written by this process, to check it is still in
    /// the store's history at the next contact.
    pub(super) fn wrote(&self) {
        if let Some(link) = self.store.last_written() {
            self.replica.seen.fetch_max(link.seq, Ordering::AcqRel);
            self.note(link);
        }
    }

    /// Forgets everything this instance applied, after the store was found on another history
    /// than the one applied (a lossy failover, a restore): not loaded (so not serving) until
    /// [`Revocations::load`] reads it all again, as at start. Sequence-guarded caches would
    /// otherwise refuse the new history's changes under numbers already seen.
    pub(super) fn forget_history(&self) {
        self.replica.loaded.store(false, Ordering::Release);
        self.replica.watermark.store(0, Ordering::Release);
        *self.replica.anchor.lock() = None;
        self.replica.own.lock().clear();
        self.tail.clear();
        self.replica.seen.store(0, Ordering::Release);
        self.replica
            .last_sync_mono_ms
            .store(i64::MIN / 2, Ordering::Release);
        if let Some(cache) = &self.cutoffs {
            cache.clear();
        }
        if let Some(filter) = &self.denylist {
            filter.clear_confirmed();
        }
        self.store.forget_fleet();
        self.metrics.sync.forks.inc();
        self.metrics.sync.watermark.set(0);
    }

    pub(super) fn mark_synced(&self) {
        let now = self.clock.monotonic_ms();
        self.replica
            .last_sync_mono_ms
            .fetch_max(now, Ordering::AcqRel);
        self.metrics.sync.lag_ms.set(0);
    }

    /// Publishes the current sync lag (for the metrics endpoint).
    pub fn observe_lag(&self) {
        self.metrics.sync.lag_ms.set(self.sync_age_ms().max(0));
    }

    /// Where the store's history stands (a query only on a store other instances share).
    pub(super) async fn history(&self) -> Result<Option<History>, StoreError> {
        if !self.store.is_shared() {
            return Ok(None);
        }
        self.store.history(0, &[]).await
    }

    /// Loads the denylist filter from the store and starts the change feed at its snapshot.
    ///
    /// Only this first load may move the watermark without applying changes: nothing is served
    /// (and so nothing is cached) before it, so every change up to the snapshot is reflected in
    /// the filter or will be read from the store on the first cutoff miss.
    pub async fn load(&self) -> Result<(), StoreError> {
        let _one_at_a_time = self.replica.loading.lock().await;
        if self.is_loaded() {
            return self.catch_up().await.map(|_| ());
        }
        // Announcements are opened with the fleet key: a role that cannot read it must not
        // serve as if in step.
        self.store.fleet().await?;
        // Read before the snapshot: every change up to its newest link is in the snapshot.
        let history = self.history().await?;
        let snapshot = match &self.denylist {
            Some(filter) => {
                let snapshot = self.rebuild_filter(filter).await?;
                if filter.is_overfull() {
                    // More live rows than `--denylist-expected-items`: sized by what it now
                    // knows at once, not at the next purge tick (an overfull filter answers
                    // "maybe" to nearly everything, and every Verify would ask the store).
                    self.rebuild_filter(filter).await?.max(snapshot)
                } else {
                    snapshot
                }
            }
            None => self.snapshot_watermark().await?,
        };
        let newest = history.and_then(|h| h.newest);
        *self.replica.anchor.lock() = newest;
        self.replica.watermark.fetch_max(snapshot, Ordering::AcqRel);
        if self.store.is_shared() {
            self.tail.start_at(self.watermark(), newest);
        }
        self.metrics.sync.watermark.set(self.watermark());
        self.replica.loaded.store(true, Ordering::Release);
        self.mark_synced();
        // Anything committed between the snapshot and now. The snapshot is loaded either way:
        // if this read fails (a full database), the sync task's next poll brings it, within the
        // staleness bound like any missed poll.
        if let Err(e) = self.catch_up().await {
            tracing::warn!(error = %e, "loaded; the changes since the snapshot come with the next poll");
        }
        Ok(())
    }

    pub(super) async fn snapshot_watermark(&self) -> Result<ChangeSeq, StoreError> {
        let now = self.clock.now_ms();
        self.store.load_denylist(now, &mut |_, _, _| {}).await
    }

    /// Applies every committed change after the watermark; marks the instance in sync.
    pub async fn catch_up(&self) -> Result<usize, StoreError> {
        self.catch_up_from(&mut StoreFeed(self.store.inner().as_ref()))
            .await
    }

    /// [`Revocations::catch_up`], reading the changes from `feed`.
    ///
    /// First it checks that the store's history is the one applied here; if not, the instance
    /// forgets what it applied and answers [`StoreError::Forked`]: the caller reloads.
    pub async fn catch_up_from(&self, feed: &mut dyn ChangeFeed) -> Result<usize, StoreError> {
        // What this instance knows is read before the store is asked: a write that commits
        // while the question is in flight is not in the store's answer.
        let watermark = self.watermark();
        let seen = self.replica.seen.load(Ordering::Acquire);
        let anchor = *self.replica.anchor.lock();
        let own: Vec<Link> = self.replica.own.lock().values().copied().collect();
        let own_seqs: Vec<ChangeSeq> = own.iter().map(|o| o.seq).collect();
        let first = feed.history_and_changes(
            anchor.map_or(0, |a| a.seq),
            &own_seqs,
            watermark,
            CHANGES_PAGE,
        );
        let (history, first) = self.store.query("changes", first).await?;
        if let Some(history) = &history
            && !history.continues(watermark.max(seen), anchor, &own)
        {
            tracing::error!(
                applied_up_to = watermark,
                store_head = history.head,
                "the store's history is not the one this instance applied (a lossy failover, a \
                 restore or a re-created database): reloading everything from the store"
            );
            self.forget_history();
            return Err(StoreError::Forked);
        }
        let mut applied = 0;
        // What the tail gets (only a shared store's changes are fed to proxy filters).
        let mut pages: Vec<Change> = Vec::new();
        let mut first = Some(first);
        loop {
            let page = match first.take() {
                Some(page) => page,
                None => {
                    let watermark = self.watermark();
                    self.store
                        .query("changes", feed.changes_after(watermark, CHANGES_PAGE))
                        .await?
                }
            };
            let full = page.len() as i64 == CHANGES_PAGE;
            for change in &page {
                self.apply(change).await;
            }
            applied += page.len();
            if history.is_some() {
                pages.extend(page);
            }
            if !full {
                break;
            }
        }
        if let Some(history) = history {
            self.tail
                .caught_up(watermark, &pages, history.head, history.newest);
            // Everything up to the head read before the pages is applied, including numbers
            // whose rows were superseded or purged since.
            self.replica
                .watermark
                .fetch_max(history.head, Ordering::AcqRel);
            self.metrics.sync.watermark.set(self.watermark());
            let mut anchor = self.replica.anchor.lock();
            if let Some(newest) = history.newest
                && anchor.is_none_or(|a| a.seq <= newest.seq)
            {
                *anchor = Some(newest);
            }
            // Own writes the store showed are part of what the anchor vouches for now.
            let covered = anchor.map_or(0, |a| a.seq);
            let mut own = self.replica.own.lock();
            own.retain(|seq, _| *seq > covered);
        }
        self.mark_synced();
        Ok(applied)
    }

    /// Applies one committed change to the caches; the first time a change moves the watermark,
    /// its commit-to-applied time is observed.
    pub async fn apply(&self, change: &Change) {
        match change {
            Change::Cutoff {
                seq,
                user_id,
                cutoff_ms,
                ..
            } => {
                if let Some(cache) = &self.cutoffs {
                    cache.apply(user_id, *cutoff_ms, *seq).await;
                }
            }
            Change::Denied {
                kind,
                id,
                moot_after_ms,
                ..
            } => {
                if let Some(filter) = &self.denylist {
                    filter.insert(*kind, id, *moot_after_ms).await;
                    self.filter_inserted(filter);
                }
            }
        }
        let seq = change.seq();
        let before = self.replica.watermark.fetch_max(seq, Ordering::AcqRel);
        self.metrics.sync.watermark.set(self.watermark());
        self.metrics.sync.changes.inc();
        if before < seq && change.committed_ms() > 0 {
            // Both on the fleet's clock: the writer's database stamped the commit.
            let took_ms = self
                .clock
                .now_ms()
                .saturating_sub(change.committed_ms())
                .max(0);
            self.metrics
                .sync
                .propagation
                .observe(std::time::Duration::from_millis(took_ms.unsigned_abs()).as_secs_f64());
        }
    }

    /// Whether the caches may no longer be trusted: another instance may have written since
    /// the last sync. Measured on the monotonic clock (a step of the wall clock neither
    /// shortens nor stretches it). A store no other instance writes is never stale.
    pub(super) fn is_stale(&self) -> bool {
        if !self.store.is_shared() {
            return false;
        }
        let max = i64::try_from(self.settings.max_staleness.as_millis()).unwrap_or(i64::MAX);
        self.sync_age_ms() > max
    }

    pub(super) fn sync_age_ms(&self) -> i64 {
        self.clock
            .monotonic_ms()
            .saturating_sub(self.replica.last_sync_mono_ms.load(Ordering::Acquire))
    }

    /// Whether this instance can answer (for health).
    pub fn can_answer(&self) -> bool {
        self.is_loaded() && (!self.is_stale() || self.settings.on_outage == OutageMode::ServeStale)
    }
}
