//! Readiness, a task of its own: migrates the store and loads the caches (retried with a
//! growing delay, at most `--health-interval`), then keeps checking whether this instance can
//! answer — the caches are within the staleness bound (or serving stale was chosen), or the
//! store pings; the store's file is still the one opened — and reports it through
//! [`crate::health`]: NOT_SERVING until ready, and whenever it cannot answer.
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::health::set_status;
use crate::key_reload::KeyReloader;
use crate::revocations::Revocations;
use crate::shutdown::stopped;
use crate::store::StoreError;

/// Migrates the store and loads the caches, then keeps health in step with whether this
/// instance can answer: NOT_SERVING until loaded, and while the caches are stale and the store
/// is unreachable (unless serving stale answers was chosen).
///
/// Until loaded it retries with a growing delay (at most `interval`), logging each distinct
/// reason once — a database that is full says so ("too many clients"), and the instance becomes
/// SERVING as soon as it gets a connection. Once loaded, the store is pinged only while the
/// caches are stale: an instance in step needs no connection of its own for health (SPEC §10).
pub async fn keep(
    revocations: Arc<Revocations>,
    keys: Arc<KeyReloader>,
    reporter: HealthReporter,
    interval: Duration,
    shutdown: watch::Receiver<bool>,
) {
    let store = revocations.store().clone();
    let mut serving = None;
    let mut not_ready = NotReady::default();
    loop {
        let intact = match store.check_identity() {
            Ok(()) => true,
            Err(e) => {
                if serving != Some(false) {
                    tracing::error!(error = %e, "the store's file is gone: NOT_SERVING");
                }
                false
            }
        };
        let answering = if !intact {
            false
        } else if revocations.is_loaded() {
            revocations.can_answer() || {
                let reachable = store.ping().await.is_ok();
                if !reachable {
                    tracing::warn!("store unreachable and the caches are stale");
                }
                reachable
            }
        } else {
            match prepare(&revocations).await {
                Ok(()) => {
                    tracing::info!(store = store.kind(), "store migrated and caches loaded");
                    not_ready = NotReady::default();
                    true
                }
                Err(e) => {
                    not_ready.record(&revocations, e).await;
                    false
                }
            }
        };
        let answering = answering
            && {
                let ready = keys.ready();
                if !ready && serving != Some(false) {
                    tracing::warn!(
                        "a key set (the issuing service's, or a trusted issuer's) has not been read yet: NOT_SERVING"
                    );
                }
                ready
            };
        if serving != Some(answering) {
            let status = if answering {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            set_status(&reporter, status).await;
            serving = Some(answering);
        }
        let pause = if revocations.is_loaded() && keys.ready() {
            interval
        } else {
            not_ready.next_delay(interval)
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            // Shutdown reports NOT_SERVING itself (see [`draining`]).
            () = stopped(shutdown.clone()) => return,
        }
    }
}

/// Why the store is not ready yet, and how long to wait before trying again.
#[derive(Default)]
struct NotReady {
    attempts: u32,
    last_reason: Option<String>,
    /// When the reason was last logged: a reason that lasts is said again once a minute.
    logged_at: Option<std::time::Instant>,
}

/// How often a lasting reason is logged again.
const SAY_AGAIN: Duration = Duration::from_secs(60);

impl NotReady {
    async fn record(&mut self, revocations: &Revocations, error: StoreError) {
        self.attempts += 1;
        // The pool reports a database that refuses connections only as "timed out": ask it
        // once directly for its reason.
        let refusal = revocations.store().why_unreachable().await;
        let cause = refusal.as_ref().unwrap_or(&error);
        let kind = if cause.is_database_full() {
            "too_many_connections"
        } else if matches!(cause, StoreError::SchemaBehind(_)) {
            "schema_behind"
        } else if matches!(cause, StoreError::Database(_)) {
            "unreachable"
        } else {
            "error"
        };
        let reason = cause.to_string();
        revocations.metrics().store.not_ready(kind);
        let said_long_ago = self.logged_at.is_none_or(|at| at.elapsed() >= SAY_AGAIN);
        if self.last_reason.as_deref() != Some(reason.as_str()) || said_long_ago {
            tracing::warn!(
                error = %reason,
                "store not ready: health is NOT_SERVING; retrying until it is"
            );
            self.last_reason = Some(reason);
            self.logged_at = Some(std::time::Instant::now());
        } else {
            tracing::debug!(attempts = self.attempts, error = %error, "store still not ready");
        }
    }

    /// 100 ms doubling up to `max`, with jitter so that a fleet started together does not
    /// retry in step.
    fn next_delay(&self, max: Duration) -> Duration {
        let base = Duration::from_millis(100u64 << self.attempts.min(8)).min(max);
        base.mul_f64(rand::random_range(0.5..1.0))
    }
}

async fn prepare(revocations: &Revocations) -> Result<(), StoreError> {
    revocations.store().migrate().await?;
    revocations.load().await
}
