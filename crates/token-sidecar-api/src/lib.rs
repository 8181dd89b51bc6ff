//! token-sidecar's contract for the services beside it: the generated `tokensidecar.v1` code
//! ([`pb`]), and [`client`] — a [`client::SidecarClient`] and the [`client::VerifyLayer`] tower
//! layer that protects a tonic or axum service with one line. It depends on tonic's client
//! side, prost, tower and http only: a service that wants the layer does not compile the
//! sidecar's server, database drivers or caches.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod codec;

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
