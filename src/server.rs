//! Assembly and lifecycle: [`start`] builds the sidecar from its [`Config`] in a few named steps
//! — pre-flight checks, the store and the caches, the authority, then one listener per surface
//! (the gRPC API with TokenService, ext_authz, health and reflection; the health-only port; the
//! HTTP port; the metrics port) and the background tasks — and [`RunningSidecar::shutdown`]
//! stops it gracefully. What each piece does lives in its own module: [`crate::preflight`],
//! [`crate::health`], [`crate::key_reload`], [`crate::purge`], [`crate::sync`], [`crate::api`].
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tonic_health::server::HealthReporter;

use crate::api::forward_auth::ForwardAuth;
use crate::authority::TokenAuthority;
use crate::clock::Clock;
use crate::config::Config;
use crate::idp::IdpReceiver;
use crate::key_reload::{self, KeyReloader};
use crate::metrics::{self, Metrics};
use crate::policy::RevocationPolicy;
use crate::revocations::Revocations;
use crate::store;
use crate::supervise::Supervisor;
use crate::surfaces::Listeners;
use crate::token::TrustedIssuers;
use crate::token::VerifiedCache;
use crate::token::{KeyError, KeySet, TokenCodec};
use crate::{clock_upkeep, health, preflight, purge, readiness, sync, trusted_keys};

pub use crate::health::SERVICE_NAME;
pub use crate::preflight::{check_config, migrate};

pub use crate::startup_error::StartupError;

pub use crate::surfaces::{MAX_HEADER_LIST_BYTES, MAX_MESSAGE_BYTES};

/// A started sidecar: where it listens and how to stop it.
pub struct RunningSidecar {
    /// The bound API address.
    pub addr: SocketAddr,
    /// The bound health-only address, if configured.
    pub health_addr: Option<SocketAddr>,
    /// The bound HTTP (forward-auth, introspection) address, if configured.
    pub http_addr: Option<SocketAddr>,
    /// The bound metrics address.
    pub metrics_addr: SocketAddr,
    /// The authority (for in-process callers such as benchmarks).
    pub authority: Arc<TokenAuthority>,
    /// This instance's metrics.
    pub metrics: Arc<Metrics>,
    /// Turns true on SIGTERM: health reports NOT_SERVING, upkeep stops, ends are no failures.
    draining: watch::Sender<bool>,
    /// Turns true after the drain delay: the listeners stop accepting.
    shutdown: watch::Sender<bool>,
    /// Turns true with it: open health Watch streams end.
    watches_end: watch::Sender<bool>,
    /// Turns true last: the metrics listener closes.
    metrics_stop: watch::Sender<bool>,
    reporter: HealthReporter,
    drain_delay: Duration,
    grace: Duration,
    keys: Arc<KeyReloader>,
    /// The listeners (critical: see [`crate::supervise`]).
    tasks: Vec<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
    metrics_task: JoinHandle<()>,
    failures: Option<mpsc::UnboundedReceiver<String>>,
}

impl RunningSidecar {
    /// Re-reads the key files and swaps in the new key set if they changed. A bad file keeps
    /// the old set; the error says why. Ok(true) when a new set is in use.
    pub fn reload_keys(&self) -> Result<bool, KeyError> {
        self.keys.reload()
    }

    /// Reads the issuing service's key set now (a verify-only sidecar's `--issuer-jwks`):
    /// Ok(true) when a new set is in use; a set that cannot be used keeps the keys held.
    pub async fn read_issuer_keys(&self) -> Result<bool, String> {
        self.keys.read_issuer_keys().await
    }

    /// Re-reads every secret file (keys, TLS certificate, admin credential), as SIGHUP does;
    /// the problems, one line each (empty: all fine, changed or not).
    pub fn reload_secrets(&self) -> Vec<String> {
        self.keys.reload_all()
    }

    /// Why a task the service cannot live without ended (see [`crate::supervise`]): `main`
    /// waits on it beside the signals, and stops the process non-zero when it answers.
    pub fn take_failures(&mut self) -> Option<mpsc::UnboundedReceiver<String>> {
        self.failures.take()
    }

    /// The ordered shutdown (SPEC §12): every health name but `liveness` turns NOT_SERVING at
    /// once (Check and open Watch streams); the listeners keep accepting and answering for
    /// `--drain-delay`; then they stop accepting, Watch streams end, in-flight requests finish
    /// (at most `--shutdown-grace`; whatever still runs then is cut), background work stops, and
    /// the metrics listener closes last.
    pub async fn shutdown(self) {
        let _ = self.draining.send(true);
        health::draining(&self.reporter).await;
        if !self.drain_delay.is_zero() {
            tracing::info!(
                drain_delay_ms = self.drain_delay.as_millis() as u64,
                "health is NOT_SERVING; still answering for the drain delay"
            );
            tokio::time::sleep(self.drain_delay).await;
        }
        let _ = self.watches_end.send(true);
        let _ = self.shutdown.send(true);
        let aborts: Vec<_> = self.tasks.iter().map(JoinHandle::abort_handle).collect();
        let drained = tokio::time::timeout(self.grace, async {
            for task in self.tasks {
                let _ = task.await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                grace_ms = self.grace.as_millis() as u64,
                "grace period over: cutting what still runs"
            );
            aborts.iter().for_each(tokio::task::AbortHandle::abort);
        }
        for task in self.background {
            task.abort();
        }
        let _ = self.metrics_stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(1), self.metrics_task).await;
    }
}

/// A background loop as a critical task: it should never end (see [`crate::supervise`]).
async fn ended(task: impl std::future::Future<Output = ()>) -> Result<(), String> {
    task.await;
    Ok(())
}

/// Starts the sidecar: binds its listeners and serves until [`RunningSidecar::shutdown`].
///
/// Health reports NOT_SERVING until the store has been migrated and answered.
pub async fn start(config: Config, clock: Arc<dyn Clock>) -> Result<RunningSidecar, StartupError> {
    preflight::check_exposure(&config)?;
    preflight::check_sync(&config)?;
    preflight::check_idp(&config)?;
    for contradiction in preflight::contradictions(&config) {
        tracing::warn!(%contradiction, "settings contradict each other (check-config refuses them)");
    }
    let keys = preflight::load_keys(&config)?;
    let admin = preflight::load_admin(&config)?;
    let callers = preflight::load_callers(&config, admin)?;
    let tls = preflight::tls(&config)?.map(Arc::new);
    let metrics = Arc::new(Metrics::new());
    let store::Opened { store, transport } = open_store(&config).await?;
    let revocations = Arc::new(Revocations::new(
        store.clone(),
        clock.clone(),
        metrics.core().clone(),
        (&config).into(),
    ));
    let authority = Arc::new(authority(&config, keys, &revocations, &metrics, &clock)?);
    let (draining, draining_rx) = watch::channel(false);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (watches_end, watches_end_rx) = watch::channel(false);
    let (metrics_stop, metrics_stop_rx) = watch::channel(false);
    let (reporter, health_service) = health::reporter(watches_end_rx).await;
    let (supervisor, failures) = Supervisor::new(draining_rx.clone(), metrics.clone());
    let listeners = Listeners {
        config: &config,
        metrics: &metrics,
        shutdown: &shutdown_rx,
        supervisor: &supervisor,
    };
    let decide = ForwardAuth::new(
        authority.clone(),
        config.api.forward_claims.clone(),
        metrics.clone(),
    );
    let mut tasks = Vec::new();
    let addr = listeners
        .api(
            &authority,
            &decide,
            callers.clone(),
            tls.as_deref(),
            health_service.clone(),
            &mut tasks,
        )
        .await?;
    let health_addr = listeners.health_only(health_service, &mut tasks).await?;
    let idp_settings = config.idp_settings()?;
    let idp = idp_settings.any().then(|| {
        Arc::new(IdpReceiver::new(
            authority.clone(),
            &idp_settings,
            clock.clone(),
        ))
    });
    let http_addr = listeners
        .http(&decide, callers.clone(), idp, &mut tasks)
        .await?;
    let (metrics_addr, metrics_task) = listeners.metrics(&authority, metrics_stop_rx).await?;
    tracing::info!(
        %addr,
        health = %optional(health_addr),
        http = %optional(http_addr),
        metrics = %metrics::describe(metrics_addr),
        store = store.kind(),
        "token-sidecar listening"
    );

    let key_reloader = Arc::new(KeyReloader::new(&config, authority.clone(), tls, &callers));
    let watch_secrets = key_reloader.watches_anything();
    // Readiness and the clock's upkeep stop on SIGTERM (health then says NOT_SERVING for good);
    // the change feed keeps the caches current while requests are still answered.
    let mut background = vec![
        supervisor.critical(
            "readiness",
            ended(readiness::keep(
                revocations.clone(),
                key_reloader.clone(),
                reporter.clone(),
                config.store.health_interval,
                draining_rx.clone(),
            )),
        ),
        supervisor.critical(
            "the clock's upkeep",
            ended(clock_upkeep::keep(
                store.clone(),
                clock.clone(),
                (&config).into(),
                metrics.clone(),
                reporter.clone(),
                draining_rx.clone(),
            )),
        ),
    ];
    {
        let (revocations, policy, interval) = (
            revocations.clone(),
            RevocationPolicy::from(&config),
            config.store.purge_interval,
        );
        background.push(supervisor.restartable("purge", move || {
            purge::run(revocations.clone(), policy, clock.clone(), interval)
        }));
    }
    if watch_secrets {
        let (reloader, interval) = (key_reloader.clone(), config.tokens.key_reload_interval);
        background.push(supervisor.restartable("secret_reload", move || {
            key_reload::watch(reloader.clone(), interval)
        }));
    }
    let token_issuers = idp_settings.token_issuers.clone();
    if !token_issuers.is_empty() {
        let authority = authority.clone();
        background.push(supervisor.restartable("trusted_keys", move || {
            trusted_keys::watch(authority.clone(), token_issuers.clone())
        }));
    }
    if store.is_shared() {
        background.push(supervisor.critical(
            "the change feed",
            ended(sync::run(
                revocations,
                transport,
                (&config).into(),
                shutdown_rx.clone(),
            )),
        ));
    }
    Ok(RunningSidecar {
        addr,
        health_addr,
        http_addr,
        metrics_addr,
        authority,
        metrics,
        draining,
        shutdown,
        watches_end,
        metrics_stop,
        reporter,
        drain_delay: config.limits.drain_delay,
        grace: config.limits.shutdown_grace,
        keys: key_reloader,
        tasks,
        background,
        metrics_task,
        failures: Some(failures),
    })
}

/// An optional address as an operator reads it: the address, or `off`.
fn optional(addr: Option<SocketAddr>) -> String {
    addr.map_or_else(|| "off".to_owned(), |a| a.to_string())
}

/// The configured store (not migrated yet: health does that, so that a slow database delays
/// readiness instead of the start).
async fn open_store(config: &Config) -> Result<store::Opened, StartupError> {
    let url = config.database_url();
    if config.store.database_url.is_none() {
        tracing::warn!(
            database = %url,
            "no --database-url: using an embedded SQLite file (single instance only; \
             use PostgreSQL to share revocations between sidecars)"
        );
    }
    Ok(store::open_with(&url, config.into()).await?)
}

/// The use cases over the codec (with the verified-token cache unless it is off).
fn authority(
    config: &Config,
    keys: KeySet,
    revocations: &Arc<Revocations>,
    metrics: &Metrics,
    clock: &Arc<dyn Clock>,
) -> Result<TokenAuthority, StartupError> {
    let mut codec = TokenCodec::new(
        keys,
        config.tokens.issuer.clone(),
        config.tokens.audience.clone(),
    );
    if config.caches.verified_cache_capacity > 0 {
        codec = codec.with_verified_cache(VerifiedCache::new(
            config.caches.verified_cache_capacity,
            clock.clone(),
            metrics.caches.verified(),
        ));
    }
    let idp = config.idp_settings()?;
    let horizon_ms = i64::try_from(config.tokens.refresh_window.as_millis()).unwrap_or(i64::MAX);
    codec = codec.with_trusted_issuers(Arc::new(TrustedIssuers::new(
        idp.token_issuers.iter().map(|t| t.trust(horizon_ms)),
    )));
    let idp_prefixes = idp
        .oidc_issuers
        .iter()
        .chain(&idp.ssf_transmitters)
        .map(|t| t.subject_prefix.clone())
        .chain(idp.token_issuers.iter().map(|t| t.subject_prefix.clone()))
        .collect();
    let authority = TokenAuthority::new(codec, config.into(), revocations.clone(), clock.clone())
        .with_idp_prefixes(idp_prefixes)
        .with_sender_rules(config.into(), config.tokens.dpop_nonce);
    Ok(if config.tokens.verify_only {
        authority.verify_only(config.issuing_service())
    } else {
        authority
    })
}
