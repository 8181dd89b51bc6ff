//! Tokens and the keys that sign and verify them.
use std::time::Duration;

use super::parse::{parse_duration, parse_jwks_source, parse_key, parse_positive_duration};
use super::values::Toggle;
use crate::idp::jwks::JwksSource;
use crate::token::KeySpec;

/// Tokens and the keys that sign and verify them.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    /// A key as KID=ALG:PATH (repeatable). HS* keys: PATH holds the secret's bytes (at least 32).
    /// Without any key, SQLite mode generates one beside the database; PostgreSQL mode refuses
    /// to start.
    #[arg(help_heading = "Tokens and keys", long = "key", env = "TOKEN_SIDECAR_KEYS", value_delimiter = ',', value_parser = parse_key)]
    pub keys: Vec<KeySpec>,

    /// Holds no signing key: verifies (Verify, Check, /auth, introspection, the feed) and
    /// revokes a held token, but refuses Issue and Refresh (FAILED_PRECONDITION) and LiftBan and
    /// Revoke by jti, session or user (PERMISSION_DENIED), naming the issuing service. Its keys
    /// are public: PEM public keys (--key) and/or --issuer-jwks. A private key or an HMAC secret
    /// is refused.
    #[arg(
        help_heading = "Tokens and keys",
        long,
        env = "TOKEN_SIDECAR_VERIFY_ONLY",
        default_value_t = false
    )]
    pub verify_only: bool,

    /// The issuing service's key set (its /.well-known/jwks.json: an https:// URL, http:// to a
    /// loopback address, or a file), for --verify-only: read at start, again every
    /// --key-reload-interval and, at most once a second, when a token names a kid it lacks.
    /// NOT_SERVING until it has been read once; a failed read keeps the keys held.
    #[arg(help_heading = "Tokens and keys", long, env = "TOKEN_SIDECAR_ISSUER_JWKS", value_parser = parse_jwks_source)]
    pub issuer_jwks: Option<JwksSource>,

    /// The key id that signs new tokens. Default: the first key.
    #[arg(
        help_heading = "Tokens and keys",
        long,
        env = "TOKEN_SIDECAR_SIGNING_KID"
    )]
    pub signing_kid: Option<String>,

    /// How often the key files, the TLS certificate and key, and the admin credential are
    /// checked for changes (mounted Secrets change in place); SIGHUP reloads at once.
    #[arg(help_heading = "Tokens and keys", long, env = "TOKEN_SIDECAR_KEY_RELOAD_INTERVAL", default_value = "10s", value_parser = parse_positive_duration)]
    pub key_reload_interval: Duration,

    /// The `iss` written into and required of every token.
    #[arg(
        help_heading = "Tokens and keys",
        long,
        env = "TOKEN_SIDECAR_ISSUER",
        default_value = "token-sidecar"
    )]
    pub issuer: String,

    /// The `aud` written into and required of every token. None if unset.
    #[arg(help_heading = "Tokens and keys", long, env = "TOKEN_SIDECAR_AUDIENCE")]
    pub audience: Option<String>,

    /// Default and maximum token lifetime (e.g. 30s, 5m, 1h).
    #[arg(help_heading = "Tokens and keys", long, env = "TOKEN_SIDECAR_TOKEN_TTL", default_value = "5m", value_parser = parse_positive_duration)]
    pub token_ttl: Duration,

    /// How long after a session's first token it may still be refreshed.
    #[arg(help_heading = "Tokens and keys", long, env = "TOKEN_SIDECAR_REFRESH_WINDOW", default_value = "7d", value_parser = parse_positive_duration)]
    pub refresh_window: Duration,

    /// Clock-skew tolerance applied to `exp` and `nbf` only.
    #[arg(help_heading = "Tokens and keys", long, env = "TOKEN_SIDECAR_LEEWAY", default_value = "0s", value_parser = parse_duration)]
    pub leeway: Duration,

    /// Refresh reuse detection (SPEC §11): refreshing a token older than its session's newest,
    /// after --refresh-reuse-interval, revokes the session (REASON_REFRESH_REUSED).
    #[arg(help_heading = "Tokens and keys", long, env = "TOKEN_SIDECAR_REFRESH_REUSE_DETECTION", value_enum, default_value_t = Toggle::On)]
    pub refresh_reuse_detection: Toggle,

    /// How long after a session's newest token was minted a Refresh of an older one is a retry
    /// (answered with the same new token) rather than reuse.
    #[arg(help_heading = "Tokens and keys", long, env = "TOKEN_SIDECAR_REFRESH_REUSE_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub refresh_reuse_interval: Duration,

    /// How far this process's clock may be off the database's (the fleet's one clock, SPEC §4
    /// rule 9) before Issue and Refresh answer UNAVAILABLE; the purge keeps as much margin.
    #[arg(help_heading = "Tokens and keys", long, env = "TOKEN_SIDECAR_MAX_CLOCK_SKEW", default_value = "500ms", value_parser = parse_duration)]
    pub max_clock_skew: Duration,

    /// Sender-constrained tokens (SPEC §15): how old a DPoP proof's `iat` may be on the fleet
    /// clock (and how long its `jti` is remembered against replay, with --leeway).
    #[arg(help_heading = "Tokens and keys", long, env = "TOKEN_SIDECAR_DPOP_MAX_AGE", default_value = "60s", value_parser = parse_positive_duration)]
    pub dpop_max_age: Duration,

    /// Require a DPoP nonce (RFC 9449 §8) in every proof: a MAC over a 30 s time step under the
    /// fleet's secret, so every instance accepts the others'. A proof without one (or with a
    /// stale one) is refused with REASON_NONCE_REQUIRED, `WWW-Authenticate: DPoP
    /// error="use_dpop_nonce"` and a fresh `DPoP-Nonce`.
    #[arg(
        help_heading = "Tokens and keys",
        long,
        env = "TOKEN_SIDECAR_DPOP_NONCE",
        default_value_t = false
    )]
    pub dpop_nonce: bool,
}
