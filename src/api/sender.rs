//! What each surface received that a proof of possession is checked against (SPEC §15), read
//! into the core's [`Presentation`]: Verify's and Refresh's fields, Check's request attributes,
//! and `/auth`'s forwarded headers. Hostile until checked — every value is bounded here, and the
//! core decides.
use token_sidecar_core::sender::{Presentation, Scheme, certificate_sha256};

/// A certificate's thumbprint: 32 bytes are taken as the thumbprint itself, anything else as
/// the DER certificate, hashed. Empty: none presented.
pub fn certificate_thumbprint(given: &[u8]) -> Option<[u8; 32]> {
    match given.len() {
        0 => None,
        32 => given.try_into().ok(),
        _ => Some(certificate_sha256(given)),
    }
}

/// The thumbprint of a PEM certificate as proxies forward it: percent-encoded (Envoy's
/// `x-forwarded-client-cert` and `source.certificate`, nginx's `$ssl_client_escaped_cert`,
/// Traefik's `X-Forwarded-Tls-Client-Cert`, which also drops the BEGIN/END lines). None when it
/// is not one.
pub fn pem_thumbprint(encoded: &str) -> Option<[u8; 32]> {
    use base64::Engine;
    if encoded.is_empty() || encoded.len() > 16 * 1024 {
        return None;
    }
    let pem = percent_decode(encoded)?;
    let body: String = pem
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .flat_map(|line| line.chars().filter(|c| !c.is_whitespace()))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.as_bytes())
        .ok()?;
    (!der.is_empty()).then(|| certificate_sha256(&der))
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = text.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The owned inputs of a [`Presentation`], for surfaces that assemble them.
#[derive(Debug, Default)]
pub struct ProofInputs {
    /// `Authorization: DPoP` rather than `Bearer`.
    pub dpop_scheme: bool,
    /// Every `DPoP` header value.
    pub proofs: Vec<String>,
    /// The request's method.
    pub method: String,
    /// The request's URI.
    pub uri: String,
    /// The client certificate's thumbprint.
    pub certificate: Option<[u8; 32]>,
}

impl ProofInputs {
    /// The presentation, borrowing from `self` and `proofs` (the proof values as `&str`).
    pub fn presentation<'a>(&'a self, proofs: &'a [&'a str]) -> Presentation<'a> {
        Presentation {
            scheme: if self.dpop_scheme {
                Scheme::Dpop
            } else {
                Scheme::Bearer
            },
            proofs,
            method: &self.method,
            uri: &self.uri,
            certificate_sha256: self.certificate,
        }
    }

    /// The proof values, for [`Self::presentation`].
    pub fn proof_refs(&self) -> Vec<&str> {
        self.proofs.iter().map(String::as_str).collect()
    }

    /// The URI of a request as a proxy describes it: scheme, host and path (with any query).
    pub fn uri_of(scheme: &str, host: &str, path: &str) -> String {
        let scheme = if scheme.is_empty() { "http" } else { scheme };
        let path = if path.starts_with('/') { path } else { "/" };
        format!("{scheme}://{host}{path}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_are_thumbprinted_however_they_come() {
        assert_eq!(certificate_thumbprint(&[]), None);
        assert_eq!(certificate_thumbprint(&[7; 32]), Some([7; 32]));
        let der = [1u8, 2, 3];
        let expected = certificate_sha256(&der);
        assert_eq!(certificate_thumbprint(&der), Some(expected));
        // "AQID" is base64 of 01 02 03; a PEM percent-encoded as Envoy and nginx send it.
        let pem = "-----BEGIN%20CERTIFICATE-----%0AAQID%0A-----END%20CERTIFICATE-----%0A";
        assert_eq!(pem_thumbprint(pem), Some(expected));
        assert_eq!(
            pem_thumbprint("AQID"),
            Some(expected),
            "Traefik's bare body"
        );
        assert_eq!(pem_thumbprint("%zz"), None);
        assert_eq!(pem_thumbprint(""), None);
    }
}
