//! The in-memory caches that keep the hot path off the store: a cutoff cache per user and a
//! bloom-style negative cache of the denylist, both updated in change-number order, so a
//! late-arriving older value never overwrites a newer one. (The verified-token cache, which
//! keeps decodes off the signature check, belongs to the codec: `token::VerifiedCache`.)
mod cutoff;
mod denylist;

pub use cutoff::CutoffCache;
pub use denylist::DenylistFilter;
