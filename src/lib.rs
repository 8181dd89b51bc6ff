//! token-sidecar: a gRPC service that issues, verifies, refreshes and revokes JWTs.
//!
//! Read top-down:
//! - the process: [`config`] (flags, and the settings they build) and [`server`] (assembly and
//!   lifecycle), with [`preflight`] checks, [`health`], [`key_reload`], [`purge`], the
//!   [`connections`] guard, the request [`limits`] and the [`shutdown`] signal;
//! - the surfaces, one file each in [`api`]: TokenService over gRPC, Envoy ext_authz, HTTP
//!   forward-auth and OAuth introspection/revocation;
//! - the use cases in [`authority`], applying the pure rules of [`policy`] to tokens from the
//!   [`token`] codec and to revocation state from [`revocations`] — the [`cache`]s in front of
//!   the [`store`], kept in step by [`sync`] — reading time from the [`clock`];
//! - around them: [`metrics`], [`telemetry`], [`secret_file`], [`reason`];
//! - for sibling services: the `token-sidecar-api` crate (the contract and its client,
//!   `SidecarClient` and the `VerifyLayer` for tonic and axum), re-exported as `client` with
//!   feature `client`.
//!
//! Arrows point down: `api` knows the authority, the authority knows neither gRPC nor SQL.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
#[cfg(feature = "client")]
pub use token_sidecar_api::client;
pub use token_sidecar_core::authority;
pub use token_sidecar_core::cache;
pub use token_sidecar_core::clock;
pub use token_sidecar_core::decision;
pub use token_sidecar_core::error_code;
pub use token_sidecar_core::feed;
pub use token_sidecar_core::ids;
pub mod clock_upkeep;
pub mod config;
pub mod connections;
pub mod health;
pub mod http_server;
pub mod idp;
pub mod key_reload;
pub mod limits;
pub mod metrics;
pub mod otel;
pub use token_sidecar_core::policy;
pub mod preflight;
pub mod purge;
pub mod readiness;
pub use token_sidecar_core::reason;
pub use token_sidecar_core::revocations;
pub use token_sidecar_core::secret_file;
pub use token_sidecar_core::sender;
pub mod server;
pub mod shutdown;
pub mod startup_error;
pub mod store;
pub mod supervise;
pub mod surfaces;
pub mod sync;
pub mod telemetry;
pub mod tls;
pub mod trusted_keys;
pub use token_sidecar_core::token;
