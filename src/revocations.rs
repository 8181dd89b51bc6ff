//! `Revocations`: the revocation state as the hot path sees it — the caches in front of the
//! store, kept in step with the store's change feed, with bounded staleness.
//!
//! Reads come from memory while the instance is in sync. Writes go to the store first and are
//! applied to the caches before they return, so a revocation is visible on the instance that
//! made it before its RPC answers. If the instance has not synced for longer than
//! `max_staleness`, it stops trusting its caches and asks the store; if the store cannot answer
//! either, it fails closed (UNAVAILABLE) unless serving stale answers was chosen.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use crate::cache::{CutoffCache, DenylistFilter};
use crate::clock::{Clock, UnixMillis};
use crate::metrics::Metrics;
use crate::policy::DenyStatus;
use crate::store::{
    Change, ChangeSeq, CutoffUpdate, DenyEntry, DenyKind, Purged, RevocationStore, StoreError,
};

/// What to do when the caches are stale and the store cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutageMode {
    /// Refuse to answer (Verify returns UNAVAILABLE): no revocation is ever missed.
    FailClosed,
    /// Answer from the caches as they are (an explicit opt-in).
    ServeStale,
}

/// How the caches are sized and trusted.
#[derive(Debug, Clone, Copy)]
pub struct CacheSettings {
    /// Cutoff cache entry lifetime; zero disables the cutoff cache.
    pub cutoff_ttl: Duration,
    /// Most users in the cutoff cache.
    pub cutoff_capacity: u64,
    /// Whether the denylist filter is used (off: one query per check).
    pub denylist_filter: bool,
    /// Expected number of live denylist rows.
    pub filter_expected_items: usize,
    /// Target false-positive rate of the filter.
    pub filter_fp_rate: f64,
    /// How long without a sync before the caches are not trusted.
    pub max_staleness: Duration,
    /// Behaviour when stale and the store is down.
    pub on_outage: OutageMode,
}

/// Rows fetched per page of the change feed.
const CHANGES_PAGE: i64 = 10_000;

/// The revocation state: store plus caches.
pub struct Revocations {
    store: Arc<dyn RevocationStore>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    cutoffs: Option<CutoffCache>,
    denylist: Option<DenylistFilter>,
    settings: CacheSettings,
    watermark: AtomicI64,
    last_sync_ms: AtomicI64,
    loaded: AtomicBool,
}

impl Revocations {
    /// Caches in front of `store`; nothing is trusted until [`Revocations::load`] succeeds.
    pub fn new(
        store: Arc<dyn RevocationStore>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        settings: CacheSettings,
    ) -> Self {
        let cutoffs = (!settings.cutoff_ttl.is_zero())
            .then(|| CutoffCache::new(settings.cutoff_capacity, settings.cutoff_ttl));
        let denylist = settings.denylist_filter.then(|| {
            DenylistFilter::new(
                settings.filter_expected_items,
                settings.filter_fp_rate,
                100_000,
            )
        });
        metrics
            .filter_expected_items
            .set(settings.filter_expected_items as i64);
        metrics
            .filter_target_fp_ppm
            .set((settings.filter_fp_rate * 1e6) as i64);
        Self {
            store,
            clock,
            metrics,
            cutoffs,
            denylist,
            settings,
            watermark: AtomicI64::new(0),
            last_sync_ms: AtomicI64::new(i64::MIN / 2),
            loaded: AtomicBool::new(false),
        }
    }

    /// The store behind the caches.
    pub fn store(&self) -> &Arc<dyn RevocationStore> {
        &self.store
    }

    /// The metrics this state reports to.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The injected clock's current time.
    pub fn now_ms(&self) -> UnixMillis {
        self.clock.now_ms()
    }

    /// Whether the denylist filter has been loaded.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// The last change number applied.
    pub fn watermark(&self) -> ChangeSeq {
        self.watermark.load(Ordering::Acquire)
    }

    /// Whether the caches may no longer be trusted at `now`: another instance may have
    /// written since the last sync. A store no other instance writes is never stale.
    pub fn is_stale(&self, now: UnixMillis) -> bool {
        if !self.store.is_shared() {
            return false;
        }
        let max = i64::try_from(self.settings.max_staleness.as_millis()).unwrap_or(i64::MAX);
        now.saturating_sub(self.last_sync_ms.load(Ordering::Acquire)) > max
    }

    /// Whether this instance can answer at `now` (for health).
    pub fn can_answer(&self, now: UnixMillis) -> bool {
        self.is_loaded()
            && (!self.is_stale(now) || self.settings.on_outage == OutageMode::ServeStale)
    }

    fn mark_synced(&self) {
        let now = self.clock.now_ms();
        self.last_sync_ms.fetch_max(now, Ordering::AcqRel);
        self.metrics.sync_lag_ms.set(0);
    }

    /// Publishes the current sync lag (for the metrics endpoint).
    pub fn observe_lag(&self) {
        let lag = self
            .clock
            .now_ms()
            .saturating_sub(self.last_sync_ms.load(Ordering::Acquire));
        self.metrics.sync_lag_ms.set(lag.max(0));
    }

    async fn query<T>(
        &self,
        kind: &'static str,
        result: Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.metrics.store_query(kind);
        if result.is_err() {
            self.metrics.store_error();
        }
        result
    }

    /// Loads the denylist filter from the store and starts the change feed at its snapshot.
    pub async fn load(&self) -> Result<(), StoreError> {
        if let Some(filter) = &self.denylist {
            self.rebuild_filter(filter).await?;
        } else {
            let (watermark, _) = self.snapshot_watermark().await?;
            self.watermark.fetch_max(watermark, Ordering::AcqRel);
        }
        self.loaded.store(true, Ordering::Release);
        self.mark_synced();
        // Anything committed between the snapshot and now.
        self.catch_up().await?;
        Ok(())
    }

    async fn snapshot_watermark(&self) -> Result<(ChangeSeq, u64), StoreError> {
        let mut count = 0u64;
        let now = self.clock.now_ms();
        let watermark = self
            .store
            .load_denylist(now, &mut |_, _, _| count += 1)
            .await;
        Ok((self.query("load", watermark).await?, count))
    }

    async fn rebuild_filter(&self, filter: &DenylistFilter) -> Result<(), StoreError> {
        let mut build = filter.begin_rebuild();
        let now = self.clock.now_ms();
        let loaded = self
            .store
            .load_denylist(now, &mut |kind, id, moot| build.insert(kind, id, moot))
            .await;
        match self.query("load", loaded).await {
            Ok(watermark) => {
                filter.finish_rebuild(build);
                // Rows committed after the snapshot are applied by the change feed.
                self.watermark.fetch_max(watermark, Ordering::AcqRel);
                self.metrics.filter_rebuilds.inc();
                self.metrics.filter_items.set(filter.items() as i64);
                self.metrics.filter_bits.set(filter.bits() as i64);
                self.metrics.sync_watermark.set(self.watermark());
                Ok(())
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

    /// Applies every committed change after the watermark; marks the instance in sync.
    pub async fn catch_up(&self) -> Result<usize, StoreError> {
        let mut applied = 0;
        loop {
            let after = self.watermark();
            let page = self.store.changes_after(after, CHANGES_PAGE).await;
            let page = self.query("changes", page).await?;
            let full = page.len() as i64 == CHANGES_PAGE;
            for change in &page {
                self.apply(change).await;
            }
            applied += page.len();
            if !full {
                break;
            }
        }
        self.mark_synced();
        Ok(applied)
    }

    /// Applies one committed change to the caches.
    pub async fn apply(&self, change: &Change) {
        match change {
            Change::Cutoff {
                seq,
                user_id,
                cutoff_ms,
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
                    self.metrics.filter_items.set(filter.items() as i64);
                }
            }
        }
        let seq = change.seq();
        self.watermark.fetch_max(seq, Ordering::AcqRel);
        self.metrics.sync_watermark.set(self.watermark());
        self.metrics.sync_changes.inc();
    }

    /// The user's cutoff.
    pub async fn cutoff(&self, user_id: &str) -> Result<Option<UnixMillis>, StoreError> {
        let now = self.clock.now_ms();
        let Some(cache) = &self.cutoffs else {
            let record = self.store.cutoff(user_id).await;
            return Ok(self.query("cutoff", record).await?.cutoff_ms);
        };
        if self.is_stale(now) {
            let record = self.store.cutoff(user_id).await;
            return match self.query("cutoff", record).await {
                Ok(record) => {
                    if let Some(cutoff) = record.cutoff_ms {
                        cache.apply(user_id, cutoff, record.seq).await;
                    }
                    Ok(record.cutoff_ms)
                }
                Err(e) => match (self.settings.on_outage, cache.get(user_id).await) {
                    (OutageMode::ServeStale, Some(cached)) => Ok(cached),
                    _ => Err(e),
                },
            };
        }
        if let Some(cached) = cache.get(user_id).await {
            self.metrics.cache("cutoff", "hit");
            return Ok(cached);
        }
        self.metrics.cache("cutoff", "miss");
        cache
            .get_or_load(user_id, || async {
                let record = self.store.cutoff(user_id).await;
                self.query("cutoff", record).await
            })
            .await
    }

    /// Whether a token (`jti`) or its session (`sid`) is denied.
    pub async fn deny_status(&self, jti: &str, sid: &str) -> Result<DenyStatus, StoreError> {
        Ok(DenyStatus {
            jti: self.is_denied(DenyKind::Token, jti).await?,
            session: self.is_denied(DenyKind::Session, sid).await?,
        })
    }

    async fn is_denied(&self, kind: DenyKind, id: &str) -> Result<bool, StoreError> {
        let ask_store = || async {
            let denied = self.store.is_denied(kind, id).await;
            self.query("denied", denied).await
        };
        let Some(filter) = &self.denylist else {
            return ask_store().await;
        };
        let maybe = filter.might_contain(kind, id);
        if self.is_stale(self.clock.now_ms()) {
            return match ask_store().await {
                Ok(denied) => Ok(denied),
                Err(e) => match self.settings.on_outage {
                    OutageMode::ServeStale if !maybe => Ok(false),
                    OutageMode::ServeStale => filter.confirmed(kind, id).await.ok_or(e),
                    OutageMode::FailClosed => Err(e),
                },
            };
        }
        if !maybe {
            self.metrics.cache("denylist", "negative");
            return Ok(false);
        }
        self.metrics.cache("denylist", "maybe");
        filter.confirm(kind, id, ask_store).await
    }

    /// Raises the user's cutoff (rule 2) and applies it here before returning.
    pub async fn raise_cutoff(
        &self,
        user_id: &str,
        at_least: UnixMillis,
    ) -> Result<CutoffUpdate, StoreError> {
        let update = self.store.raise_cutoff(user_id, at_least).await;
        let update = self.query("raise_cutoff", update).await?;
        if let Some(cache) = &self.cutoffs {
            cache.apply(user_id, update.cutoff_ms, update.seq).await;
        }
        Ok(update)
    }

    /// Lifts a running ban (rule 2) and applies it here before returning.
    pub async fn lift_ban(&self, user_id: &str, now: UnixMillis) -> Result<bool, StoreError> {
        let lifted = self.store.lift_ban(user_id, now).await;
        match self.query("lift_ban", lifted).await? {
            Some(seq) => {
                if let Some(cache) = &self.cutoffs {
                    cache.apply(user_id, now, seq).await;
                }
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Denylists a token or session and applies it here before returning.
    pub async fn deny(&self, entry: &DenyEntry) -> Result<bool, StoreError> {
        let stored = self.store.deny(entry).await;
        let stored = self.query("deny", stored).await?;
        // Applied even if the row was there already: this instance may not have seen it yet.
        if let Some(filter) = &self.denylist {
            filter
                .insert(entry.kind, &entry.id, entry.moot_after_ms)
                .await;
            self.metrics.filter_items.set(filter.items() as i64);
        }
        Ok(stored.is_some())
    }

    /// Deletes what can no longer refuse anything, then rebuilds the filter if it pays off.
    pub async fn purge(&self, cutoffs_before: UnixMillis) -> Result<Purged, StoreError> {
        let now = self.clock.now_ms();
        let purged = self.store.purge(now, cutoffs_before).await;
        let purged = self.query("purge", purged).await?;
        self.maintain_filter().await?;
        Ok(purged)
    }
}
