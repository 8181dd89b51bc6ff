//! The denylist filter's life: built from a snapshot, rebuilt when enough of it is moot or it
//! outgrew its size.
use super::Revocations;
use crate::cache::DenylistFilter;
use crate::store::{ChangeSeq, RevocationLog, StoreError};

impl Revocations {
    /// Refills the filter from a snapshot of the store; returns the snapshot's last change.
    ///
    /// The watermark is deliberately left alone: the snapshot holds only denylist rows, so a
    /// cutoff committed before it but not applied yet must still come through the change feed.
    /// Denylist rows the feed brings again are already in the new filter (inserting is
    /// idempotent).
    pub(super) async fn rebuild_filter(
        &self,
        filter: &DenylistFilter,
    ) -> Result<ChangeSeq, StoreError> {
        let mut build = filter.begin_rebuild();
        let now = self.clock.now_ms();
        match self
            .store
            .load_denylist(now, &mut |kind, id, moot| build.insert(kind, id, moot))
            .await
        {
            Ok(snapshot) => {
                filter.finish_rebuild(build);
                self.metrics.caches.filter_rebuilds.inc();
                self.metrics.caches.filter_items.set(filter.items() as i64);
                self.metrics.caches.filter_bits.set(filter.bits() as i64);
                Ok(snapshot)
            }
            Err(e) => {
                filter.abort_rebuild();
                Err(e)
            }
        }
    }

    /// Rebuilds the filter if enough of it is moot (or it outgrew its size).
    pub async fn maintain_filter(&self) -> Result<bool, StoreError> {
        match &self.denylist {
            Some(filter) if filter.wants_rebuild(self.clock.now_ms()) => {
                self.rebuild_filter(filter).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Rebuilds the filter now, whether or not it would pay off (for the model test).
    #[cfg(test)]
    pub(super) async fn rebuild_filter_now(&self) -> Result<(), StoreError> {
        match &self.denylist {
            Some(filter) => self.rebuild_filter(filter).await.map(|_| ()),
            None => Ok(()),
        }
    }

    /// Resolves when the filter holds more than it was sized for, so that it is rebuilt at once
    /// rather than at the next purge: an overfull filter answers "maybe" to almost everything
    /// and every Verify would query the store.
    pub async fn filter_overfull(&self) {
        self.rebuild_wanted.notified().await;
    }

    pub(super) fn filter_inserted(&self, filter: &DenylistFilter) {
        self.metrics.caches.filter_items.set(filter.items() as i64);
        if filter.is_overfull() {
            self.rebuild_wanted.notify_one();
        }
    }
}
