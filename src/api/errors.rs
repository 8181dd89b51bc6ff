//! The one error mapping of the gRPC surfaces: [`classify`] is the table from a domain error to
//! its gRPC code, metric result label and reason; [`to_status`] builds the `Status` with an
//! AIP-193 `google.rpc.ErrorInfo` (domain [`ERROR_DOMAIN`]) and, for argument errors, a
//! `BadRequest`.
use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::api::convert::proto_reason;
use crate::authority::AuthorityError;
use crate::error_code::ErrorCode;
use crate::reason::Reason;
use crate::store::StoreError;

/// The `domain` of every `google.rpc.ErrorInfo` we send.
pub const ERROR_DOMAIN: &str = "token-sidecar";

/// How an error is reported: its gRPC code, its metric `result` label and its reason (the
/// `ErrorInfo.reason` and the metric `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classified {
    /// The gRPC status code.
    pub code: Code,
    /// The metric `result` label.
    pub result: &'static str,
    /// The machine-readable reason.
    pub reason: &'static str,
}

/// The one table from domain errors to code, result label and reason.
pub fn classify(err: &AuthorityError) -> Classified {
    let (code, result, reason) = match err {
        AuthorityError::InvalidArgument { reason, .. } => {
            (Code::InvalidArgument, "invalid_argument", reason.as_str())
        }
        AuthorityError::Rejected(r) => (Code::Unauthenticated, "unauthenticated", r.code()),
        AuthorityError::SenderRefused(refusal) => (
            Code::Unauthenticated,
            "unauthenticated",
            refusal.reason.code(),
        ),
        AuthorityError::InvalidToken(r) => (Code::InvalidArgument, "invalid_argument", r.code()),
        AuthorityError::Banned { .. } => (
            Code::PermissionDenied,
            "permission_denied",
            Reason::UserBanned.code(),
        ),
        AuthorityError::IdpSessionEnded => (
            Code::PermissionDenied,
            "permission_denied",
            ErrorCode::IdpSessionEnded.as_str(),
        ),
        // Issue and Refresh need a key this sidecar does not hold; the privileged writes are
        // not this sidecar's to make, whoever asks.
        AuthorityError::VerifyOnly {
            operation: "Issue" | "Refresh",
            ..
        } => (
            Code::FailedPrecondition,
            "failed_precondition",
            ErrorCode::VerifyOnly.as_str(),
        ),
        AuthorityError::VerifyOnly { .. } => (
            Code::PermissionDenied,
            "permission_denied",
            ErrorCode::VerifyOnly.as_str(),
        ),
        AuthorityError::Store(StoreError::OutcomeUnknown) => (
            Code::Unavailable,
            "unavailable",
            ErrorCode::OutcomeUnknown.as_str(),
        ),
        AuthorityError::Store(StoreError::Overloaded) => (
            Code::Unavailable,
            "unavailable",
            ErrorCode::Overloaded.as_str(),
        ),
        AuthorityError::NotReady | AuthorityError::Store(_) => (
            Code::Unavailable,
            "unavailable",
            ErrorCode::StoreUnavailable.as_str(),
        ),
        AuthorityError::ClockSkew { .. } | AuthorityError::ClockUnread => (
            Code::Unavailable,
            "unavailable",
            ErrorCode::ClockSkew.as_str(),
        ),
        AuthorityError::Codec(_) => (
            Code::Internal,
            "internal",
            ErrorCode::SigningFailed.as_str(),
        ),
    };
    Classified {
        code,
        result,
        reason,
    }
}

/// The status of a domain error: [`classify`]'s code, an AIP-193 `ErrorInfo` with the reason,
/// and a message for people.
pub fn to_status(err: AuthorityError) -> Status {
    let code = classify(&err).code;
    match err {
        AuthorityError::InvalidArgument {
            field,
            reason,
            message,
        } => invalid_argument(field, reason.as_str(), &message),
        AuthorityError::Rejected(reason) | AuthorityError::InvalidToken(reason) => {
            token_status(code, reason)
        }
        AuthorityError::SenderRefused(refusal) => {
            let name = proto_reason(refusal.reason).as_str_name();
            let mut metadata = reason_metadata(refusal.reason);
            metadata.insert("check".into(), refusal.check.to_owned());
            if let Some(nonce) = refusal.nonce {
                metadata.insert("dpop_nonce".into(), nonce);
            }
            Status::with_error_details(
                code,
                format!("{} ({name}: {})", refusal.reason, refusal.check),
                ErrorDetails::with_error_info(name, ERROR_DOMAIN, metadata),
            )
        }
        AuthorityError::Banned { until_ms } => {
            let until = chrono::DateTime::from_timestamp_millis(until_ms)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                .unwrap_or_default();
            let mut metadata = reason_metadata(Reason::UserBanned);
            metadata.insert("banned_until".into(), until.clone());
            Status::with_error_details(
                code,
                format!("the user is banned until {until} (REASON_USER_BANNED)"),
                ErrorDetails::with_error_info(
                    proto_reason(Reason::UserBanned).as_str_name(),
                    ERROR_DOMAIN,
                    metadata,
                ),
            )
        }
        AuthorityError::IdpSessionEnded => Status::with_error_details(
            code,
            "the identity provider session was logged out: log in again (IDP_SESSION_ENDED)",
            ErrorDetails::with_error_info(
                ErrorCode::IdpSessionEnded.as_str(),
                ERROR_DOMAIN,
                HashMap::new(),
            ),
        ),
        AuthorityError::VerifyOnly {
            operation,
            ref issuing_service,
        } => Status::with_error_details(
            code,
            err.to_string(),
            ErrorDetails::with_error_info(
                ErrorCode::VerifyOnly.as_str(),
                ERROR_DOMAIN,
                HashMap::from([
                    ("operation".to_owned(), operation.to_owned()),
                    ("issuing_service".to_owned(), issuing_service.clone()),
                ]),
            ),
        ),
        AuthorityError::NotReady => unavailable("the store is not ready yet; retry shortly"),
        AuthorityError::ClockSkew { .. } | AuthorityError::ClockUnread => {
            let message = err.to_string();
            Status::with_error_details(
                code,
                message,
                ErrorDetails::with_error_info(
                    ErrorCode::ClockSkew.as_str(),
                    ERROR_DOMAIN,
                    HashMap::new(),
                ),
            )
        }
        AuthorityError::Store(StoreError::OutcomeUnknown) => {
            tracing::warn!("a commit's answer was lost and could not be re-checked");
            Status::with_error_details(
                code,
                "the store did not confirm the commit: the outcome is unknown; retry (Revoke is \
                 idempotent)",
                ErrorDetails::with_error_info(
                    ErrorCode::OutcomeUnknown.as_str(),
                    ERROR_DOMAIN,
                    HashMap::new(),
                ),
            )
        }
        // Not logged per request: a flood is what produces it (counted as the RPC's reason).
        AuthorityError::Store(StoreError::Overloaded) => Status::with_error_details(
            code,
            "too many requests of this kind wait for the store; retry with backoff \
             (nothing was changed)",
            ErrorDetails::with_error_info(
                ErrorCode::Overloaded.as_str(),
                ERROR_DOMAIN,
                HashMap::new(),
            ),
        ),
        AuthorityError::Store(e @ StoreError::Lost(_)) => {
            tracing::error!(error = %e, "write refused");
            unavailable(&format!("{e}; nothing was changed or acknowledged"))
        }
        AuthorityError::Store(e) => {
            tracing::warn!(error = %e, "store error");
            unavailable("the store did not answer; nothing was changed or acknowledged")
        }
        AuthorityError::Codec(e) => {
            tracing::error!(error = %e, "could not sign a token");
            Status::with_error_details(
                code,
                "could not sign the token",
                ErrorDetails::with_error_info(
                    ErrorCode::SigningFailed.as_str(),
                    ERROR_DOMAIN,
                    HashMap::new(),
                ),
            )
        }
    }
}

/// The answer to a request shed because too many are in flight: retry later, with backoff.
pub fn overloaded(limit: usize) -> Status {
    Status::with_error_details(
        Code::ResourceExhausted,
        format!("more than {limit} requests in flight; retry with backoff"),
        ErrorDetails::with_error_info(ErrorCode::Overloaded.as_str(), ERROR_DOMAIN, HashMap::new()),
    )
}

fn reason_metadata(reason: Reason) -> HashMap<String, String> {
    HashMap::from([(
        "reason".to_owned(),
        proto_reason(reason).as_str_name().to_owned(),
    )])
}

fn token_status(code: Code, reason: Reason) -> Status {
    let name = proto_reason(reason).as_str_name();
    Status::with_error_details(
        code,
        format!("{reason} ({name})"),
        ErrorDetails::with_error_info(name, ERROR_DOMAIN, reason_metadata(reason)),
    )
}

/// An INVALID_ARGUMENT with its reason and a `BadRequest` field violation.
pub fn invalid_argument(field: &str, reason: &str, message: &str) -> Status {
    let mut details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, HashMap::new());
    details.add_bad_request_violation(field, message);
    Status::with_error_details(
        Code::InvalidArgument,
        format!("{field}: {message}"),
        details,
    )
}

fn unavailable(message: &str) -> Status {
    Status::with_error_details(
        Code::Unavailable,
        message,
        ErrorDetails::with_error_info(
            ErrorCode::StoreUnavailable.as_str(),
            ERROR_DOMAIN,
            HashMap::new(),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_carry_error_info_with_the_reason() {
        let status = to_status(AuthorityError::Rejected(Reason::TokenRevoked));
        assert_eq!(status.code(), Code::Unauthenticated);
        let details = status.get_error_details();
        let info = details.error_info().expect("error info");
        assert_eq!(info.reason, "REASON_TOKEN_REVOKED");
        assert_eq!(info.domain, ERROR_DOMAIN);
        assert_eq!(info.metadata["reason"], "REASON_TOKEN_REVOKED");
        let banned = to_status(AuthorityError::Banned { until_ms: 0 });
        assert_eq!(banned.code(), Code::PermissionDenied);
        assert!(banned.message().contains("USER_BANNED"));
    }

    #[test]
    fn the_table_and_the_status_agree_on_the_code() {
        for err in [
            AuthorityError::Rejected(Reason::Expired),
            AuthorityError::InvalidToken(Reason::Malformed),
            AuthorityError::Banned { until_ms: 1 },
            AuthorityError::NotReady,
        ] {
            let code = classify(&err).code;
            assert_eq!(to_status(err).code(), code);
        }
    }
}
