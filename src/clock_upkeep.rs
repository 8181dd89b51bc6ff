//! Keeps this instance on the fleet's one clock (SPEC §4 rule 9): reads the database's clock
//! every few seconds into the injected [`Clock`], and reports how far this process's own clock is
//! off it — the `clock_skew_ms` and `clock_in_step` metrics, the `clock` health name (NOT_SERVING
//! while Issue and Refresh are refused) and one log line per change.
use std::time::Duration;

use tokio::sync::watch;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::policy::{ClockCheck, RevocationPolicy};
use crate::shutdown::stopped;
use crate::store::RevocationStore;

/// The health name that is SERVING while this instance's clock is within `--max-clock-skew` of
/// the database's (and so may issue and refresh tokens).
pub const HEALTH_NAME: &str = "clock";

/// How often the database's clock is read while it answers.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// How soon it is read again after a failed reading.
const RETRY: Duration = Duration::from_secs(1);
pub use token_sidecar_core::fleet_clock::read;

/// Reads the fleet's clock every [`INTERVAL`] until shutdown, reporting the skew.
pub async fn keep(
    store: std::sync::Arc<dyn RevocationStore>,
    clock: std::sync::Arc<dyn Clock>,
    policy: RevocationPolicy,
    metrics: std::sync::Arc<Metrics>,
    reporter: HealthReporter,
    shutdown: watch::Receiver<bool>,
) {
    reporter
        .set_service_status(HEALTH_NAME, ServingStatus::NotServing)
        .await;
    let mut last: Option<ClockCheck> = None;
    loop {
        let good_enough_us =
            token_sidecar_core::fleet_clock::good_enough_us(policy.max_clock_skew_ms);
        // Spread (±20 %): a fleet started together does not read the clock in step.
        let pause = match read(store.as_ref(), clock.as_ref(), good_enough_us).await {
            Ok(()) => INTERVAL,
            Err(e) => {
                tracing::debug!(error = %e, "could not read the database's clock; retrying");
                RETRY
            }
        }
        .mul_f64(crate::sync::jitter());
        let skew = clock.skew_ms();
        let check = policy.check_clock(skew);
        metrics.clock.skew_ms.set(skew.unwrap_or(0));
        metrics
            .clock
            .uncertainty_us
            .set(clock.uncertainty_us().unwrap_or(-1));
        metrics
            .clock
            .in_step
            .set(i64::from(check == ClockCheck::InStep));
        if last != Some(check) && report(check, last, policy.max_clock_skew_ms) {
            let status = match check {
                ClockCheck::InStep => ServingStatus::Serving,
                _ => ServingStatus::NotServing,
            };
            reporter.set_service_status(HEALTH_NAME, status).await;
            last = Some(check);
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            () = stopped(shutdown.clone()) => return,
        }
    }
}

/// Logs a change of the clock's state; false when there is nothing to report yet (not read
/// while nothing was known before either).
fn report(check: ClockCheck, last: Option<ClockCheck>, max_ms: i64) -> bool {
    match check {
        ClockCheck::InStep => {
            if last.is_some() {
                tracing::info!("this process's clock is back within --max-clock-skew");
            }
            true
        }
        ClockCheck::Skewed { skew_ms } => {
            // A skew that only grows or shrinks is one state: logged once.
            if !matches!(last, Some(ClockCheck::Skewed { .. })) {
                tracing::warn!(
                    skew_ms,
                    max_clock_skew_ms = max_ms,
                    "this process's clock is off the database's beyond --max-clock-skew: \
                     Issue and Refresh answer UNAVAILABLE until it is corrected (check NTP)"
                );
            }
            true
        }
        ClockCheck::Unread => last.is_some(),
    }
}
