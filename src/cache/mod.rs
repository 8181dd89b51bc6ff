//! The in-memory caches that keep the hot path off the store: a cutoff cache per user and a
//! bloom-style negative cache of the denylist. Both are updated in change-number order, so a
//! late-arriving older value never overwrites a newer one.
mod cutoff;
mod denylist;

pub use cutoff::CutoffCache;
pub use denylist::DenylistFilter;
