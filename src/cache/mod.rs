//! The in-memory caches that keep the hot path off the store and off the signature check: a
//! cutoff cache per user and a bloom-style negative cache of the denylist (both updated in
//! change-number order, so a late-arriving older value never overwrites a newer one), and the
//! verified-token cache of decoded claims.
mod cutoff;
mod denylist;
mod verified;

pub use cutoff::CutoffCache;
pub use denylist::DenylistFilter;
pub use verified::{TokenDigest, VerifiedCache, VerifiedCacheMetrics, digest};
