//! The key set: every configured key by `kid`; one of them signs, all of them verify.
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use rand::RngCore;

/// Shortest HMAC secret accepted (RFC 7518 §3.2 asks for at least the hash size; 32 bytes is
/// the floor SPEC sets for every HS algorithm).
const MIN_HMAC_SECRET_BYTES: usize = 32;

/// Why a key set could not be built. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A `--key` value that is not `KID=ALG:PATH`.
    #[error(
        "bad key spec {0:?}: expected KID=ALG:PATH, e.g. main=HS256:/etc/token-sidecar/main.key"
    )]
    BadSpec(String),
    /// An algorithm name this build does not sign or verify with.
    #[error("key {kid:?}: algorithm {alg:?} is not supported (supported: HS256, HS384, HS512)")]
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
    #[error("key {kid:?}: cannot use {path}: {source}")]
    Io {
        /// The key's id.
        kid: String,
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
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
        Ok(Self {
            kid: kid.to_owned(),
            alg: alg.trim().to_ascii_uppercase(),
            path: PathBuf::from(path),
        })
    }
}

/// A key that can verify tokens carrying its `kid`.
pub(super) struct VerificationKey {
    pub(super) alg: Algorithm,
    pub(super) alg_name: &'static str,
    pub(super) decoding: DecodingKey,
}

/// The key new tokens are signed with.
pub(super) struct SigningKey {
    pub(super) kid: String,
    pub(super) alg: Algorithm,
    pub(super) encoding: EncodingKey,
}

/// Every configured key, by `kid`.
pub struct KeySet {
    pub(super) verifiers: HashMap<String, VerificationKey>,
    pub(super) signer: SigningKey,
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kids: Vec<&String> = self.verifiers.keys().collect();
        kids.sort();
        f.debug_struct("KeySet")
            .field("kids", &kids)
            .field("signing_kid", &self.signer.kid)
            .finish()
    }
}

fn hmac_algorithm(alg: &str) -> Option<(Algorithm, &'static str)> {
    match alg {
        "HS256" => Some((Algorithm::HS256, "HS256")),
        "HS384" => Some((Algorithm::HS384, "HS384")),
        "HS512" => Some((Algorithm::HS512, "HS512")),
        _ => None,
    }
}

impl KeySet {
    /// Reads every key file; the signer is `signing_kid`, or the first key.
    pub fn load(specs: &[KeySpec], signing_kid: Option<&str>) -> Result<Self, KeyError> {
        let mut loaded = Vec::with_capacity(specs.len());
        for spec in specs {
            let secret = std::fs::read(&spec.path).map_err(|source| KeyError::Io {
                kid: spec.kid.clone(),
                path: spec.path.display().to_string(),
                source,
            })?;
            loaded.push((spec.clone(), secret));
        }
        Self::from_secrets(loaded, signing_kid)
    }

    /// Builds a key set from specs whose material has been read already.
    fn from_secrets(
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
        let mut verifiers = HashMap::new();
        let mut signer = None;
        for (spec, secret) in keys {
            let Some((alg, alg_name)) = hmac_algorithm(&spec.alg) else {
                return Err(KeyError::UnsupportedAlgorithm {
                    kid: spec.kid,
                    alg: spec.alg,
                });
            };
            if secret.len() < MIN_HMAC_SECRET_BYTES {
                return Err(KeyError::WeakSecret {
                    kid: spec.kid,
                    path: spec.path.display().to_string(),
                    len: secret.len(),
                });
            }
            let invalid = |e: jsonwebtoken::errors::Error| KeyError::Invalid {
                kid: spec.kid.clone(),
                message: e.to_string(),
            };
            let decoding = DecodingKey::from_secret(&secret).map_err(invalid)?;
            if spec.kid == signing_kid {
                signer = Some(SigningKey {
                    kid: spec.kid.clone(),
                    alg,
                    encoding: EncodingKey::from_secret(&secret).map_err(invalid)?,
                });
            }
            let key = VerificationKey {
                alg,
                alg_name,
                decoding,
            };
            if verifiers.insert(spec.kid.clone(), key).is_some() {
                return Err(KeyError::DuplicateKid(spec.kid));
            }
        }
        let signer = signer.ok_or(KeyError::UnknownSigningKid(signing_kid))?;
        Ok(Self { verifiers, signer })
    }

    /// The development key kept at `path`, created (64 random bytes, mode 0600) if absent.
    ///
    /// Returns the key set and whether the file was created just now.
    pub fn load_or_create_dev_key(path: &Path) -> Result<(Self, bool), KeyError> {
        const KID: &str = "dev";
        let io = |source| KeyError::Io {
            kid: KID.into(),
            path: path.display().to_string(),
            source,
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
    pub fn jwks_json(&self) -> String {
        serde_json::json!({ "keys": [] }).to_string()
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
        let set = KeySet::from_secrets(keys.clone(), None).expect("valid");
        assert_eq!(set.signing_kid(), "a");
        let set = KeySet::from_secrets(keys, Some("b")).expect("valid");
        assert_eq!(set.signing_kid(), "b");
        assert_eq!(set.verifiers.len(), 2);
    }

    #[test]
    fn refuses_weak_unknown_duplicate_and_unsupported_keys() {
        let weak = KeySet::from_secrets(vec![(spec("a", "HS256"), vec![1; 31])], None);
        assert!(matches!(weak, Err(KeyError::WeakSecret { len: 31, .. })));
        let unknown = KeySet::from_secrets(vec![(spec("a", "HS256"), vec![1; 32])], Some("z"));
        assert!(matches!(unknown, Err(KeyError::UnknownSigningKid(_))));
        let dup = KeySet::from_secrets(
            vec![
                (spec("a", "HS256"), vec![1; 32]),
                (spec("a", "HS384"), vec![1; 48]),
            ],
            None,
        );
        assert!(matches!(dup, Err(KeyError::DuplicateKid(_))));
        let none = KeySet::from_secrets(vec![(spec("a", "NONE"), vec![1; 32])], None);
        assert!(matches!(none, Err(KeyError::UnsupportedAlgorithm { .. })));
        assert!(matches!(
            KeySet::from_secrets(vec![], None),
            Err(KeyError::Empty)
        ));
    }

    #[test]
    fn jwks_never_publishes_hmac_secrets() {
        let set =
            KeySet::from_secrets(vec![(spec("a", "HS256"), vec![7; 32])], None).expect("valid");
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

    fn new_suffix() -> String {
        crate::token::new_random_id()
    }
}
