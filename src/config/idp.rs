//! The identity providers heard, and the audit trail.
use std::time::Duration;

use super::parse::parse_positive_duration;

/// The identity providers heard, and the audit trail.
#[derive(Debug, Clone, clap::Args)]
pub struct IdpArgs {
    /// How long the audit trail (who revoked what and why; ListChanges) keeps a change,
    /// independently of the denylist's purge.
    #[arg(help_heading = "Identity providers and audit", long, env = "TOKEN_SIDECAR_AUDIT_RETENTION", default_value = "90d", value_parser = parse_positive_duration)]
    pub audit_retention: Duration,

    /// An OpenID Provider whose back-channel logout tokens are accepted, as
    /// ISSUER=JWKS_SOURCE[,subject-prefix=P] (a JWKS file, or an https:// URL fetched and
    /// cached; user id = P + the token's sub, and IdP session ids are scoped by P); repeatable.
    /// With several identity providers each needs its own prefix. Served on --http-listen at
    /// POST /oidc/backchannel-logout. Needs --oidc-client-id.
    #[arg(
        help_heading = "Identity providers and audit",
        long = "oidc-issuer",
        env = "TOKEN_SIDECAR_OIDC_ISSUERS",
        value_delimiter = ',',
        requires = "oidc_client_id"
    )]
    pub oidc_issuers: Vec<String>,

    /// The client id a logout token must name in its `aud`.
    #[arg(
        help_heading = "Identity providers and audit",
        long,
        env = "TOKEN_SIDECAR_OIDC_CLIENT_ID"
    )]
    pub oidc_client_id: Option<String>,

    /// A Shared Signals transmitter whose Security Event Tokens are accepted, as
    /// ISSUER=JWKS_SOURCE[,subject-prefix=P] (user id = P + the subject); repeatable. With
    /// several identity providers each needs its own prefix. Served on --http-listen at POST
    /// /ssf/events (RFC 8935 push). Needs --ssf-audience.
    #[arg(
        help_heading = "Identity providers and audit",
        long = "ssf-transmitter",
        env = "TOKEN_SIDECAR_SSF_TRANSMITTERS",
        value_delimiter = ',',
        requires = "ssf_audience"
    )]
    pub ssf_transmitters: Vec<String>,

    /// The `aud` a Security Event Token must name (this receiver, as the stream's audience).
    #[arg(
        help_heading = "Identity providers and audit",
        long,
        env = "TOKEN_SIDECAR_SSF_AUDIENCE"
    )]
    pub ssf_audience: Option<String>,

    /// An identity provider whose own access tokens Verify, Check, /auth, introspection and the
    /// proxy filter accept and revoke, as ISSUER=KEYS,audience=A[,subject-prefix=P]: KEYS a
    /// JWKS file, an https:// JWKS URL or `discovery` (ISSUER/.well-known/openid-configuration
    /// names the jwks_uri); the token's aud must name A (`audience=*`: any); user id = P + sub,
    /// its sid the IdP session P + sid. Keys are read at start (NOT_SERVING until then), every
    /// 10 minutes, and at most once a second when a token names an unknown kid. Repeatable.
    #[arg(
        help_heading = "Identity providers and audit",
        long = "trusted-issuer",
        env = "TOKEN_SIDECAR_TRUSTED_ISSUERS",
        value_delimiter = ','
    )]
    pub trusted_issuers: Vec<String>,

    /// Map Shared Signals `email` subjects to users: say so when user ids are email addresses.
    #[arg(
        help_heading = "Identity providers and audit",
        long,
        env = "TOKEN_SIDECAR_SSF_EMAIL_SUBJECTS"
    )]
    pub ssf_email_subjects: bool,
}
