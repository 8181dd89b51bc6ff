//! The surfaces the sidecar is asked through, one file each:
//! - `tokensidecar.v1.TokenService` — [`token_service`], with [`convert`] (proto ↔ domain),
//!   [`errors`] (the one error table) and [`caller`] (the admin credential);
//! - Envoy/Istio external authorization, `envoy.service.auth.v3.Authorization/Check` on the API
//!   listener — [`ext_authz`];
//! - HTTP on `--http-listen`: forward-auth for nginx `auth_request`, ingress-nginx, Traefik
//!   `ForwardAuth` and Envoy's HTTP ext_authz (`/auth`), RFC 7662 introspection and RFC 7009
//!   revocation — [`http`]; the identity providers' back-channel logout and Shared Signals
//!   receivers — [`idp_routes`] (the use case is `crate::idp`).
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
pub mod forward_auth;
pub mod http;
pub mod idp_routes;
pub mod token_service;
pub mod trace;

/// The generated protobuf and gRPC code for `tokensidecar.v1`.
pub mod pb {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("tokensidecar.v1");

    /// The encoded descriptor set of our proto and its imports, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/token_sidecar_descriptor.bin"));
}

/// The credential of an `Authorization: Bearer <credential>` value. The scheme is
/// case-insensitive (RFC 7235 §2.1) and may be followed by spaces or tabs.
pub fn bearer_credential(value: &str) -> Option<&str> {
    let blank = |c: char| c == ' ' || c == '\t';
    let (scheme, rest) = value.trim_matches(blank).split_once(blank)?;
    let credential = rest.trim_matches(blank);
    (scheme.eq_ignore_ascii_case("bearer") && !credential.is_empty()).then_some(credential)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive_and_blanks_are_spaces_or_tabs() {
        for (value, expected) in [
            ("Bearer abc", Some("abc")),
            ("bearer abc", Some("abc")),
            ("BEARER abc", Some("abc")),
            ("Bearer\tabc", Some("abc")),
            ("Bearer  \t abc \t", Some("abc")),
            ("Basic abc", None),
            ("Bearer", None),
            ("Bearer   ", None),
            ("Bearerabc", None),
            ("", None),
        ] {
            assert_eq!(bearer_credential(value), expected, "{value:?}");
        }
    }
}
