//! Why a key set could not be built.

use super::algorithms::SUPPORTED_ALGORITHMS;

/// Why a key set could not be built. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A `--key` value that is not `KID=ALG:PATH`.
    #[error(
        "bad key spec {0:?}: expected KID=ALG:PATH, e.g. main=HS256:/etc/token-sidecar/main.key"
    )]
    BadSpec(String),
    /// An algorithm name this build does not sign or verify with.
    #[error("key {kid:?}: algorithm {alg:?} is not supported (supported: {SUPPORTED_ALGORITHMS})")]
    UnsupportedAlgorithm {
        /// The key's id.
        kid: String,
        /// The algorithm asked for.
        alg: String,
    },
    /// An HMAC secret shorter than 32 bytes.
    #[error("key {kid:?}: the HMAC secret in {path} is {len} bytes; at least 32 are required")]
    WeakSecret {
        /// The key's id.
        kid: String,
        /// The file it came from.
        path: String,
        /// Its length.
        len: usize,
    },
    /// A key file that could not be read or written.
    #[error("key {kid:?}: cannot use {path}: {error}")]
    Io {
        /// The key's id.
        kid: String,
        /// The file.
        path: String,
        /// What went wrong.
        error: std::io::Error,
    },
    /// An RSA key shorter than 2048 bits.
    #[error(
        "key {kid:?}: the RSA key in {path} is too small ({detail}); at least 2048 bits are required"
    )]
    WeakRsaKey {
        /// The key's id.
        kid: String,
        /// The file it came from.
        path: String,
        /// What was found.
        detail: String,
    },
    /// The signing key can only verify.
    #[error("--signing-kid {0:?} names a public (verify-only) key; signing needs a private key")]
    VerifyOnlySigner(String),
    /// A private key or an HMAC secret given to a verify-only sidecar.
    #[error(
        "key {0:?} can sign (a private key or an HMAC secret); a --verify-only sidecar holds only \
         public keys: give it the issuer's public key (a PEM public key, or --issuer-jwks)"
    )]
    SecretInVerifyOnly(String),
    /// Two keys with one `kid`.
    #[error("key id {0:?} is configured twice")]
    DuplicateKid(String),
    /// `--signing-kid` names no configured key.
    #[error("--signing-kid {0:?} names no configured key")]
    UnknownSigningKid(String),
    /// No key at all.
    #[error("no signing key is configured (use --key KID=ALG:PATH)")]
    Empty,
    /// The key material was rejected by the crypto library.
    #[error("key {kid:?}: {message}")]
    Invalid {
        /// The key's id.
        kid: String,
        /// The library's complaint.
        message: String,
    },
}
