//! Sender-constrained tokens (SPEC §15): a token that names a key (`cnf`) is valid only with a
//! proof that the presenter holds that key — a DPoP proof (RFC 9449) for `cnf.jkt`, the TLS
//! client certificate (RFC 8705) for `cnf["x5t#S256"]`.
//!
//! Every surface (Verify, Refresh, Check, `/auth`, the proxy filter) turns what it received into
//! one [`Presentation`] and asks [`SenderRules::check`]; the checks, their order and their
//! reasons live here and nowhere else.
mod binding;
#[cfg(feature = "runtime")]
mod nonce;
mod proof;
mod replay;
mod uri;

pub use binding::{Binding, jwk_thumbprint, thumbprint_problem};
#[cfg(feature = "runtime")]
pub use nonce::NonceKey;
pub use proof::{ALLOWED_ALGS, CheckedProof, access_token_hash, check_proof};
pub use replay::{ReplayCache, Seen};
pub use uri::normalize_htu;

use crate::reason::Reason;

/// How a token was presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `Authorization: Bearer` (or a bare token, as Verify takes it).
    Bearer,
    /// `Authorization: DPoP`.
    Dpop,
}

/// Everything a surface received that a proof of possession is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Presentation<'a> {
    /// The scheme the token came with.
    pub scheme: Scheme,
    /// The `DPoP` header values (more than one is refused).
    pub proofs: &'a [&'a str],
    /// The request's method.
    pub method: &'a str,
    /// The request's URI (scheme, host, path; a query and fragment are ignored).
    pub uri: &'a str,
    /// The SHA-256 thumbprint of the client's TLS certificate, if one was presented.
    pub certificate_sha256: Option<[u8; 32]>,
}

impl Presentation<'_> {
    /// A bare token: no proof, no certificate (what a surface without §15's inputs gives).
    pub const BARE: Presentation<'static> = Presentation {
        scheme: Scheme::Bearer,
        proofs: &[],
        method: "",
        uri: "",
        certificate_sha256: None,
    };
}

/// Which check refused a proof, for ErrorInfo's `check` and the logs.
pub type Check = &'static str;

/// Why a presentation was refused: the reason, and the check that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The token reason.
    pub reason: Reason,
    /// The failed check (`typ`, `htu`, `jkt`, ...).
    pub check: Check,
}

impl Refusal {
    pub(crate) fn invalid(check: Check) -> Self {
        Self {
            reason: Reason::ProofInvalid,
            check,
        }
    }

    pub(crate) fn required(check: Check) -> Self {
        Self {
            reason: Reason::ProofRequired,
            check,
        }
    }
}

/// The default `--dpop-max-age`.
pub const DEFAULT_MAX_AGE_MS: i64 = 60_000;

/// The rules a presentation is held to.
#[derive(Debug, Clone, Copy)]
pub struct SenderRules {
    /// `--dpop-max-age`: how old a proof's `iat` may be.
    pub max_age_ms: i64,
    /// How far ahead a proof's `iat` may be (the clock leeway).
    pub leeway_ms: i64,
}

impl Default for SenderRules {
    fn default() -> Self {
        Self {
            max_age_ms: DEFAULT_MAX_AGE_MS,
            leeway_ms: 5_000,
        }
    }
}

impl SenderRules {
    /// How long a proof's `jti` must be remembered: as long as a proof with its `iat` is
    /// accepted at all.
    pub fn replay_window_ms(&self) -> i64 {
        self.max_age_ms + self.leeway_ms
    }

    /// Checks that `presentation` proves possession of the key `binding` names, for the token
    /// `token`, at `now_ms` on the fleet clock. An unbound token passes whatever came with it
    /// (a proof given for an unbound token is not looked at: RFC 9449 §7.2 leaves that to the
    /// resource, and a bearer token stays a bearer token). Returns the checked proof, if any,
    /// for the caller's nonce and replay steps.
    pub fn check<'p>(
        &self,
        binding: &Binding,
        token: &str,
        presentation: &Presentation<'p>,
        now_ms: i64,
    ) -> Result<Option<CheckedProof>, Refusal> {
        if let Some(x5t) = &binding.x5t_s256 {
            let Some(presented) = presentation.certificate_sha256 else {
                return Err(Refusal::required("certificate"));
            };
            if !binding::thumbprint_matches(x5t, &presented) {
                return Err(Refusal::invalid("x5t#S256"));
            }
        }
        let Some(jkt) = &binding.jkt else {
            return Ok(None);
        };
        if presentation.scheme == Scheme::Bearer && !presentation.proofs.is_empty() {
            // A DPoP-bound token sent as a bearer token, proof or not (RFC 9449 §7.1).
            return Err(Refusal::required("scheme"));
        }
        let proof = match presentation.proofs {
            [] => return Err(Refusal::required("dpop")),
            [one] => *one,
            _ => return Err(Refusal::invalid("dpop")),
        };
        let checked = check_proof(
            proof,
            presentation.method,
            presentation.uri,
            token,
            now_ms,
            self,
        )?;
        if checked.jkt != *jkt {
            return Err(Refusal::invalid("jkt"));
        }
        Ok(Some(checked))
    }
}

/// The SHA-256 thumbprint of a DER certificate (RFC 8705 §3.1's `x5t#S256`, before base64url).
pub fn certificate_sha256(der: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(der).into()
}
