//! Assembly and lifecycle: [`start`] builds the sidecar from its [`Config`] in a few named steps
//! — pre-flight checks, the store and the caches, the authority, then one listener per surface
//! (the gRPC API with TokenService, ext_authz, health and reflection; the health-only port; the
//! HTTP port; the metrics port) and the background tasks — and [`RunningSidecar::shutdown`]
//! stops it gracefully. What each piece does lives in its own module: [`crate::preflight`],
//! [`crate::health`], [`crate::key_reload`], [`crate::purge`], [`crate::sync`], [`crate::api`].
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tonic::transport::Server;
use tonic_health::server::HealthReporter;

use crate::api::caller::Callers;
use crate::api::ext_authz::ExtAuthz;
use crate::api::forward_auth::ForwardAuth;
use crate::api::http::{HttpApi, jwks_routes};
use crate::api::pb;
use crate::api::rpc_layer::RpcLayer;
use crate::api::token_service::TokenGrpc;
use crate::api::trace::GrpcTraceLayer;
use crate::authority::TokenAuthority;
use crate::clock::Clock;
use crate::config::Config;
use crate::connections::{ConnectionGuard, Handshake};
use crate::http_server::{self, HttpBounds};
use crate::idp::IdpReceiver;
use crate::key_reload::{self, KeyReloader};
use crate::limits::RequestLimits;
use crate::metrics::{self, Metrics};
use crate::policy::RevocationPolicy;
use crate::revocations::Revocations;
use crate::shutdown::stopped;
use crate::store;
use crate::supervise::Supervisor;
use crate::tls::ReloadableTls;
use crate::token::VerifiedCache;
use crate::token::{KeyError, KeySet, TokenCodec};
use crate::{clock_upkeep, health, preflight, purge, readiness, sync};

pub use crate::health::SERVICE_NAME;
pub use crate::preflight::{check_config, migrate};

pub use crate::startup_error::StartupError;

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

/// How long requests in flight may still run after a connection's GOAWAY at its maximum age.
const MAX_CONNECTION_AGE_GRACE: Duration = Duration::from_secs(30);

type ServerTask = JoinHandle<()>;

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
        metrics.clone(),
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
        config.forward_claims.clone(),
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

    let watch_secrets = !config.keys.is_empty()
        || tls.is_some()
        || callers.admin.is_some()
        || callers.introspection.is_some();
    let key_reloader = Arc::new(KeyReloader::new(&config, authority.clone(), tls, &callers));
    // Readiness and the clock's upkeep stop on SIGTERM (health then says NOT_SERVING for good);
    // the change feed keeps the caches current while requests are still answered.
    let mut background = vec![
        supervisor.critical(
            "readiness",
            ended(readiness::keep(
                revocations.clone(),
                reporter.clone(),
                config.health_interval,
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
            config.purge_interval,
        );
        background.push(supervisor.restartable("purge", move || {
            purge::run(revocations.clone(), policy, clock.clone(), interval)
        }));
    }
    if watch_secrets {
        let (reloader, interval) = (key_reloader.clone(), config.key_reload_interval);
        background.push(supervisor.restartable("secret_reload", move || {
            key_reload::watch(reloader.clone(), interval)
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
        drain_delay: config.drain_delay,
        grace: config.shutdown_grace,
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
    if config.database_url.is_none() {
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
    let mut codec = TokenCodec::new(keys, config.issuer.clone(), config.audience.clone());
    if config.verified_cache_capacity > 0 {
        codec = codec.with_verified_cache(VerifiedCache::new(
            config.verified_cache_capacity,
            clock.clone(),
            metrics.caches.verified(),
        ));
    }
    let idp = config.idp_settings()?;
    let idp_prefixes = idp
        .oidc_issuers
        .iter()
        .chain(&idp.ssf_transmitters)
        .map(|t| t.subject_prefix.clone())
        .collect();
    Ok(
        TokenAuthority::new(codec, config.into(), revocations.clone(), clock.clone())
            .with_idp_prefixes(idp_prefixes),
    )
}

/// Binds and serves each listener, guarded by `--max-connections` and `--handshake-timeout`.
struct Listeners<'a> {
    config: &'a Config,
    metrics: &'a Arc<Metrics>,
    shutdown: &'a watch::Receiver<bool>,
    supervisor: &'a Supervisor,
}

impl Listeners<'_> {
    fn guard(&self, listener: &'static str, handshake: Handshake) -> ConnectionGuard {
        ConnectionGuard {
            listener,
            max_connections: self.config.max_connections,
            max_per_peer: self.config.max_connections_per_peer,
            handshake_timeout: self.config.handshake_timeout,
            handshake,
            metrics: self.metrics.clone(),
            tls: None,
        }
    }

    /// The bounds of the HTTP/1 listeners' connections.
    fn http_bounds(&self) -> HttpBounds {
        let config = self.config;
        HttpBounds {
            idle_timeout: config.idle_timeout,
            request_timeout: config.request_timeout,
            max_age: config.max_connection_age,
            grace: config.shutdown_grace,
        }
    }

    /// A gRPC server whose connections are bounded after their first request: HTTP/2 PINGs
    /// every `--keepalive-interval` (no answer within half of it closes the connection), a
    /// graceful GOAWAY at `--max-connection-age`, and `--request-timeout` on every request.
    fn grpc_server(&self) -> Server {
        let config = self.config;
        Server::builder()
            .http2_keepalive_interval(Some(config.keepalive_interval))
            .http2_keepalive_timeout(Some(config.keepalive_interval / 2))
            .max_connection_age(config.max_connection_age)
            .max_connection_age_grace(MAX_CONNECTION_AGE_GRACE)
            .timeout(config.request_timeout)
    }

    /// The gRPC API: TokenService, ext_authz, health and reflection, behind the request limits.
    async fn api<H>(
        &self,
        authority: &Arc<TokenAuthority>,
        decide: &ForwardAuth,
        callers: Callers,
        tls: Option<&ReloadableTls>,
        health_service: H,
        tasks: &mut Vec<ServerTask>,
    ) -> Result<SocketAddr, StartupError>
    where
        H: GrpcService,
        H::Future: Send + 'static,
    {
        let config = self.config;
        let (listener, addr) = bind(config.listen).await?;
        let mut guard = self.guard("api", Handshake::Http2);
        if let Some(tls) = tls {
            guard = self.guard("api", Handshake::Tls).with_tls(tls.acceptor());
            tracing::info!(
                mutual = config.tls_client_ca.is_some(),
                "the API speaks TLS"
            );
        }
        let reflection_v1 = reflection_builder()
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
            .build_v1()
            .map_err(|e| StartupError::Reflection(e.to_string()))?;
        let reflection_v1alpha = reflection_builder()
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(|e| StartupError::Reflection(e.to_string()))?;
        let token_service = TokenGrpc::new(authority.clone());
        let serve = self
            .grpc_server()
            .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
            .layer(RequestLimits::new(
                config.max_concurrent_requests,
                self.metrics.clone(),
            ))
            .layer(GrpcTraceLayer)
            .layer(RpcLayer::new(callers, self.metrics.clone()))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(
                pb::token_service_server::TokenServiceServer::new(token_service)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(
                ExtAuthz::new(decide.clone())
                    .into_service()
                    .max_decoding_message_size(MAX_MESSAGE_BYTES),
            )
            .serve_with_incoming_shutdown(guard.incoming(listener), stopped(self.shutdown.clone()));
        tasks.push(self.supervisor.critical("the API listener", async move {
            serve.await.map_err(|e| e.to_string())
        }));
        Ok(addr)
    }

    /// `--health-listen`: only `grpc.health.v1`, for kubelet probes on the Pod IP.
    async fn health_only<H>(
        &self,
        health_service: H,
        tasks: &mut Vec<ServerTask>,
    ) -> Result<Option<SocketAddr>, StartupError>
    where
        H: GrpcService,
        H::Future: Send + 'static,
    {
        let Some(listen) = self.config.health_listen else {
            return Ok(None);
        };
        let (listener, addr) = bind(listen).await?;
        let serve = self
            .grpc_server()
            .add_service(health_service)
            .serve_with_incoming_shutdown(
                self.guard("health", Handshake::Http2).incoming(listener),
                stopped(self.shutdown.clone()),
            );
        tasks.push(self.supervisor.critical("the health listener", async move {
            serve.await.map_err(|e| e.to_string())
        }));
        Ok(Some(addr))
    }

    /// `--http-listen`: forward-auth, introspection and revocation.
    async fn http(
        &self,
        decide: &ForwardAuth,
        callers: Callers,
        idp: Option<Arc<IdpReceiver>>,
        tasks: &mut Vec<ServerTask>,
    ) -> Result<Option<SocketAddr>, StartupError> {
        let Some(listen) = self.config.http_listen else {
            return Ok(None);
        };
        let (listener, addr) = bind(listen).await?;
        let listener = self
            .guard("http", Handshake::Http1)
            .axum_listener(listener)
            .map_err(|error| StartupError::Bind { addr, error })?;
        let routes = HttpApi::new(decide.clone(), callers, self.metrics.clone())
            .with_idp(idp)
            .router();
        let served =
            http_server::serve(listener, routes, self.http_bounds(), self.shutdown.clone());
        tasks.push(self.supervisor.critical("the HTTP listener", async move {
            served.await;
            Ok(())
        }));
        Ok(Some(addr))
    }

    /// `--metrics-listen`: `/metrics` and the JWKS.
    async fn metrics(
        &self,
        authority: &Arc<TokenAuthority>,
        stop: watch::Receiver<bool>,
    ) -> Result<(SocketAddr, JoinHandle<()>), StartupError> {
        let (listener, addr) = bind(self.config.metrics_listen).await?;
        let listener = self
            .guard("metrics", Handshake::Http1)
            .axum_listener(listener)
            .map_err(|error| StartupError::Bind { addr, error })?;
        let routes = metrics::routes(self.metrics.clone()).merge(jwks_routes(authority.clone()));
        let served = http_server::serve(listener, routes, self.http_bounds(), stop);
        let task = self
            .supervisor
            .critical("the metrics listener", async move {
                served.await;
                Ok(())
            });
        Ok((addr, task))
    }
}

/// A gRPC service as tonic's router takes it (the health service, served on two listeners).
trait GrpcService:
    tower::Service<
        http::Request<tonic::body::Body>,
        Response = http::Response<tonic::body::Body>,
        Error = std::convert::Infallible,
    > + tonic::server::NamedService
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<T> GrpcService for T where
    T: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// Reflection, v1 and v1alpha, over our descriptors, health's, Envoy ext_authz's and those of the
/// error details we send (so `grpcurl -format-error` decodes them). Each version lists the other
/// too, so `list` shows every service whichever a client uses.
fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(crate::api::ext_authz::pb::FILE_DESCRIPTOR_SET)
        // The messages we put in status details, so `grpcurl -format-error` decodes them.
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartupError> {
    let bound = |error| StartupError::Bind { addr, error };
    let listener = TcpListener::bind(addr).await.map_err(bound)?;
    let local = listener.local_addr().map_err(bound)?;
    Ok((listener, local))
}
