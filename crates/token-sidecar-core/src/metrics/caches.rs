//! The caches: lookups by cache and result, the denylist filter's shape and rebuilds, the
//! verified-token cache's size.
use super::Registrar;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use super::label_enum;
use crate::token::VerifiedCacheMetrics;

label_enum! {
    /// Which cache a lookup asked.
    Cache {
        /// A user's cutoff (moka).
        Cutoff => "cutoff",
        /// The denylist's negative filter.
        Denylist => "denylist",
        /// The verified-token cache.
        Verified => "verified",
    }
}

label_enum! {
    /// How a lookup was answered.
    Lookup {
        /// From memory.
        Hit => "hit",
        /// Not in memory: asked the store, or decoded the token.
        Miss => "miss",
        /// The filter said "not revoked": no query.
        Negative => "negative",
        /// The filter said "maybe": confirmed against the store.
        Maybe => "maybe",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    cache: Cache,
    result: Lookup,
}

/// `cache_lookups_total`, `denylist_filter_*`, `verified_cache_entries`.
pub struct CacheMetrics {
    lookups: Family<CacheLabels, Counter>,
    // Resolved once: every Verify counts them.
    cutoff_hit: Counter,
    denylist_negative: Counter,
    /// Entries in the denylist filter.
    pub filter_items: Gauge,
    /// Bits in the denylist filter.
    pub filter_bits: Gauge,
    /// Configured expected size of the denylist filter.
    pub filter_expected_items: Gauge,
    /// Configured false-positive rate of the denylist filter, in parts per million.
    pub filter_target_fp_ppm: Gauge,
    /// Filter rebuilds.
    pub filter_rebuilds: Counter,
    verified_entries: Gauge,
}

impl CacheMetrics {
    /// Registers the families.
    pub fn register(registry: &mut Registrar) -> Self {
        let lookups = Family::<CacheLabels, Counter>::default();
        registry.register(
            "cache_lookups",
            "Cache lookups by cache and result",
            lookups.clone(),
        );
        let gauge = |registry: &mut Registrar, name, help| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let filter_items = gauge(
            registry,
            "denylist_filter_items",
            "Entries in the denylist filter",
        );
        let filter_bits = gauge(
            registry,
            "denylist_filter_bits",
            "Size of the denylist filter in bits",
        );
        let filter_expected_items = gauge(
            registry,
            "denylist_filter_expected_items",
            "Configured expected size of the denylist filter",
        );
        let filter_target_fp_ppm = gauge(
            registry,
            "denylist_filter_target_fp_ppm",
            "Configured false-positive rate of the denylist filter (parts per million)",
        );
        let filter_rebuilds = Counter::default();
        registry.register(
            "denylist_filter_rebuilds",
            "Denylist filter rebuilds",
            filter_rebuilds.clone(),
        );
        let verified_entries = gauge(
            registry,
            "verified_cache_entries",
            "Tokens whose decode is remembered (approximate)",
        );
        let cutoff_hit = lookups.get_or_create_owned(&CacheLabels {
            cache: Cache::Cutoff,
            result: Lookup::Hit,
        });
        let denylist_negative = lookups.get_or_create_owned(&CacheLabels {
            cache: Cache::Denylist,
            result: Lookup::Negative,
        });
        Self {
            lookups,
            cutoff_hit,
            denylist_negative,
            filter_items,
            filter_bits,
            filter_expected_items,
            filter_target_fp_ppm,
            filter_rebuilds,
            verified_entries,
        }
    }

    /// Counts one lookup.
    pub fn lookup(&self, cache: Cache, result: Lookup) {
        match (cache, result) {
            (Cache::Cutoff, Lookup::Hit) => self.cutoff_hit.inc(),
            (Cache::Denylist, Lookup::Negative) => self.denylist_negative.inc(),
            _ => self
                .lookups
                .get_or_create(&CacheLabels { cache, result })
                .inc(),
        };
    }

    /// The verified-token cache's handles, resolved once.
    pub fn verified(&self) -> VerifiedCacheMetrics {
        let lookups = |result| {
            self.lookups.get_or_create_owned(&CacheLabels {
                cache: Cache::Verified,
                result,
            })
        };
        VerifiedCacheMetrics {
            hits: lookups(Lookup::Hit),
            misses: lookups(Lookup::Miss),
            entries: self.verified_entries.clone(),
        }
    }
}
