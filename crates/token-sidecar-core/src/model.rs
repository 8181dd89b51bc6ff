//! The vocabulary of revocation state, shared by every layer: changes and their numbers,
//! denylist entries, cutoffs, session rotations, purges and the audit trail. Plain data: the
//! caches apply it, the store persists it, the sync carries it.
use crate::clock::{UnixMillis, UnixSeconds};
/// One link of the store's history chain: each change's link is a digest of the link before it
/// and a random nonce, so two histories that share a number but not a change never share its
/// link.
pub type LinkTag = [u8; 16];

/// Position in the change sequence. 0 means "before any change".
pub type ChangeSeq = i64;

/// What a denylist row refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyKind {
    /// One token, by `jti`.
    Token,
    /// A session, by `sid`.
    Session,
    /// Every session minted for one identity provider session, by `idp_sid` (a back-channel
    /// logout or a Shared Signals `session-revoked`).
    IdpSession,
}

impl DenyKind {
    /// Every kind, in the order the store's `kind` column check lists them: what a copy of the
    /// denylist sizes itself by (the Envoy filter's mirror), what an announcement's kind is
    /// checked against, and what the migrations' check must allow.
    pub const ALL: [DenyKind; 3] = [DenyKind::Token, DenyKind::Session, DenyKind::IdpSession];

    /// This kind's place in [`DenyKind::ALL`].
    pub fn index(self) -> usize {
        match self {
            DenyKind::Token => 0,
            DenyKind::Session => 1,
            DenyKind::IdpSession => 2,
        }
    }

    /// The value stored in the `kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            DenyKind::Token => "jti",
            DenyKind::Session => "sid",
            DenyKind::IdpSession => "idp",
        }
    }

    /// The kind a `kind` column (or an announcement) names, if any.
    pub fn from_name(kind: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == kind)
    }

    /// The kind a stored `kind` column names. An unknown one (a row a newer version wrote) is
    /// an error, never read as some other kind: it could refuse nothing it was meant to.
    pub fn from_column(kind: &str) -> Result<Self, UnknownKind> {
        Self::from_name(kind).ok_or_else(|| UnknownKind(kind.chars().take(16).collect()))
    }
}

/// A denylist row of a kind this version does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the denylist holds a row of unknown kind {0:?} (written by a newer version?)")]
pub struct UnknownKind(pub String);

/// One denylist row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenyEntry {
    /// A token or a session.
    pub kind: DenyKind,
    /// The `jti` or `sid`.
    pub id: String,
    /// The user, when known.
    pub user_id: Option<String>,
    /// After this instant the row refuses nothing that could still be valid.
    pub moot_after_ms: UnixMillis,
}

/// What a change did, as the audit trail names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditAction {
    /// Every token of a user issued up to now (or up to a past instant) was revoked.
    RevokeUser,
    /// A user was banned until a future instant.
    BanUser,
    /// A running ban was ended.
    LiftBan,
    /// One session was revoked.
    RevokeSession,
    /// One token was revoked.
    RevokeToken,
    /// Every session minted for one identity provider session was revoked.
    RevokeIdpSession,
}

impl AuditAction {
    /// The name stored and answered by `ListChanges`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::RevokeUser => "REVOKE_USER",
            AuditAction::BanUser => "BAN_USER",
            AuditAction::LiftBan => "LIFT_BAN",
            AuditAction::RevokeSession => "REVOKE_SESSION",
            AuditAction::RevokeToken => "REVOKE_TOKEN",
            AuditAction::RevokeIdpSession => "REVOKE_IDP_SESSION",
        }
    }

    /// The action a denylist row of `kind` records.
    pub fn of_deny(kind: DenyKind) -> Self {
        match kind {
            DenyKind::Token => AuditAction::RevokeToken,
            DenyKind::Session => AuditAction::RevokeSession,
            DenyKind::IdpSession => AuditAction::RevokeIdpSession,
        }
    }
}

/// Who made a change and why: recorded with the change, in its transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    /// What the change does.
    pub action: AuditAction,
    /// The caller: `admin`, a mutual-TLS identity, `loopback`, `token-holder`,
    /// `backchannel:<iss>`, `ssf:<iss>`, `reuse-detection`.
    pub who: String,
    /// The caller's reason (free text, bounded), or the event type for IdP-driven changes.
    pub why: Option<String>,
    /// When, on the fleet's clock.
    pub at_ms: UnixMillis,
}

/// One change of the audit trail, as `ListChanges` answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Its position in the trail (newer changes have larger ones).
    pub id: i64,
    /// When, on the fleet's clock.
    pub at_ms: UnixMillis,
    /// What was done (an [`AuditAction`] name).
    pub action: String,
    /// The user, when known.
    pub user_id: Option<String>,
    /// The token, session or identity provider session, for a denylist change.
    pub target: Option<String>,
    /// The cutoff (or ban end) a user change set.
    pub until_ms: Option<UnixMillis>,
    /// Who made it.
    pub who: String,
    /// Why.
    pub why: Option<String>,
}

/// One page of the audit trail: changes `before` an id (all when None), newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditQuery<'a> {
    /// Only this user's changes, if given.
    pub user_id: Option<&'a str>,
    /// Only changes older than this position.
    pub before: Option<i64>,
    /// At most this many.
    pub limit: i64,
}

/// A user's cutoff as stored, with the number of the change that set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CutoffRecord {
    /// The cutoff, if the user has one.
    pub cutoff_ms: Option<UnixMillis>,
    /// The change that set it (0 if none).
    pub seq: ChangeSeq,
    /// That change's link in the history chain, where the store keeps one.
    pub link: Option<LinkTag>,
}

/// The outcome of raising a cutoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CutoffUpdate {
    /// The cutoff in force afterwards.
    pub cutoff_ms: UnixMillis,
    /// The change that set it.
    pub seq: ChangeSeq,
    /// Whether this call changed it.
    pub changed: bool,
}

/// One committed change, as the change feed reports it (the row's current state) and as the
/// writer announces it (see [`announcement`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A user's cutoff is now `cutoff_ms`.
    Cutoff {
        /// Its number.
        seq: ChangeSeq,
        /// When it was written, by the writer's wall clock (0 if unknown): for the propagation
        /// metric only.
        committed_ms: UnixMillis,
        /// The user.
        user_id: String,
        /// The cutoff now in force.
        cutoff_ms: UnixMillis,
    },
    /// A token or session is denied.
    Denied {
        /// Its number.
        seq: ChangeSeq,
        /// When it was written, by the writer's wall clock (0 if unknown).
        committed_ms: UnixMillis,
        /// Token or session.
        kind: DenyKind,
        /// The `jti` or `sid`.
        id: String,
        /// After this instant the row refuses nothing that could still be valid.
        moot_after_ms: UnixMillis,
    },
}

impl Change {
    /// The change's number.
    pub fn seq(&self) -> ChangeSeq {
        match self {
            Change::Cutoff { seq, .. } | Change::Denied { seq, .. } => *seq,
        }
    }

    /// When the change was written, by the writer's wall clock (0 if unknown).
    pub fn committed_ms(&self) -> UnixMillis {
        match self {
            Change::Cutoff { committed_ms, .. } | Change::Denied { committed_ms, .. } => {
                *committed_ms
            }
        }
    }
}

/// A Refresh that rotates its session forward (SPEC §11): `new_jti` becomes the session's newest
/// token if the presented token (`presented_jti`) is the newest, or the session has none yet.
#[derive(Debug, Clone)]
pub struct Rotation<'a> {
    /// The session.
    pub session_id: &'a str,
    /// Its user.
    pub user_id: &'a str,
    /// The token presented to Refresh.
    pub presented_jti: &'a str,
    /// When the presented token was minted (its `iat`), in milliseconds.
    pub presented_minted_ms: UnixMillis,
    /// The token about to be minted.
    pub new: SessionHead,
    /// When the session can no longer be refreshed (the row may be purged after).
    pub moot_after_ms: UnixMillis,
}

/// A session's newest token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionHead {
    /// Its `jti`.
    pub jti: String,
    /// When it was minted, in milliseconds.
    pub minted_ms: UnixMillis,
    /// Its `iat`, in seconds.
    pub issued_at: UnixSeconds,
    /// Its `exp`, in seconds.
    pub expires_at: UnixSeconds,
}

/// What a rotation found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotationOutcome {
    /// The new token is now the session's newest.
    Rotated,
    /// The presented token is not the newest.
    Superseded(Superseded),
}

/// The session as a rotation that lost found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superseded {
    /// The session's newest token.
    pub newest: SessionHead,
    /// The token the newest was refreshed from.
    pub parent_jti: String,
    /// When that token was minted, in milliseconds.
    pub parent_minted_ms: UnixMillis,
}

impl Superseded {
    /// When the successor of `presented` was minted: the newest's minting if `presented` is its
    /// parent, else the parent's (an older token's successor is at least that old).
    pub fn successor_minted_ms(&self, presented: &str) -> UnixMillis {
        if presented == self.parent_jti {
            self.newest.minted_ms
        } else {
            self.parent_minted_ms
        }
    }
}

/// How many rows a purge removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    /// Denylist rows.
    pub denylist: u64,
    /// Cutoff rows.
    pub cutoffs: u64,
    /// Audit trail rows older than the retention.
    pub audit: u64,
    /// False when another instance of the fleet purged within the round (nothing was asked).
    pub ran: bool,
}
