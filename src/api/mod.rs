//! The surfaces the sidecar is asked through, one file each:
//! - `tokensidecar.v1.TokenService` — [`token_service`], with [`convert`] (proto ↔ domain),
//!   [`errors`] (the one error table), [`caller`] (the admin credential) and [`rpc_layer`] (who
//!   may call which method, its count, trace outcome and request log, as one tower layer);
//! - Envoy/Istio external authorization, `envoy.service.auth.v3.Authorization/Check` on the API
//!   listener — [`ext_authz`];
//! - HTTP on `--http-listen`: forward-auth for nginx `auth_request`, ingress-nginx, Traefik
//!   `ForwardAuth` and Envoy's HTTP ext_authz (`/auth`), RFC 7662 introspection and RFC 7009
//!   revocation — [`http`]; the change feed for proxy filters — [`feed`]; the identity
//!   providers' back-channel logout and Shared Signals receivers — [`idp_routes`] (the use case
//!   is `crate::idp`); the answers they share — [`responses`].
//!
//! What any caller can ask without privilege is admitted a few at a time per caller address at
//! the door ([`open_gate`]).
//!
//! The proxy surfaces share one decision, [`forward_auth`]: Verify's decode path and rules, turned
//! into "allow with these identity headers", "deny with this `WWW-Authenticate`" or "cannot
//! answer safely". A new surface gets a file here and calls the [`TokenAuthority`]
//! (`crate::authority`) or [`forward_auth`].
//!
//! [`TokenAuthority`]: crate::authority::TokenAuthority
pub mod caller;
pub mod convert;
pub mod errors;
pub mod ext_authz;
pub mod feed;
pub mod forward_auth;
pub mod http;
pub mod idp_routes;
pub mod log_value;
pub mod open_gate;
pub mod outcome;
pub mod responses;
pub mod rpc_layer;
pub mod sender;
pub mod token_service;
pub mod trace;

/// The generated protobuf and gRPC code for `tokensidecar.v1`, from the light api crate.
pub use token_sidecar_api::pb;

pub use crate::decision::bearer_credential;
