//! token-sidecar: a gRPC service that issues, verifies, refreshes and revokes JWTs.
//!
//! Read top-down: [`config`] and [`server`] assemble the process; [`grpc`] translates requests
//! for the [`authority`], which applies the [`policy`] to tokens from the [`token`] codec and
//! state from the [`store`], reading time from the [`clock`].
#![warn(missing_docs)]

pub mod authority;
pub mod clock;
pub mod config;
pub mod grpc;
pub mod policy;
pub mod reason;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod token;
