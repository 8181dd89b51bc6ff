//! The one decision every proxy surface asks for (SPEC §9), made by the authority and shaped by
//! the core's [`decision`](crate::decision) module (the allow headers, the 401 challenge),
//! counted and logged here by the surface that asked.
use std::sync::Arc;
use std::time::Instant;

use crate::api::log_value::loggable;
use crate::api::sender::ProofInputs;
use crate::api::trace;
use crate::authority::TokenAuthority;
pub use crate::decision::{
    Decision, ForwardedClaim, IDENTITY_HEADERS, Presented, parse_forwarded_claim,
};
use crate::error_code::ErrorCode;
use crate::metrics::Metrics;
use crate::reason::Reason;
use crate::sender::Scheme;

/// Decides for the proxies, with the configured forwarded claims; counts and logs every
/// decision by the surface that asked.
#[derive(Clone)]
pub struct ForwardAuth {
    authority: Arc<TokenAuthority>,
    forwarded: Arc<[ForwardedClaim]>,
    metrics: Arc<Metrics>,
}

impl ForwardAuth {
    /// Decisions by `authority`, forwarding `forwarded` claims on allow, counted in `metrics`.
    pub fn new(
        authority: Arc<TokenAuthority>,
        forwarded: Vec<ForwardedClaim>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            authority,
            forwarded: forwarded.into(),
            metrics,
        }
    }

    /// The authority behind the decisions.
    pub fn authority(&self) -> &Arc<TokenAuthority> {
        &self.authority
    }

    /// Decides for a request carrying this `Authorization` value (if any), asked through
    /// `surface` (the metric's `method` label, e.g. `Check` or `http_auth`).
    pub async fn decide(
        &self,
        authorization: Presented<'_>,
        inputs: ProofInputs,
        surface: &'static str,
    ) -> Decision {
        let started = Instant::now();
        let decision = self.decision(authorization, inputs).await;
        let (result, reason) = match &decision {
            Decision::Allow { .. } => ("ok", ""),
            Decision::Deny { reason, .. } => (
                "denied",
                reason.map_or(ErrorCode::MissingToken.as_str(), Reason::code),
            ),
            Decision::Unavailable => ("unavailable", ErrorCode::StoreUnavailable.as_str()),
        };
        self.metrics.rpc.record(surface, started, result, reason);
        let user_id = match &decision {
            Decision::Allow { user_id, .. } => loggable(user_id),
            _ => "".into(),
        };
        trace::record_outcome(result, reason, &user_id);
        if tracing::enabled!(tracing::Level::DEBUG) {
            let (trace_id, span_id) = trace::log_ids();
            let (trace_id, span_id) = (trace_id.as_deref(), span_id.as_deref());
            tracing::debug!(method = surface, result, reason, user_id = %user_id, trace_id, span_id, "forward-auth");
        }
        decision
    }

    async fn decision(&self, authorization: Presented<'_>, mut inputs: ProofInputs) -> Decision {
        let (token, scheme) = match authorization.token() {
            Ok(presented) => presented,
            Err(decided) => return decided,
        };
        inputs.dpop_scheme = scheme == Scheme::Dpop;
        let proofs = inputs.proof_refs();
        let presentation = inputs.presentation(&proofs);
        let verdict = match self.authority.verify_presented(token, &presentation).await {
            Err(_) => return Decision::Unavailable,
            Ok(verdict) => verdict,
        };
        match verdict.outcome {
            Ok(claims) => match Decision::allow(&claims, &self.forwarded) {
                Decision::Allow {
                    set,
                    remove,
                    user_id,
                    ..
                } => Decision::Allow {
                    set,
                    remove,
                    user_id,
                    nonce: verdict.nonce,
                },
                other => other,
            },
            Err(reason) => Decision::refuse(reason, scheme, verdict.check, verdict.nonce),
        }
    }
}
