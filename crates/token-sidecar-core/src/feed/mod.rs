//! The change feed as a proxy filter reads it (`GET /revocations/changes` on the sidecar's HTTP
//! listener), and [`Mirror`]: a copy of the revocation state built from it, judged by the same
//! rules as Verify.
//!
//! The wire format is defined once here: the sidecar writes [`FeedPage`], the filter reads it.
//! A reader starts at 0 (every change still held: the snapshot), pages on with `after=next`
//! and `anchor`, and starts again from 0 when the sidecar answers 409 (the store's history is
//! not the one it followed).
pub mod binary;
mod deny_set;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

pub use deny_set::{DenySet, Key, Keyer};

use crate::clock::UnixMillis;
use crate::model::{Change, ChangeSeq, DenyKind};
use crate::policy::{DenyStatus, RevocationPolicy};
use crate::reason::Reason;
use crate::token::Claims;

/// Most changes one page carries.
pub const MAX_PAGE: i64 = 10_000;

/// One change, on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FeedChange {
    /// A user's cutoff is now `cutoff_ms` (newer numbers win, also when lower: a lifted ban).
    Cutoff {
        /// The change's number.
        seq: ChangeSeq,
        /// The user.
        user_id: String,
        /// The cutoff in force, in ms on the fleet's clock.
        cutoff_ms: UnixMillis,
        /// After this instant no token the cutoff refuses can still be valid: the sidecar
        /// purges it then, and a copy drops it (absent from older sidecars: kept).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        moot_after_ms: Option<UnixMillis>,
    },
    /// A token (`jti`), session (`sid`) or identity provider session (`idp`) is denied.
    Denied {
        /// The change's number.
        seq: ChangeSeq,
        /// `jti`, `sid` or `idp`.
        kind: String,
        /// The id.
        id: String,
        /// After this instant the row refuses nothing that could still be valid.
        moot_after_ms: UnixMillis,
    },
}

impl From<&Change> for FeedChange {
    fn from(change: &Change) -> Self {
        match change {
            Change::Cutoff {
                seq,
                user_id,
                cutoff_ms,
                ..
            } => FeedChange::Cutoff {
                seq: *seq,
                user_id: user_id.clone(),
                cutoff_ms: *cutoff_ms,
                moot_after_ms: None,
            },
            Change::Denied {
                seq,
                kind,
                id,
                moot_after_ms,
                ..
            } => FeedChange::Denied {
                seq: *seq,
                kind: kind.as_str().to_owned(),
                id: id.clone(),
                moot_after_ms: *moot_after_ms,
            },
        }
    }
}

impl FeedChange {
    /// The change as the feed sends it, with the instant the sidecar's purge may drop it under
    /// `policy` (its purge horizon): a copy drops it at the same moment on the fleet clock.
    pub fn with_horizon(change: &Change, policy: &RevocationPolicy) -> Self {
        let mut wire = Self::from(change);
        match &mut wire {
            FeedChange::Cutoff {
                cutoff_ms,
                moot_after_ms,
                ..
            } => *moot_after_ms = Some(policy.cutoff_moot_after(*cutoff_ms)),
            FeedChange::Denied { moot_after_ms, .. } => {
                *moot_after_ms = policy.denied_moot_after(*moot_after_ms);
            }
        }
        wire
    }
}

/// One page of the feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedPage {
    /// The changes after the asked position, in order.
    pub changes: Vec<FeedChange>,
    /// The position after this page: the `after` of the next request.
    pub next: ChangeSeq,
    /// The history's link at `next` (hex), the `anchor` of the next request; absent from a
    /// store that keeps no chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor: Option<String>,
    /// Whether more changes follow at once (the page was full).
    pub more: bool,
    /// The fleet's time when the page was read, in ms.
    pub now_ms: UnixMillis,
}

/// Why a change could not be applied to a [`Mirror`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MirrorError {
    /// The mirror holds its bound already.
    #[error("the revocation state exceeds {0} entries")]
    Full(usize),
    /// A denied kind this build does not know.
    #[error("unknown denied kind {0:?}")]
    UnknownKind(String),
}

/// A copy of the revocation state, bounded in entries, fed change by change; it answers what
/// Verify answers after the decode (rules 1 and 5) for the state it has applied. Denied ids are
/// held compact ([`DenySet`]: 16 bytes an id and its moot second).
#[derive(Debug)]
pub struct Mirror {
    /// By user (the user id's 128-bit key, as denied ids are held): the change's number, the
    /// cutoff, and when it is moot (`i64::MAX`: never said). Two users sharing a key — keyed at
    /// random per copy, about n²/2¹²⁹ for n users, nothing an outsider can aim at — share the
    /// newer of their changes: a revoke-all or a ban then refuses both; only a lifted ban could
    /// lift the other's too.
    cutoffs: HashMap<Key, (ChangeSeq, UnixMillis, UnixMillis)>,
    /// One set per kind, sized by [`DenyKind::ALL`] (a new kind needs no change here).
    denied: [DenySet; DenyKind::ALL.len()],
    keyer: Keyer,
    watermark: ChangeSeq,
    max_entries: usize,
}

impl Mirror {
    /// An empty mirror holding at most `max_entries` cutoffs and denied ids together.
    pub fn new(max_entries: usize) -> Self {
        Self {
            cutoffs: HashMap::new(),
            denied: Default::default(),
            keyer: Keyer::default(),
            watermark: 0,
            max_entries,
        }
    }

    /// The last change number applied.
    pub fn watermark(&self) -> ChangeSeq {
        self.watermark
    }

    /// Cutoffs and denied ids held.
    pub fn len(&self) -> usize {
        self.cutoffs.len() + self.denied.iter().map(DenySet::len).sum::<usize>()
    }

    /// The bytes the denied ids take (for the measurements).
    pub fn denied_heap_bytes(&self) -> usize {
        self.denied.iter().map(DenySet::heap_bytes).sum()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies one change (one already applied is ignored); rows moot at `now` are not kept.
    pub fn apply(&mut self, change: &FeedChange, now: UnixMillis) -> Result<(), MirrorError> {
        let seq = match change {
            FeedChange::Cutoff {
                seq,
                user_id,
                cutoff_ms,
                moot_after_ms,
            } => {
                let moot = moot_after_ms.unwrap_or(UnixMillis::MAX);
                let user = self.keyer.key(user_id);
                match self.cutoffs.get_mut(&user) {
                    Some(held) if held.0 >= *seq => {}
                    // Moot already: nothing it refuses can be valid; as if none were held.
                    Some(_) if moot < now => {
                        self.cutoffs.remove(&user);
                    }
                    Some(held) => *held = (*seq, *cutoff_ms, moot),
                    None if moot < now => {}
                    None => {
                        self.make_room()?;
                        self.cutoffs.insert(user, (*seq, *cutoff_ms, moot));
                    }
                }
                *seq
            }
            FeedChange::Denied {
                seq,
                kind,
                id,
                moot_after_ms,
            } => {
                let kind = DenyKind::from_name(kind)
                    .ok_or_else(|| MirrorError::UnknownKind(kind.clone()))?;
                if *moot_after_ms >= now {
                    let key = self.keyer.key(id);
                    // Looked up only at the bound: a load of a million pays one search each.
                    if self.len() >= self.max_entries && !self.denied[kind.index()].contains(&key) {
                        return Err(MirrorError::Full(self.max_entries));
                    }
                    self.denied[kind.index()].insert(key, *moot_after_ms);
                }
                *seq
            }
        };
        self.watermark = self.watermark.max(seq);
        Ok(())
    }

    fn make_room(&self) -> Result<(), MirrorError> {
        if self.len() >= self.max_entries {
            return Err(MirrorError::Full(self.max_entries));
        }
        Ok(())
    }

    /// Drops denied ids and cutoffs moot before `now` (a token they refused can no longer be
    /// valid), by the sidecar's own purge horizons.
    pub fn purge(&mut self, now: UnixMillis) {
        self.cutoffs.retain(|_, (_, _, moot)| *moot >= now);
        for ids in &mut self.denied {
            ids.purge(now);
        }
    }

    /// The rules Verify applies after the decode (SPEC §4 rules 1 and 5), on this state.
    pub fn check(&self, claims: &Claims, now: UnixMillis) -> Result<(), Reason> {
        let cutoff = self
            .cutoffs
            .get(&self.keyer.key(&claims.user_id))
            .map(|(_, c, _)| *c);
        RevocationPolicy::check_cutoff(cutoff, claims.orig_iat_ms, now)?;
        let denied_by = claims
            .deny_ids()
            .find(|(kind, id)| self.denied[kind.index()].contains(&self.keyer.key(id)))
            .map(|(kind, _)| kind);
        RevocationPolicy::check_denylist(DenyStatus { denied_by })
    }
}

/// A link tag as the feed writes it.
pub fn link_hex(tag: &[u8]) -> String {
    tag.iter().map(|b| format!("{b:02x}")).collect()
}

/// A link tag the feed wrote; None for anything else.
pub fn link_from_hex(text: &str) -> Option<crate::model::LinkTag> {
    let mut tag = [0u8; 16];
    if text.len() != 32 {
        return None;
    }
    for (i, byte) in tag.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(tag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::UnixSeconds;

    fn claims(user: &str, orig_iat_ms: UnixMillis) -> Claims {
        Claims {
            user_id: user.into(),
            jti: "j1".into(),
            session_id: "s1".into(),
            issued_at: UnixSeconds::floor_of(orig_iat_ms),
            expires_at: UnixSeconds::floor_of(orig_iat_ms + 300_000),
            not_before: None,
            orig_iat_ms,
            idp_session_id: Some("i1".into()),
            extra: serde_json::Map::new(),
            issuer: None,
            binding: Default::default(),
        }
    }

    fn cutoff(seq: i64, user: &str, ms: i64) -> FeedChange {
        FeedChange::Cutoff {
            seq,
            user_id: user.into(),
            cutoff_ms: ms,
            moot_after_ms: None,
        }
    }

    fn denied(seq: i64, kind: &str, id: &str, moot: i64) -> FeedChange {
        FeedChange::Denied {
            seq,
            kind: kind.into(),
            id: id.into(),
            moot_after_ms: moot,
        }
    }

    #[test]
    fn the_mirror_answers_what_verify_answers() {
        let mut m = Mirror::new(100);
        let now = 10_000;
        assert_eq!(m.check(&claims("u", 5_000), now), Ok(()));
        m.apply(&cutoff(1, "u", 5_000), now).expect("apply");
        assert_eq!(m.check(&claims("u", 5_000), now), Err(Reason::UserRevoked));
        assert_eq!(m.check(&claims("u", 5_001), now), Ok(()), "a later login");
        m.apply(&cutoff(2, "u", 20_000), now).expect("ban");
        assert_eq!(m.check(&claims("u", 9_000), now), Err(Reason::UserBanned));
        // A lifted ban is a newer, lower cutoff; an old change replayed changes nothing.
        m.apply(&cutoff(3, "u", now), now).expect("lift");
        m.apply(&cutoff(2, "u", 20_000), now).expect("replayed");
        assert_eq!(m.check(&claims("u", 9_000), now), Err(Reason::UserRevoked));
        assert_eq!(m.check(&claims("u", now + 1), now), Ok(()));
        for (seq, kind, id) in [(4, "jti", "j1"), (5, "sid", "s1"), (6, "idp", "i1")] {
            let mut one = Mirror::new(100);
            one.apply(&denied(seq, kind, id, now + 1), now)
                .expect("deny");
            assert_eq!(
                one.check(&claims("v", 1), now),
                Err(Reason::TokenRevoked),
                "{kind}"
            );
        }
        assert_eq!(m.watermark(), 3);
    }

    /// Users and ids are held by 128-bit keys: two that share one (forced here; keyed at random
    /// per copy otherwise) make the copy refuse what it would have admitted, never the reverse.
    #[test]
    fn a_shared_key_can_only_refuse() {
        let mut m = Mirror::new(100);
        m.keyer.colliding = true;
        let now = 10_000;
        m.apply(&denied(1, "jti", "someone-elses", now + 1), now)
            .expect("deny");
        let mut other = claims("v", 1);
        other.jti = "mine".into();
        assert_eq!(m.check(&other, now), Err(Reason::TokenRevoked));
        m.apply(&cutoff(2, "u", 5_000), now).expect("revoke-all");
        assert_eq!(
            m.check(&claims("w", 4_000), now),
            Err(Reason::UserRevoked),
            "another user's cutoff, under the shared key, refuses (rule 1 before rule 5)"
        );
        let mut clean = Mirror::new(100);
        clean.keyer.colliding = true;
        clean
            .apply(&cutoff(1, "u", 5_000), now)
            .expect("revoke-all");
        assert_eq!(
            clean.check(&claims("w", 4_000), now),
            Err(Reason::UserRevoked)
        );
        assert_eq!(
            clean.check(&claims("w", 5_001), now),
            Ok(()),
            "a later login"
        );
        // Without the forced collision the two users are apart.
        let mut apart = Mirror::new(100);
        apart
            .apply(&cutoff(1, "u", 5_000), now)
            .expect("revoke-all");
        assert_eq!(apart.check(&claims("w", 4_000), now), Ok(()));
        assert_eq!(
            apart.check(&claims("u", 4_000), now),
            Err(Reason::UserRevoked)
        );
    }

    #[test]
    fn moot_rows_are_not_kept_and_the_bound_holds() {
        let mut m = Mirror::new(2);
        m.apply(&denied(1, "jti", "old", 99), 100).expect("moot");
        assert!(m.is_empty());
        assert_eq!(m.watermark(), 1, "a moot change still moves the position");
        m.apply(&denied(2, "jti", "a", 200_000), 100).expect("a");
        m.apply(&cutoff(3, "u", 50), 100).expect("u");
        assert_eq!(
            m.apply(&denied(4, "sid", "b", 200_000), 100),
            Err(MirrorError::Full(2))
        );
        m.apply(&cutoff(5, "u", 60), 100)
            .expect("a held user is updated in place");
        // Denied ids are held to the second: moot at 200 s, dropped past it.
        m.purge(200_000);
        assert_eq!(m.len(), 2);
        m.purge(200_001);
        assert_eq!(m.len(), 1);
        assert!(matches!(
            m.apply(&denied(6, "what", "x", 300), 100),
            Err(MirrorError::UnknownKind(_))
        ));
    }

    #[test]
    fn a_cutoff_goes_when_the_sidecar_would_purge_it() {
        let policy = RevocationPolicy {
            refresh_window_ms: 1_000,
            leeway_ms: 0,
            max_clock_skew_ms: 0,
            ..RevocationPolicy::default()
        };
        let change = Change::Cutoff {
            seq: 1,
            user_id: "u".into(),
            cutoff_ms: 5_000,
            committed_ms: 0,
        };
        let wire = FeedChange::with_horizon(&change, &policy);
        let FeedChange::Cutoff { moot_after_ms, .. } = &wire else {
            panic!("a cutoff")
        };
        assert_eq!(*moot_after_ms, Some(6_001));
        // The sidecar's purge keeps it through 6,001 and may delete it after.
        assert!(policy.purge_horizon(6_001).cutoffs_before <= 5_000);
        assert!(policy.purge_horizon(6_002).cutoffs_before > 5_000);
        let mut m = Mirror::new(10);
        m.apply(&wire, 5_500).expect("apply");
        assert_eq!(
            m.check(&claims("u", 4_000), 5_500),
            Err(Reason::UserRevoked)
        );
        m.purge(6_001);
        assert_eq!(m.len(), 1);
        m.purge(6_002);
        assert!(m.is_empty(), "moot: dropped as the sidecar purges it");
        // A moot change is not kept at all.
        m.apply(&wire, 7_000).expect("apply");
        assert!(m.is_empty());
    }

    #[test]
    fn pages_and_links_round_trip() {
        let page = FeedPage {
            changes: vec![cutoff(1, "u", 5), denied(2, "sid", "s", 9)],
            next: 2,
            anchor: Some(link_hex(&[0xab; 16])),
            more: false,
            now_ms: 7,
        };
        let json = serde_json::to_string(&page).expect("json");
        assert!(json.contains(r#""type":"cutoff""#), "{json}");
        assert_eq!(serde_json::from_str::<FeedPage>(&json).expect("back"), page);
        assert_eq!(link_from_hex(&link_hex(&[7; 16])), Some([7; 16]));
        assert_eq!(link_from_hex("zz"), None);
        assert_eq!(link_from_hex(&"g".repeat(32)), None);
    }
}
