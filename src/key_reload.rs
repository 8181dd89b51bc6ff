//! Hot reload of the secret files — the signing and verification keys, the API's TLS
//! certificate, the admin credential — on SIGHUP ([`KeyReloader::reload_all`]) and every
//! `--key-reload-interval` ([`watch`]). A changed file is swapped in atomically (keys with a fresh
//! verified-token cache); a file that cannot be used keeps the old one and says why once.
//!
//! A verify-only sidecar with `--issuer-jwks` also reads the issuing service's published key
//! set: at start, on every tick, and — at most once per [`UNKNOWN_KID_READ_INTERVAL`], whoever
//! sends them — when a token named a `kid` the set lacks (a key rotation under way). A stranger's
//! made-up `kid`s can thus cause one read a second, never delay the periodic one.
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::api::caller::{AdminCredential, Callers, CredentialList};
use crate::authority::TokenAuthority;
use crate::config::Config;
use crate::idp::fetch;
use crate::idp::jwks::JwksSource;
use crate::secret_file;
use crate::tls::ReloadableTls;
use crate::token::{KeyError, KeySet, KeySpec, read_key_files, warn_about_exposed_keys};

/// Reloads configured secret files when their content changes.
pub struct KeyReloader {
    specs: Vec<KeySpec>,
    signing_kid: Option<String>,
    authority: Arc<TokenAuthority>,
    loaded: parking_lot::Mutex<Vec<Vec<u8>>>,
    tls: Option<Arc<ReloadableTls>>,
    admin: Option<(PathBuf, Arc<AdminCredential>)>,
    /// Credential lists by what they admit: introspection, the change feed.
    lists: Vec<(&'static str, PathBuf, Arc<CredentialList>)>,
    /// A verify-only sidecar: public keys only.
    verify_only: bool,
    /// Where the issuing service publishes its keys, and the last set read from it.
    issuer_jwks: Option<JwksSource>,
    published: parking_lot::Mutex<Option<String>>,
    /// Whether the keys can verify: false only until the issuer's set was first read.
    ready: AtomicBool,
}

/// At most one extra read of the issuer's key set per this interval, on unknown `kid`s.
pub const UNKNOWN_KID_READ_INTERVAL: Duration = Duration::from_secs(1);

/// Reads a published key set (a URL or a file) as text, bounded in size and time.
pub async fn read_published(source: &JwksSource) -> Result<String, String> {
    let bytes = match source {
        JwksSource::Url(url) => fetch::get(url)
            .await
            .map_err(|e| format!("{url}: {e}"))?
            .to_vec(),
        JwksSource::File(path) => {
            let bytes = secret_file::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            if bytes.len() > fetch::MAX_JWKS_BYTES {
                return Err(format!("{} is too large", path.display()));
            }
            bytes
        }
    };
    String::from_utf8(bytes).map_err(|_| format!("{source}: not UTF-8 text"))
}

impl KeyReloader {
    /// Watches the files `config` names, for `authority`, the TLS in use and the admin
    /// credential in use.
    pub fn new(
        config: &Config,
        authority: Arc<TokenAuthority>,
        tls: Option<Arc<ReloadableTls>>,
        callers: &Callers,
    ) -> Self {
        let loaded = read_key_files(&config.tokens.keys)
            .map(|files| files.into_iter().map(|(_, m)| m).collect())
            .unwrap_or_default();
        Self {
            specs: config.tokens.keys.clone(),
            signing_kid: config.tokens.signing_kid.clone(),
            authority,
            loaded: parking_lot::Mutex::new(loaded),
            tls,
            admin: config
                .api
                .admin_token_file
                .clone()
                .zip(callers.admin.clone()),
            lists: [
                (
                    "introspection",
                    &config.api.introspection_token_file,
                    &callers.introspection,
                ),
                ("feed", &config.api.feed_token_file, &callers.feed),
            ]
            .into_iter()
            .filter_map(|(what, path, list)| Some((what, path.clone()?, list.clone()?)))
            .collect(),
            verify_only: config.tokens.verify_only,
            issuer_jwks: config.tokens.issuer_jwks.clone(),
            published: parking_lot::Mutex::new(None),
            ready: AtomicBool::new(config.tokens.issuer_jwks.is_none()),
        }
    }

    /// Whether the keys can verify: false only until the issuer's key set, and every trusted
    /// issuer's, was first read.
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && self.authority.trusted_issuers().all_read()
    }

    /// Whether anything is watched at all.
    pub fn watches_anything(&self) -> bool {
        !self.specs.is_empty()
            || self.issuer_jwks.is_some()
            || self.tls.is_some()
            || self.admin.is_some()
            || !self.lists.is_empty()
    }

    /// The key set from `files` and the issuer's published set.
    fn build(&self, files: Vec<(KeySpec, Vec<u8>)>) -> Result<KeySet, KeyError> {
        if self.verify_only {
            KeySet::verify_only(files, self.published.lock().as_deref())
        } else {
            KeySet::from_material(files, self.signing_kid.as_deref())
        }
    }

    /// Reads the issuing service's key set again; swaps the keys in if it changed. Ok(true)
    /// when a new set is in use. A failed read keeps the keys held.
    pub async fn read_issuer_keys(&self) -> Result<bool, String> {
        let Some(source) = &self.issuer_jwks else {
            return Ok(false);
        };
        let published = read_published(source).await?;
        if self.published.lock().as_deref() == Some(published.as_str()) {
            return Ok(false);
        }
        let files = read_key_files(&self.specs).map_err(|e| e.to_string())?;
        let keys = KeySet::verify_only(files, Some(&published)).map_err(|e| e.to_string())?;
        tracing::info!(source = %source, kids = ?keys.kids(), "the issuer's key set read");
        self.authority.replace_keys(keys);
        *self.published.lock() = Some(published);
        self.ready.store(true, Ordering::Relaxed);
        Ok(true)
    }

    /// Reloads every secret file; the problems, one line each (an empty list: all fine).
    pub fn reload_all(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Err(e) = self.reload() {
            problems.push(format!("keys: {e}"));
        }
        if let Some(tls) = &self.tls
            && let Err(e) = tls.reload()
        {
            problems.push(format!("TLS: {e}"));
        }
        if let Some((path, admin)) = &self.admin {
            match secret_file::read(path).map(|raw| admin.replace(&raw)) {
                Ok(Some(true)) => tracing::info!("admin credential reloaded"),
                Ok(Some(false)) => {}
                Ok(None) => problems.push(format!(
                    "admin credential {}: shorter than {} bytes",
                    path.display(),
                    AdminCredential::MIN_LEN
                )),
                Err(e) => problems.push(format!("admin credential {}: {e}", path.display())),
            }
        }
        for (what, path, list) in &self.lists {
            match secret_file::read(path).map(|raw| list.replace(&raw)) {
                Ok(Some(true)) => tracing::info!(credentials = what, "credentials reloaded"),
                Ok(Some(false)) => {}
                Ok(None) => problems.push(format!(
                    "{what} credentials {}: none, or one shorter than {} bytes",
                    path.display(),
                    AdminCredential::MIN_LEN
                )),
                Err(e) => problems.push(format!("{what} credentials {}: {e}", path.display())),
            }
        }
        problems
    }

    /// Re-reads the key files and swaps in the new key set if they changed. A bad file keeps
    /// the old set; the error says why. Ok(true) when a new set is in use.
    pub fn reload(&self) -> Result<bool, KeyError> {
        if self.specs.is_empty() {
            return Ok(false);
        }
        let files = read_key_files(&self.specs)?;
        let material: Vec<Vec<u8>> = files.iter().map(|(_, m)| m.clone()).collect();
        let mut loaded = self.loaded.lock();
        if *loaded == material {
            return Ok(false);
        }
        warn_about_exposed_keys(&files);
        let keys = self.build(files)?;
        tracing::info!(kids = ?keys.kids(), signing_kid = keys.signing_kid(), "key set reloaded");
        self.authority.replace_keys(keys);
        *loaded = material;
        Ok(true)
    }
}

/// Re-reads the secret files (and the issuer's key set) every `interval`, and the issuer's set
/// also when a token named a `kid` it lacks, at most once per [`UNKNOWN_KID_READ_INTERVAL`].
pub async fn watch(keys: Arc<KeyReloader>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut hint = tokio::time::interval(UNKNOWN_KID_READ_INTERVAL);
    hint.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_problems = Vec::new();
    let mut last_issuer_problem = None;
    loop {
        let periodic = tokio::select! {
            _ = ticker.tick() => true,
            _ = hint.tick() => false,
        };
        if periodic {
            let problems = keys.reload_all();
            // Say it once per distinct problem, not every tick.
            if problems != last_problems {
                for problem in &problems {
                    tracing::warn!(error = %problem, "a secret file changed but cannot be used; keeping the current one");
                }
                last_problems = problems;
            }
        }
        let unknown_kid = keys.authority.keys().take_unknown_kid();
        if keys.issuer_jwks.is_some() && (periodic || unknown_kid || !keys.ready()) {
            let problem = keys.read_issuer_keys().await.err();
            if problem.is_some() && problem != last_issuer_problem {
                tracing::warn!(
                    error = problem.as_deref().unwrap_or_default(),
                    "the issuer's key set could not be read; keeping the keys held"
                );
            }
            last_issuer_problem = problem;
        }
    }
}
