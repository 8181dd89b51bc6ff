//! What a sender of events may cost us before it is told to slow down (SPEC §13: rate limits
//! are per source and charged only by requests that passed the cheap checks; a request whose
//! signature verifies is never answered 429).
//!
//! A request pays nothing for the cheap checks (size, form, header, issuer, `alg`, `iat`): a
//! refusal there costs less than counting it would. Past them, a request whose signature
//! verifies is acted on whatever the budgets say — the provider's own events are never limited.
//! A request whose key or signature is refused is charged: to a bucket of its source address
//! ([`PER_SOURCE_BURST`], then [`PER_SOURCE_PER_SECOND`]) and to one shared bucket
//! ([`SHARED_BURST`], then [`SHARED_PER_SECOND`]) that bounds many addresses together; once
//! either is empty the refusal is answered 429 with `Retry-After` instead of 400. A provider's
//! event arriving from an address a forger also uses is therefore still answered on its merits.
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::clock::Clock;

/// Refusals one source may draw at once.
pub const PER_SOURCE_BURST: f64 = 20.0;
/// Refusals one source may draw per second, sustained.
pub const PER_SOURCE_PER_SECOND: f64 = 10.0;
/// Refusals all sources together may draw at once.
pub const SHARED_BURST: f64 = 100.0;
/// Refusals all sources together may draw per second, sustained.
pub const SHARED_PER_SECOND: f64 = 50.0;
/// Sources remembered at most; past it, buckets that have refilled are forgotten first, then
/// the sources are all charged to the shared bucket alone until some refill.
const MAX_SOURCES: usize = 4_096;

/// A token bucket on a monotonic clock (milliseconds).
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_ms: i64,
}

impl Bucket {
    fn full(burst: f64, now_ms: i64) -> Self {
        Self {
            tokens: burst,
            at_ms: now_ms,
        }
    }

    fn refill(&mut self, burst: f64, per_second: f64, now_ms: i64) {
        let elapsed = now_ms.saturating_sub(self.at_ms).max(0) as f64 / 1_000.0;
        self.tokens = (self.tokens + elapsed * per_second).min(burst);
        self.at_ms = now_ms;
    }

    fn take(&mut self, burst: f64, per_second: f64, now_ms: i64) -> bool {
        self.refill(burst, per_second, now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The budgets of one receiver route.
pub struct SenderBudget {
    clock: Arc<dyn Clock>,
    state: Mutex<Budgets>,
}

struct Budgets {
    shared: Bucket,
    sources: HashMap<IpAddr, Bucket>,
}

impl SenderBudget {
    /// Full budgets, on `clock`'s monotonic time.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        let now = clock.monotonic_ms();
        Self {
            clock,
            state: Mutex::new(Budgets {
                shared: Bucket::full(SHARED_BURST, now),
                sources: HashMap::new(),
            }),
        }
    }

    /// Charges one refusal to `source` (None: the shared bucket alone); false once the source's
    /// or the shared budget is spent.
    pub fn charge(&self, source: Option<IpAddr>) -> bool {
        let now = self.clock.monotonic_ms();
        let mut state = self.state.lock();
        let shared = state.shared.take(SHARED_BURST, SHARED_PER_SECOND, now);
        let Some(source) = source else { return shared };
        if state.sources.len() >= MAX_SOURCES && !state.sources.contains_key(&source) {
            state.sources.retain(|_, bucket| {
                bucket.refill(PER_SOURCE_BURST, PER_SOURCE_PER_SECOND, now);
                bucket.tokens < PER_SOURCE_BURST
            });
            if state.sources.len() >= MAX_SOURCES {
                return shared;
            }
        }
        let own = state
            .sources
            .entry(source)
            .or_insert_with(|| Bucket::full(PER_SOURCE_BURST, now))
            .take(PER_SOURCE_BURST, PER_SOURCE_PER_SECOND, now);
        own && shared
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn addr(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([127, 0, 0, last]))
    }

    #[test]
    fn one_source_spends_only_its_own_budget() {
        let clock = ManualClock::new(0);
        let budget = SenderBudget::new(Arc::new(clock.clone()));
        let spent = (0..30).filter(|_| budget.charge(addr(1))).count();
        assert_eq!(spent, PER_SOURCE_BURST as usize);
        assert!(budget.charge(addr(2)), "another source still has its own");
        clock.advance_ms(1_000);
        let refilled = (0..30).filter(|_| budget.charge(addr(1))).count();
        assert_eq!(refilled, PER_SOURCE_PER_SECOND as usize);
    }

    #[test]
    fn many_sources_together_spend_the_shared_budget() {
        let clock = ManualClock::new(0);
        let budget = SenderBudget::new(Arc::new(clock.clone()));
        let spent = (0..=255u8)
            .flat_map(|source| std::iter::repeat_n(source, 5))
            .filter(|source| budget.charge(addr(*source)))
            .count();
        assert_eq!(spent, SHARED_BURST as usize);
        clock.advance_ms(1_000);
        assert!(budget.charge(addr(9)), "refilled");
    }
}
