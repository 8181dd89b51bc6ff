//! `CutoffCache`: users' cutoffs (and the absence of one) in a bounded moka cache.
use std::future::Future;
use std::time::Duration;

use moka::future::Cache;
use moka::ops::compute::{CompResult, Op};

use crate::clock::UnixMillis;
use crate::model::{ChangeSeq, CutoffRecord};
use crate::store::StoreError;

/// A cached cutoff with the number of the change that set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cached {
    cutoff_ms: Option<UnixMillis>,
    seq: ChangeSeq,
}

/// Users' cutoffs; negative answers (no cutoff) are cached too.
#[derive(Clone)]
pub struct CutoffCache {
    cache: Cache<String, Cached>,
}

impl CutoffCache {
    /// A cache of at most `capacity` users whose entries live at most `ttl`.
    pub fn new(capacity: u64, ttl: Duration) -> Self {
        Self {
            cache: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
        }
    }

    /// The cached cutoff, if the user is cached (`Some(None)`: cached as having none).
    pub async fn get(&self, user_id: &str) -> Option<Option<UnixMillis>> {
        self.cache.get(user_id).await.map(|c| c.cutoff_ms)
    }

    /// The cutoff, loading it on a miss. Concurrent misses for one user run one load: loads
    /// and updates of a key are serialised by moka's per-key lock.
    pub async fn get_or_load<F, Fut>(
        &self,
        user_id: &str,
        load: F,
    ) -> Result<Option<UnixMillis>, StoreError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<CutoffRecord, StoreError>>,
    {
        let result = self
            .cache
            .entry_by_ref(user_id)
            .and_try_compute_with(|existing| async move {
                if existing.is_some() {
                    return Ok::<_, StoreError>(Op::Nop);
                }
                let record = load().await?;
                Ok(Op::Put(Cached {
                    cutoff_ms: record.cutoff_ms,
                    seq: record.seq,
                }))
            })
            .await?;
        Ok(match result {
            CompResult::Inserted(e) | CompResult::ReplacedWith(e) | CompResult::Unchanged(e) => {
                e.into_value().cutoff_ms
            }
            CompResult::Removed(_) | CompResult::StillNone(_) => None,
        })
    }

    /// Forgets one user's entry: the next read asks the store.
    pub async fn invalidate(&self, user_id: &str) {
        self.cache.invalidate(user_id).await;
    }

    /// Forgets every entry (the store's history changed under the numbers they carry).
    pub fn clear(&self) {
        self.cache.invalidate_all();
    }

    /// Records a committed change unless a newer one is cached already.
    pub async fn apply(&self, user_id: &str, cutoff_ms: UnixMillis, seq: ChangeSeq) {
        self.cache
            .entry_by_ref(user_id)
            .and_compute_with(|existing| async move {
                match existing {
                    Some(e) if e.value().seq >= seq => Op::Nop,
                    _ => Op::Put(Cached {
                        cutoff_ms: Some(cutoff_ms),
                        seq,
                    }),
                }
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn record(cutoff_ms: Option<i64>, seq: i64) -> CutoffRecord {
        CutoffRecord {
            cutoff_ms,
            seq,
            link: None,
        }
    }

    #[tokio::test]
    async fn caches_negative_answers_and_loads_once_for_concurrent_misses() {
        let cache = CutoffCache::new(100, Duration::from_secs(60));
        let loads = Arc::new(AtomicUsize::new(0));
        let tasks = (0..16).map(|_| {
            let cache = cache.clone();
            let loads = loads.clone();
            tokio::spawn(async move {
                cache
                    .get_or_load("u", || async {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::task::yield_now().await;
                        Ok(record(None, 0))
                    })
                    .await
            })
        });
        for task in tasks {
            assert_eq!(task.await.ok().and_then(Result::ok), Some(None));
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        assert_eq!(cache.get("u").await, Some(None));
    }

    #[tokio::test]
    async fn newer_changes_win_whatever_order_they_arrive_in() {
        let cache = CutoffCache::new(100, Duration::from_secs(60));
        cache.apply("u", 500, 7).await;
        cache.apply("u", 400, 5).await;
        assert_eq!(cache.get("u").await, Some(Some(500)));
        // A lift (lower value, newer number) wins.
        cache.apply("u", 100, 9).await;
        assert_eq!(cache.get("u").await, Some(Some(100)));
        // A load that read an older state does not overwrite a cached entry.
        let got = cache
            .get_or_load("u", || async { Ok(record(Some(1), 1)) })
            .await
            .ok();
        assert_eq!(got, Some(Some(100)));
    }

    #[tokio::test]
    async fn failed_loads_are_not_cached() {
        let cache = CutoffCache::new(100, Duration::from_secs(60));
        let failed = cache
            .get_or_load("u", || async { Err(StoreError::Timeout("a test's store")) })
            .await;
        assert!(failed.is_err());
        assert_eq!(cache.get("u").await, None);
    }
}
