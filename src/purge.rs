//! Background upkeep of the store: every `--purge-interval`, delete denylist rows, cutoffs and
//! session heads that can no longer refuse anything — once per interval for the whole fleet on a
//! shared PostgreSQL (the first instance to tick takes the round), not once per sidecar; and
//! rebuild the denylist filter as soon as it outgrows its size (not at the next tick), as an
//! overfull filter sends every Verify to the store.
use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::policy::RevocationPolicy;
use crate::revocations::Revocations;

/// Deletes denylist rows and cutoffs that can no longer refuse anything.
pub async fn run(
    revocations: Arc<Revocations>,
    policy: RevocationPolicy,
    clock: Arc<dyn Clock>,
    interval: Duration,
) {
    let mut ticker = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = revocations.filter_overfull() => {
                match revocations.maintain_filter().await {
                    Ok(_) => tracing::debug!("denylist filter outgrew its size: rebuilt"),
                    Err(e) => tracing::warn!(error = %e, "filter rebuild failed; will retry"),
                }
                continue;
            }
        }
        if !revocations.is_loaded() {
            continue;
        }
        // One round per interval for the whole fleet: whoever ticks first takes it.
        match revocations
            .purge(policy.purge_horizon(clock.now_ms()), interval)
            .await
        {
            Ok(purged) if !purged.ran => {
                tracing::debug!("another instance purged this round");
            }
            Ok(purged) => tracing::debug!(
                denylist = purged.denylist,
                cutoffs = purged.cutoffs,
                "purged moot revocations"
            ),
            Err(e) => tracing::warn!(error = %e, "purge failed; will retry"),
        }
    }
}
