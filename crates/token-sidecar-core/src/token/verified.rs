//! `VerifiedCache`: the stateless result of decoding a token (shape, header, signature, claims),
//! remembered by the token's SHA-256 digest so that a client's token, sent with every request
//! for its whole life, pays the signature check once (SPEC §8).
//!
//! - Only successful decodes are stored: nothing an attacker sends without a valid signature
//!   can fill it.
//! - Bounded in entries, and no entry outlives its token's `exp` (read on the injected clock).
//! - A new, empty cache comes with every key set (see `TokenCodec`), so a key that was rotated
//!   away or changed on disk never answers from here.
//! - It holds no verdict: the time rules, the cutoff and the denylist run on every call.
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::sync::Cache;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use super::Claims;
use crate::clock::Clock;

/// A token's SHA-256 digest: collision-resistant, so one token can never answer for another.
pub type TokenDigest = [u8; 32];

/// The digest a token is remembered by.
pub fn digest(token: &str) -> TokenDigest {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Counts for the metrics endpoint, resolved once (no label lookup per request).
#[derive(Clone, Default)]
pub struct VerifiedCacheMetrics {
    /// Lookups answered from the cache.
    pub hits: Counter,
    /// Lookups that decoded the token.
    pub misses: Counter,
    /// Entries held (approximate).
    pub entries: Gauge,
}

/// Lives until the token's `exp` on the injected clock.
struct UntilExp(Arc<dyn Clock>);

impl Expiry<TokenDigest, Arc<Claims>> for UntilExp {
    fn expire_after_create(
        &self,
        _key: &TokenDigest,
        claims: &Arc<Claims>,
        _created_at: Instant,
    ) -> Option<Duration> {
        let left_ms = claims
            .expires_at
            .as_millis()
            .saturating_sub(self.0.now_ms());
        Some(Duration::from_millis(u64::try_from(left_ms).unwrap_or(0)))
    }
}

/// Decoded claims by token digest.
#[derive(Clone)]
pub struct VerifiedCache {
    cache: Cache<TokenDigest, Arc<Claims>>,
    capacity: u64,
    clock: Arc<dyn Clock>,
    metrics: VerifiedCacheMetrics,
}

impl VerifiedCache {
    /// An empty cache of at most `capacity` tokens.
    pub fn new(capacity: u64, clock: Arc<dyn Clock>, metrics: VerifiedCacheMetrics) -> Self {
        let cache = Cache::builder()
            .max_capacity(capacity)
            .expire_after(UntilExp(clock.clone()))
            .build();
        metrics.entries.set(0);
        Self {
            cache,
            capacity,
            clock,
            metrics,
        }
    }

    /// A new, empty cache with the same bounds (for a new key set).
    pub fn emptied(&self) -> Self {
        Self::new(self.capacity, self.clock.clone(), self.metrics.clone())
    }

    /// The claims of a token decoded before, counting the lookup.
    pub fn get(&self, digest: &TokenDigest) -> Option<Arc<Claims>> {
        let found = self.cache.get(digest);
        match &found {
            Some(_) => self.metrics.hits.inc(),
            None => self.metrics.misses.inc(),
        };
        found
    }

    /// Remembers a successful decode.
    pub fn insert(&self, digest: TokenDigest, claims: Arc<Claims>) {
        self.cache.insert(digest, claims);
        self.metrics
            .entries
            .set(i64::try_from(self.cache.entry_count()).unwrap_or(i64::MAX));
    }
}
