//! Security events: refresh tokens reused after the interval, IdP events not acted on.
use super::Registrar;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::label_enum;

label_enum! {
    /// Why an identity provider's event was accepted and not acted on.
    Ignored {
        /// An event type the sidecar does not act on (SSF's verification event included).
        EventType => "event_type",
        /// RISC `account-enabled` for a ban another party set (SPEC §13: a ban has an owner).
        NotOwner => "not_owner",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IgnoredLabels {
    why: Ignored,
}

/// `refresh_reuse_detected_total`, `idp_events_ignored_total{why}`.
pub struct SecurityMetrics {
    /// Refreshes of a superseded token after the reuse interval (sessions revoked, SPEC §11).
    pub refresh_reuse_detected: Counter,
    idp_events_ignored: Family<IgnoredLabels, Counter>,
}

impl SecurityMetrics {
    /// Registers the families.
    pub fn register(registry: &mut Registrar) -> Self {
        let this = Self {
            refresh_reuse_detected: Counter::default(),
            idp_events_ignored: Family::default(),
        };
        registry.register(
            "refresh_reuse_detected",
            "Refreshes of an older token of a session after the reuse interval: the session was \
             revoked",
            this.refresh_reuse_detected.clone(),
        );
        registry.register(
            "idp_events_ignored",
            "Security events from identity providers accepted and not acted on, by why: an \
             event type the sidecar does not act on (or a stream verification), or a ban lifted \
             by a transmitter that did not set it",
            this.idp_events_ignored.clone(),
        );
        this
    }

    /// Counts an identity provider's event accepted and not acted on.
    pub fn idp_event_ignored(&self, why: Ignored) {
        self.idp_events_ignored
            .get_or_create(&IgnoredLabels { why })
            .inc();
    }
}
