//! TLS on the API (rustls with aws-lc-rs), with a certificate that can be replaced while serving:
//! cert-manager renews the Secret and the kubelet updates the mounted files, and
//! [`ReloadableTls::reload`] (SIGHUP, and every `--key-reload-interval`) swaps the new certificate
//! and key in atomically for the next handshakes. A file that cannot be used keeps the old pair.
//! With `--tls-client-ca`, clients must present a certificate that CA signed (mutual TLS).
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::secret_file;

/// Why TLS material could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct TlsError {
    /// The file.
    pub path: String,
    /// What is wrong with it.
    pub problem: String,
}

fn error(path: &std::path::Path, problem: impl ToString) -> TlsError {
    TlsError {
        path: path.display().to_string(),
        problem: problem.to_string(),
    }
}

/// The certificate in use, replaced whole on reload.
#[derive(Debug)]
struct Current(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// The API's TLS: an acceptor whose certificate can be reloaded.
pub struct ReloadableTls {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: Arc<Current>,
    acceptor: TlsAcceptor,
    loaded: parking_lot::Mutex<(Vec<u8>, Vec<u8>)>,
}

impl ReloadableTls {
    /// TLS with the certificate chain and key in these PEM files; `client_ca` requires client
    /// certificates it signed.
    pub fn load(cert: PathBuf, key: PathBuf, client_ca: Option<PathBuf>) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let (cert_pem, key_pem) = read_pair(&cert, &key)?;
        let certified = certified_key(&provider, &cert, &cert_pem, &key, &key_pem)?;
        let current = Arc::new(Current(ArcSwap::from_pointee(certified)));
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| error(&cert, e))?;
        let builder = match &client_ca {
            Some(ca) => {
                let pem = secret_file::read(ca).map_err(|e| error(ca, e))?;
                let mut roots = RootCertStore::empty();
                for der in CertificateDer::pem_slice_iter(&pem) {
                    roots
                        .add(der.map_err(|e| error(ca, e))?)
                        .map_err(|e| error(ca, e))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| error(ca, e))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            cert,
            key,
            provider,
            current,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            loaded: parking_lot::Mutex::new((cert_pem, key_pem)),
        })
    }

    /// The acceptor for new connections (it always serves the current certificate).
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }

    /// Re-reads the certificate and key; swaps them in if they changed and form a valid pair.
    /// Ok(true) when a new certificate is in use.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let (cert_pem, key_pem) = read_pair(&self.cert, &self.key)?;
        let mut loaded = self.loaded.lock();
        if loaded.0 == cert_pem && loaded.1 == key_pem {
            return Ok(false);
        }
        let certified = certified_key(&self.provider, &self.cert, &cert_pem, &self.key, &key_pem)?;
        self.current.0.store(Arc::new(certified));
        *loaded = (cert_pem, key_pem);
        tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
        Ok(true)
    }
}

fn read_pair(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    secret_file::warn_if_readable_by_others(key);
    let cert_pem = secret_file::read(cert).map_err(|e| error(cert, e))?;
    let key_pem = secret_file::read(key).map_err(|e| error(key, e))?;
    Ok((cert_pem, key_pem))
}

fn certified_key(
    provider: &CryptoProvider,
    cert: &std::path::Path,
    cert_pem: &[u8],
    key: &std::path::Path,
    key_pem: &[u8],
) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(cert, e))?;
    if chain.is_empty() {
        return Err(error(cert, "no certificate in the file"));
    }
    let der = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| error(key, e))?;
    let signing = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| error(key, e))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| error(key, format!("does not match the certificate: {e}")))?;
    Ok(certified)
}
