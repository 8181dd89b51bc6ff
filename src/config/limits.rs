//! Bounds on connections, requests and waits.
use std::time::Duration;

use super::parse::{parse_duration, parse_positive_duration};

/// Bounds on connections, requests and waits.
#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// Most API requests served at once, over all connections; beyond it requests are shed
    /// with RESOURCE_EXHAUSTED instead of queueing without bound (health checks never are).
    #[arg(
        help_heading = "Limits",
        long,
        env = "TOKEN_SIDECAR_MAX_CONCURRENT_REQUESTS",
        default_value_t = 1024
    )]
    pub max_concurrent_requests: usize,

    /// Most connections open at once on each listener; a new one beyond is closed at once.
    #[arg(
        help_heading = "Limits",
        long,
        env = "TOKEN_SIDECAR_MAX_CONNECTIONS",
        default_value_t = 4096
    )]
    pub max_connections: usize,

    /// A connection that has not sent its first request (the HTTP/2 preface, or an HTTP/1
    /// request head) within this is closed.
    #[arg(help_heading = "Limits", long, env = "TOKEN_SIDECAR_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub handshake_timeout: Duration,

    /// Most connections one peer address may hold open on a listener, so that one client cannot
    /// take them all. A sidecar's own callers all come from loopback: keep it above what the
    /// pod's proxy opens.
    #[arg(
        help_heading = "Limits",
        long,
        env = "TOKEN_SIDECAR_MAX_CONNECTIONS_PER_PEER",
        default_value_t = 1024
    )]
    pub max_connections_per_peer: usize,

    /// An HTTP/1 connection (forward-auth, metrics) that sends no complete request head for this
    /// long is closed — while it dribbles one, and between keep-alive requests alike.
    #[arg(help_heading = "Limits", long, env = "TOKEN_SIDECAR_IDLE_TIMEOUT", default_value = "30s", value_parser = parse_positive_duration)]
    pub idle_timeout: Duration,

    /// How often an HTTP/2 connection is pinged; one that does not answer within half of it is
    /// closed (a silent or vanished client).
    #[arg(help_heading = "Limits", long, env = "TOKEN_SIDECAR_KEEPALIVE_INTERVAL", default_value = "20s", value_parser = parse_positive_duration)]
    pub keepalive_interval: Duration,

    /// Connections are closed gracefully at this age (HTTP/2: GOAWAY, requests in flight get
    /// 30 s more; HTTP/1: after the request in flight); clients reconnect, and load spreads
    /// again over the sidecars behind a Service.
    #[arg(help_heading = "Limits", long, env = "TOKEN_SIDECAR_MAX_CONNECTION_AGE", default_value = "10m", value_parser = parse_positive_duration)]
    pub max_connection_age: Duration,

    /// Every request's deadline, its body and its handling included (a gRPC caller's own
    /// grpc-timeout applies when it is sooner).
    #[arg(help_heading = "Limits", long, env = "TOKEN_SIDECAR_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_positive_duration)]
    pub request_timeout: Duration,

    /// On SIGTERM, once the listeners stop accepting, how long in-flight RPCs may still run
    /// before they are cut.
    #[arg(help_heading = "Limits", long, env = "TOKEN_SIDECAR_SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// On SIGTERM, health turns NOT_SERVING at once, and the listeners keep accepting and
    /// answering this long before they close, so that health checkers and endpoint updates move
    /// traffic away first (use it, or a preStop sleep, not both).
    #[arg(help_heading = "Limits", long, env = "TOKEN_SIDECAR_DRAIN_DELAY", default_value = "0s", value_parser = parse_duration)]
    pub drain_delay: Duration,
}
