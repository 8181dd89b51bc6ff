//! The gRPC API, TLS, the HTTP listener and the proxies.
use std::net::SocketAddr;
use std::path::PathBuf;

use super::parse::parse_listen;

/// The gRPC API, TLS, the HTTP listener and the proxies.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// Address of the gRPC API (TokenService, health, reflection).
    #[arg(help_heading = "API, TLS and proxies", long, env = "TOKEN_SIDECAR_LISTEN", default_value = "127.0.0.1:50051", value_parser = parse_listen)]
    pub listen: SocketAddr,

    /// Address of the Prometheus metrics endpoint.
    #[arg(help_heading = "API, TLS and proxies", long, env = "TOKEN_SIDECAR_METRICS_LISTEN", default_value = "127.0.0.1:9464", value_parser = parse_listen)]
    pub metrics_listen: SocketAddr,

    /// Extra address serving only grpc.health.v1 (for kubelet probes on the Pod IP). Off if unset.
    #[arg(help_heading = "API, TLS and proxies", long, env = "TOKEN_SIDECAR_HEALTH_LISTEN", value_parser = parse_listen)]
    pub health_listen: Option<SocketAddr>,

    /// The HTTP listener for proxies, OAuth clients and identity providers: forward-auth at
    /// `/auth` (nginx auth_request, Traefik ForwardAuth, Envoy HTTP ext_authz), RFC 7662
    /// introspection at `/oauth2/introspect`, RFC 7009 revocation at `/oauth2/revoke`, the
    /// public keys at `/.well-known/jwks.json`, the change feed for proxy filters at
    /// `/revocations/changes` and the trusted issuers' keys for them at `/trusted-issuers`, and
    /// the identity providers' `/oidc/backchannel-logout` and `/ssf/events` (when configured).
    /// Off unless set.
    #[arg(help_heading = "API, TLS and proxies", long, env = "TOKEN_SIDECAR_HTTP_LISTEN", value_parser = parse_listen)]
    pub http_listen: Option<SocketAddr>,

    /// Forward a custom claim to the upstream as a header on allow (ext_authz and forward-auth),
    /// e.g. `role=x-user-role`; repeatable. Absent claims remove the header.
    #[arg(help_heading = "API, TLS and proxies", long = "forward-claim", env = "TOKEN_SIDECAR_FORWARD_CLAIMS", value_delimiter = ',', value_parser = crate::api::forward_auth::parse_forwarded_claim)]
    pub forward_claims: Vec<crate::api::forward_auth::ForwardedClaim>,

    /// A file holding the bearer credential that privileged RPCs (Issue, Revoke by jti, session
    /// or user, LiftBan, GetUserStatus) must present as `authorization: Bearer <credential>`.
    /// Verify, Refresh and Revoke of one's own token stay open. Off if unset.
    #[arg(
        help_heading = "API, TLS and proxies",
        long,
        env = "TOKEN_SIDECAR_ADMIN_TOKEN_FILE"
    )]
    pub admin_token_file: Option<PathBuf>,

    /// PEM certificate chain of the gRPC API; with --tls-key, the API speaks TLS only.
    #[arg(
        help_heading = "API, TLS and proxies",
        long,
        env = "TOKEN_SIDECAR_TLS_CERT",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(
        help_heading = "API, TLS and proxies",
        long,
        env = "TOKEN_SIDECAR_TLS_KEY",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificates; when set, callers must present a client certificate they signed
    /// (mutual TLS). Such a certificate admits its holder to the open RPCs only; the privileged
    /// ones need the admin credential or an --admin-identity.
    #[arg(
        help_heading = "API, TLS and proxies",
        long,
        env = "TOKEN_SIDECAR_TLS_CLIENT_CA",
        requires = "tls_cert"
    )]
    pub tls_client_ca: Option<PathBuf>,

    /// A mutual-TLS client identity allowed to call the privileged RPCs: a SPIFFE ID (or other
    /// URI) or DNS name from the client certificate's subject alternative names, with `*` as
    /// the whole last path segment (spiffe://cluster.local/ns/ops/sa/*) or leftmost label
    /// (*.ops.svc.cluster.local); repeatable. Needs --tls-client-ca.
    #[arg(help_heading = "API, TLS and proxies", long = "admin-identity", env = "TOKEN_SIDECAR_ADMIN_IDENTITIES", value_delimiter = ',', value_parser = crate::api::caller::IdentityPattern::parse, requires = "tls_client_ca")]
    pub admin_identities: Vec<crate::api::caller::IdentityPattern>,

    /// A file of credentials (one per line) with which resource servers introspect tokens
    /// (RFC 7662, `POST /oauth2/introspect`); they authorise nothing else.
    #[arg(
        help_heading = "API, TLS and proxies",
        long,
        env = "TOKEN_SIDECAR_INTROSPECTION_TOKEN_FILE"
    )]
    pub introspection_token_file: Option<PathBuf>,

    /// A file of credentials (one per line) with which proxy filters read the change feed
    /// (`GET /revocations/changes` on --http-listen); they authorise nothing else. Without it
    /// (and without --admin-token-file) the feed is open only on a loopback --http-listen.
    #[arg(
        help_heading = "API, TLS and proxies",
        long,
        env = "TOKEN_SIDECAR_FEED_TOKEN_FILE"
    )]
    pub feed_token_file: Option<PathBuf>,

    /// Accept listening beyond loopback without caller authentication: neither the admin
    /// credential nor client certificates. Anyone who reaches the port may then verify,
    /// refresh and revoke the tokens it holds; the privileged RPCs (Issue, Revoke by id or
    /// user, LiftBan, GetUserStatus) are refused to everyone.
    #[arg(
        help_heading = "API, TLS and proxies",
        long,
        env = "TOKEN_SIDECAR_ALLOW_INSECURE_REMOTE"
    )]
    pub allow_insecure_remote: bool,
}
