//! Issuers whose own access tokens we verify and revoke (SPEC §16): the flag
//! `--trusted-issuer ISSUER=KEYS[,audience=A][,subject-prefix=P]`, and where their keys are read
//! — a JWKS file, an `https://` JWKS URL, or `discovery` (the issuer's
//! `/.well-known/openid-configuration` names its `jwks_uri`).
//!
//! Keeping the keys fresh is [`crate::trusted_keys`]'s job; checking tokens with them is the core
//! decode path's ([`crate::token::trusted`]).
use std::sync::Arc;

use serde::Deserialize;

use super::fetch;
use super::jwks::{JwksSource, KeySet, read_key_set};
use crate::token::{Audience, IssuerTrust};

/// Where a trusted issuer's keys are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeysSource {
    /// A JWKS file or URL.
    Jwks(JwksSource),
    /// The `jwks_uri` of the issuer's OpenID Provider metadata, read each time.
    Discovery,
}

impl std::fmt::Display for KeysSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Jwks(source) => source.fmt(f),
            Self::Discovery => f.write_str("discovery"),
        }
    }
}

/// One `--trusted-issuer`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIssuer {
    /// The `iss` its tokens carry.
    pub issuer: String,
    /// Where its keys are read.
    pub keys: KeysSource,
    /// The audience its tokens must name (`*`: any, the operator's explicit choice).
    pub audience: Audience,
    /// What is put before its subjects and session ids.
    pub subject_prefix: String,
}

const AUDIENCE_OPTION: &str = "audience=";
const PREFIX_OPTION: &str = "subject-prefix=";

impl TokenIssuer {
    /// Parses a list as clap splits it at commas: `audience=A` and `subject-prefix=P` belong to
    /// the issuer before them. Every issuer names its audience (or `audience=*`): an access
    /// token minted for another service must not open this one.
    pub fn parse_list(items: &[String]) -> Result<Vec<Self>, String> {
        let mut parsed: Vec<(Self, bool)> = Vec::new();
        for item in items.iter().flat_map(|item| item.split(',')) {
            let item = item.trim();
            let option = |name: &str| item.strip_prefix(name);
            if let Some(value) = option(AUDIENCE_OPTION).or_else(|| option(PREFIX_OPTION)) {
                let (last, has_audience) = parsed
                    .last_mut()
                    .ok_or_else(|| format!("{item:?} must follow ISSUER=KEYS"))?;
                if item.starts_with(AUDIENCE_OPTION) {
                    if value.is_empty() {
                        return Err(format!("{item:?}: name the audience, or write audience=*"));
                    }
                    last.audience = Audience::parse(value);
                    *has_audience = true;
                } else {
                    super::check_prefix(item, value)?;
                    last.subject_prefix = value.to_owned();
                }
                continue;
            }
            let (issuer, keys) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?} is not ISSUER=KEYS"))?;
            let issuer = issuer.trim();
            if issuer.is_empty() {
                return Err(format!("{item:?}: the issuer is empty"));
            }
            let keys = match keys.trim() {
                "discovery" => {
                    fetch::check_url(issuer).map_err(|e| {
                        format!("{issuer}: discovery reads the issuer's own URL: {e}")
                    })?;
                    KeysSource::Discovery
                }
                source => KeysSource::Jwks(JwksSource::parse(source)?),
            };
            parsed.push((
                Self {
                    issuer: issuer.to_owned(),
                    keys,
                    audience: Audience::Any,
                    subject_prefix: String::new(),
                },
                false,
            ));
        }
        parsed
            .into_iter()
            .map(|(issuer, has_audience)| {
                if has_audience {
                    Ok(issuer)
                } else {
                    Err(format!(
                        "{}: name the audience its tokens must carry (ISSUER=KEYS,audience=A), \
                         or accept any with audience=*",
                        issuer.issuer
                    ))
                }
            })
            .collect()
    }

    /// What the decode path trusts of it; `session_horizon_ms` is the refresh window.
    pub fn trust(&self, session_horizon_ms: i64) -> Arc<IssuerTrust> {
        Arc::new(IssuerTrust::new(
            self.issuer.clone(),
            self.audience.clone(),
            self.subject_prefix.clone(),
            session_horizon_ms,
        ))
    }

    /// Reads its key set once: the JWKS source, or discovery and then the `jwks_uri`. Returns
    /// the raw document (to tell a change) and the keys.
    pub async fn read_keys(&self) -> Result<(Vec<u8>, KeySet), String> {
        let source = match &self.keys {
            KeysSource::Jwks(source) => source.clone(),
            KeysSource::Discovery => JwksSource::Url(discover(&self.issuer).await?),
        };
        let raw = super::jwks::read_raw(&source).await?;
        let set = KeySet::parse_any(&raw).map_err(|e| format!("{source}: {e}"))?;
        if set.is_empty() {
            tracing::warn!(issuer = %self.issuer, source = %source, "a trusted issuer's key set holds no usable signature key (RSA of 2048 bits or more, EC P-256/P-384, Ed25519): its tokens are refused");
        }
        Ok((raw, set))
    }

    /// Reads the key set once, parsed (what `check-config` does).
    pub async fn check_keys(&self) -> Result<KeySet, String> {
        match &self.keys {
            KeysSource::Jwks(source) => read_key_set(source).await,
            KeysSource::Discovery => self.read_keys().await.map(|(_, set)| set),
        }
    }
}

/// The members of the OpenID Provider metadata we read.
#[derive(Deserialize)]
struct ProviderMetadata {
    issuer: String,
    jwks_uri: String,
}

/// The `jwks_uri` of `issuer`'s metadata (OpenID Connect Discovery 1.0 §4), whose `issuer` must
/// be exactly the one configured (§4.3: a document naming another issuer is not its own).
pub async fn discover(issuer: &str) -> Result<String, String> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let body = fetch::get(&url).await.map_err(|e| format!("{url}: {e}"))?;
    let metadata: ProviderMetadata =
        serde_json::from_slice(&body).map_err(|e| format!("{url}: not provider metadata: {e}"))?;
    if metadata.issuer != issuer {
        return Err(format!(
            "{url} names the issuer {:?}, not {issuer:?}",
            metadata.issuer
        ));
    }
    fetch::check_url(&metadata.jwks_uri).map_err(|e| format!("{url}: jwks_uri: {e}"))?;
    Ok(metadata.jwks_uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(text: &str) -> Result<Vec<TokenIssuer>, String> {
        TokenIssuer::parse_list(&[text.to_owned()])
    }

    #[test]
    fn an_issuer_names_its_keys_audience_and_prefix() {
        let parsed = list(
            "https://kc/realms/app=discovery,audience=api,subject-prefix=kc:,\
             https://b=/etc/b.json,audience=*",
        )
        .expect("two issuers");
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].keys, KeysSource::Discovery);
        assert_eq!(parsed[0].audience, Audience::Exactly("api".into()));
        assert_eq!(parsed[0].subject_prefix, "kc:");
        assert_eq!(
            parsed[1].keys,
            KeysSource::Jwks(JwksSource::File("/etc/b.json".into()))
        );
        assert_eq!(parsed[1].audience, Audience::Any);
    }

    #[test]
    fn an_audience_is_required_and_discovery_needs_a_fetchable_issuer() {
        for bad in [
            "https://kc=/jwks.json",
            "https://kc=/jwks.json,audience=",
            "audience=api",
            "kc-realm=discovery,audience=api",
            "http://idp.example.com=discovery,audience=api",
            "https://kc=http://idp.example.com/jwks,audience=api",
            "https://kc=/jwks.json,audience=api,subject-prefix=a b",
        ] {
            assert!(list(bad).is_err(), "{bad}");
        }
        assert!(list("http://127.0.0.1:8080=discovery,audience=api").is_ok());
    }
}
