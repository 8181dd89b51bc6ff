//! One bounded HTTP GET, for an identity provider's JWKS: `https://` with the system's trust
//! store (`SSL_CERT_FILE` and `SSL_CERT_DIR` are honoured), or `http://` to a loopback address
//! only. The connection, the answer and the body each have a bound; redirects are not followed.
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Longest wait for the whole fetch.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest key set read.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;

/// Why a fetch failed (said in the log; the URL is configuration, never a secret).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL is not one we fetch.
    #[error("{0}")]
    Url(String),
    /// Connecting, TLS or HTTP failed.
    #[error("{0}")]
    Transport(String),
    /// The server answered something other than 200.
    #[error("answered HTTP {0}")]
    Status(u16),
    /// The answer did not come in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The body is larger than [`MAX_JWKS_BYTES`].
    #[error("the answer is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
}

/// Whether `host` (as a URL names it) is a loopback address, where plain HTTP is acceptable.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Checks that `url` is `https://…`, or `http://` to a loopback host.
pub fn check_url(url: &str) -> Result<http::Uri, FetchError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| FetchError::Url(format!("{url:?} is not a URL: {e}")))?;
    let host = uri
        .host()
        .ok_or_else(|| FetchError::Url(format!("{url:?} names no host")))?;
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") if is_loopback_host(host) => Ok(uri),
        Some("http") => Err(FetchError::Url(format!(
            "{url:?}: a key set is fetched over https:// (plain http only from a loopback address)"
        ))),
        _ => Err(FetchError::Url(format!(
            "{url:?}: only https:// URLs are fetched"
        ))),
    }
}

/// GETs `url` and returns its body.
pub async fn get(url: &str) -> Result<Bytes, FetchError> {
    let uri = check_url(url)?;
    match tokio::time::timeout(FETCH_TIMEOUT, get_uri(&uri)).await {
        Ok(answer) => answer,
        Err(_) => Err(FetchError::Timeout(FETCH_TIMEOUT)),
    }
}

async fn get_uri(uri: &http::Uri) -> Result<Bytes, FetchError> {
    let transport = |e: &dyn std::fmt::Display| FetchError::Transport(e.to_string());
    let host = uri.host().unwrap_or_default().to_owned();
    let tls = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let bare_host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let tcp = TcpStream::connect((bare_host.as_str(), port))
        .await
        .map_err(|e| transport(&e))?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let authority = uri
        .authority()
        .map_or(host.clone(), |a| a.as_str().to_owned());
    let request = http::Request::get(path)
        .header(http::header::HOST, authority)
        .header(
            http::header::ACCEPT,
            "application/jwk-set+json, application/json",
        )
        .header(http::header::USER_AGENT, "token-sidecar")
        .body(Empty::<Bytes>::new())
        .map_err(|e| transport(&e))?;
    if tls {
        let name = rustls_pki_types::ServerName::try_from(bare_host).map_err(|e| transport(&e))?;
        let stream = tls_connector()?
            .connect(name, tcp)
            .await
            .map_err(|e| transport(&e))?;
        exchange(TokioIo::new(stream), request).await
    } else {
        exchange(TokioIo::new(tcp), request).await
    }
}

async fn exchange<IO>(io: IO, request: http::Request<Empty<Bytes>>) -> Result<Bytes, FetchError>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let transport = |e: &dyn std::fmt::Display| FetchError::Transport(e.to_string());
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| transport(&e))?;
    // Ends with the exchange (or the timeout around it).
    let driver = tokio::spawn(connection);
    let answer = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| transport(&e))?;
        if response.status() != http::StatusCode::OK {
            return Err(FetchError::Status(response.status().as_u16()));
        }
        let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    FetchError::TooLarge
                } else {
                    FetchError::Transport(e.to_string())
                }
            })?;
        Ok(body.to_bytes())
    }
    .await;
    driver.abort();
    answer
}

/// A TLS client trusting the system's roots (read once).
fn tls_connector() -> Result<tokio_rustls::TlsConnector, FetchError> {
    static CONFIG: std::sync::OnceLock<Result<Arc<rustls::ClientConfig>, String>> =
        std::sync::OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let mut roots = rustls::RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            tracing::warn!(error = %error, "a system trust anchor could not be read");
        }
        let (added, _ignored) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            return Err(
                "no trusted root certificate found (SSL_CERT_FILE, SSL_CERT_DIR or the \
                        system's store)"
                    .to_owned(),
            );
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|builder| Arc::new(builder.with_root_certificates(roots).with_no_client_auth()))
            .map_err(|e| e.to_string())
    });
    config
        .clone()
        .map(tokio_rustls::TlsConnector::from)
        .map_err(FetchError::Transport)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_or_loopback_http_is_fetched() {
        assert!(check_url("https://idp.example.com/jwks").is_ok());
        assert!(check_url("http://127.0.0.1:8080/jwks").is_ok());
        assert!(check_url("http://localhost/jwks").is_ok());
        assert!(check_url("http://[::1]:9/jwks").is_ok());
        for bad in [
            "http://idp.example.com/jwks",
            "http://10.0.0.1/jwks",
            "ftp://idp/jwks",
            "file:///etc/passwd",
            "jwks.json",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }
}
