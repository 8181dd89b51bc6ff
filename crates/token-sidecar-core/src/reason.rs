//! Why a token is refused: the domain twin of the proto `Reason` enum.

/// Why a token was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Reason {
    /// Not a compact JWS we can read, or over the size cap.
    #[error("the token is malformed")]
    Malformed,
    /// Unknown `kid`, an `alg` that does not match its key, or a signature that does not verify.
    #[error("the token's signature is not valid")]
    BadSignature,
    /// `exp` has passed (after leeway).
    #[error("the token has expired")]
    Expired,
    /// `nbf` is still in the future (after leeway).
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("the token was issued by someone else")]
    WrongIssuer,
    /// `aud` does not name the configured audience.
    #[error("the token is meant for another audience")]
    WrongAudience,
    /// A required claim is absent.
    #[error("the token lacks a required claim")]
    MissingClaim,
    /// All of the user's tokens up to the cutoff were revoked.
    #[error("all of the user's tokens were revoked")]
    UserRevoked,
    /// The user is banned (the cutoff lies in the future).
    #[error("the user is banned")]
    UserBanned,
    /// The token or its session was revoked.
    #[error("the token was revoked")]
    TokenRevoked,
    /// The session is older than the refresh window.
    #[error("the session can no longer be refreshed")]
    RefreshExpired,
    /// A token older than its session's newest was refreshed again: the session was revoked.
    #[error("the token was refreshed before: its session was revoked")]
    RefreshReused,
    /// The token is sender-constrained and came without a proof of possession (SPEC §15).
    #[error("the token is bound to a key: a proof of possession is required")]
    ProofRequired,
    /// The DPoP proof (or the client certificate) failed a check.
    #[error("the proof of possession is not valid")]
    ProofInvalid,
    /// The DPoP proof was used before.
    #[error("the DPoP proof was used before")]
    ProofReplayed,
    /// A DPoP nonce is required and the proof had none, or a stale one.
    #[error("a fresh DPoP nonce is required")]
    NonceRequired,
}

impl Reason {
    /// Every reason, in the proto's order.
    pub const ALL: [Reason; 16] = [
        Reason::Malformed,
        Reason::BadSignature,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::WrongIssuer,
        Reason::WrongAudience,
        Reason::MissingClaim,
        Reason::UserRevoked,
        Reason::UserBanned,
        Reason::TokenRevoked,
        Reason::RefreshExpired,
        Reason::RefreshReused,
        Reason::ProofRequired,
        Reason::ProofInvalid,
        Reason::ProofReplayed,
        Reason::NonceRequired,
    ];

    /// The reason's one spelling, as the API names it (`REASON_USER_BANNED`): the `Reason` value
    /// of Verify, `ErrorInfo.reason`, the `error_description` of a 401, and the `reason` of the
    /// metrics and the request logs.
    pub fn code(self) -> &'static str {
        match self {
            Reason::Malformed => "REASON_MALFORMED",
            Reason::BadSignature => "REASON_BAD_SIGNATURE",
            Reason::Expired => "REASON_EXPIRED",
            Reason::NotYetValid => "REASON_NOT_YET_VALID",
            Reason::WrongIssuer => "REASON_WRONG_ISSUER",
            Reason::WrongAudience => "REASON_WRONG_AUDIENCE",
            Reason::MissingClaim => "REASON_MISSING_CLAIM",
            Reason::UserRevoked => "REASON_USER_REVOKED",
            Reason::UserBanned => "REASON_USER_BANNED",
            Reason::TokenRevoked => "REASON_TOKEN_REVOKED",
            Reason::RefreshExpired => "REASON_REFRESH_EXPIRED",
            Reason::RefreshReused => "REASON_REFRESH_REUSED",
            Reason::ProofRequired => "REASON_PROOF_REQUIRED",
            Reason::ProofInvalid => "REASON_PROOF_INVALID",
            Reason::ProofReplayed => "REASON_PROOF_REPLAYED",
            Reason::NonceRequired => "REASON_NONCE_REQUIRED",
        }
    }
}
