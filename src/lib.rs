//! token-sidecar: a gRPC service that issues, verifies, refreshes and revokes JWTs.
//!
//! Read top-down: [`config`] and [`server`] assemble the process (with the request [`limits`]);
//! [`grpc`] translates requests for the [`authority`], which applies the [`policy`] to tokens
//! from the [`token`] codec and revocation state from [`revocations`] (the [`cache`]s in front
//! of the [`store`], kept in step by [`sync`]), reading time from the [`clock`]. [`metrics`] are
//! served over HTTP.
#![warn(missing_docs)]

pub mod api;
pub mod authority;
pub mod cache;
pub mod clock;
pub mod config;
pub mod connections;
pub mod grpc;
pub mod limits;
pub mod metrics;
pub mod policy;
pub mod reason;
pub mod revocations;
pub mod secret_file;
pub mod server;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod token;
