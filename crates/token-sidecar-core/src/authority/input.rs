//! What arrives from outside the authority, checked before any use case runs: user ids, minted
//! ids, custom claims and reasons, bounded and parsed into types.
use serde_json::{Map, Value};

use super::{AuthorityError, MAX_CUSTOM_CLAIMS_BYTES, MAX_REASON_BYTES};
use crate::error_code::ErrorCode;
use crate::ids::{MintedId, UserId};
use crate::token::RESERVED_CLAIMS;

/// A caller's reason: at most [`MAX_REASON_BYTES`], printable text.
pub(super) fn check_reason(why: Option<&str>) -> Result<(), AuthorityError> {
    let Some(why) = why else { return Ok(()) };
    if why.len() > MAX_REASON_BYTES {
        return Err(invalid(
            "reason",
            ErrorCode::InvalidReason,
            format!("at most {MAX_REASON_BYTES} bytes"),
        ));
    }
    if why
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(invalid(
            "reason",
            ErrorCode::InvalidReason,
            "must not hold control characters",
        ));
    }
    Ok(())
}

pub(super) fn invalid(
    field: &'static str,
    reason: ErrorCode,
    message: impl Into<String>,
) -> AuthorityError {
    AuthorityError::InvalidArgument {
        field,
        reason,
        message: message.into(),
    }
}

/// A request's user id, parsed at the edge (compared byte for byte: callers normalise); the
/// error names the request field.
pub fn parse_user_id(field: &'static str, raw: String) -> Result<UserId, AuthorityError> {
    UserId::parse(raw).map_err(|problem| invalid(field, ErrorCode::InvalidUserId, problem))
}

/// A request's `jti` or `session_id`, parsed at the edge: only ids of the shape this service
/// mints ever reach the store.
pub fn parse_minted_id(field: &'static str, raw: String) -> Result<MintedId, AuthorityError> {
    MintedId::parse(raw).map_err(|problem| invalid(field, ErrorCode::InvalidId, problem))
}

pub(super) fn check_custom_claims(claims: &Map<String, Value>) -> Result<(), AuthorityError> {
    if let Some(name) = claims
        .keys()
        .find(|k| RESERVED_CLAIMS.contains(&k.as_str()))
    {
        return Err(invalid(
            "claims",
            ErrorCode::ReservedClaim,
            format!("{name:?} is a reserved claim and is set by the sidecar"),
        ));
    }
    let size = serde_json::to_vec(claims).map_or(usize::MAX, |v| v.len());
    if size > MAX_CUSTOM_CLAIMS_BYTES {
        return Err(invalid(
            "claims",
            ErrorCode::ClaimsTooLarge,
            format!(
                "custom claims take {size} bytes; at most {MAX_CUSTOM_CLAIMS_BYTES} are allowed"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
#[path = "input_tests.rs"]
mod tests;
