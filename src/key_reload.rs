//! Hot reload of the key files: on SIGHUP ([`KeyReloader::reload`]) and every
//! `--key-reload-interval` ([`watch`]). A changed file is swapped in atomically with a fresh
//! verified-token cache; a file that cannot be used keeps the old set and says why once.
use std::sync::Arc;
use std::time::Duration;

use crate::authority::TokenAuthority;
use crate::config::Config;
use crate::token::{KeyError, KeySet, KeySpec, read_key_files, warn_about_exposed_keys};

/// Reloads configured key files when their content changes.
pub struct KeyReloader {
    specs: Vec<KeySpec>,
    signing_kid: Option<String>,
    authority: Arc<TokenAuthority>,
    loaded: parking_lot::Mutex<Vec<Vec<u8>>>,
}

impl KeyReloader {
    /// Watches the files `config` names, for `authority`.
    pub fn new(config: &Config, authority: Arc<TokenAuthority>) -> Self {
        let loaded = read_key_files(&config.keys)
            .map(|files| files.into_iter().map(|(_, m)| m).collect())
            .unwrap_or_default();
        Self {
            specs: config.keys.clone(),
            signing_kid: config.signing_kid.clone(),
            authority,
            loaded: parking_lot::Mutex::new(loaded),
        }
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

/// Re-reads the key files every `interval`.
pub async fn watch(keys: Arc<KeyReloader>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error = None;
    loop {
        ticker.tick().await;
        match keys.reload() {
            Ok(_) => last_error = None,
            Err(e) => {
                // Say it once per distinct problem, not every tick.
                let text = e.to_string();
                if last_error.as_ref() != Some(&text) {
                    tracing::warn!(error = %text, "key files changed but cannot be used; keeping the current keys");
                    last_error = Some(text);
                }
            }
        }
    }
}
