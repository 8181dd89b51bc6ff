//! token-sidecar's core: what the sidecar decides, with no transport and no SQL.
//!
//! Read top-down:
//! - [`authority`]: the use cases — issue, verify, refresh (reuse detection), revoke, ban, lift,
//!   identity provider sessions, the audit trail — over
//! - [`policy`]: the rules, pure functions of the injected [`clock`]'s time, and
//! - [`token`]: keys, claims and the one decode-and-validate path;
//! - [`model`]: the vocabulary of revocation state (changes, denylist entries, cutoffs, the
//!   audit trail), plain data every layer below shares;
//! - [`revocations`]: the revocation state — the [`cache`]s in front of the [`store`] trait,
//!   the change watermark, bounded staleness — with the [`sequencer`] that orders announced
//!   changes and [`fleet_clock`], the reading of the database's clock;
//! - around them: [`metrics`], [`spans`], [`reason`], [`secret_file`].
//!
//! The server crate (`token-sidecar`) serves these over gRPC and HTTP, implements the store for
//! PostgreSQL and SQLite, and keeps instances in step.
//!
//! Features: `runtime` (default) is everything above that needs tokio and the caches; without
//! it the crate is the pure part — [`policy`], [`token`]'s decode path, [`reason`], [`model`],
//! [`decision`] and [`clock`] — which the Envoy filter (`crates/token-sidecar-wasm`) compiles to
//! WebAssembly. `aws-lc` (default) does the cryptography with aws-lc-rs; `rust-crypto` with the
//! pure-Rust RustCrypto crates, for targets aws-lc cannot build for.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "runtime")]
pub mod authority;
#[cfg(feature = "runtime")]
pub mod cache;
pub mod clock;
pub mod decision;
pub mod error_code;
pub mod feed;
#[cfg(feature = "runtime")]
pub mod fleet_clock;
pub mod ids;
#[cfg(feature = "runtime")]
pub mod metrics;
pub mod model;
pub mod policy;
pub mod reason;
#[cfg(feature = "runtime")]
pub mod revocations;
pub mod secret_file;
pub mod sender;
#[cfg(feature = "runtime")]
pub mod sequencer;
#[cfg(feature = "runtime")]
pub mod spans;
#[cfg(feature = "runtime")]
pub mod store;
pub mod token;
