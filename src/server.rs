//! Server assembly: keys, store, authority, the gRPC services (TokenService, health,
//! reflection), background tasks, and graceful shutdown.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::authority::TokenAuthority;
use crate::clock::Clock;
use crate::config::Config;
use crate::grpc::{TokenGrpc, pb};
use crate::policy::RevocationPolicy;
use crate::store::{self, RevocationStore, StoreError};
use crate::token::{KeyError, KeySet, TokenCodec};

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
    /// Reflection could not be built from the descriptors.
    #[error("reflection setup failed: {0}")]
    Reflection(String),
}

/// A started sidecar: where it listens and how to stop it.
pub struct RunningSidecar {
    /// The bound API address.
    pub addr: SocketAddr,
    /// The bound health-only address, if configured.
    pub health_addr: Option<SocketAddr>,
    /// The authority (for in-process callers such as benchmarks).
    pub authority: Arc<TokenAuthority>,
    shutdown: watch::Sender<bool>,
    grace: Duration,
    tasks: Vec<JoinHandle<Result<(), tonic::transport::Error>>>,
    background: Vec<JoinHandle<()>>,
}

impl RunningSidecar {
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

/// Builds the key set for `config`, generating the development key in SQLite mode.
pub fn load_keys(config: &Config) -> Result<KeySet, StartupError> {
    if !config.keys.is_empty() {
        return Ok(KeySet::load(&config.keys, config.signing_kid.as_deref())?);
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

/// The policy `config` asks for.
pub fn policy(config: &Config) -> RevocationPolicy {
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4);
    RevocationPolicy {
        token_ttl_ms: ms(config.token_ttl),
        refresh_window_ms: ms(config.refresh_window),
        leeway_ms: ms(config.leeway),
    }
}

/// Starts the sidecar: binds its listeners and serves until [`RunningSidecar::shutdown`].
///
/// Health reports NOT_SERVING until the store has been migrated and answered.
pub async fn start(config: Config, clock: Arc<dyn Clock>) -> Result<RunningSidecar, StartupError> {
    let keys = load_keys(&config)?;
    let url = config.database_url();
    if config.database_url.is_none() {
        tracing::warn!(
            database = %url,
            "no --database-url: using an embedded SQLite file (single instance only; \
             use PostgreSQL to share revocations between sidecars)"
        );
    }
    let store = store::open(&url).await?;
    let codec = TokenCodec::new(keys, config.issuer.clone(), config.audience.clone());
    let authority = Arc::new(TokenAuthority::new(
        codec,
        policy(&config),
        store.clone(),
        clock,
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
    let listener = bind(config.listen).await?;
    let addr = local_addr(&listener, config.listen)?;
    let api = Server::builder()
        .add_service(health_service.clone())
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(pb::token_service_server::TokenServiceServer::new(
            TokenGrpc::new(authority.clone()),
        ))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), stopped(shutdown_rx.clone()));
    let mut tasks = vec![tokio::spawn(api)];

    let mut health_addr = None;
    if let Some(health_listen) = config.health_listen {
        let listener = bind(health_listen).await?;
        health_addr = Some(local_addr(&listener, health_listen)?);
        let probes = Server::builder()
            .add_service(health_service)
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener),
                stopped(shutdown_rx.clone()),
            );
        tasks.push(tokio::spawn(probes));
    }
    tracing::info!(%addr, health = ?health_addr, store = store.kind(), "token-sidecar listening");

    let background = vec![
        tokio::spawn(keep_health(
            authority.clone(),
            reporter.clone(),
            config.health_interval,
            shutdown_rx.clone(),
        )),
        tokio::spawn(purge_loop(authority.clone(), config.purge_interval)),
    ];
    Ok(RunningSidecar {
        addr,
        health_addr,
        authority,
        shutdown,
        grace: config.shutdown_grace,
        tasks,
        background,
    })
}

fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
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

/// Migrates the store, then keeps health in step with the store's reachability.
async fn keep_health(
    authority: Arc<TokenAuthority>,
    reporter: HealthReporter,
    interval: Duration,
    shutdown: watch::Receiver<bool>,
) {
    let store: Arc<dyn RevocationStore> = authority.store().clone();
    let mut serving = false;
    loop {
        let healthy = if authority.is_ready() {
            store.ping().await
        } else {
            store.migrate().await
        };
        match healthy {
            Ok(()) => {
                if !authority.is_ready() {
                    tracing::info!(store = store.kind(), "store migrated and reachable");
                    authority.mark_ready();
                }
                if !serving {
                    set_status(&reporter, ServingStatus::Serving).await;
                    serving = true;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "store unreachable: health is NOT_SERVING");
                if serving || !authority.is_ready() {
                    set_status(&reporter, ServingStatus::NotServing).await;
                    serving = false;
                }
            }
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

async fn set_status(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status(SERVICE_NAME, status).await;
    reporter.set_service_status("", status).await;
}

/// Deletes denylist rows and cutoffs that can no longer refuse anything.
async fn purge_loop(authority: Arc<TokenAuthority>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    loop {
        ticker.tick().await;
        if !authority.is_ready() {
            continue;
        }
        let now = authority.now_ms();
        let before = authority.policy().cutoff_purgeable_before(now);
        match authority.store().purge(now, before).await {
            Ok(purged) => tracing::debug!(
                denylist = purged.denylist,
                cutoffs = purged.cutoffs,
                "purged moot revocations"
            ),
            Err(e) => tracing::warn!(error = %e, "purge failed; will retry"),
        }
    }
}
