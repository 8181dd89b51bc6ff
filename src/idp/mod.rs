//! The identity provider revokes for us: OpenID Connect Back-Channel Logout 1.0
//! (`POST /oidc/backchannel-logout`) and Shared Signals (CAEP/RISC) events pushed per RFC 8935
//! (`POST /ssf/events`), on the HTTP listener.
//!
//! - [`jwks`]: each trusted issuer's keys (a file, or a URL fetched and cached; read again on an
//!   unknown `kid`);
//! - [`event_token`]: the checks every signed event passes (signature, `iss`, `aud`, `iat`,
//!   `jti`, no `none`);
//! - [`backchannel`] and [`ssf`]: what a verified event asks for, as an [`IdpAction`];
//! - [`receiver`]: the use case — verify, refuse a replayed `jti` fleet-wide, apply the action
//!   through the authority with `who` = `backchannel:<iss>` or `ssf:<iss>` (the audit trail).
pub mod backchannel;
pub mod event_token;
mod fetch;
pub mod jwks;
mod receiver;
pub mod ssf;

pub use receiver::{IdpReceiver, IdpSettings, ReceiveError, Received};

use jwks::JwksSource;

/// What an identity provider's event asks the sidecar to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdpAction {
    /// Revoke every token minted for this IdP session (Issue's `idp_session_id`).
    RevokeIdpSession {
        /// The IdP's session id (`sid`).
        sid: String,
        /// The user, when the event names one (for the audit trail).
        user_id: Option<String>,
    },
    /// Revoke every token of the user (cutoff now).
    RevokeUser {
        /// The user.
        user_id: String,
    },
    /// Ban the user until the provider (or an operator) lifts it.
    BanUser {
        /// The user.
        user_id: String,
    },
    /// Lift the user's ban.
    LiftBan {
        /// The user.
        user_id: String,
    },
}

impl IdpAction {
    /// The user the action is about, if named.
    pub fn user_id(&self) -> Option<&str> {
        match self {
            IdpAction::RevokeIdpSession { user_id, .. } => user_id.as_deref(),
            IdpAction::RevokeUser { user_id }
            | IdpAction::BanUser { user_id }
            | IdpAction::LiftBan { user_id } => Some(user_id),
        }
    }
}

/// An issuer whose events are trusted, and where its keys are: `ISSUER=JWKS_SOURCE`
/// (`--oidc-issuer`, `--ssf-transmitter`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedIssuer {
    /// The `iss` its events carry.
    pub issuer: String,
    /// Where its keys are.
    pub source: JwksSource,
}

impl TrustedIssuer {
    /// Parses `ISSUER=JWKS_SOURCE` (split at the first `=`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (issuer, source) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?} is not ISSUER=JWKS_SOURCE"))?;
        let issuer = issuer.trim();
        if issuer.is_empty() {
            return Err(format!("{text:?}: the issuer is empty"));
        }
        Ok(Self {
            issuer: issuer.to_owned(),
            source: JwksSource::parse(source)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_issuers_name_a_file_or_a_url() {
        let file = TrustedIssuer::parse("https://idp.example.com/realms/app=/etc/idp/jwks.json")
            .expect("a file");
        assert_eq!(file.issuer, "https://idp.example.com/realms/app");
        assert_eq!(file.source, JwksSource::File("/etc/idp/jwks.json".into()));
        let url = TrustedIssuer::parse("https://idp.example.com=https://idp.example.com/jwks?v=1")
            .expect("a URL");
        assert_eq!(
            url.source,
            JwksSource::Url("https://idp.example.com/jwks?v=1".into())
        );
        for bad in [
            "https://idp",
            "=jwks.json",
            "https://idp=",
            "https://idp=http://idp.example.com/jwks",
        ] {
            assert!(TrustedIssuer::parse(bad).is_err(), "{bad}");
        }
    }
}
