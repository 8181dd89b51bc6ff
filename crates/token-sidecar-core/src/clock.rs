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
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

/// Milliseconds since the Unix epoch: the one time unit inside the sidecar.
pub type UnixMillis = i64;

/// Whole seconds since the Unix epoch: a JWT NumericDate (`iat`, `exp`, `nbf`). A type of its
/// own, so that a token's seconds and the sidecar's milliseconds are never mixed up; this module
/// is the one place that converts between them.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct UnixSeconds(pub i64);

impl UnixSeconds {
    /// The whole second `ms` falls in (rounded down, also before the epoch).
    pub const fn floor_of(ms: UnixMillis) -> Self {
        Self(ms.div_euclid(1000))
    }

    /// The start of this second, in milliseconds (saturating).
    pub const fn as_millis(self) -> UnixMillis {
        self.0.saturating_mul(1000)
    }

    /// The raw number of seconds.
    pub const fn get(self) -> i64 {
        self.0
    }
}

impl From<UnixSeconds> for serde_json::Value {
    fn from(seconds: UnixSeconds) -> Self {
        seconds.0.into()
    }
}

impl std::fmt::Display for UnixSeconds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// `ms` split into whole seconds and the nanoseconds past them (a protobuf `Timestamp`).
pub const fn seconds_and_nanos(ms: UnixMillis) -> (i64, i32) {
    (
        ms.div_euclid(1000),
        (ms.rem_euclid(1000) * 1_000_000) as i32,
    )
}

/// `ms` as a fractional NumericDate (`orig_iat`): exact for every millisecond within
/// ±285,000 years, as an f64 holds 53 bits.
pub fn fractional_seconds(ms: UnixMillis) -> f64 {
    ms as f64 / 1000.0
}

/// A fractional NumericDate rounded to the millisecond; `None` when it is not finite, negative
/// or absurdly far away.
pub fn millis_of_fractional_seconds(seconds: f64) -> Option<UnixMillis> {
    let ms = (seconds * 1000.0).round();
    (ms.is_finite() && (0.0..=(i64::MAX / 2) as f64).contains(&ms)).then_some(ms as i64)
}

/// Whole seconds as a duration in milliseconds (saturating).
pub const fn millis_in_seconds(seconds: i64) -> i64 {
    seconds.saturating_mul(1000)
}

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    /// The fleet's current time, in milliseconds since the Unix epoch.
    fn now_ms(&self) -> UnixMillis;

    /// Milliseconds on a clock that never steps (only differences mean anything).
    fn monotonic_ms(&self) -> i64;

    /// How far this process's own wall clock is ahead of the fleet's (negative: behind), or
    /// `None` while the fleet's clock has not been read yet.
    fn skew_ms(&self) -> Option<i64>;

    /// The earliest the fleet's time can be now: [`Clock::now_ms`] less its error. A mint time
    /// stamped with it is never later than the moment of minting, so that a revoke-all that
    /// follows the mint covers the token even if this instance's reading of the fleet's clock
    /// is a little ahead.
    fn earliest_ms(&self) -> UnixMillis {
        self.now_ms()
    }

    /// How far [`Clock::now_ms`] may be off the fleet's time, in µs; None until read.
    fn uncertainty_us(&self) -> Option<i64> {
        Some(0)
    }

    /// Takes a reading of the fleet's clock into account.
    fn align(&self, _reading: Reading) {}

    /// [`Clock::monotonic_ms`] in microseconds, for readings of the fleet's clock.
    fn monotonic_us(&self) -> i64 {
        self.monotonic_ms().saturating_mul(1000)
    }
}

/// One reading of the fleet's clock, in microseconds: its time, read between two instants of
/// [`Clock::monotonic_us`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// The fleet's time as read (µs since the epoch).
    pub fleet_us: i64,
    /// When the question was sent.
    pub sent_us: i64,
    /// When the answer arrived.
    pub received_us: i64,
}

impl Reading {
    /// Longest round trip whose reading is used at all (its error is at most half of it).
    pub const MAX_ROUND_TRIP_US: i64 = 1_000_000;

    /// How long the question took to be answered.
    fn round_trip_us(&self) -> i64 {
        self.received_us.saturating_sub(self.sent_us)
    }
}

/// The wall clock, read directly: for log lines and measurements only, never for rules, which
/// read the injected [`Clock`].
pub fn wall_ms() -> UnixMillis {
    chrono::Utc::now().timestamp_millis()
}

/// This process's own wall clock, in microseconds since the Unix epoch.
pub fn wall_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Microseconds since this process first asked, on the monotonic clock — made to never step
/// back (see [`Carry`]).
fn process_monotonic_us() -> i64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    static CARRY: parking_lot::Mutex<Carry> = parking_lot::Mutex::new(Carry::new());
    let origin = *ORIGIN.get_or_init(Instant::now);
    let now = Instant::now();
    let raw = match now.checked_duration_since(origin) {
        Some(ahead) => i64::try_from(ahead.as_micros()).unwrap_or(i64::MAX),
        None => i64::try_from(origin.duration_since(now).as_micros()).map_or(i64::MIN, |b| -b),
    };
    CARRY.lock().read(raw)
}

/// Keeps a clock that should never step back from doing so. CLOCK_MONOTONIC does not step on a
/// sane host, but a process can be made to see it step (libfaketime shifts it with the wall
/// clock unless told not to), and staleness measured across a step back would shrink: a reading
/// below the last one is carried forward by the difference, so time goes on from where it was.
#[derive(Debug)]
pub struct Carry {
    correction: i64,
    last: i64,
}

impl Carry {
    /// A carry that has seen nothing yet.
    pub const fn new() -> Self {
        Self {
            correction: 0,
            last: i64::MIN,
        }
    }

    /// The reading `raw`, carried past any step back.
    pub fn read(&mut self, raw: i64) -> i64 {
        let mut corrected = raw.saturating_add(self.correction);
        if corrected < self.last {
            self.correction = self.correction.saturating_add(self.last - corrected);
            corrected = self.last;
        }
        self.last = corrected;
        corrected
    }
}

impl Default for Carry {
    fn default() -> Self {
        Self::new()
    }
}

/// The local wall clock as the fleet's: for a store no other instance shares (and tools).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> UnixMillis {
        wall_ms()
    }

    fn monotonic_ms(&self) -> i64 {
        process_monotonic_us() / 1000
    }

    fn monotonic_us(&self) -> i64 {
        process_monotonic_us()
    }

    fn skew_ms(&self) -> Option<i64> {
        Some(0)
    }
}

type Source = Box<dyn Fn() -> i64 + Send + Sync>;

/// The fleet's clock as seen from this process: the monotonic clock plus an offset measured
/// against the database's clock. Until the first reading it trusts the local wall clock (and
/// says so: [`Clock::skew_ms`] is `None`).
///
/// Readings are filtered as NTP does: the one with the shortest round trip is the most exact
/// (its error is at most half of it), so a reading replaces the one in use only when it is at
/// least as exact as that one has become with age (the monotonic clock may drift from the
/// database's by [`FleetClock::DRIFT_PPM`]). A slow answer on a busy machine therefore never
/// moves fleet time by more than the error it already had.
pub struct FleetClock {
    /// Wall clock, µs since the epoch.
    wall: Source,
    /// Monotonic clock, µs.
    monotonic: Source,
    /// Fleet time minus monotonic time, µs.
    offset: AtomicI64,
    in_use: parking_lot::Mutex<Option<Sample>>,
}

/// The reading in use: its offset, error bound and when it was taken.
#[derive(Debug, Clone, Copy)]
struct Sample {
    error_us: i64,
    taken_us: i64,
}

impl std::fmt::Debug for FleetClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetClock")
            .field("offset_us", &self.offset)
            .field("in_use", &self.in_use)
            .finish()
    }
}

impl Default for FleetClock {
    fn default() -> Self {
        Self::with_sources(Box::new(wall_us), Box::new(process_monotonic_us))
    }
}

impl FleetClock {
    /// How fast the monotonic clock may drift from the database's, in parts per million.
    pub const DRIFT_PPM: i64 = 100;

    /// A fleet clock over this process's wall and monotonic clocks.
    pub fn new() -> Self {
        Self::default()
    }

    /// A fleet clock over the given wall and monotonic clocks, both in µs (tests step them).
    fn with_sources(wall: Source, monotonic: Source) -> Self {
        let offset = wall().saturating_sub(monotonic());
        Self {
            wall,
            monotonic,
            offset: AtomicI64::new(offset),
            in_use: parking_lot::Mutex::new(None),
        }
    }

    fn now_us(&self) -> i64 {
        self.offset
            .load(Ordering::Acquire)
            .saturating_add((self.monotonic)())
    }

    /// The error of `sample` by `at_us`: half its round trip, plus the drift since.
    fn aged(sample: &Sample, at_us: i64) -> i64 {
        sample.error_us.saturating_add(
            at_us.saturating_sub(sample.taken_us).max(0) * Self::DRIFT_PPM / 1_000_000,
        )
    }
}

impl Clock for FleetClock {
    fn now_ms(&self) -> UnixMillis {
        self.now_us().div_euclid(1000)
    }

    fn monotonic_ms(&self) -> i64 {
        (self.monotonic)().div_euclid(1000)
    }

    fn monotonic_us(&self) -> i64 {
        (self.monotonic)()
    }

    fn skew_ms(&self) -> Option<i64> {
        self.in_use
            .lock()
            .is_some()
            .then(|| (self.wall)().saturating_sub(self.now_us()) / 1000)
    }

    fn earliest_ms(&self) -> UnixMillis {
        let error = self.uncertainty_us().unwrap_or(0);
        self.now_us().saturating_sub(error).div_euclid(1000)
    }

    fn uncertainty_us(&self) -> Option<i64> {
        let at = (self.monotonic)();
        self.in_use.lock().as_ref().map(|s| Self::aged(s, at))
    }

    fn align(&self, reading: Reading) {
        let round_trip = reading.round_trip_us();
        if !(0..=Reading::MAX_ROUND_TRIP_US).contains(&round_trip) {
            return;
        }
        let error_us = round_trip / 2;
        // The answer was given somewhere in the round trip: its middle errs by at most half.
        let midpoint = reading.sent_us.saturating_add(error_us);
        let offset = reading.fleet_us.saturating_sub(midpoint);
        let mut in_use = self.in_use.lock();
        if let Some(current) = &*in_use {
            let aged = Self::aged(current, reading.received_us);
            // Both readings' error bounds overlap: the less exact one adds nothing. When they do
            // not, the database's clock itself moved (a failover to another host, a step of
            // its clock): follow it.
            let apart = offset.abs_diff(self.offset.load(Ordering::Acquire));
            let consistent = apart <= aged.saturating_add(error_us).unsigned_abs();
            if error_us > aged && consistent {
                return;
            }
        }
        self.offset.store(offset, Ordering::Release);
        *in_use = Some(Sample {
            error_us,
            taken_us: reading.received_us,
        });
    }
}

/// A clock that only moves when told to; shared by clones, for tests.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<AtomicI64>,
    monotonic: Arc<AtomicI64>,
}

impl ManualClock {
    /// A clock standing at `now_ms`, in step with the fleet's.
    pub fn new(now_ms: UnixMillis) -> Self {
        Self {
            now: Arc::new(AtomicI64::new(now_ms)),
            monotonic: Arc::new(AtomicI64::new(0)),
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
}

impl Clock for ManualClock {
    fn now_ms(&self) -> UnixMillis {
        self.now.load(Ordering::SeqCst)
    }

    fn monotonic_ms(&self) -> i64 {
        self.monotonic.load(Ordering::SeqCst)
    }

    /// A manual clock is the fleet's: never skewed.
    fn skew_ms(&self) -> Option<i64> {
        Some(0)
    }
}

#[cfg(test)]
#[path = "clock_tests.rs"]
mod tests;
