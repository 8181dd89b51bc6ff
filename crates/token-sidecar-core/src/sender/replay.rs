//! The proofs this instance has accepted, for RFC 9449 §11.1's single use: a proof's `jti` is
//! remembered as long as a proof with its `iat` could still be accepted ([`super::SenderRules::
//! replay_window_ms`]), in two generations of that length, so memory is bounded by what arrives
//! in two windows and never grows with time.
//!
//! Per instance: a proof replayed to another instance within the window is not seen here. What
//! bounds such a replay is the proof itself — it names one method, one URI and one access token
//! (`ath`), and is accepted only within `--dpop-max-age` of its `iat` — and, with
//! `--dpop-nonce`, the nonce's life (two time steps).
use std::collections::HashSet;

use sha2::{Digest, Sha256};

/// How many proofs one generation holds; past it new proofs are refused (fail closed) until
/// the generation turns. Only holders of a valid bound token and its key can fill it.
pub const REPLAY_CAPACITY: usize = 1_000_000;

/// Proofs seen, by a 128-bit digest of their key and `jti`.
pub struct ReplayCache {
    window_ms: i64,
    capacity: usize,
    generations: parking_lot::Mutex<Generations>,
}

#[derive(Default)]
struct Generations {
    started_ms: i64,
    current: HashSet<u128>,
    previous: HashSet<u128>,
}

/// What the cache said of a proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First use: now remembered.
    First,
    /// Used before within the window.
    Again,
    /// The cache is full: refused without being remembered.
    Full,
}

impl ReplayCache {
    /// A cache that remembers each proof for at least `window_ms`.
    pub fn new(window_ms: i64) -> Self {
        Self::with_capacity(window_ms, REPLAY_CAPACITY)
    }

    /// The same, holding at most `capacity` proofs a generation.
    pub fn with_capacity(window_ms: i64, capacity: usize) -> Self {
        Self {
            window_ms: window_ms.max(1),
            capacity,
            generations: parking_lot::Mutex::new(Generations::default()),
        }
    }

    /// Records the proof with key thumbprint `jkt` and `jti` at `now_ms`.
    pub fn record(&self, jkt: &str, jti: &str, now_ms: i64) -> Seen {
        let mut digest = Sha256::new();
        digest.update(jkt.as_bytes());
        digest.update([0]);
        digest.update(jti.as_bytes());
        let bytes = digest.finalize();
        let mut key = [0u8; 16];
        key.copy_from_slice(&bytes[..16]);
        let key = u128::from_le_bytes(key);
        let mut g = self.generations.lock();
        if now_ms >= g.started_ms + self.window_ms {
            // Everything in the previous generation was recorded before the current one
            // started, at least a window ago: it may go.
            g.previous = std::mem::take(&mut g.current);
            g.started_ms = now_ms;
        }
        if g.current.contains(&key) || g.previous.contains(&key) {
            return Seen::Again;
        }
        if g.current.len() >= self.capacity {
            return Seen::Full;
        }
        g.current.insert(key);
        Seen::First
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_is_remembered_for_its_window_and_then_forgotten() {
        let cache = ReplayCache::new(1_000);
        assert_eq!(cache.record("k", "a", 10_000), Seen::First);
        assert_eq!(cache.record("k", "a", 10_999), Seen::Again);
        assert_eq!(
            cache.record("other", "a", 10_999),
            Seen::First,
            "scoped by key"
        );
        // The generation turns at 11,000: still held, in the previous one.
        assert_eq!(cache.record("k", "a", 11_500), Seen::Again);
        assert_eq!(cache.record("k", "b", 11_500), Seen::First);
        // Two windows on, the first is gone.
        assert_eq!(cache.record("k", "a", 13_000), Seen::First);
    }

    #[test]
    fn a_full_cache_refuses_instead_of_forgetting() {
        let cache = ReplayCache::with_capacity(1_000, 2);
        assert_eq!(cache.record("k", "a", 0), Seen::First);
        assert_eq!(cache.record("k", "b", 0), Seen::First);
        assert_eq!(cache.record("k", "c", 0), Seen::Full);
        assert_eq!(cache.record("k", "a", 0), Seen::Again);
    }
}
