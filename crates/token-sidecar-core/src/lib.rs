//! token-sidecar's core: what the sidecar decides, with no transport and no SQL.
//!
//! Read top-down:
//! - [`authority`]: the use cases — issue, verify, refresh (reuse detection), revoke, ban, lift,
//!   identity provider sessions, the audit trail — over
//! - [`policy`]: the rules, pure functions of the injected [`clock`]'s time, and
//! - [`token`]: keys, claims and the one decode-and-validate path;
//! - [`revocations`]: the revocation state — the [`cache`]s in front of the [`store`] trait,
//!   the change watermark, bounded staleness — with the [`sequencer`] that orders announced
//!   changes and [`fleet_clock`], the reading of the database's clock;
//! - around them: [`metrics`], [`spans`], [`reason`], [`secret_file`].
//!
//! The server crate (`token-sidecar`) serves these over gRPC and HTTP, implements the store for
//! PostgreSQL and SQLite, and keeps instances in step.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod authority;
pub mod cache;
pub mod clock;
pub mod error_code;
pub mod fleet_clock;
pub mod ids;
pub mod metrics;
pub mod policy;
pub mod reason;
pub mod revocations;
pub mod secret_file;
pub mod sequencer;
pub mod spans;
pub mod store;
pub mod token;
