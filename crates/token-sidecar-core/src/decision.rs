//! What a proxy is told about a request (SPEC §9), the same on every surface that asks — the
//! gRPC `Check`, HTTP `/auth`, and the Envoy filter built from this crate:
//! - **allow**, with the identity headers to set upstream (`x-user-id`, `x-session-id`,
//!   `x-token-jti`, `x-token-exp`, and any forwarded-claim headers) and the identity headers to
//!   strip because this token does not set them, so a client can never smuggle them through;
//! - **deny** (HTTP 401) with an RFC 6750 `WWW-Authenticate` challenge: `error="invalid_token"`
//!   and the reason when a token was presented, no error code when none was;
//! - **unavailable** when the answer cannot be given safely: the proxy's own setting decides.
//!
//! Pure: the verdict on the token comes from the caller (the sidecar's authority, or the
//! filter's own copy of the revocation state).
use serde_json::Value;

use crate::reason::Reason;
use crate::sender::{ALLOWED_ALGS, Scheme};
use crate::token::Claims;

/// The identity headers the sidecar owns: the first four set on every allowed request, and
/// [`ISSUER_HEADER`] on those allowed with a trusted issuer's token (stripped otherwise).
pub const IDENTITY_HEADERS: [&str; 5] = [
    "x-user-id",
    "x-session-id",
    "x-token-jti",
    "x-token-exp",
    ISSUER_HEADER,
];

/// Which trusted issuer signed the token (SPEC §16); absent for the sidecar's own tokens.
pub const ISSUER_HEADER: &str = "x-token-issuer";

/// A custom claim forwarded upstream as a header (`--forward-claim CLAIM=HEADER`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
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
    ForwardedClaim::new(claim, header).map_err(|problem| format!("{text:?}: {problem}"))
}

impl ForwardedClaim {
    /// `claim` forwarded as `header` (lowercased); the header must be a valid HTTP header name
    /// the sidecar does not own.
    pub fn new(claim: &str, header: &str) -> Result<Self, String> {
        let header = header.trim().to_ascii_lowercase();
        if claim.trim().is_empty() || http::HeaderName::from_bytes(header.as_bytes()).is_err() {
            return Err("expected CLAIM=HEADER with a valid header name".into());
        }
        if IDENTITY_HEADERS.contains(&header.as_str()) || header == "authorization" {
            return Err(format!("{header} is set by the sidecar itself"));
        }
        Ok(Self {
            claim: claim.trim().to_owned(),
            header,
        })
    }
}

/// The credential of an `Authorization: Bearer <credential>` value. The scheme is
/// case-insensitive (RFC 7235 §2.1) and may be followed by spaces or tabs. (The light client
/// crate has the same function for sibling services, which do not link this crate.)
pub fn bearer_credential(value: &str) -> Option<&str> {
    let blank = |c: char| c == ' ' || c == '\t';
    let (scheme, rest) = value.trim_matches(blank).split_once(blank)?;
    let credential = rest.trim_matches(blank);
    (scheme.eq_ignore_ascii_case("bearer") && !credential.is_empty()).then_some(credential)
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

    /// The token to judge and the scheme it came with (`Bearer`, or `DPoP`: SPEC §15), or the
    /// decision already made without one: 401 with a bare challenge when none was presented,
    /// `MALFORMED` for several.
    pub fn token(self) -> Result<(&'a str, Scheme), Decision> {
        match self {
            Presented::Several => Err(Decision::deny(Reason::Malformed)),
            Presented::One(value) => credential(value).ok_or_else(Decision::no_token),
            Presented::Absent => Err(Decision::no_token()),
        }
    }
}

/// The credential of an `Authorization` value and its scheme: `Bearer` or `DPoP` (both
/// case-insensitive).
pub fn credential(value: &str) -> Option<(&str, Scheme)> {
    if let Some(token) = bearer_credential(value) {
        return Some((token, Scheme::Bearer));
    }
    let blank = |c: char| c == ' ' || c == '\t';
    let (scheme, rest) = value.trim_matches(blank).split_once(blank)?;
    let token = rest.trim_matches(blank);
    (scheme.eq_ignore_ascii_case("dpop") && !token.is_empty()).then_some((token, Scheme::Dpop))
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
        /// With `--dpop-nonce`: a fresh nonce for the client (`DPoP-Nonce`).
        nonce: Option<String>,
    },
    /// Answer 401 with this `WWW-Authenticate` value.
    Deny {
        /// The challenge.
        challenge: String,
        /// The reason, when a token was presented.
        reason: Option<Reason>,
        /// With `--dpop-nonce`: the nonce to retry with (`DPoP-Nonce`).
        nonce: Option<String>,
    },
    /// The answer cannot be given safely.
    Unavailable,
}

impl Decision {
    /// Allows the holder of `claims`, forwarding `forwarded` claims. Borrows the claims: a proxy
    /// filter answers from its verified-token cache, and only the header values are copied.
    pub fn allow(claims: &Claims, forwarded: &[ForwardedClaim]) -> Self {
        let mut set = vec![
            ("x-user-id".to_owned(), claims.user_id.clone()),
            ("x-session-id".to_owned(), claims.session_id.clone()),
            ("x-token-jti".to_owned(), claims.jti.clone()),
            ("x-token-exp".to_owned(), claims.expires_at.to_string()),
        ];
        let mut remove = Vec::new();
        match &claims.issuer {
            Some(issuer) => set.push((ISSUER_HEADER.to_owned(), issuer.clone())),
            None => remove.push(ISSUER_HEADER.to_owned()),
        }
        for f in forwarded {
            match claims.extra.get(&f.claim).and_then(header_value) {
                Some(value) => set.push((f.header.clone(), value)),
                None => remove.push(f.header.clone()),
            }
        }
        Decision::Allow {
            set,
            remove,
            user_id: claims.user_id.clone(),
            nonce: None,
        }
    }

    /// A 401 for a token presented with `scheme` and refused for `reason`: RFC 6750's challenge
    /// for a bearer token, RFC 9449 §7.1's for DPoP — `use_dpop_nonce` with the nonce,
    /// `invalid_dpop_proof` for a proof that failed, `invalid_token` otherwise, with the `algs`
    /// a proof may use. A certificate that is missing or not the bound one is a bearer matter.
    pub fn refuse(
        reason: Reason,
        scheme: Scheme,
        check: Option<&str>,
        nonce: Option<String>,
    ) -> Self {
        let certificate = matches!(check, Some("certificate" | "x5t#S256"));
        let dpop = !certificate
            && (scheme == Scheme::Dpop
                || matches!(
                    reason,
                    Reason::ProofRequired
                        | Reason::ProofInvalid
                        | Reason::ProofReplayed
                        | Reason::NonceRequired
                ));
        if !dpop {
            return Decision::Deny {
                challenge: bearer_challenge(reason),
                reason: Some(reason),
                nonce,
            };
        }
        let error = match reason {
            Reason::NonceRequired => "use_dpop_nonce",
            Reason::ProofInvalid | Reason::ProofReplayed => "invalid_dpop_proof",
            _ => "invalid_token",
        };
        Decision::Deny {
            challenge: format!(
                "DPoP error=\"{error}\", error_description=\"{}\", algs=\"{}\"",
                reason.code(),
                ALLOWED_ALGS.join(" ")
            ),
            reason: Some(reason),
            nonce,
        }
    }

    /// A 401 for a presented token, with RFC 6750's `invalid_token` and the reason.
    pub fn deny(reason: Reason) -> Self {
        Decision::Deny {
            challenge: bearer_challenge(reason),
            reason: Some(reason),
            nonce: None,
        }
    }

    /// A 401 for a request that presented no token: a challenge without an error code.
    pub fn no_token() -> Self {
        Decision::Deny {
            challenge: "Bearer".to_owned(),
            reason: None,
            nonce: None,
        }
    }
}

fn bearer_challenge(reason: Reason) -> String {
    format!(
        "Bearer error=\"invalid_token\", error_description=\"{}\"",
        reason.code()
    )
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

    #[test]
    fn bearer_scheme_is_case_insensitive_and_blanks_are_spaces_or_tabs() {
        for (value, expected) in [
            ("Bearer abc", Some("abc")),
            ("bearer abc", Some("abc")),
            ("Bearer  \t abc \t", Some("abc")),
            ("Basic abc", None),
            ("Bearer", None),
            ("Bearerabc", None),
            ("", None),
        ] {
            assert_eq!(bearer_credential(value), expected, "{value:?}");
        }
    }

    #[test]
    fn several_authorization_headers_are_malformed_and_none_is_a_bare_challenge() {
        assert_eq!(
            Presented::from_values(["Bearer a", "Bearer b"].into_iter()).token(),
            Err(Decision::deny(Reason::Malformed))
        );
        assert_eq!(
            Presented::from_values(std::iter::empty()).token(),
            Err(Decision::no_token())
        );
        assert_eq!(
            Presented::from_values(["Basic x"].into_iter()).token(),
            Err(Decision::no_token())
        );
        assert_eq!(
            Presented::from_values(["Bearer t"].into_iter()).token(),
            Ok(("t", Scheme::Bearer))
        );
        assert_eq!(
            Presented::from_values(["dpop  t"].into_iter()).token(),
            Ok(("t", Scheme::Dpop))
        );
    }

    #[test]
    fn dpop_refusals_carry_rfc_9449_challenges() {
        let challenge = |d: Decision| match d {
            Decision::Deny { challenge, .. } => challenge,
            other => panic!("{other:?}"),
        };
        let nonce = Decision::refuse(Reason::NonceRequired, Scheme::Dpop, Some("nonce"), None);
        assert!(challenge(nonce).starts_with("DPoP error=\"use_dpop_nonce\""));
        let bad = Decision::refuse(Reason::ProofInvalid, Scheme::Dpop, Some("htu"), None);
        assert!(challenge(bad).starts_with("DPoP error=\"invalid_dpop_proof\""));
        let downgrade = Decision::refuse(Reason::ProofRequired, Scheme::Bearer, Some("dpop"), None);
        let text = challenge(downgrade);
        assert!(text.starts_with("DPoP error=\"invalid_token\""), "{text}");
        assert!(
            text.contains("algs=\"ES256 ES384 RS256 PS256 EdDSA Ed25519\""),
            "{text}"
        );
        let certificate = Decision::refuse(
            Reason::ProofRequired,
            Scheme::Bearer,
            Some("certificate"),
            None,
        );
        assert!(challenge(certificate).starts_with("Bearer error=\"invalid_token\""));
        assert_eq!(
            Decision::refuse(Reason::Expired, Scheme::Bearer, None, None),
            Decision::deny(Reason::Expired)
        );
    }
}
