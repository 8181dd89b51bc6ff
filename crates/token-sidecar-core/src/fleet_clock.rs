//! Reading the fleet's one clock (SPEC §4 rule 9): a few readings of the database's clock into
//! the injected [`Clock`], the quickest answer being the most exact. The server's `clock_upkeep`
//! repeats it every few seconds; the authority reads once when it must mint before that.
use std::time::Duration;

use crate::clock::{Clock, Reading, wall_us};
use crate::store::{RevocationStore, StoreError};

/// Longest wait for one reading.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// The most readings taken at a time. One is taken each time (the clock keeps the best reading,
/// aged by the drift bound); more only while the error is above what the rules need. On a busy
/// database a reading's error is its slow round trip: chasing a tighter bound there would
/// multiply the load by the fleet's size (a thousand sidecars behind one pooler), so the
/// readings stop at a few and the next round comes on the upkeep's interval.
pub const MAX_READINGS: usize = 3;

/// The error bound a round of readings aims at for `max_clock_skew_ms`: a twentieth of the
/// tolerance (25 ms for the default 500 ms), never below a millisecond.
pub fn good_enough_us(max_clock_skew_ms: i64) -> i64 {
    (max_clock_skew_ms.saturating_mul(1_000) / 20).max(1_000)
}

/// Takes one reading of the fleet's clock into `clock` — the database's, or this process's own
/// for a store with no clock of its own — and up to [`MAX_READINGS`] while its error bound is
/// above `good_enough_us`.
pub async fn read(
    store: &dyn RevocationStore,
    clock: &dyn Clock,
    good_enough_us: i64,
) -> Result<(), StoreError> {
    for n in 0..MAX_READINGS {
        if n >= 1 && clock.uncertainty_us().is_some_and(|e| e <= good_enough_us) {
            break;
        }
        let sent_us = clock.monotonic_us();
        let fleet_us = match tokio::time::timeout(READ_TIMEOUT, store.clock_us()).await {
            Ok(answer) => answer?.unwrap_or_else(wall_us),
            Err(_) => return Err(StoreError::Timeout("reading the database's clock")),
        };
        clock.align(Reading {
            fleet_us,
            sent_us,
            received_us: clock.monotonic_us(),
        });
    }
    Ok(())
}
