//! The authority's vocabulary: its requests, answers and errors.
use serde_json::{Map, Value};

use crate::clock::UnixMillis;
use crate::error_code::ErrorCode;
use crate::ids::{MintedId, UserId};
use crate::policy::TokenTimes;
use crate::reason::Reason;
use crate::store::StoreError;
use crate::token::Claims;
use crate::token::CodecError;

/// Longest accepted user id, in bytes.
pub use crate::policy::MAX_USER_ID_BYTES;
/// Largest accepted custom claims, as compact JSON, so that tokens stay well under the size cap.
pub const MAX_CUSTOM_CLAIMS_BYTES: usize = 4 * 1024;
/// Shortest token lifetime a caller may ask for.
pub const MIN_TTL_MS: i64 = 1000;
/// Longest `reason` a caller may give for a change (Revoke, LiftBan), in bytes.
pub const MAX_REASON_BYTES: usize = 512;
/// How far ahead an indefinite ban (an identity provider's `account-disabled`) is set: until the
/// provider says `account-enabled`, or an operator lifts it.
pub const INDEFINITE_BAN_MS: i64 = 100 * 365 * 86_400_000;
/// Most audit records one `ListChanges` page holds.
pub const MAX_PAGE_SIZE: i64 = 500;
/// Audit records per page when the caller does not say.
pub const DEFAULT_PAGE_SIZE: i64 = 50;

/// Why a request could not be served.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    /// A request field is missing or out of bounds.
    #[error("{field}: {message}")]
    InvalidArgument {
        /// The request field.
        field: &'static str,
        /// The machine-readable reason.
        reason: ErrorCode,
        /// What is wrong with it.
        message: String,
    },
    /// The presented token is not acceptable (Refresh).
    #[error("token rejected: {0}")]
    Rejected(Reason),
    /// The presented token is sender-constrained and its proof of possession failed
    /// (Refresh, SPEC §15).
    #[error("token rejected: {}", .0.reason)]
    SenderRefused(SenderRefusal),
    /// The presented token cannot even be identified as ours (Revoke by token).
    #[error("invalid token: {0}")]
    InvalidToken(Reason),
    /// The user is banned until the given time (Issue).
    #[error("the user is banned")]
    Banned {
        /// The end of the ban.
        until_ms: UnixMillis,
    },
    /// Issue for an identity provider session that was logged out.
    #[error("the identity provider session has ended (logged out)")]
    IdpSessionEnded,
    /// This sidecar only verifies (it holds no signing key, SPEC §7): minting and the
    /// privileged writes are the issuing service's.
    #[error(
        "this sidecar is verify-only: {operation} is done by the issuing service \
         ({issuing_service})"
    )]
    VerifyOnly {
        /// The refused RPC.
        operation: &'static str,
        /// Who does it, as configured (its `iss`, and where its keys are read).
        issuing_service: String,
    },
    /// The store is still starting up.
    #[error("the store is not ready yet")]
    NotReady,
    /// This instance's clock is off the fleet's beyond `--max-clock-skew`: it may not mint
    /// (SPEC §4 rule 9).
    #[error(
        "this instance's clock is {skew_ms} ms off the database's (at most {max_ms} ms \
         tolerated): it issues no token until its clock is corrected"
    )]
    ClockSkew {
        /// Own clock minus the fleet's.
        skew_ms: i64,
        /// The tolerance.
        max_ms: i64,
    },
    /// The fleet's clock could not be read yet.
    #[error("the database's clock has not been read yet")]
    ClockUnread,
    /// The store did not answer; nothing was acknowledged.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A token could not be signed.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// What Issue is asked for.
#[derive(Debug, Clone)]
pub struct IssueRequest {
    /// The token's subject.
    pub user_id: UserId,
    /// Custom claims to carry.
    pub claims: Map<String, Value>,
    /// Requested lifetime, capped by configuration.
    pub ttl_ms: Option<i64>,
    /// The identity provider's session the token is minted for (its `sid`), if any: a
    /// back-channel logout of that session revokes the token.
    pub idp_session_id: Option<String>,
    /// `dpop_jkt`: the DPoP key the token is bound to (SPEC §15).
    pub dpop_jkt: Option<String>,
    /// `x5t_s256`: the client certificate the token is bound to (SPEC §15).
    pub x5t_s256: Option<String>,
}

/// A refused proof of possession: the reason, the check that failed, and a fresh nonce for
/// the client when nonces are required.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderRefusal {
    /// The token reason (`REASON_PROOF_…`, `REASON_NONCE_REQUIRED`).
    pub reason: Reason,
    /// The check that failed (`htu`, `iat`, ...).
    pub check: &'static str,
    /// With `--dpop-nonce`: the nonce to retry with.
    pub nonce: Option<String>,
}

/// Verify's answer for a presented token: the verdict, and — with `--dpop-nonce`, when a DPoP
/// proof came or was due — a fresh nonce for the client's next proof.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// The claims, or why the token is refused.
    pub outcome: Result<Claims, Reason>,
    /// For a refused proof, the check that failed.
    pub check: Option<&'static str>,
    /// A fresh nonce, when nonces are required and DPoP is in play.
    pub nonce: Option<String>,
}

impl Verdict {
    pub(super) fn plain(outcome: Result<Claims, Reason>) -> Self {
        Self {
            outcome,
            check: None,
            nonce: None,
        }
    }
}

/// Who asks for a change and why: recorded in the audit trail with the change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// The caller (see [`Audit::who`]).
    pub who: String,
    /// The caller's reason, if given.
    pub why: Option<String>,
}

impl Cause {
    /// A change `who` asks for, for `why`.
    pub fn new(who: impl Into<String>, why: Option<String>) -> Self {
        Self {
            who: who.into(),
            why,
        }
    }
}

/// A freshly minted token and its times.
#[derive(Clone)]
pub struct IssuedToken {
    /// The compact JWS.
    pub token: String,
    /// Its `jti`.
    pub jti: String,
    /// Its `sid`.
    pub session_id: String,
    /// Its times.
    pub times: TokenTimes,
}

/// What to revoke.
#[derive(Debug, Clone)]
pub enum RevokeTarget {
    /// The session of this token.
    Token(String),
    /// One token by id.
    Jti(MintedId),
    /// One session by id.
    Session(MintedId),
    /// Every token of a user issued up to `until` (default now); a future `until` bans.
    User {
        /// The user.
        user_id: UserId,
        /// The new cutoff.
        until_ms: Option<UnixMillis>,
    },
}

/// What a Revoke did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevokeOutcome {
    /// Whether a row was written.
    pub stored: bool,
    /// For a user: the cutoff in force afterwards.
    pub revoked_until_ms: Option<UnixMillis>,
    /// For a user: whether the user is banned afterwards.
    pub banned: bool,
    /// For a token: the session that is revoked.
    pub session_id: Option<String>,
    /// For a token: whose session it is (for the request log).
    pub user_id: Option<String>,
}

/// A user's revocation state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserStatus {
    /// The cutoff, if any.
    pub cutoff_ms: Option<UnixMillis>,
    /// Whether the cutoff lies in the future.
    pub banned: bool,
    /// While banned: who set the ban (the audit trail's `who`), if recorded.
    pub banned_by: Option<String>,
}

/// What an identity provider's lifting of a ban did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiftOutcome {
    /// The ban was the sender's own, and is lifted.
    Lifted,
    /// A ban set by someone else runs, and stays.
    NotOwner,
    /// No ban ran.
    NoBan,
}
