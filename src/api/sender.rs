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

    /// What a proof of possession is checked against (SPEC §15), as a proxy forwards it to
    /// `/auth`: `X-Forwarded-Method/-Proto/-Host/-Uri` (Traefik; Envoy's HTTP ext_authz as
    /// configured in tests/proxies), nginx's `X-Original-Method` and `X-Original-URI` (or a whole
    /// `X-Original-URL`), and every `DPoP` header. Without them, the check request itself
    /// describes the original one, as Envoy's HTTP ext_authz sends it: the same method, `Host`,
    /// and the original path after `/auth`.
    ///
    /// No client certificate is read from a header: a certificate is public, so a header naming
    /// one proves nothing unless every proxy in front overwrites it — certificate-bound tokens
    /// are checked where the connection is seen (Check with `include_peer_certificate`, the
    /// Envoy filter, Verify's `client_certificate`).
    pub fn forwarded(headers: &http::HeaderMap, method: &http::Method, path: &str) -> Self {
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        let method = text("x-forwarded-method")
            .or_else(|| text("x-original-method"))
            .unwrap_or(method.as_str())
            .to_owned();
        let uri = match text("x-original-url") {
            Some(url) => url.to_owned(),
            None => {
                let proto = text("x-forwarded-proto").unwrap_or("http");
                let host = text("x-forwarded-host")
                    .or_else(|| text("host"))
                    .unwrap_or_default();
                let own = path
                    .strip_prefix(crate::api::http::AUTH)
                    .filter(|p| p.starts_with('/'));
                let path = text("x-forwarded-uri")
                    .or_else(|| text("x-original-uri"))
                    .or(own)
                    .unwrap_or("/");
                Self::uri_of(proto, host, path)
            }
        };
        Self {
            dpop_scheme: false,
            proofs: headers
                .get_all("dpop")
                .iter()
                .map(|v| v.to_str().unwrap_or("-").to_owned())
                .collect(),
            method,
            uri,
            certificate: None,
        }
    }

    /// What a proof of possession is checked against in Envoy's Check (SPEC §15): the method,
    /// scheme, host and path it describes, the `dpop` header(s), and the peer's certificate
    /// (sent with `include_peer_certificate: true`).
    pub fn from_check(request: &crate::api::ext_authz::pb::CheckRequest) -> Self {
        let attributes = request.attributes.as_ref();
        let certificate = attributes
            .and_then(|a| a.source.as_ref())
            .and_then(|peer| pem_thumbprint(&peer.certificate));
        let Some(http) = attributes
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref())
        else {
            return Self {
                certificate,
                ..Self::default()
            };
        };
        let proofs: Vec<String> = match http.headers.get("dpop") {
            // Envoy joins repeated headers with a comma, which no proof holds.
            Some(value) => value.split(',').map(str::to_owned).collect(),
            None => http
                .header_map
                .iter()
                .flat_map(|map| &map.headers)
                .filter(|h| h.key.eq_ignore_ascii_case("dpop"))
                .map(|h| match h.value.is_empty() {
                    true => String::from_utf8_lossy(&h.raw_value).into_owned(),
                    false => h.value.clone(),
                })
                .collect(),
        };
        Self {
            dpop_scheme: false,
            proofs,
            method: http.method.clone(),
            uri: Self::uri_of(&http.scheme, &http.host, &http.path),
            certificate,
        }
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

    #[test]
    fn a_forwarded_request_is_read_as_each_proxy_sends_it() {
        let read = |pairs: &[(&str, &str)], method: &str, path: &str| {
            let mut headers = http::HeaderMap::new();
            for (k, v) in pairs {
                headers.append(
                    http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                    http::HeaderValue::from_str(v).expect("value"),
                );
            }
            let method = http::Method::from_bytes(method.as_bytes()).expect("method");
            let inputs = ProofInputs::forwarded(&headers, &method, path);
            (inputs.method, inputs.uri, inputs.proofs.len())
        };
        // Traefik.
        let traefik = [
            ("x-forwarded-method", "POST"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "api.example.com"),
            ("x-forwarded-uri", "/orders?x=1"),
            ("dpop", "a.b.c"),
            ("host", "sidecar:8080"),
        ];
        assert_eq!(
            read(&traefik, "GET", "/auth"),
            (
                "POST".into(),
                "https://api.example.com/orders?x=1".into(),
                1
            )
        );
        // nginx's subrequest.
        let nginx = [
            ("x-original-method", "DELETE"),
            ("x-original-uri", "/orders/1"),
            ("x-forwarded-host", "localhost"),
            ("x-forwarded-proto", "http"),
            ("dpop", "a.b.c"),
            ("dpop", "d.e.f"),
        ];
        assert_eq!(
            read(&nginx, "GET", "/auth"),
            ("DELETE".into(), "http://localhost/orders/1".into(), 2)
        );
        // ingress-nginx's whole URL.
        let ingress = [("x-original-url", "https://shop.example.com/cart")];
        assert_eq!(
            read(&ingress, "GET", "/auth").1,
            "https://shop.example.com/cart"
        );
        // Envoy's HTTP ext_authz: the check request is the original, under /auth.
        let envoy = [("host", "localhost")];
        assert_eq!(
            read(&envoy, "PUT", "/auth/hello?x=1"),
            ("PUT".into(), "http://localhost/hello?x=1".into(), 0)
        );
    }
}
