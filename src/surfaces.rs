//! The listeners, in one shape (as pingora gives every listener one `Service` shape): a
//! [`Surface`] binds its address, guards its connections (`--max-connections`, per peer,
//! `--handshake-timeout`, TLS), serves its app and is supervised. The API, health, HTTP and
//! metrics listeners are four instances; what differs is only the app each serves.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Server;

use crate::api::caller::Callers;
use crate::api::ext_authz::ExtAuthz;
use crate::api::forward_auth::ForwardAuth;
use crate::api::http::{HttpApi, jwks_routes};
use crate::api::pb;
use crate::api::rpc_layer::RpcLayer;
use crate::api::token_service::TokenGrpc;
use crate::api::trace::GrpcTraceLayer;
use crate::authority::TokenAuthority;
use crate::config::Config;
use crate::connections::{Connection, ConnectionGuard, Handshake};
use crate::http_server::{self, HttpBounds};
use crate::idp::IdpReceiver;
use crate::limits::RequestLimits;
use crate::metrics::{self, Metrics};
use crate::shutdown::stopped;
use crate::startup_error::StartupError;
use crate::supervise::Supervisor;
use crate::tls::ReloadableTls;

/// Largest request message accepted (RESOURCE_EXHAUSTED beyond). Far above any real request
/// (a token is capped at 8 KiB, custom claims at 4 KiB) yet small enough that a flood of
/// maximal requests cannot exhaust memory: 1024 in flight × 4 MiB.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Largest request header list (metadata) accepted, made explicit rather than left to hyper.
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// How long requests in flight may still run after a connection's GOAWAY at its maximum age.
const MAX_CONNECTION_AGE_GRACE: Duration = Duration::from_secs(30);

/// The guarded connections a gRPC app is served over.
type Incoming = ReceiverStream<std::io::Result<Connection>>;

/// A gRPC app: serves the connections until the shutdown signal turns true.
type GrpcApp = Box<
    dyn FnOnce(Incoming, watch::Receiver<bool>) -> BoxFuture<'static, Result<(), String>> + Send,
>;

/// What a surface serves.
enum App {
    /// gRPC over HTTP/2 (tonic).
    Grpc(GrpcApp),
    /// HTTP/1 routes (axum), with the listener's connection bounds.
    Http(axum::Router),
}

/// One listener: its name (the `listener` label of the connection metrics), the task name its
/// supervisor reports, where it binds, how its connections are guarded, and what it serves.
struct Surface {
    task: &'static str,
    addr: SocketAddr,
    guard: ConnectionGuard,
    app: App,
}

impl Surface {
    /// Binds, guards, serves and supervises; the bound address and the serving task.
    async fn start(
        self,
        listeners: &Listeners<'_>,
        stop: watch::Receiver<bool>,
    ) -> Result<(SocketAddr, JoinHandle<()>), StartupError> {
        let (listener, addr) = bind(self.addr).await?;
        let served: BoxFuture<'static, Result<(), String>> = match self.app {
            App::Grpc(serve) => serve(self.guard.incoming(listener), stop),
            App::Http(routes) => {
                let listener = self
                    .guard
                    .axum_listener(listener)
                    .map_err(|error| StartupError::Bind { addr, error })?;
                let served = http_server::serve(listener, routes, listeners.http_bounds(), stop);
                Box::pin(async move {
                    served.await;
                    Ok(())
                })
            }
        };
        Ok((addr, listeners.supervisor.critical(self.task, served)))
    }
}

/// Builds the sidecar's surfaces from its settings.
pub(crate) struct Listeners<'a> {
    pub(crate) config: &'a Config,
    pub(crate) metrics: &'a Arc<Metrics>,
    pub(crate) shutdown: &'a watch::Receiver<bool>,
    pub(crate) supervisor: &'a Supervisor,
}

impl Listeners<'_> {
    fn guard(&self, listener: &'static str, handshake: Handshake) -> ConnectionGuard {
        ConnectionGuard {
            listener,
            max_connections: self.config.limits.max_connections,
            max_per_peer: self.config.limits.max_connections_per_peer,
            handshake_timeout: self.config.limits.handshake_timeout,
            handshake,
            metrics: self.metrics.clone(),
            tls: None,
        }
    }

    /// The bounds of the HTTP/1 listeners' connections.
    fn http_bounds(&self) -> HttpBounds {
        let config = self.config;
        HttpBounds {
            idle_timeout: config.limits.idle_timeout,
            request_timeout: config.limits.request_timeout,
            max_age: config.limits.max_connection_age,
            grace: config.limits.shutdown_grace,
        }
    }

    /// A gRPC server whose connections are bounded after their first request: HTTP/2 PINGs
    /// every `--keepalive-interval` (no answer within half of it closes the connection), a
    /// graceful GOAWAY at `--max-connection-age`, and `--request-timeout` on every request.
    fn grpc_server(&self) -> Server {
        let config = self.config;
        Server::builder()
            .http2_keepalive_interval(Some(config.limits.keepalive_interval))
            .http2_keepalive_timeout(Some(config.limits.keepalive_interval / 2))
            .max_connection_age(config.limits.max_connection_age)
            .max_connection_age_grace(MAX_CONNECTION_AGE_GRACE)
            .timeout(config.limits.request_timeout)
    }

    /// The gRPC API: TokenService (behind its RPC layer), ext_authz, health and reflection,
    /// behind the request limits.
    pub(crate) async fn api<H>(
        &self,
        authority: &Arc<TokenAuthority>,
        decide: &ForwardAuth,
        callers: Callers,
        tls: Option<&ReloadableTls>,
        health_service: H,
        tasks: &mut Vec<JoinHandle<()>>,
    ) -> Result<SocketAddr, StartupError>
    where
        H: GrpcService,
        H::Future: Send + 'static,
    {
        let config = self.config;
        let mut guard = self.guard("api", Handshake::Http2);
        if let Some(tls) = tls {
            guard = self.guard("api", Handshake::Tls).with_tls(tls.acceptor());
            tracing::info!(
                mutual = config.api.tls_client_ca.is_some(),
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
        let router = self
            .grpc_server()
            .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
            .layer(RequestLimits::new(
                config.limits.max_concurrent_requests,
                self.metrics.clone(),
            ))
            .layer(GrpcTraceLayer)
            .layer(RpcLayer::new(callers, self.metrics.clone()))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(
                pb::token_service_server::TokenServiceServer::new(TokenGrpc::new(
                    authority.clone(),
                ))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(
                ExtAuthz::new(decide.clone())
                    .into_service()
                    .max_decoding_message_size(MAX_MESSAGE_BYTES),
            );
        let surface = Surface {
            task: "the API listener",
            addr: config.api.listen,
            guard,
            app: App::Grpc(Box::new(move |incoming, stop| {
                Box::pin(async move {
                    router
                        .serve_with_incoming_shutdown(incoming, stopped(stop))
                        .await
                        .map_err(|e| e.to_string())
                })
            })),
        };
        let (addr, task) = surface.start(self, self.shutdown.clone()).await?;
        tasks.push(task);
        Ok(addr)
    }

    /// `--health-listen`: only `grpc.health.v1`, for kubelet probes on the Pod IP.
    pub(crate) async fn health_only<H>(
        &self,
        health_service: H,
        tasks: &mut Vec<JoinHandle<()>>,
    ) -> Result<Option<SocketAddr>, StartupError>
    where
        H: GrpcService,
        H::Future: Send + 'static,
    {
        let Some(listen) = self.config.api.health_listen else {
            return Ok(None);
        };
        let router = self.grpc_server().add_service(health_service);
        let surface = Surface {
            task: "the health listener",
            addr: listen,
            guard: self.guard("health", Handshake::Http2),
            app: App::Grpc(Box::new(move |incoming, stop| {
                Box::pin(async move {
                    router
                        .serve_with_incoming_shutdown(incoming, stopped(stop))
                        .await
                        .map_err(|e| e.to_string())
                })
            })),
        };
        let (addr, task) = surface.start(self, self.shutdown.clone()).await?;
        tasks.push(task);
        Ok(Some(addr))
    }

    /// `--http-listen`: forward-auth, introspection, revocation, the change feed, the JWKS and
    /// the identity providers' receivers.
    pub(crate) async fn http(
        &self,
        decide: &ForwardAuth,
        callers: Callers,
        idp: Option<Arc<IdpReceiver>>,
        tasks: &mut Vec<JoinHandle<()>>,
    ) -> Result<Option<SocketAddr>, StartupError> {
        let Some(listen) = self.config.api.http_listen else {
            return Ok(None);
        };
        let routes = HttpApi::new(decide.clone(), callers, self.metrics.clone())
            .with_idp(idp)
            .with_request_timeout(self.config.limits.request_timeout)
            .router();
        let surface = Surface {
            task: "the HTTP listener",
            addr: listen,
            guard: self.guard("http", Handshake::Http1),
            app: App::Http(routes),
        };
        let (addr, task) = surface.start(self, self.shutdown.clone()).await?;
        tasks.push(task);
        Ok(Some(addr))
    }

    /// `--metrics-listen`: `/metrics` and the JWKS; stopped last, by `stop`.
    pub(crate) async fn metrics(
        &self,
        authority: &Arc<TokenAuthority>,
        stop: watch::Receiver<bool>,
    ) -> Result<(SocketAddr, JoinHandle<()>), StartupError> {
        let routes = metrics::routes(self.metrics.clone()).merge(jwks_routes(authority.clone()));
        let surface = Surface {
            task: "the metrics listener",
            addr: self.config.api.metrics_listen,
            guard: self.guard("metrics", Handshake::Http1),
            app: App::Http(routes),
        };
        surface.start(self, stop).await
    }
}

/// A gRPC service as tonic's router takes it (the health service, served on two listeners).
pub(crate) trait GrpcService:
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
