//! Reading the fleet's one clock (SPEC §4 rule 9): a few readings of the database's clock into
//! the injected [`Clock`], the quickest answer being the most exact. The server's `clock_upkeep`
//! repeats it every few seconds; the authority reads once when it must mint before that.
use std::time::Duration;

use crate::clock::{Clock, Reading, wall_us};
use crate::store::{RevocationStore, StoreError};

/// Longest wait for one reading.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// How many readings are taken at a time (the quickest answer is the most exact).
const READINGS: usize = 3;
/// More are taken, up to [`MAX_READINGS`], while the error is above [`GOOD_ENOUGH_US`] (at
/// start, or on a busy machine).
const MAX_READINGS: usize = 12;
const GOOD_ENOUGH_US: i64 = 1_000;

/// Takes a few readings of the fleet's clock into `clock`: the database's, or this process's
/// own for a store with no clock of its own.
pub async fn read(store: &dyn RevocationStore, clock: &dyn Clock) -> Result<(), StoreError> {
    for n in 0..MAX_READINGS {
        if n >= READINGS && clock.uncertainty_us().is_some_and(|e| e <= GOOD_ENOUGH_US) {
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
