//! Security events: refresh tokens reused after the interval, IdP events not acted on.
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

/// `refresh_reuse_detected_total`, `idp_events_ignored_total`.
pub struct SecurityMetrics {
    /// Refreshes of a superseded token after the reuse interval (sessions revoked, SPEC §11).
    pub refresh_reuse_detected: Counter,
    /// Security events from identity providers accepted but not acted on (an event type we do
    /// not act on, SSF's verification event).
    pub idp_events_ignored: Counter,
}

impl SecurityMetrics {
    /// Registers the families.
    pub fn register(registry: &mut Registry) -> Self {
        let this = Self {
            refresh_reuse_detected: Counter::default(),
            idp_events_ignored: Counter::default(),
        };
        registry.register(
            "refresh_reuse_detected",
            "Refreshes of an older token of a session after the reuse interval: the session was \
             revoked",
            this.refresh_reuse_detected.clone(),
        );
        registry.register(
            "idp_events_ignored",
            "Security events from identity providers (Shared Signals) accepted and not acted on: \
             an event type the sidecar does not act on, or a stream verification",
            this.idp_events_ignored.clone(),
        );
        this
    }
}
