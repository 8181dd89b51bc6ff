//! The one decision every proxy surface asks for (SPEC §9): given a request's `Authorization`
//! header, run Verify's decode path and rules and answer
//! - **allow**, with the identity headers to set upstream (`x-user-id`, `x-session-id`,
//!   `x-token-jti`, `x-token-exp`, and any `--forward-claim` headers) and the identity headers
//!   to strip because this token does not set them, so a client can never smuggle them through;
//! - **deny** (HTTP 401) with an RFC 6750 `WWW-Authenticate` challenge: `error="invalid_token"`
//!   and the reason when a token was presented, no error code when none was;
//! - **unavailable** when the sidecar cannot answer safely (store down beyond the staleness
//!   bound): the proxy's own fail-open/fail-closed setting decides.
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use crate::api::bearer_credential;
use crate::api::convert::proto_reason;
use crate::api::token_service::loggable;
use crate::api::trace;
use crate::authority::TokenAuthority;
use crate::error_code::ErrorCode;
use crate::metrics::Metrics;
use crate::reason::Reason;
use crate::token::Claims;

/// The identity headers set on every allowed request.
pub const IDENTITY_HEADERS: [&str; 4] = ["x-user-id", "x-session-id", "x-token-jti", "x-token-exp"];

/// A custom claim forwarded upstream as a header (`--forward-claim CLAIM=HEADER`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardedClaim {
    /// The claim's name in the token.
    pub claim: String,
    /// The header it is written to (lowercase).
    pub header: String,
}

/// Parses `CLAIM=HEADER`; the header must be a valid, non-reserved HTTP header name.
pub fn parse_forwarded_claim(text: &str) -> Result<ForwardedClaim, String> {
    let (claim, header) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected CLAIM=HEADER, e.g. role=x-user-role"))?;
    let header = header.trim().to_ascii_lowercase();
    if claim.trim().is_empty() || http::HeaderName::from_bytes(header.as_bytes()).is_err() {
        return Err(format!(
            "{text:?}: expected CLAIM=HEADER with a valid header name"
        ));
    }
    if IDENTITY_HEADERS.contains(&header.as_str()) || header == "authorization" {
        return Err(format!("{text:?}: {header} is set by the sidecar itself"));
    }
    Ok(ForwardedClaim {
        claim: claim.trim().to_owned(),
        header,
    })
}

/// The `Authorization` a request carried, as its surface found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presented<'a> {
    /// None.
    Absent,
    /// Exactly one.
    One(&'a str),
    /// More than one: which is meant is ambiguous (a proxy and the upstream may pick different
    /// ones), so the request is refused as `MALFORMED` (SPEC §9).
    Several,
}

impl<'a> Presented<'a> {
    /// From the values of every `Authorization` header of a request.
    pub fn from_values(mut values: impl Iterator<Item = &'a str>) -> Self {
        match (values.next(), values.next()) {
            (None, _) => Presented::Absent,
            (Some(one), None) => Presented::One(one),
            (Some(_), Some(_)) => Presented::Several,
        }
    }
}

/// What the proxy is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Let the request through with these headers set (replacing any the client sent) and
    /// these removed.
    Allow {
        /// Headers to set upstream, lowercase names.
        set: Vec<(String, String)>,
        /// Identity headers this token does not set: stripped from the client's request.
        remove: Vec<String>,
        /// Who it is, for the request log.
        user_id: String,
    },
    /// Answer 401 with this `WWW-Authenticate` value.
    Deny {
        /// The challenge.
        challenge: String,
        /// The reason, when a token was presented.
        reason: Option<Reason>,
    },
    /// The sidecar cannot answer safely.
    Unavailable,
}

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
    pub async fn decide(&self, authorization: Presented<'_>, surface: &'static str) -> Decision {
        let started = Instant::now();
        let decision = self.decision(authorization).await;
        let (result, reason) = match &decision {
            Decision::Allow { .. } => ("ok", ""),
            Decision::Deny { reason, .. } => (
                "denied",
                reason.map_or(ErrorCode::MissingToken.as_str(), Reason::code),
            ),
            Decision::Unavailable => ("unavailable", ErrorCode::StoreUnavailable.as_str()),
        };
        self.metrics.rpc(surface, started, result, reason);
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

    async fn decision(&self, authorization: Presented<'_>) -> Decision {
        let token = match authorization {
            Presented::Several => return deny(Reason::Malformed),
            Presented::One(value) => bearer_credential(value),
            Presented::Absent => None,
        };
        let Some(token) = token else {
            return Decision::Deny {
                challenge: "Bearer".to_owned(),
                reason: None,
            };
        };
        match self.authority.verify(token).await {
            Err(_) => Decision::Unavailable,
            Ok(Err(reason)) => deny(reason),
            Ok(Ok(claims)) => self.allow(claims),
        }
    }

    fn allow(&self, claims: Claims) -> Decision {
        let mut set = vec![
            ("x-user-id".to_owned(), claims.user_id.clone()),
            ("x-session-id".to_owned(), claims.session_id),
            ("x-token-jti".to_owned(), claims.jti),
            ("x-token-exp".to_owned(), claims.expires_at.to_string()),
        ];
        let mut remove = Vec::new();
        for f in self.forwarded.iter() {
            match claims.extra.get(&f.claim).and_then(header_value) {
                Some(value) => set.push((f.header.clone(), value)),
                None => remove.push(f.header.clone()),
            }
        }
        Decision::Allow {
            set,
            remove,
            user_id: claims.user_id,
        }
    }
}

/// A 401 for a presented token, with RFC 6750's `invalid_token` and the reason.
fn deny(reason: Reason) -> Decision {
    Decision::Deny {
        challenge: format!(
            "Bearer error=\"invalid_token\", error_description=\"{}\"",
            proto_reason(reason).as_str_name()
        ),
        reason: Some(reason),
    }
}

/// A claim as a header value: strings as they are, anything else as JSON; `None` for a value no
/// header can carry (control characters).
fn header_value(value: &Value) -> Option<String> {
    let text = match value {
        Value::Null => return None,
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    http::HeaderValue::from_str(&text).ok().map(|_| text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_claims_name_a_header_the_sidecar_does_not_own() {
        assert_eq!(
            parse_forwarded_claim("role=X-User-Role"),
            Ok(ForwardedClaim {
                claim: "role".into(),
                header: "x-user-role".into()
            })
        );
        for bad in [
            "role",
            "=x-h",
            "role=",
            "role=x user",
            "role=x-user-id",
            "r=authorization",
        ] {
            assert!(parse_forwarded_claim(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn claim_values_become_header_values() {
        assert_eq!(header_value(&Value::from("admin")), Some("admin".into()));
        assert_eq!(header_value(&Value::from(42)), Some("42".into()));
        assert_eq!(
            header_value(&serde_json::json!(["a", "b"])),
            Some(r#"["a","b"]"#.into())
        );
        assert_eq!(header_value(&Value::Null), None);
        assert_eq!(header_value(&Value::from("a\nb")), None);
    }
}
