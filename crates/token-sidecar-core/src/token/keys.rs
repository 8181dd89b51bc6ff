//! The key set: every configured key by `kid`; one of them signs, all of them verify.
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey};
use rand::RngCore;

/// Shortest HMAC secret accepted (RFC 7518 §3.2 asks for at least the hash size; 32 bytes is
/// the floor SPEC sets for every HS algorithm).
const MIN_HMAC_SECRET_BYTES: usize = 32;

/// Smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;

/// The size in bits of an RSA modulus given as big-endian bytes: its bit length, not its byte
/// count × 8 (a 2,041-bit modulus fills 256 bytes yet is below 2,048 bits). The one count used
/// by `--key`, our JWKS, the identity providers' key sets and the Envoy filter.
pub fn rsa_modulus_bits(modulus: &[u8]) -> usize {
    let significant = modulus
        .iter()
        .position(|b| *b != 0)
        .map_or(&[][..], |first| &modulus[first..]);
    match significant.first() {
        None => 0,
        Some(top) => (significant.len() - 1) * 8 + (8 - top.leading_zeros() as usize),
    }
}

/// The algorithms a key may be configured with.
pub const SUPPORTED_ALGORITHMS: &str =
    "HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA";

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

/// One `--key KID=ALG:PATH` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec {
    /// The key id written into token headers.
    pub kid: String,
    /// The JWS algorithm name, e.g. `HS256`.
    pub alg: String,
    /// Where the key material lives.
    pub path: PathBuf,
}

impl FromStr for KeySpec {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || KeyError::BadSpec(s.to_owned());
        let (kid, rest) = s.split_once('=').ok_or_else(bad)?;
        let (alg, path) = rest.split_once(':').ok_or_else(bad)?;
        let kid = kid.trim();
        if kid.is_empty() || alg.is_empty() || path.is_empty() {
            return Err(bad());
        }
        let alg = alg.trim();
        // Algorithm names are case-sensitive in JOSE; accept any case here and write the
        // canonical one.
        let alg = if alg.eq_ignore_ascii_case("eddsa") {
            "EdDSA".to_owned()
        } else {
            alg.to_ascii_uppercase()
        };
        Ok(Self {
            kid: kid.to_owned(),
            alg,
            path: PathBuf::from(path),
        })
    }
}

/// A key that can verify tokens carrying its `kid`.
pub(super) struct VerificationKey {
    pub(super) alg: Algorithm,
    pub(super) alg_name: &'static str,
    pub(super) decoding: DecodingKey,
    /// For HS* keys, the HMAC key prepared once (jsonwebtoken would rebuild it on every check).
    #[cfg(feature = "aws-lc")]
    pub(super) hmac: Option<aws_lc_rs::hmac::Key>,
}

impl VerificationKey {
    fn hmac(alg: Algorithm, alg_name: &'static str, secret: &[u8]) -> Result<Self, String> {
        Ok(Self {
            alg,
            alg_name,
            decoding: DecodingKey::from_secret(secret).map_err(|e| e.to_string())?,
            #[cfg(feature = "aws-lc")]
            hmac: Some(aws_lc_rs::hmac::Key::new(hmac_algorithm(alg), secret)),
        })
    }

    fn public(alg: Algorithm, alg_name: &'static str, decoding: DecodingKey) -> Self {
        Self {
            alg,
            alg_name,
            decoding,
            #[cfg(feature = "aws-lc")]
            hmac: None,
        }
    }
}

/// The keys that verify, by `kid`: all the one decode path needs. A [`KeySet`] holds them
/// beside its signer; a proxy filter holds them alone, read from a JWKS.
#[derive(Default)]
pub struct VerifyingKeys {
    by_kid: HashMap<String, VerificationKey>,
}

impl VerifyingKeys {
    pub(super) fn get(&self, kid: &str) -> Option<&VerificationKey> {
        self.by_kid.get(kid)
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.by_kid.len()
    }

    /// Whether there is no key (every token then fails `BAD_SIGNATURE`).
    pub fn is_empty(&self) -> bool {
        self.by_kid.is_empty()
    }

    /// Whether every key is an HMAC secret (a signature check then costs about what a cache
    /// lookup does).
    pub fn only_hmac(&self) -> bool {
        self.by_kid
            .values()
            .all(|k| k.alg.family() == AlgorithmFamily::Hmac)
    }

    /// The key ids, sorted.
    pub fn kids(&self) -> Vec<&str> {
        let mut kids: Vec<&str> = self.by_kid.keys().map(String::as_str).collect();
        kids.sort_unstable();
        kids
    }

    fn insert(&mut self, kid: String, key: VerificationKey) -> Result<(), KeyError> {
        match self.by_kid.entry(kid) {
            std::collections::hash_map::Entry::Occupied(taken) => {
                Err(KeyError::DuplicateKid(taken.key().clone()))
            }
            std::collections::hash_map::Entry::Vacant(free) => {
                free.insert(key);
                Ok(())
            }
        }
    }

    /// The keys of one or more RFC 7517 key sets (JSON), held to the rules `--key` files are:
    /// every key names its `kid` and one of our algorithms (`alg`), RSA keys have at least
    /// 2048 bits, an EC key is on its algorithm's curve, and an `oct` key (an HMAC secret, which
    /// only a set kept private can carry) has at least 32 bytes. Keys meant only for
    /// encryption (`"use": "enc"`) are skipped.
    pub fn from_jwks<'a>(sets: impl IntoIterator<Item = &'a str>) -> Result<Self, KeyError> {
        let mut keys = Self::default();
        for json in sets {
            let set: JwkSet = serde_json::from_str(json).map_err(|e| KeyError::Invalid {
                kid: String::new(),
                message: format!("not a JSON Web Key Set: {e}"),
            })?;
            for jwk in set.keys {
                if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
                    continue;
                }
                let kid = jwk.common.key_id.clone().ok_or_else(|| KeyError::Invalid {
                    kid: String::new(),
                    message: "a key without a kid".into(),
                })?;
                let invalid = |message: String| KeyError::Invalid {
                    kid: kid.clone(),
                    message,
                };
                let named = jwk
                    .common
                    .key_algorithm
                    .map(|a| a.to_string())
                    .ok_or_else(|| invalid("no alg".into()))?;
                let (alg, alg_name) =
                    algorithm(&named).ok_or_else(|| KeyError::UnsupportedAlgorithm {
                        kid: kid.clone(),
                        alg: named.clone(),
                    })?;
                let key = match &jwk.algorithm {
                    AlgorithmParameters::OctetKey(oct) if alg.family() == AlgorithmFamily::Hmac => {
                        let secret = URL_SAFE_NO_PAD
                            .decode(&oct.value)
                            .map_err(|_| invalid("the secret is not base64url".into()))?;
                        if secret.len() < MIN_HMAC_SECRET_BYTES {
                            return Err(KeyError::WeakSecret {
                                kid: kid.clone(),
                                path: "the key set".into(),
                                len: secret.len(),
                            });
                        }
                        VerificationKey::hmac(alg, alg_name, &secret).map_err(invalid)?
                    }
                    AlgorithmParameters::OctetKey(_) => {
                        return Err(invalid(format!("an oct key cannot be {alg_name}")));
                    }
                    _ if alg.family() == AlgorithmFamily::Hmac => {
                        return Err(invalid(format!("{alg_name} needs an oct key")));
                    }
                    _ => {
                        check_public_jwk(&jwk, alg, alg_name).map_err(|problem| match problem {
                            PublicKeyProblem::WeakRsa(detail) => KeyError::WeakRsaKey {
                                kid: kid.clone(),
                                path: "the key set".into(),
                                detail,
                            },
                            PublicKeyProblem::Other(message) => invalid(message),
                        })?;
                        let decoding =
                            DecodingKey::from_jwk(&jwk).map_err(|e| invalid(e.to_string()))?;
                        VerificationKey::public(alg, alg_name, decoding)
                    }
                };
                keys.insert(kid, key)?;
            }
        }
        Ok(keys)
    }
}

/// Why a public key is refused.
enum PublicKeyProblem {
    WeakRsa(String),
    Other(String),
}

/// A public JWK is strong enough and matches its algorithm: RSA ≥ 2048 bits, EC on the
/// algorithm's curve, an OKP key for EdDSA.
fn check_public_jwk(jwk: &Jwk, alg: Algorithm, alg_name: &str) -> Result<(), PublicKeyProblem> {
    match (&jwk.algorithm, alg.family()) {
        (AlgorithmParameters::RSA(rsa), AlgorithmFamily::Rsa) => {
            let bits = URL_SAFE_NO_PAD
                .decode(&rsa.n)
                .map_or(0, |n| rsa_modulus_bits(&n));
            if bits < MIN_RSA_BITS {
                return Err(PublicKeyProblem::WeakRsa(format!("{bits} bits")));
            }
            Ok(())
        }
        (AlgorithmParameters::EllipticCurve(ec), AlgorithmFamily::Ec) => {
            let wanted = if alg == Algorithm::ES256 {
                EllipticCurve::P256
            } else {
                EllipticCurve::P384
            };
            if ec.curve != wanted {
                return Err(PublicKeyProblem::Other(format!(
                    "{alg_name} needs a {wanted:?} key"
                )));
            }
            Ok(())
        }
        (AlgorithmParameters::OctetKeyPair(_), AlgorithmFamily::Ed) => Ok(()),
        _ => Err(PublicKeyProblem::Other(format!(
            "the key's type does not fit {alg_name}"
        ))),
    }
}

/// The key new tokens are signed with.
#[cfg_attr(not(feature = "runtime"), allow(dead_code))]
pub(super) struct SigningKey {
    pub(super) kid: String,
    pub(super) alg: Algorithm,
    pub(super) encoding: EncodingKey,
}

/// Every configured key, by `kid`, and the JWKS of the public ones.
pub struct KeySet {
    pub(super) verifiers: VerifyingKeys,
    pub(super) signer: SigningKey,
    jwks: String,
}

impl KeySet {
    /// Whether every key is an HMAC secret: then a signature check costs about what a cache
    /// lookup does (a digest and a probe), and the verified-token cache is not worth asking.
    pub fn only_hmac(&self) -> bool {
        self.verifiers.only_hmac()
    }
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kids = self.verifiers.kids();
        f.debug_struct("KeySet")
            .field("kids", &kids)
            .field("signing_kid", &self.signer.kid)
            .finish()
    }
}

/// The canonical name of a supported algorithm.
fn algorithm(alg: &str) -> Option<(Algorithm, &'static str)> {
    Some(match alg {
        "HS256" => (Algorithm::HS256, "HS256"),
        "HS384" => (Algorithm::HS384, "HS384"),
        "HS512" => (Algorithm::HS512, "HS512"),
        "RS256" => (Algorithm::RS256, "RS256"),
        "RS384" => (Algorithm::RS384, "RS384"),
        "RS512" => (Algorithm::RS512, "RS512"),
        "PS256" => (Algorithm::PS256, "PS256"),
        "PS384" => (Algorithm::PS384, "PS384"),
        "PS512" => (Algorithm::PS512, "PS512"),
        "ES256" => (Algorithm::ES256, "ES256"),
        "ES384" => (Algorithm::ES384, "ES384"),
        "EdDSA" => (Algorithm::EdDSA, "EdDSA"),
        _ => return None,
    })
}

#[cfg(feature = "aws-lc")]
fn hmac_algorithm(alg: Algorithm) -> aws_lc_rs::hmac::Algorithm {
    match alg {
        Algorithm::HS384 => aws_lc_rs::hmac::HMAC_SHA384,
        Algorithm::HS512 => aws_lc_rs::hmac::HMAC_SHA512,
        _ => aws_lc_rs::hmac::HMAC_SHA256,
    }
}

/// One key, parsed: how it verifies, whether it can sign, and its public JWK (not for HMAC).
struct ParsedKey {
    verification: VerificationKey,
    encoding: Option<EncodingKey>,
    jwk: Option<Jwk>,
}

/// The size in bits of the modulus of an RSA private key in PEM (PKCS#8 `PRIVATE KEY`, or
/// PKCS#1 `RSA PRIVATE KEY`); None if the PEM holds no RSA key it can read.
fn rsa_private_key_bits(pem: &str) -> Option<usize> {
    let body: String = pem
        .lines()
        .skip_while(|line| !line.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|line| !line.starts_with("-----END"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .ok()?;
    let mut key = Der(&der).read(0x30)?;
    key.read(0x02)?; // version
    let mut rsa = if key.peek() == Some(0x30) {
        // PKCS#8: AlgorithmIdentifier, then the RSAPrivateKey inside an OCTET STRING.
        key.read(0x30)?;
        let mut inner = Der(key.read(0x04)?.0).read(0x30)?;
        inner.read(0x02)?; // version
        inner
    } else {
        key
    };
    let modulus = rsa.read(0x02)?.0;
    Some(rsa_modulus_bits(modulus))
}

/// A cursor over DER: each [`Der::read`] takes one element of the expected tag and returns its
/// contents.
struct Der<'a>(&'a [u8]);

impl<'a> Der<'a> {
    fn peek(&self) -> Option<u8> {
        self.0.first().copied()
    }

    fn read(&mut self, tag: u8) -> Option<Der<'a>> {
        let (&found, rest) = self.0.split_first()?;
        if found != tag {
            return None;
        }
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |len, b| (len << 8) | usize::from(*b));
            (len, &rest[n..])
        };
        if rest.len() < len {
            return None;
        }
        let (contents, after) = rest.split_at(len);
        self.0 = after;
        Some(Der(contents))
    }
}

fn parse_key(spec: &KeySpec, material: &[u8]) -> Result<ParsedKey, KeyError> {
    let Some((alg, alg_name)) = algorithm(&spec.alg) else {
        return Err(KeyError::UnsupportedAlgorithm {
            kid: spec.kid.clone(),
            alg: spec.alg.clone(),
        });
    };
    let invalid = |message: String| KeyError::Invalid {
        kid: spec.kid.clone(),
        message,
    };
    let lib = |e: jsonwebtoken::errors::Error| invalid(e.to_string());
    let family = alg.family();
    if family == AlgorithmFamily::Hmac {
        if material.len() < MIN_HMAC_SECRET_BYTES {
            return Err(KeyError::WeakSecret {
                kid: spec.kid.clone(),
                path: spec.path.display().to_string(),
                len: material.len(),
            });
        }
        return Ok(ParsedKey {
            verification: VerificationKey::hmac(alg, alg_name, material).map_err(invalid)?,
            encoding: Some(EncodingKey::from_secret(material).map_err(lib)?),
            jwk: None,
        });
    }
    let pem = std::str::from_utf8(material)
        .map_err(|_| invalid(format!("{} is not a PEM file", spec.path.display())))?;
    let (encoding, mut jwk, decoding) = if pem.contains("PRIVATE KEY-----") {
        // Checked before the library sees the key, which refuses small RSA keys in its own
        // words.
        if family == AlgorithmFamily::Rsa
            && let Some(bits) = rsa_private_key_bits(pem)
            && bits < MIN_RSA_BITS
        {
            return Err(KeyError::WeakRsaKey {
                kid: spec.kid.clone(),
                path: spec.path.display().to_string(),
                detail: format!("{bits} bits"),
            });
        }
        let encoding = match family {
            AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(material),
            AlgorithmFamily::Ec => EncodingKey::from_ec_pem(material),
            _ => EncodingKey::from_ed_pem(material),
        }
        .map_err(lib)?;
        let jwk = Jwk::from_encoding_key(&encoding, alg).map_err(lib)?;
        let decoding = DecodingKey::from_jwk(&jwk).map_err(lib)?;
        (Some(encoding), jwk, decoding)
    } else if pem.contains("PUBLIC KEY-----") {
        let decoding = match family {
            AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(material),
            AlgorithmFamily::Ec => DecodingKey::from_ec_pem(material),
            _ => DecodingKey::from_ed_pem(material),
        }
        .map_err(lib)?;
        let jwk = Jwk::from_decoding_key(&decoding, Some(alg)).map_err(lib)?;
        // Rebuilt from the JWK's components, so every key verifies the same way.
        let decoding = DecodingKey::from_jwk(&jwk).map_err(lib)?;
        (None, jwk, decoding)
    } else {
        return Err(invalid(format!(
            "{} holds no PEM private (PKCS#8) or public key",
            spec.path.display()
        )));
    };
    check_public_jwk(&jwk, alg, alg_name).map_err(|problem| match problem {
        PublicKeyProblem::WeakRsa(detail) => KeyError::WeakRsaKey {
            kid: spec.kid.clone(),
            path: spec.path.display().to_string(),
            detail,
        },
        PublicKeyProblem::Other(message) => invalid(message),
    })?;
    jwk.common.key_id = Some(spec.kid.clone());
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    Ok(ParsedKey {
        verification: VerificationKey::public(alg, alg_name, decoding),
        encoding,
        jwk: Some(jwk),
    })
}

impl KeySet {
    /// Reads every key file; the signer is `signing_kid`, or the first key.
    pub fn load(specs: &[KeySpec], signing_kid: Option<&str>) -> Result<Self, KeyError> {
        Self::from_material(read_key_files(specs)?, signing_kid)
    }

    /// Builds a key set from specs whose material has been read already.
    pub fn from_material(
        keys: Vec<(KeySpec, Vec<u8>)>,
        signing_kid: Option<&str>,
    ) -> Result<Self, KeyError> {
        let signing_kid = match signing_kid {
            Some(kid) => kid.to_owned(),
            None => keys
                .first()
                .map(|(s, _)| s.kid.clone())
                .ok_or(KeyError::Empty)?,
        };
        let mut verifiers = VerifyingKeys::default();
        let mut signer = None;
        let mut jwks = JwkSet { keys: Vec::new() };
        for (spec, material) in keys {
            let parsed = parse_key(&spec, &material)?;
            if spec.kid == signing_kid {
                let encoding = parsed
                    .encoding
                    .ok_or_else(|| KeyError::VerifyOnlySigner(spec.kid.clone()))?;
                signer = Some(SigningKey {
                    kid: spec.kid.clone(),
                    alg: parsed.verification.alg,
                    encoding,
                });
            }
            jwks.keys.extend(parsed.jwk);
            verifiers.insert(spec.kid, parsed.verification)?;
        }
        let signer = signer.ok_or(KeyError::UnknownSigningKid(signing_kid))?;
        let jwks = serde_json::to_string(&jwks).map_err(|e| KeyError::Invalid {
            kid: signer.kid.clone(),
            message: e.to_string(),
        })?;
        Ok(Self {
            verifiers,
            signer,
            jwks,
        })
    }

    /// The development key kept at `path`, created (64 random bytes, mode 0600) if absent.
    ///
    /// Returns the key set and whether the file was created just now.
    pub fn load_or_create_dev_key(path: &Path) -> Result<(Self, bool), KeyError> {
        const KID: &str = "dev";
        let io = |error| KeyError::Io {
            kid: KID.into(),
            path: path.display().to_string(),
            error,
        };
        let created = match std::fs::read(path) {
            Ok(_) => false,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut secret = [0u8; 64];
                rand::rng().fill_bytes(&mut secret);
                write_private_file(path, &secret).map_err(io)?;
                true
            }
            Err(e) => return Err(io(e)),
        };
        let spec = KeySpec {
            kid: KID.into(),
            alg: "HS256".into(),
            path: path.to_owned(),
        };
        Ok((Self::load(&[spec], None)?, created))
    }

    /// The key id new tokens are signed with.
    pub fn signing_kid(&self) -> &str {
        &self.signer.kid
    }

    /// The RFC 7517 JSON Web Key Set of the public keys. HMAC secrets are never published, so
    /// a key set of HMAC keys only publishes an empty set.
    pub fn jwks_json(&self) -> &str {
        &self.jwks
    }

    /// The key ids, sorted.
    pub fn kids(&self) -> Vec<&str> {
        self.verifiers.kids()
    }
}

/// Reads the material of every key.
pub fn read_key_files(specs: &[KeySpec]) -> Result<Vec<(KeySpec, Vec<u8>)>, KeyError> {
    specs
        .iter()
        .map(|spec| {
            crate::secret_file::read(&spec.path)
                .map(|material| (spec.clone(), material))
                .map_err(|error| KeyError::Io {
                    kid: spec.kid.clone(),
                    path: spec.path.display().to_string(),
                    error,
                })
        })
        .collect()
}

/// Warns about every private key or secret among `files` that all users can read. Called on
/// every load, so a key rotated in with loose permissions is reported too.
pub fn warn_about_exposed_keys(files: &[(KeySpec, Vec<u8>)]) {
    for (spec, material) in files {
        // Public keys are public; private keys and HMAC secrets are not.
        let public = std::str::from_utf8(material).is_ok_and(|pem| pem.contains("PUBLIC KEY-----"));
        if !public {
            crate::secret_file::warn_if_readable_by_others(&spec.path);
        }
    }
}

fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_rsa_modulus_counts_its_bits_not_its_bytes() {
        let mut modulus = vec![0u8; 256];
        modulus[0] = 0x80;
        assert_eq!(rsa_modulus_bits(&modulus), 2048);
        modulus[0] = 0x01;
        assert_eq!(
            rsa_modulus_bits(&modulus),
            2041,
            "256 bytes, yet 2,041 bits"
        );
        modulus[0] = 0x7f;
        assert_eq!(rsa_modulus_bits(&modulus), 2047);
        let mut signed = vec![0u8];
        signed.extend(std::iter::repeat_n(0xff, 256));
        assert_eq!(
            rsa_modulus_bits(&signed),
            2048,
            "DER's leading zero is not counted"
        );
        assert_eq!(rsa_modulus_bits(&[]), 0);
        assert_eq!(rsa_modulus_bits(&[0, 0]), 0);
    }

    #[test]
    fn rsa_key_sizes_are_read_before_the_library_sees_the_key() {
        let read = |name: &str| {
            let path = format!("{}/../../tests/keys/{name}", env!("CARGO_MANIFEST_DIR"));
            std::fs::read_to_string(path).expect("fixture")
        };
        assert_eq!(rsa_private_key_bits(&read("rsa.pem")), Some(2048));
        assert_eq!(rsa_private_key_bits(&read("rsa1024.pem")), Some(1024));
        assert_eq!(rsa_private_key_bits(&read("p256.pem")), None, "not RSA");
        assert_eq!(rsa_private_key_bits("not a pem"), None);
    }

    fn spec(kid: &str, alg: &str) -> KeySpec {
        KeySpec {
            kid: kid.into(),
            alg: alg.into(),
            path: PathBuf::from(format!("/keys/{kid}")),
        }
    }

    #[test]
    fn parses_key_specs() {
        let parsed: KeySpec = "main=hs256:/run/keys/main".parse().expect("valid");
        assert_eq!(parsed, spec("main", "HS256").with_path("/run/keys/main"));
        for bad in ["main", "main=HS256", "=HS256:/x", "main=:/x", "main=HS256:"] {
            assert!(bad.parse::<KeySpec>().is_err(), "{bad}");
        }
    }

    impl KeySpec {
        fn with_path(mut self, p: &str) -> Self {
            self.path = PathBuf::from(p);
            self
        }
    }

    #[test]
    fn the_first_key_signs_unless_told_otherwise() {
        let keys = vec![
            (spec("a", "HS256"), vec![1; 32]),
            (spec("b", "HS512"), vec![2; 64]),
        ];
        let set = KeySet::from_material(keys.clone(), None).expect("valid");
        assert_eq!(set.signing_kid(), "a");
        let set = KeySet::from_material(keys, Some("b")).expect("valid");
        assert_eq!(set.signing_kid(), "b");
        assert_eq!(set.verifiers.len(), 2);
    }

    #[test]
    fn refuses_weak_unknown_duplicate_and_unsupported_keys() {
        let weak = KeySet::from_material(vec![(spec("a", "HS256"), vec![1; 31])], None);
        assert!(matches!(weak, Err(KeyError::WeakSecret { len: 31, .. })));
        let unknown = KeySet::from_material(vec![(spec("a", "HS256"), vec![1; 32])], Some("z"));
        assert!(matches!(unknown, Err(KeyError::UnknownSigningKid(_))));
        let dup = KeySet::from_material(
            vec![
                (spec("a", "HS256"), vec![1; 32]),
                (spec("a", "HS384"), vec![1; 48]),
            ],
            None,
        );
        assert!(matches!(dup, Err(KeyError::DuplicateKid(_))));
        let none = KeySet::from_material(vec![(spec("a", "NONE"), vec![1; 32])], None);
        assert!(matches!(none, Err(KeyError::UnsupportedAlgorithm { .. })));
        assert!(matches!(
            KeySet::from_material(vec![], None),
            Err(KeyError::Empty)
        ));
    }

    #[test]
    fn jwks_never_publishes_hmac_secrets() {
        let set =
            KeySet::from_material(vec![(spec("a", "HS256"), vec![7; 32])], None).expect("valid");
        assert_eq!(set.jwks_json(), r#"{"keys":[]}"#);
    }

    #[test]
    fn dev_key_is_created_once_with_private_mode() {
        let dir = std::env::temp_dir().join(format!("ts-devkey-{}", new_suffix()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("dev.key");
        let (first, created) = KeySet::load_or_create_dev_key(&path).expect("created");
        assert!(created);
        let (_, created_again) = KeySet::load_or_create_dev_key(&path).expect("loaded");
        assert!(!created_again);
        assert_eq!(first.signing_kid(), "dev");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    /// RFC 7515 appendix A.1: HS256 over the given signing input with the given key.
    #[test]
    fn rfc7515_a1_hs256_vector() {
        let k = URL_SAFE_NO_PAD
            .decode("AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow")
            .expect("k");
        let set = KeySet::from_material(vec![(spec("a", "HS256"), k)], None).expect("key");
        let input = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ";
        let sig =
            jsonwebtoken::crypto::sign(input.as_bytes(), &set.signer.encoding, set.signer.alg)
                .expect("sign");
        assert_eq!(sig, "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
    }

    /// RFC 8037 appendix A: the Ed25519 key, its public JWK and the A.4 signature, loaded the
    /// way an operator would (a PKCS#8 PEM file).
    #[test]
    fn rfc8037_ed25519_vector() {
        use base64::engine::general_purpose::STANDARD;
        let d = URL_SAFE_NO_PAD
            .decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")
            .expect("d");
        let mut der = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        der.extend(d);
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            STANDARD.encode(der)
        );
        let set = KeySet::from_material(vec![(spec("ed", "EdDSA"), pem.into_bytes())], None)
            .expect("key");
        let jwks: serde_json::Value = serde_json::from_str(set.jwks_json()).expect("json");
        assert_eq!(
            jwks["keys"][0]["x"],
            "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
        );
        assert_eq!(jwks["keys"][0]["kid"], "ed");
        assert!(jwks["keys"][0].get("d").is_none(), "no private part");
        let input = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc";
        let sig =
            jsonwebtoken::crypto::sign(input.as_bytes(), &set.signer.encoding, set.signer.alg)
                .expect("sign");
        assert_eq!(
            sig,
            "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
        );
        let key = set.verifiers.get("ed").expect("ed");
        assert_eq!(
            jsonwebtoken::crypto::verify(&sig, input.as_bytes(), &key.decoding, key.alg).ok(),
            Some(true)
        );
    }

    /// The published key set, read back as a filter reads it: every public key verifies what
    /// the key set signed; `oct` keys (private sets only) are HMAC secrets held to 32 bytes.
    #[test]
    fn a_jwks_reads_back_into_the_same_verifying_keys() {
        let read = |name: &str| {
            let path = format!("{}/../../tests/keys/{name}", env!("CARGO_MANIFEST_DIR"));
            std::fs::read(path).expect("fixture")
        };
        let set = KeySet::from_material(
            vec![
                (spec("ec", "ES256"), read("p256.pem")),
                (spec("rsa", "RS256"), read("rsa.pem")),
                (spec("hs", "HS256"), vec![7; 32]),
            ],
            None,
        )
        .expect("keys");
        let secret = URL_SAFE_NO_PAD.encode([7u8; 32]);
        let private =
            format!(r#"{{"keys":[{{"kty":"oct","kid":"hs","alg":"HS256","k":"{secret}"}}]}}"#);
        let keys = VerifyingKeys::from_jwks([set.jwks_json(), private.as_str()]).expect("jwks");
        assert_eq!(keys.kids(), vec!["ec", "hs", "rsa"]);
        let message = b"header.payload";
        // The signer ("ec", the first key) signs; the key read back from the JWKS verifies.
        let signer = &set.signer;
        let sig = jsonwebtoken::crypto::sign(message, &signer.encoding, signer.alg).expect("sign");
        let key = keys.get("ec").expect("kid");
        assert_eq!(
            jsonwebtoken::crypto::verify(&sig, message, &key.decoding, key.alg).ok(),
            Some(true)
        );

        let short = URL_SAFE_NO_PAD.encode([7u8; 31]);
        let refused = [
            format!(r#"{{"keys":[{{"kty":"oct","kid":"hs","alg":"HS256","k":"{short}"}}]}}"#),
            format!(r#"{{"keys":[{{"kty":"oct","alg":"HS256","k":"{secret}"}}]}}"#),
            format!(r#"{{"keys":[{{"kty":"oct","kid":"hs","k":"{secret}"}}]}}"#),
            format!(r#"{{"keys":[{{"kty":"oct","kid":"hs","alg":"ES256","k":"{secret}"}}]}}"#),
            "not json".to_owned(),
        ];
        for jwks in &refused {
            assert!(VerifyingKeys::from_jwks([jwks.as_str()]).is_err(), "{jwks}");
        }
        let twice = VerifyingKeys::from_jwks([private.as_str(), private.as_str()]);
        assert!(matches!(twice, Err(KeyError::DuplicateKid(_))));
        let small_rsa =
            KeySet::from_material(vec![(spec("r", "RS256"), read("rsa1024.pem"))], None);
        assert!(
            small_rsa.is_err(),
            "the 1024-bit fixture is refused at load already"
        );
    }

    fn new_suffix() -> String {
        crate::token::new_random_id()
    }
}
