//! The key set: every configured key by `kid`; one of them signs, all of them verify.
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey};
use rand::RngCore;

use super::algorithms::{MIN_HMAC_SECRET_BYTES, algorithm};
pub use super::key_error::KeyError;
use super::rsa::{MIN_RSA_BITS, rsa_private_key_bits};
use super::verifying::{PublicKeyProblem, VerificationKey, VerifyingKeys, check_public_jwk};

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
    /// None in a verify-only sidecar: it holds public keys only.
    pub(super) signer: Option<SigningKey>,
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
            .field("signing_kid", &self.signing_kid())
            .finish()
    }
}

/// One key, parsed: how it verifies, whether it can sign, and its public JWK (not for HMAC).
struct ParsedKey {
    verification: VerificationKey,
    encoding: Option<EncodingKey>,
    jwk: Option<Jwk>,
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
        Ok(Self {
            verifiers,
            jwks: publish(&jwks)?,
            signer: Some(signer),
        })
    }

    /// The key set of a verify-only sidecar: public keys only, from `files` (PEM public keys)
    /// and from `published`, the issuing service's JWKS (`--issuer-jwks`), whose keys a file
    /// already names by `kid` are skipped. A private key or an HMAC secret is refused: a
    /// verify-only sidecar must not be able to mint. Both may be empty (the issuer's set not
    /// read yet): every token then fails `BAD_SIGNATURE` until keys arrive.
    pub fn verify_only(
        files: Vec<(KeySpec, Vec<u8>)>,
        published: Option<&str>,
    ) -> Result<Self, KeyError> {
        let mut verifiers = VerifyingKeys::default();
        let mut jwks = JwkSet { keys: Vec::new() };
        for (spec, material) in files {
            let parsed = parse_key(&spec, &material)?;
            if parsed.encoding.is_some() {
                return Err(KeyError::SecretInVerifyOnly(spec.kid));
            }
            jwks.keys.extend(parsed.jwk);
            verifiers.insert(spec.kid, parsed.verification)?;
        }
        if let Some(published) = published {
            let set: JwkSet = serde_json::from_str(published).map_err(|e| KeyError::Invalid {
                kid: String::new(),
                message: format!("the issuer's key set is not a JSON Web Key Set: {e}"),
            })?;
            let fresh: Vec<Jwk> = set
                .keys
                .into_iter()
                .filter(|jwk| jwk.common.public_key_use != Some(PublicKeyUse::Encryption))
                .filter(|jwk| {
                    jwk.common
                        .key_id
                        .as_deref()
                        .is_none_or(|kid| !verifiers.contains(kid))
                })
                .collect();
            let fresh_json = publish(&JwkSet {
                keys: fresh.clone(),
            })?;
            let keys = VerifyingKeys::from_jwks([fresh_json.as_str()])?;
            if let Some(kid) = keys.hmac_kid() {
                return Err(KeyError::SecretInVerifyOnly(kid.to_owned()));
            }
            verifiers.absorb(keys)?;
            jwks.keys.extend(fresh);
        }
        Ok(Self {
            verifiers,
            jwks: publish(&jwks)?,
            signer: None,
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

    /// The key id new tokens are signed with; None in a verify-only sidecar.
    pub fn signing_kid(&self) -> Option<&str> {
        self.signer.as_ref().map(|s| s.kid.as_str())
    }

    /// Whether a token naming a `kid` this set lacks was presented since the last call (and
    /// forget it): the hint a verify-only sidecar reads its issuer's key set again on.
    pub fn take_unknown_kid(&self) -> bool {
        self.verifiers.take_unknown_kid()
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

/// A key set as the JSON that `/.well-known/jwks.json` serves.
fn publish(jwks: &JwkSet) -> Result<String, KeyError> {
    serde_json::to_string(jwks).map_err(|e| KeyError::Invalid {
        kid: String::new(),
        message: e.to_string(),
    })
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
#[path = "keys_tests.rs"]
mod tests;
