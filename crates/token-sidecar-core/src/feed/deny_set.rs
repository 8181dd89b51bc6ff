//! The denied ids of one kind in a proxy filter's copy, compact: 20 bytes an id, where a
//! `HashMap<String, _>` spent about 108 (SPEC §14: a million ids in a few MiB, per copy).
//!
//! An id is held as 16 bytes: a minted id's own 128 bits (exact), any other id (an identity
//! provider's session id) as a 128-bit hash keyed at random per copy. Two ids sharing 16 bytes
//! can only make the copy refuse what it would have admitted — an id is only ever added or
//! dropped once moot, never lowered — so a collision never admits a revoked token. With it, the
//! second after which the entry is moot (rounded up: kept at most a second longer, when any
//! token it refused has expired anyway).
//!
//! Most entries sit in a sorted run cut into blocks (binary search); new ones in a small map,
//! merged into the run once it holds an eighth as many, so that a load of a million costs a few
//! sorts, and a merge frees the blocks it has read as it writes the new ones.
use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::clock::UnixMillis;

/// An id as the copy holds it.
pub type Key = [u8; 16];

/// The order the run is sorted in: a key read as one little-endian number, two word compares
/// where comparing the bytes one by one cost half a load's time (any total order serves: the
/// keys are random or keyed hashes).
fn rank(key: &Key) -> u128 {
    u128::from_le_bytes(*key)
}

/// The new entries a merge waits for, at least.
const MIN_RECENT: usize = 4_096;

/// How ids become keys: their own bytes when minted, a keyed hash otherwise.
#[derive(Debug, Clone)]
pub struct Keyer {
    first: RandomState,
    second: RandomState,
    /// Every id the same key: what a collision does, for the tests.
    #[cfg(test)]
    pub(super) colliding: bool,
}

impl Default for Keyer {
    fn default() -> Self {
        Self {
            first: RandomState::new(),
            second: RandomState::new(),
            #[cfg(test)]
            colliding: false,
        }
    }
}

impl Keyer {
    /// The key of `id`.
    pub fn key(&self, id: &str) -> Key {
        #[cfg(test)]
        if self.colliding {
            return [0x5a; 16];
        }
        let mut key = [0u8; 16];
        if id.len() == 22 && URL_SAFE_NO_PAD.decode_slice(id, &mut key) == Ok(16) {
            return key;
        }
        let half = |state: &RandomState| {
            let mut hasher = state.build_hasher();
            hasher.write(id.as_bytes());
            hasher.finish().to_le_bytes()
        };
        key[..8].copy_from_slice(&half(&self.first));
        key[8..].copy_from_slice(&half(&self.second));
        key
    }
}

/// The second (rounded up) after which an entry moot at `ms` is moot.
fn moot_second(ms: UnixMillis) -> u32 {
    let seconds = ms.max(0).saturating_add(999) / 1_000;
    u32::try_from(seconds).unwrap_or(u32::MAX)
}

/// Entries a block of the sorted run holds.
const BLOCK: usize = 4_096;

/// The denied ids of one kind.
///
/// The sorted run is cut into blocks of [`BLOCK`] entries: a merge writes new blocks while it
/// frees the old ones it has read, so a copy never holds its run twice (one vector reallocated
/// as it grows would, for a moment, and a Wasm VM's memory keeps every high-water mark).
#[derive(Debug, Default)]
pub struct DenySet {
    blocks: Vec<Vec<(Key, u32)>>,
    /// The rank of each block's first key, for the search.
    firsts: Vec<u128>,
    sorted_len: usize,
    recent: HashMap<Key, u32>,
}

impl DenySet {
    /// How many ids are held.
    pub fn len(&self) -> usize {
        self.sorted_len + self.recent.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `key` is held.
    pub fn contains(&self, key: &Key) -> bool {
        self.recent.contains_key(key) || self.position(key).is_some()
    }

    /// The block and the place in it where `key` is held.
    fn position(&self, key: &Key) -> Option<(usize, usize)> {
        let rank = rank(key);
        let block = self
            .firsts
            .partition_point(|first| *first <= rank)
            .checked_sub(1)?;
        let at = self.blocks[block]
            .binary_search_by(|(k, _)| self::rank(k).cmp(&rank))
            .ok()?;
        Some((block, at))
    }

    /// Holds `key` until `moot_ms` (the later of two, if held already).
    pub fn insert(&mut self, key: Key, moot_ms: UnixMillis) {
        let moot = moot_second(moot_ms);
        if let Some((block, at)) = self.position(&key) {
            let held = &mut self.blocks[block][at].1;
            *held = (*held).max(moot);
            return;
        }
        let held = self.recent.entry(key).or_insert(moot);
        *held = (*held).max(moot);
        if self.recent.len() >= MIN_RECENT.max(self.sorted_len / 8) {
            self.merge();
        }
    }

    /// Merges the new entries into the sorted run, block by block: each old block is freed as
    /// soon as it has been read.
    fn merge(&mut self) {
        let mut recent: Vec<(Key, u32)> = self.recent.drain().collect();
        recent.sort_unstable_by_key(|entry| rank(&entry.0));
        let old = std::mem::take(&mut self.blocks);
        let mut out = Run::default();
        let mut news = recent.into_iter().peekable();
        // No key is in both (an insert looks in the run first).
        for block in old {
            for entry in block {
                while let Some(new) = news.next_if(|new| rank(&new.0) < rank(&entry.0)) {
                    out.push(new);
                }
                out.push(entry);
            }
        }
        news.for_each(|new| out.push(new));
        self.install(out);
        self.recent.shrink_to(MIN_RECENT);
    }

    fn install(&mut self, run: Run) {
        let Run {
            mut blocks,
            current,
        } = run;
        if !current.is_empty() {
            blocks.push(current);
        }
        self.firsts = blocks
            .iter()
            .filter_map(|b| b.first().map(|e| rank(&e.0)))
            .collect();
        self.sorted_len = blocks.iter().map(Vec::len).sum();
        self.blocks = blocks;
    }

    /// Drops the entries moot before `now`.
    pub fn purge(&mut self, now: UnixMillis) {
        let live = |moot: &u32| i64::from(*moot) * 1_000 >= now;
        self.recent.retain(|_, moot| live(moot));
        let mut out = Run::default();
        for block in std::mem::take(&mut self.blocks) {
            block
                .into_iter()
                .filter(|(_, moot)| live(moot))
                .for_each(|entry| out.push(entry));
        }
        self.install(out);
    }

    /// The bytes the entries take (for the measurements).
    pub fn heap_bytes(&self) -> usize {
        let entry = std::mem::size_of::<(Key, u32)>();
        self.blocks
            .iter()
            .map(|b| b.capacity() * entry)
            .sum::<usize>()
            + self.firsts.capacity() * std::mem::size_of::<u128>()
            + self.recent.capacity() * (entry + 1)
    }
}

/// A sorted run being written, in blocks of [`BLOCK`].
#[derive(Default)]
struct Run {
    blocks: Vec<Vec<(Key, u32)>>,
    current: Vec<(Key, u32)>,
}

impl Run {
    fn push(&mut self, entry: (Key, u32)) {
        if self.current.capacity() == 0 {
            self.current.reserve_exact(BLOCK);
        }
        self.current.push(entry);
        if self.current.len() == BLOCK {
            self.blocks.push(std::mem::take(&mut self.current));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_ids_are_their_own_bytes_and_others_a_keyed_hash() {
        let keyer = Keyer::default();
        let minted = URL_SAFE_NO_PAD.encode([7u8; 16]);
        assert_eq!(keyer.key(&minted), [7u8; 16]);
        assert_ne!(keyer.key("idp-session-1"), keyer.key("idp-session-2"));
        assert_eq!(keyer.key("idp-session-1"), keyer.key("idp-session-1"));
        // Another copy keys other ids otherwise (no chosen collision carries over).
        assert_ne!(
            Keyer::default().key("idp-session-1"),
            keyer.key("idp-session-1")
        );
    }

    #[test]
    fn a_million_ids_fit_in_about_twenty_bytes_each_and_stay_findable() {
        let mut set = DenySet::default();
        let key = |i: u32| {
            let mut k = [0u8; 16];
            k[..4].copy_from_slice(&i.wrapping_mul(2_654_435_761).to_le_bytes());
            k[4..8].copy_from_slice(&i.to_le_bytes());
            k
        };
        for i in 0..1_000_000 {
            set.insert(key(i), 10_000_000);
        }
        assert_eq!(set.len(), 1_000_000);
        assert!((0..1_000_000).step_by(997).all(|i| set.contains(&key(i))));
        let run: Vec<Key> = set.blocks.iter().flatten().map(|e| e.0).collect();
        assert_eq!(run.len(), set.sorted_len);
        assert!(
            run.windows(2).all(|w| rank(&w[0]) < rank(&w[1])),
            "the merged run stays sorted, each key once"
        );
        assert!(!set.contains(&key(1_000_001)));
        let mib = set.heap_bytes() as f64 / (1024.0 * 1024.0);
        println!("a million denied ids: {mib:.1} MiB");
        assert!(mib < 32.0, "{mib:.1} MiB for a million");
        // The same id again keeps one entry, with the later moot time.
        set.insert(key(5), 20_000_000);
        assert_eq!(set.len(), 1_000_000);
        set.purge(15_000_000);
        assert_eq!(set.len(), 1, "only the one moot later stays");
        assert!(set.contains(&key(5)));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        /// The blocks answer as a plain ordered map would, through merges (a run of several
        /// blocks) and purges.
        #[test]
        fn the_blocks_answer_as_an_ordered_map(
            steps in proptest::collection::vec(
                (0u16..20_000, 0i64..40, proptest::bool::weighted(0.0005)),
                1..40_000,
            )
        ) {
            let mut set = DenySet::default();
            let mut model = std::collections::BTreeMap::new();
            for (id, moot_s, purge) in steps {
                let mut key = [0u8; 16];
                key[..2].copy_from_slice(&id.to_be_bytes());
                if purge {
                    let now = moot_s * 1_000;
                    set.purge(now);
                    model.retain(|_, moot: &mut i64| *moot * 1_000 >= now);
                } else {
                    set.insert(key, moot_s * 1_000);
                    let held = model.entry(key).or_insert(moot_s);
                    *held = (*held).max(moot_s);
                }
            }
            proptest::prop_assert_eq!(set.len(), model.len());
            proptest::prop_assert!(set.blocks.iter().all(|b| b.len() <= BLOCK));
            for id in 0u16..20_000 {
                let mut key = [0u8; 16];
                key[..2].copy_from_slice(&id.to_be_bytes());
                proptest::prop_assert_eq!(set.contains(&key), model.contains_key(&key));
            }
        }
    }

    #[test]
    fn an_entry_is_moot_after_its_second_not_before() {
        let mut set = DenySet::default();
        set.insert([1; 16], 5_500);
        set.purge(5_999);
        assert!(
            set.contains(&[1; 16]),
            "moot at 5.5 s, kept through 5.999 s at most"
        );
        set.purge(6_001);
        assert!(!set.contains(&[1; 16]));
    }
}
