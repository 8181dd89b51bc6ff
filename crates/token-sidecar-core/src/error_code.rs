//! Every machine-readable code the sidecar answers with or counts besides a token's
//! [`Reason`](crate::reason::Reason): the `google.rpc.ErrorInfo` reason of an error, and the
//! `reason` label of `rpc_requests_total`. One list, so that a dashboard, an alert or a client
//! can rely on the spelling.
/// A machine-readable error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// A user id that is empty, too long or has control/invisible characters.
    InvalidUserId,
    /// A custom claim named like a reserved one.
    ReservedClaim,
    /// Custom claims over the size bound.
    ClaimsTooLarge,
    /// A `ttl` under 1 s, or one that would expire at once.
    InvalidTtl,
    /// A `jti` or `session_id` this service never mints.
    InvalidId,
    /// A timestamp out of range.
    InvalidTimestamp,
    /// A duration out of range.
    InvalidDuration,
    /// Revoke without a target.
    MissingTarget,
    /// An identity provider session id that is empty, too long or not printable.
    InvalidIdpSessionId,
    /// A `reason` over 512 bytes or with control characters.
    InvalidReason,
    /// A `page_size` out of range.
    InvalidPageSize,
    /// A `page_token` this service did not return.
    InvalidPageToken,
    /// The store did not answer; nothing was decided or changed.
    StoreUnavailable,
    /// A commit's answer was lost and could not be re-checked.
    OutcomeUnknown,
    /// This instance's clock is off the fleet's, or not read yet.
    ClockSkew,
    /// A token could not be signed.
    SigningFailed,
    /// Issue for an identity provider session that was logged out.
    IdpSessionEnded,
    /// Too many requests in flight.
    Overloaded,
    /// Issue, Refresh or a privileged write asked of a verify-only sidecar.
    VerifyOnly,
    /// A privileged call without a credential.
    MissingCredential,
    /// A privileged call with a wrong credential.
    InvalidCredential,
    /// A client certificate whose identity may not call privileged RPCs.
    IdentityNotAllowed,
    /// Introspection with no introspection credential configured.
    IntrospectionNotConfigured,
    /// An HTTP request that is not what the route takes (no form, too large, repeated
    /// parameter).
    InvalidRequest,
    /// A route's request rate was exceeded.
    RateLimited,
    /// Something failed on our side.
    Internal,
    /// A proxy's request carried no token.
    MissingToken,
    /// An identity provider's event that is not a well-formed event of its kind.
    Malformed,
    /// An event from an issuer that is not configured.
    UnknownIssuer,
    /// An event no key of its issuer verifies.
    InvalidKey,
    /// An event addressed to someone else.
    WrongAudience,
    /// An event too old, from the future, or expired.
    Stale,
    /// An event received before.
    Replayed,
    /// The issuer's keys could not be read.
    KeysUnavailable,
    /// A receiver that is not configured.
    NotConfigured,
    /// The change feed's reader followed another history: it must start again from 0.
    HistoryChanged,
    /// Refresh of a trusted issuer's token: only the sidecar's own tokens are refreshed here.
    NotOurToken,
    /// A `dpop_jkt` or `x5t_s256` that is not a SHA-256 thumbprint (43 base64url characters).
    InvalidThumbprint,
}

impl ErrorCode {
    /// Every code, in declaration order: a new variant joins it (docs/reference.md lists each,
    /// and a test compares the two).
    pub const ALL: [ErrorCode; 38] = [
        ErrorCode::InvalidUserId,
        ErrorCode::ReservedClaim,
        ErrorCode::ClaimsTooLarge,
        ErrorCode::InvalidTtl,
        ErrorCode::InvalidId,
        ErrorCode::InvalidTimestamp,
        ErrorCode::InvalidDuration,
        ErrorCode::MissingTarget,
        ErrorCode::InvalidIdpSessionId,
        ErrorCode::InvalidReason,
        ErrorCode::InvalidPageSize,
        ErrorCode::InvalidPageToken,
        ErrorCode::StoreUnavailable,
        ErrorCode::OutcomeUnknown,
        ErrorCode::ClockSkew,
        ErrorCode::SigningFailed,
        ErrorCode::IdpSessionEnded,
        ErrorCode::Overloaded,
        ErrorCode::VerifyOnly,
        ErrorCode::MissingCredential,
        ErrorCode::InvalidCredential,
        ErrorCode::IdentityNotAllowed,
        ErrorCode::IntrospectionNotConfigured,
        ErrorCode::InvalidRequest,
        ErrorCode::RateLimited,
        ErrorCode::Internal,
        ErrorCode::MissingToken,
        ErrorCode::Malformed,
        ErrorCode::UnknownIssuer,
        ErrorCode::InvalidKey,
        ErrorCode::WrongAudience,
        ErrorCode::Stale,
        ErrorCode::Replayed,
        ErrorCode::KeysUnavailable,
        ErrorCode::NotConfigured,
        ErrorCode::HistoryChanged,
        ErrorCode::NotOurToken,
        ErrorCode::InvalidThumbprint,
    ];

    /// The code as answered and counted.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidUserId => "INVALID_USER_ID",
            ErrorCode::ReservedClaim => "RESERVED_CLAIM",
            ErrorCode::ClaimsTooLarge => "CLAIMS_TOO_LARGE",
            ErrorCode::InvalidTtl => "INVALID_TTL",
            ErrorCode::InvalidId => "INVALID_ID",
            ErrorCode::InvalidTimestamp => "INVALID_TIMESTAMP",
            ErrorCode::InvalidDuration => "INVALID_DURATION",
            ErrorCode::MissingTarget => "MISSING_TARGET",
            ErrorCode::InvalidIdpSessionId => "INVALID_IDP_SESSION_ID",
            ErrorCode::InvalidReason => "INVALID_REASON",
            ErrorCode::InvalidPageSize => "INVALID_PAGE_SIZE",
            ErrorCode::InvalidPageToken => "INVALID_PAGE_TOKEN",
            ErrorCode::StoreUnavailable => "STORE_UNAVAILABLE",
            ErrorCode::OutcomeUnknown => "OUTCOME_UNKNOWN",
            ErrorCode::ClockSkew => "CLOCK_SKEW",
            ErrorCode::SigningFailed => "SIGNING_FAILED",
            ErrorCode::IdpSessionEnded => "IDP_SESSION_ENDED",
            ErrorCode::Overloaded => "OVERLOADED",
            ErrorCode::VerifyOnly => "VERIFY_ONLY",
            ErrorCode::MissingCredential => "MISSING_CREDENTIAL",
            ErrorCode::InvalidCredential => "INVALID_CREDENTIAL",
            ErrorCode::IdentityNotAllowed => "IDENTITY_NOT_ALLOWED",
            ErrorCode::IntrospectionNotConfigured => "INTROSPECTION_NOT_CONFIGURED",
            ErrorCode::InvalidRequest => "INVALID_REQUEST",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::MissingToken => "MISSING_TOKEN",
            ErrorCode::Malformed => "MALFORMED",
            ErrorCode::UnknownIssuer => "UNKNOWN_ISSUER",
            ErrorCode::InvalidKey => "INVALID_KEY",
            ErrorCode::WrongAudience => "WRONG_AUDIENCE",
            ErrorCode::Stale => "STALE",
            ErrorCode::Replayed => "REPLAYED",
            ErrorCode::KeysUnavailable => "KEYS_UNAVAILABLE",
            ErrorCode::NotConfigured => "NOT_CONFIGURED",
            ErrorCode::HistoryChanged => "HISTORY_CHANGED",
            ErrorCode::NotOurToken => "NOT_OUR_TOKEN",
            ErrorCode::InvalidThumbprint => "INVALID_THUMBPRINT",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_holds_every_code_once_in_order() {
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(*code as usize, i, "{code}");
        }
        let names: std::collections::HashSet<_> =
            ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), ErrorCode::ALL.len());
    }
}
