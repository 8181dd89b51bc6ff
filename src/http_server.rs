//! Serves an axum router over the guarded connections of an HTTP/1 listener (`--http-listen`,
//! `--metrics-listen`), every connection bounded (SPEC §12):
//! - a request head must arrive within `--idle-timeout` — while a client dribbles it, and while
//!   a keep-alive connection waits for its next request alike (hyper's header read timeout);
//! - a request, its body and its handling included, is answered 408 after `--request-timeout`;
//! - at `--max-connection-age` the connection is closed after the request in flight;
//! - on shutdown, connections finish the request in flight and close; those still open after
//!   the grace are dropped.
//!
//! (The first request's deadline and the bounds on open connections are the listener's guard's:
//! see [`crate::connections`].)
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::watch;

use crate::connections::GuardedListener;
use crate::shutdown::stopped;

/// The bounds of every connection of one HTTP/1 listener.
#[derive(Debug, Clone, Copy)]
pub struct HttpBounds {
    /// Longest wait for a request head (also between keep-alive requests).
    pub idle_timeout: Duration,
    /// Longest a request may take, body and handling included.
    pub request_timeout: Duration,
    /// Age at which a connection is closed after its request in flight.
    pub max_age: Duration,
    /// How long connections may finish after shutdown began.
    pub grace: Duration,
}

/// Serves `router` on `listener` until `shutdown`, then lets open connections finish (at most
/// `bounds.grace`).
pub async fn serve(
    mut listener: GuardedListener,
    router: Router,
    bounds: HttpBounds,
    shutdown: watch::Receiver<bool>,
) {
    use axum::serve::Listener as _;
    let router = router.layer(axum::middleware::from_fn_with_state(
        bounds.request_timeout,
        request_deadline,
    ));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (io, _) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stopped(shutdown.clone()) => break,
        };
        // Handlers that bound what one sender may cost (the identity providers' receivers)
        // read who is calling from the request.
        let caller = {
            use tonic::transport::server::Connected as _;
            io.connect_info()
        };
        let service = TowerToHyperService::new(tower::ServiceExt::map_request(
            router.clone(),
            move |mut request: Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(caller.clone());
                request
            },
        ));
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(bounds.idle_timeout)
                .keep_alive(true);
            let connection = builder.serve_connection(TokioIo::new(io), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                () = tokio::time::sleep(bounds.max_age) => {}
                () = stopped(shutdown) => {}
            }
            // Close after the request in flight (or at once when there is none).
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        });
        // Reap finished connections so the set does not grow with the listener's age.
        while connections.try_join_next().is_some() {}
    }
    let drained = tokio::time::timeout(bounds.grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        connections.abort_all();
    }
}

/// Answers 408 when the request (its body, its handling) takes longer than `timeout`.
async fn request_deadline(
    axum::extract::State(timeout): axum::extract::State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => (StatusCode::REQUEST_TIMEOUT, "request timeout\n").into_response(),
    }
}
