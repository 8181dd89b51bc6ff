//! The tests of `clock`.
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

/// A fleet clock over a wall and a monotonic clock (µs) the test moves.
fn fleet_clock(wall_ms: i64) -> (FleetClock, Arc<AtomicI64>, Arc<AtomicI64>) {
    let wall = Arc::new(AtomicI64::new(wall_ms * 1000));
    let mono = Arc::new(AtomicI64::new(0));
    let (w, m) = (wall.clone(), mono.clone());
    let clock = FleetClock::with_sources(
        Box::new(move || w.load(Ordering::SeqCst)),
        Box::new(move || m.load(Ordering::SeqCst)),
    );
    (clock, wall, mono)
}

const MS: i64 = 1000;

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
        fleet_us: 1_000_010 * MS,
        sent_us: 0,
        received_us: 20 * MS,
    });
    assert_eq!(clock.now_ms(), 1_000_000);
    assert_eq!(clock.skew_ms(), Some(8_000));
    assert_eq!(clock.uncertainty_us(), Some(10 * MS));
    assert_eq!(clock.earliest_ms(), 999_990, "mint times are never late");
    // Time passes on both clocks: fleet time follows the monotonic clock.
    mono.fetch_add(5_000 * MS, Ordering::SeqCst);
    wall.fetch_add(5_000 * MS, Ordering::SeqCst);
    assert_eq!(clock.now_ms(), 1_005_000);
    // The wall clock steps back 15 s: fleet time does not move, the skew shows it.
    wall.fetch_sub(15_000 * MS, Ordering::SeqCst);
    assert_eq!(clock.now_ms(), 1_005_000);
    assert_eq!(clock.skew_ms(), Some(-7_000));
}

#[test]
fn a_slow_answer_does_not_replace_a_more_exact_reading() {
    let (clock, _wall, mono) = fleet_clock(50_000);
    clock.align(Reading {
        fleet_us: 10_000 * MS + 200,
        sent_us: 0,
        received_us: 400,
    });
    assert_eq!(clock.now_ms(), 10_000);
    // A busy moment: the answer took 300 ms, and its middle is 100 ms off.
    mono.store(1_000 * MS, Ordering::SeqCst);
    clock.align(Reading {
        fleet_us: 10_800 * MS,
        sent_us: 700 * MS,
        received_us: 1_000 * MS,
    });
    assert_eq!(clock.now_ms(), 11_000, "the exact reading is kept");
    // A quick answer replaces it.
    clock.align(Reading {
        fleet_us: 11_003 * MS,
        sent_us: 1_000 * MS,
        received_us: 1_000 * MS + 200,
    });
    assert_eq!(clock.now_ms(), 11_002);
    // An hour later the kept reading may have drifted by 360 ms: a 500 ms round trip
    // (250 ms of error) is then the better one.
    mono.store(3_601_000 * MS, Ordering::SeqCst);
    clock.align(Reading {
        fleet_us: 3_611_500 * MS,
        sent_us: 3_600_500 * MS,
        received_us: 3_601_000 * MS,
    });
    assert_eq!(clock.now_ms(), 3_611_750);
}

#[test]
fn when_the_database_clock_moves_the_fleet_clock_follows() {
    let (clock, _wall, mono) = fleet_clock(50_000);
    clock.align(Reading {
        fleet_us: 10_000 * MS + 100,
        sent_us: 0,
        received_us: 200,
    });
    assert_eq!(clock.now_ms(), 10_000);
    // A failover to a host whose clock is 2 s ahead: a slower reading, but one that cannot
    // be squared with the exact one — the reference moved.
    mono.store(1_000 * MS, Ordering::SeqCst);
    clock.align(Reading {
        fleet_us: 12_995 * MS,
        sent_us: 1_000 * MS - 10 * MS,
        received_us: 1_000 * MS,
    });
    assert_eq!(clock.now_ms(), 13_000);
}

#[test]
fn a_monotonic_clock_that_steps_back_is_carried_forward() {
    let mut carry = Carry::new();
    assert_eq!(carry.read(1_000), 1_000);
    assert_eq!(carry.read(5_000), 5_000);
    // A step back of 15 s: time goes on from where it was.
    assert_eq!(carry.read(5_000 - 15_000), 5_000);
    assert_eq!(carry.read(5_000 - 15_000 + 4_000), 9_000);
    assert_eq!(carry.read(5_000 - 15_000 + 4_001), 9_001);
}

#[test]
fn a_reading_with_a_long_round_trip_is_not_used() {
    let (clock, _wall, _mono) = fleet_clock(50_000);
    clock.align(Reading {
        fleet_us: 10_000 * MS,
        sent_us: 0,
        received_us: Reading::MAX_ROUND_TRIP_US + 1,
    });
    assert_eq!(clock.skew_ms(), None);
    assert_eq!(clock.now_ms(), 50_000);
}
