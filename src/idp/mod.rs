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
mod budget;
pub mod event_token;
pub(crate) mod fetch;
pub mod jwks;
mod receiver;
pub mod ssf;
pub mod token_issuers;

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

/// An issuer whose events are trusted, where its keys are, and how its subjects name our
/// users: `ISSUER=JWKS_SOURCE[,subject-prefix=P]` (`--oidc-issuer`, `--ssf-transmitter`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedIssuer {
    /// The `iss` its events carry.
    pub issuer: String,
    /// Where its keys are.
    pub source: JwksSource,
    /// What is put before its subjects (and its session ids) to make our user ids (SPEC §13:
    /// subjects belong to their issuer). Empty only while it is the one issuer configured.
    pub subject_prefix: String,
}

/// The option that may follow an issuer, in the flag's value or as the next comma-separated
/// item of the environment variable.
const PREFIX_OPTION: &str = "subject-prefix=";

impl TrustedIssuer {
    /// Parses `ISSUER=JWKS_SOURCE[,subject-prefix=P]` (the issuer ends at the first `=`).
    pub fn parse(text: &str) -> Result<Self, String> {
        Self::parse_list(&[text.to_owned()])?
            .pop()
            .ok_or_else(|| format!("{text:?} is not ISSUER=JWKS_SOURCE"))
    }

    /// Parses a list as clap splits it at commas: an item `subject-prefix=P` belongs to the
    /// issuer before it.
    pub fn parse_list(items: &[String]) -> Result<Vec<Self>, String> {
        let mut parsed: Vec<Self> = Vec::new();
        for item in items.iter().flat_map(|item| item.split(',')) {
            if let Some(prefix) = item.trim().strip_prefix(PREFIX_OPTION) {
                let last = parsed
                    .last_mut()
                    .ok_or_else(|| format!("{item:?} must follow ISSUER=JWKS_SOURCE"))?;
                check_prefix(item, prefix)?;
                last.subject_prefix = prefix.to_owned();
                continue;
            }
            let (issuer, source) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?} is not ISSUER=JWKS_SOURCE"))?;
            let issuer = issuer.trim();
            if issuer.is_empty() {
                return Err(format!("{item:?}: the issuer is empty"));
            }
            parsed.push(Self {
                issuer: issuer.to_owned(),
                source: JwksSource::parse(source)?,
                subject_prefix: String::new(),
            });
        }
        Ok(parsed)
    }

    /// Our user id for a subject `sub` of this issuer's.
    pub fn user_id(&self, sub: &str) -> String {
        format!("{}{sub}", self.subject_prefix)
    }
}

/// Longest subject prefix.
pub const MAX_PREFIX_BYTES: usize = 64;

/// Refuses a prefix that is not printable text without spaces (`item` is what said it).
fn check_prefix(item: &str, prefix: &str) -> Result<(), String> {
    match user_id_problem_of_prefix(prefix) {
        None => Ok(()),
        Some(_) => Err(format!(
            "{item:?}: a subject prefix is printable text without spaces, at most \
             {MAX_PREFIX_BYTES} bytes"
        )),
    }
}

fn user_id_problem_of_prefix(prefix: &str) -> Option<&'static str> {
    if prefix.len() > MAX_PREFIX_BYTES {
        return Some("too long");
    }
    prefix
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
        .then_some("holds white space or control characters")
}

/// Checks that every issuer's subjects map to users of their own (SPEC §13), given as
/// `(issuer, subject prefix)`: one issuer may go without a prefix; with several, each names
/// one, distinct, and none starts another (else `P1 + sub1` could equal `P2 + sub2`). The same
/// issuer may be an OpenID Provider, a transmitter and a trusted issuer of tokens at once, with
/// the same prefix.
pub fn check_subject_prefixes<'a>(
    issuers: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(), String> {
    let mut by_issuer: Vec<(&str, &str)> = Vec::new();
    for (issuer, subject_prefix) in issuers {
        match by_issuer.iter().find(|(iss, _)| *iss == issuer) {
            Some((_, prefix)) if *prefix != subject_prefix => {
                return Err(format!(
                    "{issuer} is configured twice with different subject prefixes"
                ));
            }
            Some(_) => {}
            None => by_issuer.push((issuer, subject_prefix)),
        }
    }
    if by_issuer.len() < 2 {
        return Ok(());
    }
    for (i, (issuer, prefix)) in by_issuer.iter().enumerate() {
        if prefix.is_empty() {
            return Err(format!(
                "{} identity providers are configured, so each needs its own subject prefix \
                 (ISSUER=JWKS,subject-prefix=P): {issuer} has none, and its subjects could name \
                 another provider's users",
                by_issuer.len()
            ));
        }
        for (other, other_prefix) in &by_issuer[i + 1..] {
            if prefix.starts_with(other_prefix) || other_prefix.starts_with(prefix) {
                return Err(format!(
                    "the subject prefixes of {issuer} ({prefix:?}) and {other} \
                     ({other_prefix:?}) overlap: each must be distinct and none the start of \
                     another"
                ));
            }
        }
    }
    Ok(())
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
            "https://idp=jwks.json,subject-prefix=a b",
        ] {
            assert!(TrustedIssuer::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_prefix_follows_its_issuer_in_the_flag_and_in_the_list() {
        let one = TrustedIssuer::parse("https://a=/a.json,subject-prefix=a:").expect("one");
        assert_eq!(one.subject_prefix, "a:");
        assert_eq!(one.user_id("alice"), "a:alice");
        let env: Vec<String> = "https://a=/a.json,subject-prefix=a:,https://b=/b.json"
            .split(',')
            .map(str::to_owned)
            .collect();
        let list = TrustedIssuer::parse_list(&env).expect("a list");
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].subject_prefix, "a:");
        assert_eq!(list[1].subject_prefix, "");
        assert!(TrustedIssuer::parse_list(&["subject-prefix=a:".into()]).is_err());
    }

    #[test]
    fn several_issuers_need_distinct_prefixes() {
        let parse = |text: &str| TrustedIssuer::parse(text).expect("parses");
        let plain_a = parse("https://a=/a.json");
        let plain_b = parse("https://b=/b.json");
        let a = parse("https://a=/a.json,subject-prefix=a:");
        let b = parse("https://b=/b.json,subject-prefix=b:");
        let nested = parse("https://c=/c.json,subject-prefix=a:x");
        let check = |issuers: &[&TrustedIssuer]| {
            check_subject_prefixes(
                issuers
                    .iter()
                    .map(|t| (t.issuer.as_str(), t.subject_prefix.as_str())),
            )
        };
        assert!(check(&[&plain_a]).is_ok());
        assert!(check(&[&plain_a, &plain_a]).is_ok(), "one issuer, twice");
        assert!(check(&[&plain_a, &plain_b]).is_err());
        assert!(check(&[&a, &plain_b]).is_err());
        assert!(check(&[&a, &b]).is_ok());
        assert!(check(&[&a, &nested]).is_err());
        assert!(check(&[&a, &plain_a]).is_err(), "two prefixes for one");
    }
}
