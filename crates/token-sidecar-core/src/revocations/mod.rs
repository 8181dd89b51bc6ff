//! `Revocations`: the revocation state as the hot path sees it — the caches in front of the
//! store, kept in step with the store's change feed, with bounded staleness.
//!
//! Reads come from memory while the instance is in sync. Writes go to the store first and are
//! applied to the caches before they return, so a revocation is visible on the instance that
//! made it before its RPC answers. If the instance has not synced for longer than
//! `max_staleness`, it stops trusting its caches and asks the store; if the store cannot answer
//! either, it fails closed (UNAVAILABLE) unless serving stale answers was chosen.
//!
//! Its rooms: the cached reads and the write-through here; the replica — watermark, anchor,
//! own writes, catch-up and fork detection — in [`sync`]; the denylist filter's life in
//! [`filter`]; the proxy filters' feed pages in [`feed`], from the applied changes' [`tail`] in
//! memory while in step; the store's calls counted and traced by [`Instrumented`].
mod feed;
mod filter;
mod instrumented;
mod sync;
mod tail;

use sync::Replica;
use tail::Tail;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::Notify;

use crate::cache::{CutoffCache, DenylistFilter};
use crate::clock::{Clock, UnixMillis};
use crate::metrics::{Cache, Lookup, Metrics};
use crate::model::LinkTag;
use crate::policy::DenyStatus;
use crate::policy::PurgeHorizon;
use crate::store::{
    Audit, AuditLog, AuditQuery, AuditRecord, Change, ChangeSeq, CutoffUpdate, DenyEntry, DenyKind,
    EventLedger, Maintenance, Purged, RevocationLog, RevocationReads, RevocationStore, Rotation,
    RotationOutcome, SessionHeads, StoreError,
};
use crate::token::Claims;
pub use instrumented::Instrumented;

/// A page of the change feed, as [`Revocations::feed_page`] read it.
#[derive(Debug)]
pub enum FeedPage {
    /// The changes after the reader's position, in order.
    Changes {
        /// The changes.
        changes: Vec<Change>,
        /// The history's link at the last of them (at the reader's position when there are
        /// none): the anchor of the next page. None from a store that keeps no chain.
        link: Option<LinkTag>,
    },
    /// The store's history is not the one the reader followed: start again from 0.
    Forked,
}

/// What to do when the caches are stale and the store cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// The most links learned outside the feed (own writes, reads ahead of the anchor) kept for
/// the next check: only changes since the last catch-up are noted, so this is rarely reached.
const MAX_OWN: usize = 4096;

/// Rows fetched per page of the change feed.
const CHANGES_PAGE: i64 = 10_000;

/// The revocation state: store plus caches.
pub struct Revocations {
    /// The store, every call counted and traced.
    store: Instrumented,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    cutoffs: Option<CutoffCache>,
    denylist: Option<DenylistFilter>,
    settings: CacheSettings,
    /// Where this instance stands in the store's numbered log.
    replica: Replica,
    /// The newest changes applied, for the feed.
    tail: Tail,
    rebuild_wanted: Notify,
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
            .caches
            .filter_expected_items
            .set(settings.filter_expected_items as i64);
        metrics
            .caches
            .filter_target_fp_ppm
            .set((settings.filter_fp_rate * 1e6) as i64);
        Self {
            store: Instrumented::new(store, metrics.clone()),
            clock,
            metrics,
            cutoffs,
            denylist,
            settings,
            replica: Replica::default(),
            tail: Tail::default(),
            rebuild_wanted: Notify::new(),
        }
    }

    /// The store behind the caches.
    pub fn store(&self) -> &Arc<dyn RevocationStore> {
        self.store.inner()
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
        self.replica.loaded.load(Ordering::Acquire)
    }

    /// The last change number applied.
    pub fn watermark(&self) -> ChangeSeq {
        self.replica.watermark.load(Ordering::Acquire)
    }

    /// Rotates a session forward in the store (SPEC §11); no cache is involved.
    pub async fn rotate_session(
        &self,
        rotation: &Rotation<'_>,
    ) -> Result<RotationOutcome, StoreError> {
        self.store.rotate_session(rotation).await
    }

    /// The user's cutoff.
    pub async fn cutoff(&self, user_id: &str) -> Result<Option<UnixMillis>, StoreError> {
        let Some(cache) = &self.cutoffs else {
            return Ok(self.store.cutoff(user_id).await?.cutoff_ms);
        };
        if self.is_stale() {
            return match self.store.cutoff(user_id).await {
                Ok(record) => {
                    if let Some(cutoff) = record.cutoff_ms {
                        self.seen(&record);
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
            self.metrics.caches.lookup(Cache::Cutoff, Lookup::Hit);
            return Ok(cached);
        }
        self.metrics.caches.lookup(Cache::Cutoff, Lookup::Miss);
        cache
            .get_or_load(user_id, || async {
                let record = self.store.cutoff(user_id).await?;
                self.seen(&record);
                Ok(record)
            })
            .await
    }

    /// Whether a denylist row refuses the token `claims` describe, by any of its ids.
    pub async fn deny_status(&self, claims: &Claims) -> Result<DenyStatus, StoreError> {
        for (kind, id) in claims.deny_ids() {
            if self.is_denied(kind, id).await? {
                return Ok(DenyStatus {
                    denied_by: Some(kind),
                });
            }
        }
        Ok(DenyStatus::default())
    }

    /// Whether one token, session or identity provider session is denied.
    pub async fn is_denied(&self, kind: DenyKind, id: &str) -> Result<bool, StoreError> {
        let ask_store = || async { self.store.is_denied(kind, id).await };
        let Some(filter) = &self.denylist else {
            return ask_store().await;
        };
        let maybe = filter.might_contain(kind, id);
        if self.is_stale() {
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
            self.metrics
                .caches
                .lookup(Cache::Denylist, Lookup::Negative);
            return Ok(false);
        }
        self.metrics.caches.lookup(Cache::Denylist, Lookup::Maybe);
        filter.confirm(kind, id, ask_store).await
    }

    /// Raises the user's cutoff (rule 2) and applies it here before returning.
    pub async fn raise_cutoff(
        &self,
        user_id: &str,
        at_least: UnixMillis,
        audit: &Audit,
    ) -> Result<CutoffUpdate, StoreError> {
        let update = self.store.raise_cutoff(user_id, at_least, audit).await?;
        if update.changed {
            audit_event(audit, Some(user_id), None, Some(update.cutoff_ms));
        }
        if let Some(cache) = &self.cutoffs {
            if update.changed {
                self.wrote();
                cache.apply(user_id, update.cutoff_ms, update.seq).await;
            } else {
                // The cutoff in force was set earlier, by a change this instance may not have
                // applied: the next read asks the store (and learns that change's link).
                cache.invalidate(user_id).await;
            }
        } else if update.changed {
            self.wrote();
        }
        Ok(update)
    }

    /// Lifts a running ban (rule 2) and applies it here before returning.
    pub async fn lift_ban(
        &self,
        user_id: &str,
        now: UnixMillis,
        only_owner: Option<&str>,
        audit: &Audit,
    ) -> Result<bool, StoreError> {
        match self.store.lift_ban(user_id, now, only_owner, audit).await? {
            Some(seq) => {
                self.wrote();
                audit_event(audit, Some(user_id), None, Some(now));
                if let Some(cache) = &self.cutoffs {
                    cache.apply(user_id, now, seq).await;
                }
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Who set the user's cutoff in force (always read from the store: it is asked only by
    /// GetUserStatus and by an identity provider lifting a ban).
    pub async fn cutoff_owner(&self, user_id: &str) -> Result<Option<String>, StoreError> {
        self.store.cutoff_owner(user_id).await
    }

    /// Denylists a token or session and applies it here before returning.
    pub async fn deny(&self, entry: &DenyEntry, audit: &Audit) -> Result<bool, StoreError> {
        let stored = self.store.deny(entry, audit).await?;
        if stored.is_some() {
            self.wrote();
            audit_event(audit, entry.user_id.as_deref(), Some(&entry.id), None);
        }
        // Applied even if the row was there already: this instance may not have seen it yet.
        if let Some(filter) = &self.denylist {
            filter
                .insert(entry.kind, &entry.id, entry.moot_after_ms)
                .await;
            self.filter_inserted(filter);
        }
        Ok(stored.is_some())
    }

    /// Deletes what can no longer refuse anything (unless another instance of the fleet did
    /// within `round`), then rebuilds the filter if it pays off.
    pub async fn purge(
        &self,
        horizon: PurgeHorizon,
        round: std::time::Duration,
    ) -> Result<Purged, StoreError> {
        let round_ms = i64::try_from(round.as_millis()).unwrap_or(i64::MAX);
        let purged = self.store.purge(horizon, round_ms).await?;
        self.maintain_filter().await?;
        Ok(purged)
    }

    /// A page of the audit trail, newest first.
    pub async fn audit_trail(&self, query: AuditQuery<'_>) -> Result<Vec<AuditRecord>, StoreError> {
        self.store.audit_trail(query).await
    }

    /// Whether a security event from `source` was received already.
    pub async fn event_seen(&self, source: &str, jti: &str) -> Result<bool, StoreError> {
        self.store.event_seen(source, jti).await
    }

    /// Remembers a security event until `moot_after_ms`; false if it was remembered already.
    pub async fn remember_event(
        &self,
        source: &str,
        jti: &str,
        moot_after_ms: UnixMillis,
    ) -> Result<bool, StoreError> {
        self.store.remember_event(source, jti, moot_after_ms).await
    }
}

/// Each committed change is also one log event under the stable target `audit` (the trail's
/// copy for log pipelines; `ListChanges` reads the store's).
fn audit_event(
    audit: &Audit,
    user_id: Option<&str>,
    target: Option<&str>,
    until_ms: Option<UnixMillis>,
) {
    tracing::info!(
        target: "audit",
        action = audit.action.as_str(),
        who = %audit.who,
        why = audit.why.as_deref(),
        user_id,
        target_id = target,
        until_ms,
        at_ms = audit.at_ms,
        "change"
    );
}

#[cfg(test)]
mod tests;
