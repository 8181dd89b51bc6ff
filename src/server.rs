//! Server assembly: keys, store, authority, the gRPC services (TokenService, health,
//! reflection), background tasks, and graceful shutdown.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::api::ext_authz::ExtAuthz;
use crate::api::forward_auth::ForwardAuth;
use crate::api::http::HttpApi;
use crate::authority::TokenAuthority;
use crate::cache::VerifiedCache;
use crate::clock::Clock;
use crate::config::{Config, Toggle};
use crate::connections::{ConnectionGuard, Handshake};
use crate::grpc::{AdminCredential, TokenGrpc, pb};
use crate::limits::RequestLimits;
use crate::metrics::{self, Metrics};
use crate::policy::RevocationPolicy;
use crate::revocations::{CacheSettings, Revocations};
use crate::secret_file::{self, warn_if_readable_by_others};
use crate::store::{self, StoreError};
use crate::sync;
use crate::token::{
    KeyError, KeySet, KeySpec, TokenCodec, read_key_files, warn_about_exposed_keys,
};

/// The fully qualified name under which health reports TokenService.
pub const SERVICE_NAME: &str = "tokensidecar.v1.TokenService";

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The keys could not be loaded.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// PostgreSQL mode with no key configured.
    #[error(
        "no signing key configured: with PostgreSQL, give one with --key KID=ALG:PATH \
         (or TOKEN_SIDECAR_KEYS); every sidecar sharing the database needs the same keys"
    )]
    NoKeyForPostgres,
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The admin credential file is unusable.
    #[error("--admin-token-file {path}: {problem}")]
    AdminToken {
        /// The file.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// The TLS files are unusable.
    #[error("TLS: {0}")]
    Tls(String),
    /// The API would be reachable from other hosts with no caller authentication.
    #[error(
        "--listen {0} is reachable from other hosts, but callers are not authenticated (TLS alone \
         encrypts; it does not say who is calling), so anyone who reaches it could issue and \
         revoke tokens: require the admin credential (--admin-token-file) or client certificates \
         (--tls-client-ca with --tls-cert/--tls-key), listen on loopback, or pass \
         --allow-insecure-remote to accept the risk"
    )]
    InsecureRemote(SocketAddr),
    /// Reflection could not be built from the descriptors.
    #[error("reflection setup failed: {0}")]
    Reflection(String),
}

/// Largest request message accepted (RESOURCE_EXHAUSTED beyond). Far above any real request
/// (a token is capped at 8 KiB, custom claims at 4 KiB) yet small enough that a flood of
/// maximal requests cannot exhaust memory: 1024 in flight × 4 MiB.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Largest request header list (metadata) accepted, made explicit rather than left to hyper.
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

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
    shutdown: watch::Sender<bool>,
    grace: Duration,
    keys: Arc<KeyReloader>,
    tasks: Vec<JoinHandle<Result<(), tonic::transport::Error>>>,
    background: Vec<JoinHandle<()>>,
}

impl RunningSidecar {
    /// Re-reads the key files and swaps in the new key set if they changed. A bad file keeps
    /// the old set; the error says why. Ok(true) when a new set is in use.
    pub fn reload_keys(&self) -> Result<bool, KeyError> {
        self.keys.reload()
    }

    /// Stops accepting connections and lets in-flight RPCs finish, for at most the shutdown
    /// grace period; whatever still runs then (e.g. a health Watch stream) is cut.
    pub async fn shutdown(self) -> Result<(), tonic::transport::Error> {
        let _ = self.shutdown.send(true);
        for task in self.background {
            task.abort();
        }
        let aborts: Vec<_> = self.tasks.iter().map(JoinHandle::abort_handle).collect();
        let drained = tokio::time::timeout(self.grace, async {
            for task in self.tasks {
                match task.await {
                    Ok(result) => result?,
                    Err(e) => tracing::error!(error = %e, "server task failed"),
                }
            }
            Ok(())
        })
        .await;
        match drained {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(grace = ?self.grace, "grace period over: cutting open streams");
                aborts.iter().for_each(tokio::task::AbortHandle::abort);
                Ok(())
            }
        }
    }
}

/// Reloads configured key files when their content changes.
pub struct KeyReloader {
    specs: Vec<KeySpec>,
    signing_kid: Option<String>,
    authority: Arc<TokenAuthority>,
    loaded: std::sync::Mutex<Vec<Vec<u8>>>,
}

impl KeyReloader {
    fn new(config: &Config, authority: Arc<TokenAuthority>) -> Self {
        let loaded = read_key_files(&config.keys)
            .map(|files| files.into_iter().map(|(_, m)| m).collect())
            .unwrap_or_default();
        Self {
            specs: config.keys.clone(),
            signing_kid: config.signing_kid.clone(),
            authority,
            loaded: std::sync::Mutex::new(loaded),
        }
    }

    /// See [`RunningSidecar::reload_keys`].
    pub fn reload(&self) -> Result<bool, KeyError> {
        if self.specs.is_empty() {
            return Ok(false);
        }
        let files = read_key_files(&self.specs)?;
        let material: Vec<Vec<u8>> = files.iter().map(|(_, m)| m.clone()).collect();
        let mut loaded = match self.loaded.lock() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        };
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

async fn watch_keys(keys: Arc<KeyReloader>, interval: Duration) {
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

/// Builds the key set for `config`, generating the development key in SQLite mode.
pub fn load_keys(config: &Config) -> Result<KeySet, StartupError> {
    if !config.keys.is_empty() {
        let files = read_key_files(&config.keys)?;
        warn_about_exposed_keys(&files);
        return Ok(KeySet::from_material(files, config.signing_kid.as_deref())?);
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

/// Applies the migrations of the configured store and returns its kind.
pub async fn migrate(config: &Config) -> Result<&'static str, StartupError> {
    let store = store::open(&config.database_url()).await?;
    store.migrate().await?;
    Ok(store.kind())
}

/// Checks what a start would need, without starting: keys load, the store answers. Returns what
/// was checked, one line each. Creates nothing (a missing development key is only reported).
pub async fn check_config(config: &Config) -> Result<Vec<String>, StartupError> {
    let mut report = Vec::new();
    check_exposure(config)?;
    report.push(format!("listen: {}", config.listen));
    if config.keys.is_empty() {
        if !config.is_sqlite() {
            return Err(StartupError::NoKeyForPostgres);
        }
        let path = config.dev_key_path().ok_or(KeyError::Empty)?;
        report.push(format!(
            "keys: none configured; SQLite mode uses the development key {}",
            path.display()
        ));
    } else {
        let keys = KeySet::load(&config.keys, config.signing_kid.as_deref())?;
        report.push(format!(
            "keys: {} (signing: {})",
            keys.kids().join(", "),
            keys.signing_kid()
        ));
    }
    if tls_config(config)?.is_some() {
        report.push("tls: certificate and key readable".into());
    }
    if load_admin(config)?.is_some() {
        report.push("admin credential: loaded; privileged RPCs require it".into());
    }
    let store = store::open(&config.database_url()).await?;
    store.ping().await?;
    report.push(format!("store: {} reachable", store.kind()));
    report.push(format!(
        "token ttl {:?}, refresh window {:?}, leeway {:?}, issuer {:?}, audience {:?}",
        config.token_ttl, config.refresh_window, config.leeway, config.issuer, config.audience
    ));
    Ok(report)
}

/// Refuses an API beyond loopback whose privileged RPCs anyone could call, unless the operator
/// said it is intended. Callers are authenticated by the admin credential or by mutual TLS;
/// server-side TLS alone only encrypts. The health-only and metrics listeners are exempt: they
/// serve nothing that changes state.
pub fn check_exposure(config: &Config) -> Result<(), StartupError> {
    let mutual_tls = config.tls_cert.is_some() && config.tls_client_ca.is_some();
    let protected = mutual_tls || config.admin_token_file.is_some();
    if config.listen.ip().is_loopback() || protected {
        return Ok(());
    }
    if config.allow_insecure_remote {
        tracing::warn!(
            listen = %config.listen,
            "the API is reachable from other hosts and callers are not authenticated \
             (--allow-insecure-remote)"
        );
        return Ok(());
    }
    Err(StartupError::InsecureRemote(config.listen))
}

/// Reads the admin credential, if one is configured.
pub fn load_admin(config: &Config) -> Result<Option<Arc<AdminCredential>>, StartupError> {
    let Some(path) = &config.admin_token_file else {
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

/// The API's TLS configuration, if --tls-cert and --tls-key are set.
pub fn tls_config(config: &Config) -> Result<Option<ServerTlsConfig>, StartupError> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let read = |path: &std::path::Path| {
        secret_file::read(path).map_err(|e| StartupError::Tls(format!("{}: {e}", path.display())))
    };
    warn_if_readable_by_others(key);
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
    if let Some(ca) = &config.tls_client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    Ok(Some(tls))
}

/// The policy `config` asks for.
pub fn policy(config: &Config) -> RevocationPolicy {
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4);
    RevocationPolicy {
        token_ttl_ms: ms(config.token_ttl),
        refresh_window_ms: ms(config.refresh_window),
        leeway_ms: ms(config.leeway),
        refresh_reuse_interval_ms: (config.refresh_reuse_detection == Toggle::On)
            .then(|| ms(config.refresh_reuse_interval)),
    }
}

/// The cache settings `config` asks for.
pub fn cache_settings(config: &Config) -> CacheSettings {
    CacheSettings {
        cutoff_ttl: config.cutoff_cache_ttl,
        cutoff_capacity: config.cutoff_cache_capacity,
        denylist_filter: config.denylist_filter == Toggle::On,
        filter_expected_items: config.denylist_expected_items,
        filter_fp_rate: config.denylist_fp_rate,
        max_staleness: config.max_staleness,
        on_outage: config.on_store_outage,
    }
}

/// Starts the sidecar: binds its listeners and serves until [`RunningSidecar::shutdown`].
///
/// Health reports NOT_SERVING until the store has been migrated and answered.
pub async fn start(config: Config, clock: Arc<dyn Clock>) -> Result<RunningSidecar, StartupError> {
    check_exposure(&config)?;
    let keys = load_keys(&config)?;
    let admin = load_admin(&config)?;
    let url = config.database_url();
    if config.database_url.is_none() {
        tracing::warn!(
            database = %url,
            "no --database-url: using an embedded SQLite file (single instance only; \
             use PostgreSQL to share revocations between sidecars)"
        );
    }
    let store = store::open(&url).await?;
    let metrics = Arc::new(Metrics::new());
    let revocations = Arc::new(Revocations::new(
        store.clone(),
        clock.clone(),
        metrics.clone(),
        cache_settings(&config),
    ));
    let mut codec = TokenCodec::new(keys, config.issuer.clone(), config.audience.clone());
    if config.verified_cache_capacity > 0 {
        codec = codec.with_verified_cache(VerifiedCache::new(
            config.verified_cache_capacity,
            clock.clone(),
            metrics.verified_cache(),
        ));
    }
    let authority = Arc::new(TokenAuthority::new(
        codec,
        policy(&config),
        revocations.clone(),
        clock.clone(),
    ));

    let (reporter, health_service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(SERVICE_NAME, ServingStatus::NotServing)
        .await;
    reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;

    // Each version lists the other too, so `list` shows every service whichever a client uses.
    let reflection_v1 = reflection()
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| StartupError::Reflection(e.to_string()))?;
    let reflection_v1alpha = reflection()
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| StartupError::Reflection(e.to_string()))?;

    let (shutdown, shutdown_rx) = watch::channel(false);
    let guard = |listener, handshake| ConnectionGuard {
        listener,
        max_connections: config.max_connections,
        handshake_timeout: config.handshake_timeout,
        handshake,
        metrics: metrics.clone(),
    };
    let api_handshake = if config.tls_cert.is_some() {
        Handshake::Tls
    } else {
        Handshake::Http2
    };
    let listener = bind(config.listen).await?;
    let addr = local_addr(&listener, config.listen)?;
    let mut api = Server::builder();
    if let Some(tls) = tls_config(&config)? {
        api = api
            .tls_config(tls)
            .map_err(|e| StartupError::Tls(e.to_string()))?;
        tracing::info!(
            mutual = config.tls_client_ca.is_some(),
            "the API speaks TLS"
        );
    }
    let decide = ForwardAuth::new(authority.clone(), config.forward_claims.clone());
    let api = api
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .layer(RequestLimits::new(
            config.max_concurrent_requests,
            metrics.clone(),
        ))
        .add_service(health_service.clone())
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            pb::token_service_server::TokenServiceServer::new(TokenGrpc::new(
                authority.clone(),
                metrics.clone(),
                admin.clone(),
            ))
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            ExtAuthz::new(decide.clone(), metrics.clone())
                .into_service()
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(
            guard("api", api_handshake).incoming(listener),
            stopped(shutdown_rx.clone()),
        );
    let mut tasks = vec![tokio::spawn(api)];

    let mut health_addr = None;
    if let Some(health_listen) = config.health_listen {
        let listener = bind(health_listen).await?;
        health_addr = Some(local_addr(&listener, health_listen)?);
        let probes = Server::builder()
            .add_service(health_service)
            .serve_with_incoming_shutdown(
                guard("health", Handshake::Http2).incoming(listener),
                stopped(shutdown_rx.clone()),
            );
        tasks.push(tokio::spawn(probes));
    }
    let mut http_addr = None;
    if let Some(http_listen) = config.http_listen {
        let listener = bind(http_listen).await?;
        let addr = local_addr(&listener, http_listen)?;
        http_addr = Some(addr);
        let listener = guard("http", Handshake::Http1)
            .axum_listener(listener)
            .map_err(|source| StartupError::Bind { addr, source })?;
        let routes = HttpApi::new(decide, admin, metrics.clone()).router();
        let stop = stopped(shutdown_rx.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, routes)
                .with_graceful_shutdown(stop)
                .await
            {
                tracing::error!(error = %e, "HTTP listener failed");
            }
            Ok(())
        }));
    }
    let metrics_listener = bind(config.metrics_listen).await?;
    let metrics_addr = local_addr(&metrics_listener, config.metrics_listen)?;
    let jwks_authority = authority.clone();
    let metrics_listener = guard("metrics", Handshake::Http1)
        .axum_listener(metrics_listener)
        .map_err(|source| StartupError::Bind {
            addr: metrics_addr,
            source,
        })?;
    let metrics_server = metrics::serve(
        metrics_listener,
        metrics.clone(),
        Arc::new(move || jwks_authority.jwks_json()),
        stopped(shutdown_rx.clone()),
    );
    let key_reloader = Arc::new(KeyReloader::new(&config, authority.clone()));
    tracing::info!(
        %addr,
        health = ?health_addr,
        http = ?http_addr,
        metrics = %metrics::describe(metrics_addr),
        store = store.kind(),
        "token-sidecar listening"
    );

    let mut background = vec![
        tokio::spawn(async move {
            if let Err(e) = metrics_server.await {
                tracing::error!(error = %e, "metrics server failed");
            }
        }),
        tokio::spawn(keep_health(
            revocations.clone(),
            reporter.clone(),
            config.health_interval,
            shutdown_rx.clone(),
        )),
        tokio::spawn(purge_loop(
            revocations.clone(),
            policy(&config),
            clock,
            config.purge_interval,
        )),
    ];
    if !config.keys.is_empty() {
        background.push(tokio::spawn(watch_keys(
            key_reloader.clone(),
            config.key_reload_interval,
        )));
    }
    if store.is_shared() {
        background.push(tokio::spawn(sync::run(
            revocations,
            url,
            config.sync_mode,
            config.sync_poll_interval,
            shutdown_rx.clone(),
        )));
    }
    Ok(RunningSidecar {
        addr,
        health_addr,
        http_addr,
        metrics_addr,
        authority,
        metrics,
        shutdown,
        grace: config.shutdown_grace,
        keys: key_reloader,
        tasks,
        background,
    })
}

fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(crate::api::ext_authz::pb::FILE_DESCRIPTOR_SET)
        // The messages we put in status details, so `grpcurl -format-error` decodes them.
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartupError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartupError::Bind { addr, source })
}

fn local_addr(listener: &TcpListener, addr: SocketAddr) -> Result<SocketAddr, StartupError> {
    listener
        .local_addr()
        .map_err(|source| StartupError::Bind { addr, source })
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Migrates the store and loads the caches, then keeps health in step with whether this
/// instance can answer: NOT_SERVING until loaded, and while the caches are stale and the store
/// is unreachable (unless serving stale answers was chosen).
async fn keep_health(
    revocations: Arc<Revocations>,
    reporter: HealthReporter,
    interval: Duration,
    shutdown: watch::Receiver<bool>,
) {
    let store = revocations.store().clone();
    let mut serving = None;
    loop {
        let answering = if revocations.is_loaded() {
            let reachable = store.ping().await.is_ok();
            if !reachable {
                tracing::warn!("store unreachable");
            }
            reachable || revocations.can_answer(revocations.now_ms())
        } else {
            match prepare(&revocations).await {
                Ok(()) => {
                    tracing::info!(store = store.kind(), "store migrated and caches loaded");
                    true
                }
                Err(e) => {
                    tracing::warn!(error = %e, "store not ready: health is NOT_SERVING");
                    false
                }
            }
        };
        if serving != Some(answering) {
            let status = if answering {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            set_status(&reporter, status).await;
            serving = Some(answering);
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            () = stopped(shutdown.clone()) => {
                set_status(&reporter, ServingStatus::NotServing).await;
                return;
            }
        }
    }
}

async fn prepare(revocations: &Revocations) -> Result<(), StoreError> {
    revocations.store().migrate().await?;
    revocations.load().await
}

async fn set_status(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status(SERVICE_NAME, status).await;
    reporter.set_service_status("", status).await;
}

/// Deletes denylist rows and cutoffs that can no longer refuse anything.
async fn purge_loop(
    revocations: Arc<Revocations>,
    policy: RevocationPolicy,
    clock: Arc<dyn Clock>,
    interval: Duration,
) {
    let mut ticker = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = revocations.filter_overfull() => {
                match revocations.maintain_filter().await {
                    Ok(_) => tracing::debug!("denylist filter outgrew its size: rebuilt"),
                    Err(e) => tracing::warn!(error = %e, "filter rebuild failed; will retry"),
                }
                continue;
            }
        }
        if !revocations.is_loaded() {
            continue;
        }
        let before = policy.cutoff_purgeable_before(clock.now_ms());
        match revocations.purge(before).await {
            Ok(purged) => tracing::debug!(
                denylist = purged.denylist,
                cutoffs = purged.cutoffs,
                "purged moot revocations"
            ),
            Err(e) => tracing::warn!(error = %e, "purge failed; will retry"),
        }
    }
}
