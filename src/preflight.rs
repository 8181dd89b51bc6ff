//! What is checked and loaded before anything listens, shared by `start`, `migrate` and
//! `check-config`: the keys (and the development key in SQLite mode), the admin credential, the
//! TLS material, and whether the API would be exposed without caller authentication.
use std::sync::Arc;

use crate::api::caller::{AdminCredential, Callers, CredentialList};
use crate::config::Config;
use crate::secret_file::{self, warn_if_readable_by_others};
use crate::startup_error::StartupError;
use crate::store;
use crate::tls::ReloadableTls;
use crate::token::{KeyError, KeySet, read_key_files, warn_about_exposed_keys};

/// Builds the key set for `config`, generating the development key in SQLite mode.
pub fn load_keys(config: &Config) -> Result<KeySet, StartupError> {
    check_verify_only(config)?;
    if config.tokens.verify_only {
        // The issuer's published set is read by the key reloader, before health says SERVING.
        let files = read_key_files(&config.tokens.keys)?;
        return Ok(KeySet::verify_only(files, None)?);
    }
    if !config.tokens.keys.is_empty() {
        let files = read_key_files(&config.tokens.keys)?;
        warn_about_exposed_keys(&files);
        return Ok(KeySet::from_material(
            files,
            config.tokens.signing_kid.as_deref(),
        )?);
    }
    if !config.is_sqlite() {
        return Err(StartupError::NoKeyForPostgres);
    }
    let path = config.dev_key_path().ok_or(KeyError::Empty)?;
    let (keys, created) = KeySet::load_or_create_dev_key(&path)?;
    tracing::warn!(
        path = %path.display(),
        created,
        "no --key configured: using a development HS256 key kept beside the SQLite database; \
         configure real keys for anything but local use"
    );
    Ok(keys)
}

/// A verify-only sidecar needs public keys (or where to read them); --issuer-jwks only makes
/// sense for one.
fn check_verify_only(config: &Config) -> Result<(), StartupError> {
    let tokens = &config.tokens;
    if tokens.issuer_jwks.is_some() && !tokens.verify_only {
        return Err(StartupError::VerifyOnly(
            "--issuer-jwks is for --verify-only sidecars (a sidecar that signs publishes its own \
             keys)",
        ));
    }
    if tokens.verify_only && tokens.keys.is_empty() && tokens.issuer_jwks.is_none() {
        return Err(StartupError::VerifyOnly(
            "--verify-only needs the issuing service's public keys: --issuer-jwks URL, or \
             --key KID=ALG:PATH with a PEM public key",
        ));
    }
    if tokens.verify_only && tokens.signing_kid.is_some() {
        return Err(StartupError::VerifyOnly(
            "--signing-kid names a signing key, and a --verify-only sidecar signs nothing",
        ));
    }
    Ok(())
}

/// Refuses identity provider receivers with nowhere to be served.
pub fn check_idp(config: &Config) -> Result<(), StartupError> {
    if config.idp_settings()?.any() && config.api.http_listen.is_none() {
        return Err(StartupError::IdpWithoutHttp);
    }
    Ok(())
}

/// Reads every identity provider's key set once (a file, or its URL): what the receivers will
/// use, one report line per issuer.
async fn check_idp_keys(config: &Config) -> Result<Vec<String>, StartupError> {
    let settings = config.idp_settings()?;
    let routes = [
        (
            &settings.oidc_issuers,
            "oidc back-channel logout",
            "/oidc/backchannel-logout",
        ),
        (&settings.ssf_transmitters, "ssf transmitter", "/ssf/events"),
    ];
    let mut report = Vec::new();
    for (issuers, what, path) in routes {
        for trusted in issuers {
            let keys = crate::idp::jwks::read_key_set(&trusted.source)
                .await
                .map_err(|problem| StartupError::IdpKeys {
                    issuer: trusted.issuer.clone(),
                    problem,
                })?;
            let on = config.api.http_listen.map_or_else(String::new, |listen| {
                format!(", POST http://{listen}{path}")
            });
            let prefix = if trusted.subject_prefix.is_empty() {
                String::new()
            } else {
                format!(", user id = {:?} + subject", trusted.subject_prefix)
            };
            report.push(format!(
                "{what}: {} ({} key(s) from {}{prefix}){on}",
                trusted.issuer,
                keys.len(),
                trusted.source
            ));
        }
    }
    for trusted in &settings.token_issuers {
        let keys = trusted
            .check_keys()
            .await
            .map_err(|problem| StartupError::IdpKeys {
                issuer: trusted.issuer.clone(),
                problem,
            })?;
        report.push(format!(
            "trusted issuer: {} ({} key(s) from {}, audience {}, user id = {:?} + sub)",
            trusted.issuer,
            keys.len(),
            trusted.keys,
            trusted.audience,
            trusted.subject_prefix
        ));
    }
    Ok(report)
}

/// Refuses a sync mode that lacks what it needs.
pub fn check_sync(config: &Config) -> Result<(), StartupError> {
    if config.store.sync_mode == crate::sync::SyncMode::Nats && config.store.nats_url.is_none() {
        return Err(StartupError::NoNatsUrl);
    }
    // An unusable sync key would leave the instance NOT_SERVING for ever: say so at start.
    if let Some(path) = &config.store.sync_key_file {
        store::read_sync_key(path)?;
        crate::secret_file::warn_if_readable_by_others(path);
    }
    Ok(())
}

/// Applies the migrations of the configured store and returns its kind.
pub async fn migrate(config: &Config) -> Result<&'static str, StartupError> {
    // Asked for explicitly: applied wherever the URL leads (a direct URL, as the log of a
    // waiting sidecar says).
    let mut settings = store::PoolSettings::from(config);
    settings.migrate = crate::config::MigrateAtStart::Always;
    let store = store::open_with(&config.database_url(), settings)
        .await?
        .store;
    store.migrate().await?;
    Ok(store.kind())
}

/// Checks what a start would need, without starting: keys load, the store answers. Returns what
/// was checked, one line each. Creates nothing (a missing development key is only reported).
pub async fn check_config(config: &Config) -> Result<Vec<String>, StartupError> {
    let mut report = Vec::new();
    check_exposure(config)?;
    check_sync(config)?;
    check_idp(config)?;
    report.push(format!("listen: {}", config.api.listen));
    if config.tokens.verify_only {
        let keys = load_keys(config)?;
        report.push(format!(
            "keys: verify-only, {} public key(s) from files{}",
            keys.kids().len(),
            config
                .tokens
                .issuer_jwks
                .as_ref()
                .map(|source| format!("; the issuer's key set is read from {source}"))
                .unwrap_or_default()
        ));
        if let Some(source) = &config.tokens.issuer_jwks {
            let published = crate::key_reload::read_published(source)
                .await
                .map_err(StartupError::IssuerKeys)?;
            let keys = KeySet::verify_only(read_key_files(&config.tokens.keys)?, Some(&published))?;
            report.push(format!(
                "issuer key set {source}: {} key(s): {}",
                keys.kids().len(),
                keys.kids().join(", ")
            ));
        }
    } else if config.tokens.keys.is_empty() {
        if !config.is_sqlite() {
            return Err(StartupError::NoKeyForPostgres);
        }
        let path = config.dev_key_path().ok_or(KeyError::Empty)?;
        report.push(format!(
            "keys: none configured; SQLite mode uses the development key {}",
            path.display()
        ));
    } else {
        let keys = KeySet::load(&config.tokens.keys, config.tokens.signing_kid.as_deref())?;
        report.push(format!(
            "keys: {} (signing: {})",
            keys.kids().join(", "),
            keys.signing_kid().unwrap_or_default()
        ));
    }
    if tls(config)?.is_some() {
        report.push("tls: certificate and key readable".into());
    }
    if load_admin(config)?.is_some() {
        report.push("admin credential: loaded; privileged RPCs require it".into());
    }
    report.push(crate::otel::describe(&config.into())?);
    report.extend(check_idp_keys(config).await?);
    let contradictions = contradictions(config);
    if !contradictions.is_empty() {
        return Err(StartupError::Contradictory(contradictions.join("; ")));
    }
    report.push(check_store(config).await?);
    report.push(format!(
        "token ttl {}, refresh window {}, leeway {}, issuer {}, audience {}",
        human(config.tokens.token_ttl),
        human(config.tokens.refresh_window),
        human(config.tokens.leeway),
        config.tokens.issuer,
        config
            .tokens
            .audience
            .as_deref()
            .unwrap_or("none (not checked)"),
    ));
    Ok(report)
}

/// Settings that each parse but contradict each other: what a start would run with, and not
/// what the operator meant. `check-config` refuses them; a start says so in its log.
pub fn contradictions(config: &Config) -> Vec<String> {
    let mut found = Vec::new();
    if config.tokens.token_ttl > config.tokens.refresh_window {
        found.push(format!(
            "--token-ttl {} is longer than --refresh-window {}: no token could live longer than \
             the window, so every one would be cut to it",
            human(config.tokens.token_ttl),
            human(config.tokens.refresh_window)
        ));
    }
    if config.store.sync_poll_interval >= config.store.max_staleness {
        found.push(format!(
            "--sync-poll-interval {} is not shorter than --max-staleness {}: polling alone, an \
             instance would go stale between two polls",
            human(config.store.sync_poll_interval),
            human(config.store.max_staleness)
        ));
    }
    if config.tokens.leeway >= config.tokens.token_ttl {
        found.push(format!(
            "--leeway {} is not shorter than --token-ttl {}: an expired token would be accepted \
             for longer than it lived",
            human(config.tokens.leeway),
            human(config.tokens.token_ttl)
        ));
    }
    found
}

/// Whether the store a start would use is there, without changing anything: an embedded file
/// is looked at, not opened (opening creates it and its lock file); PostgreSQL is asked, and a
/// refused connection is reported in the server's words.
async fn check_store(config: &Config) -> Result<String, StartupError> {
    let url = config.database_url();
    if let Some(path) = url.strip_prefix("sqlite:") {
        let path = path.split('?').next().unwrap_or(path);
        let path = std::path::Path::new(path.trim_start_matches("//"));
        return Ok(match std::fs::metadata(path) {
            Ok(meta) if meta.is_file() => format!("store: sqlite file {} exists", path.display()),
            Ok(_) => {
                return Err(StartupError::Store(store::StoreError::Owner(format!(
                    "{} is not a file",
                    path.display()
                ))));
            }
            Err(_) => format!(
                "store: sqlite file {} does not exist yet (a start creates it)",
                path.display()
            ),
        });
    }
    let store = store::open_with(&url, config.into()).await?.store;
    if let Err(e) = store.ping().await {
        return Err(store.why_unreachable().await.unwrap_or(e).into());
    }
    Ok(format!("store: {} reachable", store.kind()))
}

/// A duration as the flags take it: `7d`, `5m`, `1500ms`, `0s`.
fn human(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    if ms == 0 {
        "0s".to_owned()
    } else {
        format!("{ms}ms")
    }
}

/// Refuses an API beyond loopback whose callers are not authenticated, unless the operator said
/// it is intended (its privileged RPCs are then refused to everyone: see `load_callers`). Callers are authenticated by the admin credential or by mutual TLS;
/// server-side TLS alone only encrypts. The health-only and metrics listeners are exempt: they
/// serve nothing that changes state.
pub fn check_exposure(config: &Config) -> Result<(), StartupError> {
    let mutual_tls = config.api.tls_cert.is_some() && config.api.tls_client_ca.is_some();
    let protected = mutual_tls || config.api.admin_token_file.is_some();
    if config.api.listen.ip().is_loopback() || protected {
        return Ok(());
    }
    if config.api.allow_insecure_remote {
        tracing::warn!(
            listen = %config.api.listen,
            "the API is reachable from other hosts and callers are not authenticated \
             (--allow-insecure-remote)"
        );
        return Ok(());
    }
    Err(StartupError::InsecureRemote(config.api.listen))
}

/// Reads the admin credential, if one is configured.
pub fn load_admin(config: &Config) -> Result<Option<Arc<AdminCredential>>, StartupError> {
    let Some(path) = &config.api.admin_token_file else {
        return Ok(None);
    };
    let problem = |problem: String| StartupError::AdminToken {
        path: path.display().to_string(),
        problem,
    };
    let raw = secret_file::read(path).map_err(|e| problem(e.to_string()))?;
    warn_if_readable_by_others(path);
    AdminCredential::new(&raw)
        .map(|c| Some(Arc::new(c)))
        .ok_or_else(|| problem(format!("shorter than {} bytes", AdminCredential::MIN_LEN)))
}

/// Who may call what (SPEC §12): the admin credential, the allowed client identities, and the
/// introspection credentials.
pub fn load_callers(
    config: &Config,
    admin: Option<Arc<AdminCredential>>,
) -> Result<Callers, StartupError> {
    let introspection = credential_list(
        config.api.introspection_token_file.as_deref(),
        |path, problem| StartupError::IntrospectionToken { path, problem },
    )?;
    let feed = credential_list(config.api.feed_token_file.as_deref(), |path, problem| {
        StartupError::FeedToken { path, problem }
    })?;
    Ok(Callers {
        // SPEC §12: open only on a loopback-only API with no caller authentication configured.
        open: config.api.listen.ip().is_loopback()
            && admin.is_none()
            && config.api.tls_client_ca.is_none(),
        identities: config.api.admin_identities.clone().into(),
        feed_open: config
            .api
            .http_listen
            .is_some_and(|http| http.ip().is_loopback())
            && admin.is_none()
            && feed.is_none(),
        admin,
        introspection,
        feed,
    })
}

/// A file of credentials, one per line, if configured.
fn credential_list(
    path: Option<&std::path::Path>,
    error: impl Fn(String, String) -> StartupError,
) -> Result<Option<Arc<CredentialList>>, StartupError> {
    let Some(path) = path else {
        return Ok(None);
    };
    let problem = |problem: String| error(path.display().to_string(), problem);
    let raw = secret_file::read(path).map_err(|e| problem(e.to_string()))?;
    warn_if_readable_by_others(path);
    let list = CredentialList::new(&raw).ok_or_else(|| {
        problem(format!(
            "no credential, or one shorter than {} bytes",
            AdminCredential::MIN_LEN
        ))
    })?;
    Ok(Some(Arc::new(list)))
}

/// The API's TLS, if --tls-cert and --tls-key are set.
pub fn tls(config: &Config) -> Result<Option<ReloadableTls>, StartupError> {
    let (Some(cert), Some(key)) = (&config.api.tls_cert, &config.api.tls_key) else {
        return Ok(None);
    };
    ReloadableTls::load(cert.clone(), key.clone(), config.api.tls_client_ca.clone())
        .map(Some)
        .map_err(|e| StartupError::Tls(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::human;
    use std::time::Duration;

    #[test]
    fn durations_read_as_the_flags_take_them() {
        assert_eq!(human(Duration::from_secs(7 * 86_400)), "7d");
        assert_eq!(human(Duration::from_secs(300)), "5m");
        assert_eq!(human(Duration::from_millis(1500)), "1500ms");
        assert_eq!(human(Duration::ZERO), "0s");
        assert_eq!(human(Duration::from_secs(90)), "90s");
    }
}
