//! Why the sidecar could not start: one error for every step of `server::start` and the
//! `preflight` checks before it (its own room, so that the two do not import each other).
use std::net::SocketAddr;

use crate::store::StoreError;
use crate::token::KeyError;

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The keys could not be loaded.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// PostgreSQL mode with no key configured.
    #[error(
        "no signing key configured: with PostgreSQL, give one with --key KID=ALG:PATH \
         (or TOKEN_SIDECAR_KEYS); every sidecar sharing the database needs the same keys"
    )]
    NoKeyForPostgres,
    /// --verify-only with nothing to verify with, or --issuer-jwks without --verify-only.
    #[error("{0}")]
    VerifyOnly(&'static str),
    /// The issuing service's key set could not be read (check-config).
    #[error("the issuer's key set: {0}")]
    IssuerKeys(String),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        error: std::io::Error,
    },
    /// The admin credential file is unusable.
    #[error("--admin-token-file {path}: {problem}")]
    AdminToken {
        /// The file.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// The introspection credentials file is unusable.
    #[error("--introspection-token-file {path}: {problem}")]
    IntrospectionToken {
        /// The file.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// The feed credentials file is unusable.
    #[error("--feed-token-file {path}: {problem}")]
    FeedToken {
        /// The file.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// The TLS files are unusable.
    #[error("TLS: {0}")]
    Tls(String),
    /// The tracing settings are unusable.
    #[error(transparent)]
    Traces(#[from] crate::otel::TraceError),
    /// NATS mode with no server to talk to.
    #[error(
        "--sync-mode nats needs --nats-url (or TOKEN_SIDECAR_NATS_URL), e.g. nats://127.0.0.1:4222"
    )]
    NoNatsUrl,
    /// Identity provider receivers are configured but no HTTP listener serves them.
    #[error(
        "--oidc-issuer and --ssf-transmitter are served on the HTTP listener: set --http-listen \
         (or TOKEN_SIDECAR_HTTP_LISTEN), e.g. 127.0.0.1:8080"
    )]
    IdpWithoutHttp,
    /// Settings that each parse but contradict each other (`check-config`).
    #[error("settings contradict each other: {0}")]
    Contradictory(String),
    /// The identity providers' settings are not usable (`--oidc-issuer`, `--ssf-transmitter`).
    #[error("identity providers: {0}")]
    IdpConfig(String),
    /// An identity provider's key set (`--oidc-issuer`, `--ssf-transmitter`) cannot be read or
    /// holds no usable key.
    #[error("the key set of {issuer} cannot be used: {problem}")]
    IdpKeys {
        /// The issuer.
        issuer: String,
        /// What is wrong.
        problem: String,
    },
    /// The API would be reachable from other hosts with no caller authentication.
    #[error(
        "--listen {0} is reachable from other hosts, but callers are not authenticated (TLS alone \
         encrypts; it does not say who is calling), so anyone who reaches it could issue and \
         revoke tokens: require the admin credential (--admin-token-file) or client certificates \
         (--tls-client-ca with --tls-cert/--tls-key), listen on loopback, or pass \
         --allow-insecure-remote to accept the risk"
    )]
    InsecureRemote(SocketAddr),
    /// Reflection could not be built from the descriptors.
    #[error("reflection setup failed: {0}")]
    Reflection(String),
}
