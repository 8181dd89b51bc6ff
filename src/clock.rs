//! Time, read from an injected clock so that every time-dependent rule can be tested by moving it.
//!
//! Two kinds of time (SPEC §4 rule 9):
//! - **fleet time** ([`Clock::now_ms`]): what is compared across instances — `orig_iat` against
//!   a cutoff, a ban's end against "now", a mint time against the reuse interval, a row's moot
//!   time against the purge. In production it is the database's clock: [`FleetClock`] keeps an
//!   offset to it, measured by `clock_upkeep`, and runs on the monotonic clock in between, so a
//!   step of the local wall clock moves nothing;
//! - **monotonic time** ([`Clock::monotonic_ms`]): durations and staleness, which never step.
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Instant;

/// Milliseconds since the Unix epoch: the one time unit inside the sidecar.
pub type UnixMillis = i64;

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    /// The fleet's current time, in milliseconds since the Unix epoch.
    fn now_ms(&self) -> UnixMillis;

    /// Milliseconds on a clock that never steps (only differences mean anything).
    fn monotonic_ms(&self) -> i64;

    /// How far this process's own wall clock is ahead of the fleet's (negative: behind), or
    /// `None` while the fleet's clock has not been read yet.
    fn skew_ms(&self) -> Option<i64>;

    /// Takes a reading of the fleet's clock into account.
    fn align(&self, _reading: Reading) {}
}

/// One reading of the fleet's clock: its time, read between two monotonic instants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// The fleet's time as read.
    pub fleet_ms: UnixMillis,
    /// [`Clock::monotonic_ms`] when the question was sent.
    pub sent_ms: i64,
    /// [`Clock::monotonic_ms`] when the answer arrived.
    pub received_ms: i64,
}

impl Reading {
    /// Longest round trip whose reading is still used: the reading's error is at most half of it.
    pub const MAX_ROUND_TRIP_MS: i64 = 1000;

    /// How long the question took to be answered.
    pub fn round_trip_ms(&self) -> i64 {
        self.received_ms.saturating_sub(self.sent_ms)
    }
}

/// The wall clock, read directly: for log lines and measurements only, never for rules, which
/// read the injected [`Clock`].
pub fn wall_ms() -> UnixMillis {
    chrono::Utc::now().timestamp_millis()
}

/// Milliseconds since this process first asked, on the monotonic clock.
pub fn process_monotonic_ms() -> i64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = ORIGIN.get_or_init(Instant::now);
    i64::try_from(origin.elapsed().as_millis()).unwrap_or(i64::MAX)
}

/// The local wall clock as the fleet's: for a store no other instance shares (and tools).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> UnixMillis {
        wall_ms()
    }

    fn monotonic_ms(&self) -> i64 {
        process_monotonic_ms()
    }

    fn skew_ms(&self) -> Option<i64> {
        Some(0)
    }
}

type Source = Box<dyn Fn() -> i64 + Send + Sync>;

/// The fleet's clock as seen from this process: the monotonic clock plus an offset measured
/// against the database's clock. Until the first reading it trusts the local wall clock (and
/// says so: [`Clock::skew_ms`] is `None`).
pub struct FleetClock {
    wall: Source,
    monotonic: Source,
    /// Fleet time minus monotonic time.
    offset: AtomicI64,
    aligned: AtomicBool,
}

impl std::fmt::Debug for FleetClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetClock")
            .field("offset", &self.offset)
            .field("aligned", &self.aligned)
            .finish()
    }
}

impl Default for FleetClock {
    fn default() -> Self {
        Self::with_sources(Box::new(wall_ms), Box::new(process_monotonic_ms))
    }
}

impl FleetClock {
    /// A fleet clock over this process's wall and monotonic clocks.
    pub fn new() -> Self {
        Self::default()
    }

    /// A fleet clock over the given wall and monotonic clocks (tests step them).
    pub fn with_sources(wall: Source, monotonic: Source) -> Self {
        let offset = wall().saturating_sub(monotonic());
        Self {
            wall,
            monotonic,
            offset: AtomicI64::new(offset),
            aligned: AtomicBool::new(false),
        }
    }
}

impl Clock for FleetClock {
    fn now_ms(&self) -> UnixMillis {
        self.offset
            .load(Ordering::Acquire)
            .saturating_add((self.monotonic)())
    }

    fn monotonic_ms(&self) -> i64 {
        (self.monotonic)()
    }

    fn skew_ms(&self) -> Option<i64> {
        self.aligned
            .load(Ordering::Acquire)
            .then(|| (self.wall)().saturating_sub(self.now_ms()))
    }

    fn align(&self, reading: Reading) {
        let round_trip = reading.round_trip_ms();
        if !(0..=Reading::MAX_ROUND_TRIP_MS).contains(&round_trip) {
            return;
        }
        // The answer was given somewhere in the round trip: its middle errs by at most half.
        let midpoint = reading.sent_ms.saturating_add(round_trip / 2);
        self.offset
            .store(reading.fleet_ms.saturating_sub(midpoint), Ordering::Release);
        self.aligned.store(true, Ordering::Release);
    }
}

/// A clock that only moves when told to; shared by clones, for tests.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<AtomicI64>,
    monotonic: Arc<AtomicI64>,
    skew: Arc<AtomicI64>,
}

impl ManualClock {
    /// A clock standing at `now_ms`, in step with the fleet's.
    pub fn new(now_ms: UnixMillis) -> Self {
        Self {
            now: Arc::new(AtomicI64::new(now_ms)),
            monotonic: Arc::new(AtomicI64::new(0)),
            skew: Arc::new(AtomicI64::new(0)),
        }
    }

    /// Moves the fleet's time to `now_ms`; the monotonic clock moves forward by as much (not at
    /// all for a step back).
    pub fn set_ms(&self, now_ms: UnixMillis) {
        let before = self.now.swap(now_ms, Ordering::SeqCst);
        self.monotonic
            .fetch_add(now_ms.saturating_sub(before).max(0), Ordering::SeqCst);
    }

    /// Lets `ms` milliseconds pass.
    pub fn advance_ms(&self, ms: i64) {
        self.now.fetch_add(ms, Ordering::SeqCst);
        self.monotonic.fetch_add(ms.max(0), Ordering::SeqCst);
    }

    /// Lets `secs` seconds pass.
    pub fn advance_secs(&self, secs: i64) {
        self.advance_ms(secs * 1000);
    }

    /// Sets how far this instance's own clock is off the fleet's.
    pub fn set_skew_ms(&self, skew_ms: i64) {
        self.skew.store(skew_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> UnixMillis {
        self.now.load(Ordering::SeqCst)
    }

    fn monotonic_ms(&self) -> i64 {
        self.monotonic.load(Ordering::SeqCst)
    }

    fn skew_ms(&self) -> Option<i64> {
        Some(self.skew.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told_and_clones_share_it() {
        let clock = ManualClock::new(1_000);
        let other = clock.clone();
        assert_eq!(clock.now_ms(), 1_000);
        other.advance_secs(2);
        assert_eq!(clock.now_ms(), 3_000);
        assert_eq!(clock.monotonic_ms(), 2_000);
        clock.set_ms(5);
        assert_eq!(other.now_ms(), 5);
        assert_eq!(
            other.monotonic_ms(),
            2_000,
            "a step back is not time passing"
        );
    }

    #[test]
    fn system_clock_is_after_2020() {
        assert!(SystemClock.now_ms() > 1_577_836_800_000);
    }

    /// A fleet clock over a wall and a monotonic clock the test moves.
    fn fleet_clock(wall: i64) -> (FleetClock, Arc<AtomicI64>, Arc<AtomicI64>) {
        let wall = Arc::new(AtomicI64::new(wall));
        let mono = Arc::new(AtomicI64::new(0));
        let (w, m) = (wall.clone(), mono.clone());
        let clock = FleetClock::with_sources(
            Box::new(move || w.load(Ordering::SeqCst)),
            Box::new(move || m.load(Ordering::SeqCst)),
        );
        (clock, wall, mono)
    }

    #[test]
    fn fleet_clock_follows_the_database_not_the_local_wall_clock() {
        // This host's clock is 8 s fast.
        let (clock, wall, mono) = fleet_clock(1_000_000 + 8_000);
        assert_eq!(clock.skew_ms(), None, "not read yet");
        assert_eq!(
            clock.now_ms(),
            1_008_000,
            "trusts the local clock until read"
        );
        clock.align(Reading {
            fleet_ms: 1_000_010,
            sent_ms: 0,
            received_ms: 20,
        });
        assert_eq!(clock.now_ms(), 1_000_000);
        assert_eq!(clock.skew_ms(), Some(8_000));
        // Time passes on both clocks: fleet time follows the monotonic clock.
        mono.fetch_add(5_000, Ordering::SeqCst);
        wall.fetch_add(5_000, Ordering::SeqCst);
        assert_eq!(clock.now_ms(), 1_005_000);
        // The wall clock steps back 15 s: fleet time does not move, the skew shows it.
        wall.fetch_sub(15_000, Ordering::SeqCst);
        assert_eq!(clock.now_ms(), 1_005_000);
        assert_eq!(clock.skew_ms(), Some(-7_000));
    }

    #[test]
    fn a_reading_with_a_long_round_trip_is_not_used() {
        let (clock, _wall, _mono) = fleet_clock(50_000);
        clock.align(Reading {
            fleet_ms: 10_000,
            sent_ms: 0,
            received_ms: Reading::MAX_ROUND_TRIP_MS + 1,
        });
        assert_eq!(clock.skew_ms(), None);
        assert_eq!(clock.now_ms(), 50_000);
    }
}
