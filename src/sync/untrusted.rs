//! What arrives on the channel, which is untrusted (SPEC §10): an announcement is opened with the
//! fleet's key and its ids checked as the API checks them before anything is applied; what is
//! dropped is counted and logged at most once a minute per reason.
use std::time::Duration;

use tokio::time::Instant;

use crate::ids::{MintedId, UserId};
use crate::revocations::Revocations;
use crate::store::announcement::{self, Announcement, Rejected};
use crate::store::{Change, DenyKind};

/// How often each reason for dropping announcements is logged at most.
const REJECTION_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Opens an announcement: the fleet's, authentic, well formed, with ids the API accepts.
pub(super) async fn open(
    revocations: &Revocations,
    payload: &[u8],
) -> Result<Announcement, Rejected> {
    if payload.len() > announcement::MAX_ANNOUNCEMENT_BYTES {
        return Err(Rejected::Oversized);
    }
    // The key is read when the caches load; before that nothing is applied anyway.
    let Ok(Some(fleet)) = revocations.store().fleet().await else {
        return Err(Rejected::Unauthenticated);
    };
    let announcement = fleet.open(payload)?;
    let id_ok = match &announcement.change {
        Change::Cutoff { user_id, .. } => UserId::parse(user_id.as_str()).is_ok(),
        // Every jti and sid is minted by us: 128 random bits, base64url; an identity
        // provider's session id is bounded like a user id.
        Change::Denied {
            kind: DenyKind::IdpSession,
            id,
            ..
        } => UserId::parse(id.as_str()).is_ok(),
        Change::Denied {
            kind: DenyKind::Token | DenyKind::Session,
            id,
            ..
        } => MintedId::parse(id.as_str()).is_ok(),
    };
    if !id_ok {
        return Err(Rejected::InvalidId);
    }
    Ok(announcement)
}

/// Counts dropped announcements and logs each reason at most once a minute.
#[derive(Default)]
pub(super) struct Rejections {
    logged: std::collections::HashMap<&'static str, (Instant, u64)>,
}

impl Rejections {
    pub(super) fn record(&mut self, revocations: &Revocations, why: Rejected) {
        let why = why.as_str();
        revocations.metrics().sync.announcement_rejected(why);
        let now = Instant::now();
        let first = !self.logged.contains_key(why);
        let (last, since) = self.logged.entry(why).or_insert((now, 0));
        *since += 1;
        if first || now.duration_since(*last) >= REJECTION_LOG_INTERVAL {
            tracing::warn!(
                why,
                dropped = *since,
                "change announcements dropped without a query (the channel is untrusted: a \
                 forger, another fleet, or another history); logged at most once a minute"
            );
            *last = now;
            *since = 0;
        }
    }
}
