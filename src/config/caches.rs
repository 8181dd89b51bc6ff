//! The caches in front of the store.
use std::time::Duration;

use super::parse::{parse_duration, parse_rate};
use super::values::Toggle;

/// The caches in front of the store.
#[derive(Debug, Clone, clap::Args)]
pub struct CacheArgs {
    /// How long a user's cutoff stays cached; 0 disables the cutoff cache (every check asks
    /// the store). Entries are kept current by the change feed; the TTL is a safety net.
    #[arg(help_heading = "Caches", long, env = "TOKEN_SIDECAR_CUTOFF_CACHE_TTL", default_value = "5m", value_parser = parse_duration)]
    pub cutoff_cache_ttl: Duration,

    /// Most users whose cutoff is cached.
    #[arg(
        help_heading = "Caches",
        long,
        env = "TOKEN_SIDECAR_CUTOFF_CACHE_CAPACITY",
        default_value_t = 100_000
    )]
    pub cutoff_cache_capacity: u64,

    /// Most tokens whose decode (signature and claims) is remembered, by SHA-256 digest, until
    /// their `exp`; 0 turns the verified-token cache off. Every rule still runs on every call.
    #[arg(
        help_heading = "Caches",
        long,
        env = "TOKEN_SIDECAR_VERIFIED_CACHE_CAPACITY",
        default_value_t = 50_000
    )]
    pub verified_cache_capacity: u64,

    /// The bloom-style negative cache of the denylist; off makes every check ask the store.
    #[arg(help_heading = "Caches", long, env = "TOKEN_SIDECAR_DENYLIST_FILTER", value_enum, default_value_t = Toggle::On)]
    pub denylist_filter: Toggle,

    /// Expected number of live denylist rows (sizes the filter; it grows when exceeded).
    #[arg(
        help_heading = "Caches",
        long,
        env = "TOKEN_SIDECAR_DENYLIST_EXPECTED_ITEMS",
        default_value_t = 1_000_000
    )]
    pub denylist_expected_items: usize,

    /// Target false-positive rate of the denylist filter.
    #[arg(help_heading = "Caches", long, env = "TOKEN_SIDECAR_DENYLIST_FP_RATE", default_value_t = 0.01, value_parser = parse_rate)]
    pub denylist_fp_rate: f64,
}
