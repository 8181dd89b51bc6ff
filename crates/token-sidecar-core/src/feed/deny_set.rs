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
//! Most entries sit in a sorted vector (binary search); new ones in a small map, merged into the
//! vector once it holds an eighth as many, so that a load of a million costs a few sorts.
use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::clock::UnixMillis;

/// An id as the copy holds it.
pub type Key = [u8; 16];

/// The new entries a merge waits for, at least.
const MIN_RECENT: usize = 4_096;

/// How ids become keys: their own bytes when minted, a keyed hash otherwise.
#[derive(Debug, Clone)]
pub struct Keyer {
    first: RandomState,
    second: RandomState,
}

impl Default for Keyer {
    fn default() -> Self {
        Self {
            first: RandomState::new(),
            second: RandomState::new(),
        }
    }
}

impl Keyer {
    /// The key of `id`.
    pub fn key(&self, id: &str) -> Key {
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

/// The denied ids of one kind.
#[derive(Debug, Default)]
pub struct DenySet {
    sorted: Vec<(Key, u32)>,
    recent: HashMap<Key, u32>,
}

impl DenySet {
    /// How many ids are held.
    pub fn len(&self) -> usize {
        self.sorted.len() + self.recent.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `key` is held.
    pub fn contains(&self, key: &Key) -> bool {
        self.recent.contains_key(key) || self.position(key).is_ok()
    }

    fn position(&self, key: &Key) -> Result<usize, usize> {
        self.sorted.binary_search_by(|(k, _)| k.cmp(key))
    }

    /// Holds `key` until `moot_ms` (the later of two, if held already).
    pub fn insert(&mut self, key: Key, moot_ms: UnixMillis) {
        let moot = moot_second(moot_ms);
        if let Ok(at) = self.position(&key) {
            let held = &mut self.sorted[at].1;
            *held = (*held).max(moot);
            return;
        }
        let held = self.recent.entry(key).or_insert(moot);
        *held = (*held).max(moot);
        if self.recent.len() >= MIN_RECENT.max(self.sorted.len() / 8) {
            self.merge();
        }
    }

    /// Moves the new entries into the sorted vector, in place: the vector grows by exactly what
    /// joins and the two runs are merged from the back, so a copy's memory peaks at its
    /// entries, not at twice them (a Wasm VM's memory never shrinks back).
    fn merge(&mut self) {
        let old = self.sorted.len();
        self.sorted.reserve_exact(self.recent.len());
        let mut recent: Vec<(Key, u32)> = self.recent.drain().collect();
        recent.sort_unstable_by_key(|entry| entry.0);
        self.sorted.resize(old + recent.len(), ([0; 16], 0));
        // No key is in both runs (an insert looks in the vector first).
        let (mut i, mut j) = (old, recent.len());
        for w in (0..self.sorted.len()).rev() {
            if j == 0 {
                break;
            }
            if i > 0 && self.sorted[i - 1].0 > recent[j - 1].0 {
                self.sorted[w] = self.sorted[i - 1];
                i -= 1;
            } else {
                self.sorted[w] = recent[j - 1];
                j -= 1;
            }
        }
        self.recent.shrink_to(MIN_RECENT);
    }

    /// Drops the entries moot before `now`.
    pub fn purge(&mut self, now: UnixMillis) {
        let live = |moot: &u32| i64::from(*moot) * 1_000 >= now;
        self.sorted.retain(|(_, moot)| live(moot));
        self.recent.retain(|_, moot| live(moot));
        if self.sorted.capacity() > 2 * self.sorted.len() + MIN_RECENT {
            self.sorted.shrink_to_fit();
        }
    }

    /// The bytes the entries take (for the measurements).
    pub fn heap_bytes(&self) -> usize {
        self.sorted.capacity() * std::mem::size_of::<(Key, u32)>()
            + self.recent.capacity() * (std::mem::size_of::<(Key, u32)>() + 1)
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
        assert!(
            set.sorted.windows(2).all(|w| w[0].0 < w[1].0),
            "the merged vector stays sorted, each key once"
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
