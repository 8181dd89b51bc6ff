//! The filter's configuration: the plugin configuration Envoy (or an Istio `WasmPlugin`'s
//! `pluginConfig`) gives it, as JSON. Checked once, when Envoy configures the plugin; a bad
//! configuration is refused there (the plugin does not start) rather than at the first request.
use serde::Deserialize;
use token_sidecar_core::decision::ForwardedClaim;

/// What to answer while the filter is not in step with the sidecar (never loaded, or no
/// successful read of the feed for longer than `max_staleness_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WhenStale {
    /// Refuse with 503 (and `Retry-After`): no revocation is ever missed.
    #[default]
    FailClosed,
    /// Ask the sidecar's forward-auth (`/auth`) for this request, paused meanwhile: what HTTP
    /// ext_authz would have done.
    AskSidecar,
}

/// The plugin configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// The Envoy cluster of the sidecar's HTTP listener (`--http-listen`).
    pub sidecar_cluster: String,
    /// The `:authority` sent to it.
    #[serde(default = "default_authority")]
    pub sidecar_authority: String,
    /// The `iss` tokens must carry (the sidecar's `--issuer`).
    #[serde(default = "default_issuer")]
    pub issuer: String,
    /// The `aud` tokens must name, if the sidecar has `--audience`.
    #[serde(default)]
    pub audience: Option<String>,
    /// The sidecar's `--leeway`, in seconds (on `exp` and `nbf` only).
    #[serde(default)]
    pub leeway_seconds: i64,
    /// Keys beside the sidecar's published ones: an RFC 7517 key set, which may hold the HMAC
    /// secrets (`oct` keys) a JWKS never publishes. Keep the plugin configuration private then.
    #[serde(default)]
    pub local_jwks: Option<serde_json::Value>,
    /// Whether to read the sidecar's public keys from its `/.well-known/jwks.json`.
    #[serde(default = "yes")]
    pub fetch_jwks: bool,
    /// The credential the feed asks for (`--feed-token-file`), if the sidecar needs one.
    #[serde(default)]
    pub feed_credential: Option<String>,
    /// How often the feed is read, in ms (between long polls, and after a failed read).
    #[serde(default = "default_poll_ms")]
    pub poll_interval_ms: u64,
    /// How long the sidecar may hold a read of the feed until a change arrives (its `wait_ms`):
    /// a revocation then reaches the filter as soon as the sidecar applied it. At most half of
    /// `max_staleness_ms` (an answer comes at least that often); 0 reads on every tick only.
    #[serde(default = "default_long_poll_ms")]
    pub long_poll_ms: u64,
    /// Not in step for longer than this (ms) → `when_stale`.
    #[serde(default = "default_staleness_ms")]
    pub max_staleness_ms: u64,
    /// What to answer then.
    #[serde(default)]
    pub when_stale: WhenStale,
    /// Most cutoffs and denied ids held per worker; beyond it the filter is not in step.
    #[serde(default = "default_max_entries")]
    pub max_entries: usize,
    /// Successful decodes remembered per worker (SPEC §8: keyed by the exact token, only valid
    /// signatures, every rule still checked on each request, emptied when the keys change);
    /// 0 turns it off.
    #[serde(default = "default_verified_cache")]
    pub verified_cache_entries: usize,
    /// Custom claims forwarded as headers (the sidecar's `--forward-claim`).
    #[serde(default)]
    pub forward_claims: Vec<ClaimHeader>,
    /// The sidecar's `--dpop-max-age`, in ms: how old a DPoP proof's `iat` may be (SPEC §15).
    #[serde(default = "default_dpop_max_age_ms")]
    pub dpop_max_age_ms: i64,
    /// The sidecar's `--dpop-nonce`: its nonces are MACs under the fleet's secret, which the
    /// filter does not hold, so a DPoP-bound token that passes the copy's revocation checks is
    /// judged by the sidecar's `/auth` (one call for such a request; its `DPoP-Nonce` is passed
    /// on to the client).
    #[serde(default)]
    pub dpop_nonce: bool,
}

fn default_dpop_max_age_ms() -> i64 {
    token_sidecar_core::sender::DEFAULT_MAX_AGE_MS
}

/// One `--forward-claim CLAIM=HEADER`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimHeader {
    /// The claim.
    pub claim: String,
    /// The header.
    pub header: String,
}

fn default_long_poll_ms() -> u64 {
    5_000
}

fn default_authority() -> String {
    "token-sidecar".into()
}
fn default_issuer() -> String {
    "token-sidecar".into()
}
fn yes() -> bool {
    true
}
fn default_poll_ms() -> u64 {
    1_000
}
fn default_staleness_ms() -> u64 {
    10_000
}
fn default_max_entries() -> usize {
    1_000_000
}
fn default_verified_cache() -> usize {
    10_000
}

/// A configuration checked for use.
#[derive(Debug, Clone)]
pub struct Checked {
    /// As given.
    pub config: FilterConfig,
    /// The forwarded claims, held to the sidecar's rules.
    pub forwarded: Vec<ForwardedClaim>,
    /// The local key set, as JSON text.
    pub local_jwks: Option<String>,
}

impl FilterConfig {
    /// Parses and checks the plugin configuration.
    pub fn parse(bytes: &[u8]) -> Result<Checked, String> {
        let config: FilterConfig =
            serde_json::from_slice(bytes).map_err(|e| format!("the configuration: {e}"))?;
        if config.sidecar_cluster.is_empty() {
            return Err("sidecar_cluster is empty".into());
        }
        if !(10..=600_000).contains(&config.poll_interval_ms) {
            return Err("poll_interval_ms: 10 to 600000".into());
        }
        if config.max_staleness_ms < config.poll_interval_ms {
            return Err("max_staleness_ms must be at least poll_interval_ms".into());
        }
        if !(0..=3_600).contains(&config.leeway_seconds) {
            return Err("leeway_seconds: 0 to 3600".into());
        }
        if config.max_entries == 0 {
            return Err("max_entries must be positive".into());
        }
        let forwarded = config
            .forward_claims
            .iter()
            .map(|f| {
                ForwardedClaim::new(&f.claim, &f.header).map_err(|e| format!("{}: {e}", f.claim))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let local_jwks = config.local_jwks.as_ref().map(|v| v.to_string());
        if local_jwks.is_none() && !config.fetch_jwks {
            return Err("no keys: set local_jwks or fetch_jwks".into());
        }
        Ok(Checked {
            config,
            forwarded,
            local_jwks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_in_and_mistakes_are_refused() {
        let ok = FilterConfig::parse(br#"{"sidecar_cluster":"sidecar"}"#).expect("minimal");
        assert_eq!(ok.config.poll_interval_ms, 1_000);
        assert_eq!(ok.config.when_stale, WhenStale::FailClosed);
        assert!(ok.config.fetch_jwks);
        for bad in [
            &br#"{}"#[..],
            br#"{"sidecar_cluster":""}"#,
            br#"{"sidecar_cluster":"s","poll_interval_ms":1}"#,
            br#"{"sidecar_cluster":"s","max_staleness_ms":5}"#,
            br#"{"sidecar_cluster":"s","typo":1}"#,
            br#"{"sidecar_cluster":"s","forward_claims":[{"claim":"r","header":"x-user-id"}]}"#,
            br#"{"sidecar_cluster":"s","fetch_jwks":false}"#,
            br#"{"sidecar_cluster":"s","when_stale":"open"}"#,
            b"not json",
        ] {
            assert!(
                FilterConfig::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
