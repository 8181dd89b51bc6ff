//! Hot reload of the secret files — the signing and verification keys, the API's TLS
//! certificate, the admin credential — on SIGHUP ([`KeyReloader::reload_all`]) and every
//! `--key-reload-interval` ([`watch`]). A changed file is swapped in atomically (keys with a fresh
//! verified-token cache); a file that cannot be used keeps the old one and says why once.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::api::caller::{AdminCredential, Callers, CredentialList};
use crate::authority::TokenAuthority;
use crate::config::Config;
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
        }
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
        let keys = KeySet::from_material(files, self.signing_kid.as_deref())?;
        tracing::info!(kids = ?keys.kids(), signing_kid = keys.signing_kid(), "key set reloaded");
        self.authority.replace_keys(keys);
        *loaded = material;
        Ok(true)
    }
}

/// Re-reads the secret files every `interval`.
pub async fn watch(keys: Arc<KeyReloader>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_problems = Vec::new();
    loop {
        ticker.tick().await;
        let problems = keys.reload_all();
        // Say it once per distinct problem, not every tick.
        if problems != last_problems {
            for problem in &problems {
                tracing::warn!(error = %problem, "a secret file changed but cannot be used; keeping the current one");
            }
            last_problems = problems;
        }
    }
}
