//! `DenylistFilter`: a bloom-style negative cache of denied tokens and sessions.
//!
//! "Not in the filter" means "not revoked", with no query. "Maybe" is confirmed against the
//! store and the answer is cached (denials are final; a false positive is remembered as such
//! until a denial of that id arrives). Entries whose rows are moot are dropped by rebuilding the
//! filter from the store; inserts made while a rebuild runs are replayed into the new filter
//! before it is swapped in, so no denial is ever missing from the filter in use.
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use std::time::Duration;

use fastbloom::AtomicBloomFilter;
use moka::future::Cache;
use moka::ops::compute::{CompResult, Op};

use crate::clock::UnixMillis;
use crate::model::DenyKind;
use crate::store::StoreError;

/// Width of the buckets that count filter entries by the time their rows become moot.
const MOOT_BUCKET_MS: i64 = crate::clock::millis_in_seconds(60 * 60);

/// What the filter hashes: the kind keeps a `jti` and a `sid` with one text apart.
fn key(kind: DenyKind, id: &str) -> (u8, &str) {
    let tag = match kind {
        DenyKind::Token => b'j',
        DenyKind::Session => b's',
        DenyKind::IdpSession => b'i',
    };
    (tag, id)
}

/// The filter currently in use and the bookkeeping that decides when to rebuild it.
struct Generation {
    bloom: Arc<AtomicBloomFilter>,
    capacity: usize,
}

/// Inserts since a rebuild started, replayed into the new filter before it is swapped in.
#[derive(Default)]
struct Writes {
    rebuilding: bool,
    pending: Vec<(DenyKind, String, UnixMillis)>,
    /// Entries per moot-time bucket (bucket start, in ms).
    moot_buckets: BTreeMap<i64, u64>,
}

/// A new filter being filled from the store.
pub struct FilterBuild {
    bloom: AtomicBloomFilter,
    capacity: usize,
    moot_buckets: BTreeMap<i64, u64>,
    items: u64,
}

impl FilterBuild {
    /// Adds one live denylist row.
    pub fn insert(&mut self, kind: DenyKind, id: &str, moot_after_ms: UnixMillis) {
        self.bloom.insert(&key(kind, id));
        *self
            .moot_buckets
            .entry(moot_after_ms.div_euclid(MOOT_BUCKET_MS))
            .or_default() += 1;
        self.items += 1;
    }
}

/// The denylist's negative cache.
pub struct DenylistFilter {
    current: RwLock<Generation>,
    writes: Mutex<Writes>,
    items: AtomicU64,
    confirmed: Cache<(DenyKind, String), bool>,
    expected_items: usize,
    fp_rate: f64,
}

impl DenylistFilter {
    /// An empty filter sized for `expected_items` at `fp_rate` false positives.
    pub fn new(expected_items: usize, fp_rate: f64, confirmed_capacity: u64) -> Self {
        let capacity = expected_items.max(1_000);
        Self {
            current: RwLock::new(Generation {
                bloom: Arc::new(Self::sized(capacity, fp_rate)),
                capacity,
            }),
            writes: Mutex::new(Writes::default()),
            items: AtomicU64::new(0),
            confirmed: Cache::builder()
                .max_capacity(confirmed_capacity)
                .time_to_live(Duration::from_secs(600))
                .build(),
            expected_items,
            fp_rate,
        }
    }

    fn sized(capacity: usize, fp_rate: f64) -> AtomicBloomFilter {
        AtomicBloomFilter::with_false_pos(fp_rate).expected_items(capacity)
    }

    fn bloom(&self) -> Arc<AtomicBloomFilter> {
        self.current.read().bloom.clone()
    }

    /// False means certainly not denied; true means "maybe".
    pub fn might_contain(&self, kind: DenyKind, id: &str) -> bool {
        let current = self.current.read();
        current.bloom.contains(&key(kind, id))
    }

    /// Records a denial (from this instance or from the change feed).
    pub async fn insert(&self, kind: DenyKind, id: &str, moot_after_ms: UnixMillis) {
        {
            let mut writes = self.writes.lock();
            self.bloom().insert(&key(kind, id));
            if writes.rebuilding {
                writes.pending.push((kind, id.to_owned(), moot_after_ms));
            }
            *writes
                .moot_buckets
                .entry(moot_after_ms.div_euclid(MOOT_BUCKET_MS))
                .or_default() += 1;
            self.items.fetch_add(1, Ordering::Relaxed);
        }
        self.confirmed
            .entry((kind, id.to_owned()))
            .and_compute_with(|_| async { Op::Put(true) })
            .await;
    }

    /// Confirms a "maybe" (the caller checked [`Self::might_contain`]): from the cache of
    /// confirmed answers, else by `load`. A denial applied meanwhile is never overwritten.
    pub async fn confirm<F, Fut>(
        &self,
        kind: DenyKind,
        id: &str,
        load: F,
    ) -> Result<bool, StoreError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<bool, StoreError>>,
    {
        let result = self
            .confirmed
            .entry((kind, id.to_owned()))
            .and_try_compute_with(|existing| async move {
                if existing.is_some() {
                    return Ok::<_, StoreError>(Op::Nop);
                }
                Ok(Op::Put(load().await?))
            })
            .await?;
        Ok(match result {
            CompResult::Inserted(e) | CompResult::ReplacedWith(e) | CompResult::Unchanged(e) => {
                e.into_value()
            }
            CompResult::Removed(_) | CompResult::StillNone(_) => false,
        })
    }

    /// A confirmed answer from memory only (for serving stale during an outage).
    pub async fn confirmed(&self, kind: DenyKind, id: &str) -> Option<bool> {
        self.confirmed.get(&(kind, id.to_owned())).await
    }

    /// Forgets the confirmed answers (the store's history changed); the filter itself is
    /// replaced by the next rebuild.
    pub fn clear_confirmed(&self) {
        self.confirmed.invalidate_all();
    }

    /// Starts a rebuild: from now on inserts are also kept for replay.
    pub fn begin_rebuild(&self) -> FilterBuild {
        let mut writes = self.writes.lock();
        writes.rebuilding = true;
        writes.pending.clear();
        let live = self.items.load(Ordering::Relaxed) as usize;
        let capacity = self.expected_items.max(live.saturating_mul(2)).max(1_000);
        FilterBuild {
            bloom: Self::sized(capacity, self.fp_rate),
            capacity,
            moot_buckets: BTreeMap::new(),
            items: 0,
        }
    }

    /// Swaps in a filled filter after replaying the inserts made meanwhile.
    pub fn finish_rebuild(&self, mut build: FilterBuild) {
        let mut writes = self.writes.lock();
        for (kind, id, moot_after_ms) in std::mem::take(&mut writes.pending) {
            build.insert(kind, &id, moot_after_ms);
        }
        writes.rebuilding = false;
        writes.moot_buckets = std::mem::take(&mut build.moot_buckets);
        self.items.store(build.items, Ordering::Relaxed);
        let mut current = self.current.write();
        *current = Generation {
            bloom: Arc::new(build.bloom),
            capacity: build.capacity,
        };
    }

    /// Abandons a rebuild (the store failed); the current filter stays complete.
    pub fn abort_rebuild(&self) {
        let mut writes = self.writes.lock();
        writes.rebuilding = false;
        writes.pending.clear();
    }

    /// Whether a rebuild would pay off at `now`: many entries are moot, or the filter holds
    /// more than it was sized for (so its false-positive rate has drifted up).
    pub fn wants_rebuild(&self, now: UnixMillis) -> bool {
        let items = self.items.load(Ordering::Relaxed);
        let moot: u64 = self
            .writes
            .lock()
            .moot_buckets
            .range(..now.div_euclid(MOOT_BUCKET_MS))
            .map(|(_, n)| n)
            .sum();
        self.is_overfull() || (moot > 0 && moot * 4 >= items)
    }

    /// Whether the filter holds more entries than it was sized for.
    pub fn is_overfull(&self) -> bool {
        let capacity = self.current.read().capacity as u64;
        self.items.load(Ordering::Relaxed) > capacity
    }

    /// Entries in the filter (moot ones included until the next rebuild).
    pub fn items(&self) -> u64 {
        self.items.load(Ordering::Relaxed)
    }

    /// Bits in the filter in use.
    pub fn bits(&self) -> usize {
        self.bloom().num_bits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn runtime() -> tokio::runtime::Runtime {
        match tokio::runtime::Builder::new_current_thread().build() {
            Ok(rt) => rt,
            Err(e) => panic!("runtime: {e}"),
        }
    }

    #[test]
    fn a_filter_for_a_million_at_one_percent_takes_about_a_megabyte() {
        let filter = DenylistFilter::new(1_000_000, 0.01, 10);
        let bytes = filter.bits() / 8;
        assert!((1_000_000..1_500_000).contains(&bytes), "{bytes} bytes");
    }

    #[test]
    fn false_positive_rate_is_near_the_target() {
        let rt = runtime();
        let filter = DenylistFilter::new(10_000, 0.01, 10);
        rt.block_on(async {
            for i in 0..10_000 {
                filter.insert(DenyKind::Token, &format!("in-{i}"), 0).await;
            }
        });
        let false_positives = (0..100_000)
            .filter(|i| filter.might_contain(DenyKind::Token, &format!("out-{i}")))
            .count();
        assert!(false_positives < 2_000, "{false_positives} of 100000");
        // A jti and a sid with the same text are different entries.
        assert!(filter.might_contain(DenyKind::Token, "in-1"));
    }

    #[test]
    fn rebuild_keeps_inserts_made_while_it_ran_and_drops_moot_entries() {
        let rt = runtime();
        let filter = DenylistFilter::new(1_000, 0.001, 10);
        rt.block_on(async {
            filter.insert(DenyKind::Token, "old", 0).await;
            let mut build = filter.begin_rebuild();
            build.insert(DenyKind::Token, "live", i64::MAX / 2);
            filter
                .insert(DenyKind::Session, "during", i64::MAX / 2)
                .await;
            filter.finish_rebuild(build);
        });
        assert!(filter.might_contain(DenyKind::Token, "live"));
        assert!(filter.might_contain(DenyKind::Session, "during"));
        assert!(!filter.might_contain(DenyKind::Token, "old"));
        assert_eq!(filter.items(), 2);
    }

    #[test]
    fn wants_a_rebuild_when_a_quarter_is_moot() {
        let rt = runtime();
        let filter = DenylistFilter::new(1_000, 0.01, 10);
        rt.block_on(async {
            for i in 0..3 {
                filter
                    .insert(DenyKind::Token, &format!("live-{i}"), 10 * MOOT_BUCKET_MS)
                    .await;
            }
            filter
                .insert(DenyKind::Token, "soon-moot", MOOT_BUCKET_MS)
                .await;
        });
        assert!(!filter.wants_rebuild(0));
        assert!(filter.wants_rebuild(3 * MOOT_BUCKET_MS));
    }

    #[test]
    fn confirmation_caches_answers_and_a_later_denial_wins() {
        let rt = runtime();
        let filter = DenylistFilter::new(1_000, 0.01, 10);
        rt.block_on(async {
            let first = filter
                .confirm(DenyKind::Token, "x", || async { Ok(false) })
                .await;
            assert!(matches!(first, Ok(false)));
            let cached = filter
                .confirm(DenyKind::Token, "x", || async {
                    Err(StoreError::Timeout("a test's store"))
                })
                .await;
            assert!(matches!(cached, Ok(false)), "answered from memory");
            filter.insert(DenyKind::Token, "x", 0).await;
            let after = filter
                .confirm(DenyKind::Token, "x", || async { Ok(false) })
                .await;
            assert!(matches!(after, Ok(true)));
        });
    }

    #[derive(Debug, Clone)]
    enum Step {
        Insert(u16, i64),
        Rebuild(Vec<bool>),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (any::<u16>(), 0i64..10).prop_map(|(id, moot)| Step::Insert(id, moot)),
            proptest::collection::vec(any::<bool>(), 0..8).prop_map(Step::Rebuild),
        ]
    }

    proptest! {
        /// The filter never says "not revoked" for a live denied id, through any sequence of
        /// inserts, expiries and rebuilds (a rebuild reloads exactly the rows still live, with
        /// some inserts racing it).
        #[test]
        fn never_a_false_negative(steps in proptest::collection::vec(step(), 1..60), now in 0i64..10) {
            let rt = runtime();
            let filter = DenylistFilter::new(64, 0.01, 10);
            let mut store: Vec<(String, i64)> = Vec::new();
            rt.block_on(async {
                for s in steps {
                    match s {
                        Step::Insert(id, moot) => {
                            let id = format!("id-{id}");
                            filter.insert(DenyKind::Token, &id, moot * MOOT_BUCKET_MS).await;
                            store.push((id, moot));
                        }
                        Step::Rebuild(racing) => {
                            let mut build = filter.begin_rebuild();
                            for (id, moot) in &store {
                                if *moot >= now {
                                    build.insert(DenyKind::Token, id, moot * MOOT_BUCKET_MS);
                                }
                            }
                            for (i, race) in racing.into_iter().enumerate() {
                                if race {
                                    let id = format!("race-{i}");
                                    filter.insert(DenyKind::Token, &id, now * MOOT_BUCKET_MS).await;
                                    store.push((id, now));
                                }
                            }
                            filter.finish_rebuild(build);
                        }
                    }
                }
            });
            for (id, moot) in &store {
                if *moot >= now {
                    prop_assert!(filter.might_contain(DenyKind::Token, id), "{} lost", id);
                }
            }
        }
    }
}
