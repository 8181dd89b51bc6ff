//! Connection guards for every listener: a bound on open connections and one per peer address (a
//! new one over either is closed at once), and a handshake deadline (a connection that has not
//! sent its first request — the HTTP/2 preface, a TLS ClientHello, or a complete HTTP/1 request
//! head — within `--handshake-timeout` is closed), so that clients that connect and never speak
//! cannot hold memory and file descriptors without bound. The first bytes are read (waiting
//! costs nothing while the client is silent) and replayed to the server. Everything is counted
//! per listener in metrics. What bounds a connection after its first request is the server's:
//! see `server.rs` (gRPC: HTTP/2 keepalive pings, a maximum age, a request timeout) and
//! `http_server.rs` (HTTP/1).
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected as _;

use crate::api::caller::{CallerInfo, certificate_identities};
use crate::metrics::Metrics;

/// The HTTP/2 connection preface every gRPC client sends first (RFC 9113 §3.4).
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Largest HTTP/1 request head waited for; a longer one is refused as well.
const MAX_HTTP1_HEAD: usize = 16 * 1024;

/// What a new connection must send before it is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// The HTTP/2 preface (plaintext gRPC).
    Http2,
    /// A TLS record header (the ClientHello's start); the TLS handshake follows.
    Tls,
    /// A complete HTTP/1 request head.
    Http1,
}

impl Handshake {
    /// Whether `bytes` (what the client sent so far) completes the handshake; an error when they
    /// can never complete it.
    fn complete(self, bytes: &[u8]) -> io::Result<bool> {
        let refused = |why: &str| Err(io::Error::new(io::ErrorKind::InvalidData, why.to_owned()));
        match self {
            Handshake::Http2 => {
                let n = bytes.len().min(HTTP2_PREFACE.len());
                if bytes[..n] != HTTP2_PREFACE[..n] {
                    return refused("not an HTTP/2 connection preface");
                }
                Ok(n == HTTP2_PREFACE.len())
            }
            Handshake::Tls => Ok(bytes.len() >= 5),
            Handshake::Http1 => {
                if bytes.windows(4).any(|w| w == b"\r\n\r\n") {
                    Ok(true)
                } else if bytes.len() >= MAX_HTTP1_HEAD {
                    refused("request head too large")
                } else {
                    Ok(false)
                }
            }
        }
    }

    fn read_size(self) -> usize {
        match self {
            Handshake::Http2 => HTTP2_PREFACE.len(),
            Handshake::Tls => 5,
            Handshake::Http1 => MAX_HTTP1_HEAD,
        }
    }
}

/// The bounds of one listener.
#[derive(Clone)]
pub struct ConnectionGuard {
    /// A short name for metrics and logs: `api`, `health`, `http`, `metrics`.
    pub listener: &'static str,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Most connections open at once from one peer address.
    pub max_per_peer: usize,
    /// Deadline for the first request.
    pub handshake_timeout: Duration,
    /// What the first request looks like.
    pub handshake: Handshake,
    /// Where the counts go.
    pub metrics: Arc<Metrics>,
    /// TLS to terminate after the first bytes (its handshake within the same deadline).
    pub tls: Option<TlsAcceptor>,
}

/// An accepted connection that completed its handshake; holds its place in the bounds.
pub struct GuardedStream {
    inner: TcpStream,
    /// What the handshake read, handed to the server first.
    replay: Vec<u8>,
    replayed: usize,
    open: Gauge,
    _permit: OwnedSemaphorePermit,
    _peer: PeerSlot,
    /// The identities the client certificate names (mutual TLS), once the handshake is done;
    /// None without a client certificate.
    identities: Option<Arc<[String]>>,
}

impl Drop for GuardedStream {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.replayed < this.replay.len() {
            let rest = &this.replay[this.replayed..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.replayed += n;
            if this.replayed == this.replay.len() {
                this.replay = Vec::new();
                this.replayed = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

/// A connection's place in its peer's bound, given back when it closes.
struct PeerSlot {
    peers: Arc<parking_lot::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
    peer: std::net::IpAddr,
}

impl PeerSlot {
    /// Takes a place for `peer`, unless it has `max` already.
    fn take(
        peers: &Arc<parking_lot::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
        peer: std::net::IpAddr,
        max: usize,
    ) -> Option<Self> {
        let mut open = peers.lock();
        let count = open.entry(peer).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(Self {
            peers: peers.clone(),
            peer,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self.peers.lock();
        if let Some(count) = open.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.peer);
            }
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl GuardedStream {
    fn caller(&self) -> CallerInfo {
        CallerInfo {
            remote_addr: self.inner.peer_addr().ok(),
            identities: self.identities.clone(),
        }
    }
}

/// A served connection: plaintext, or TLS terminated here (so that the certificate can be
/// reloaded, see [`crate::tls`]).
pub enum Connection {
    /// Plaintext.
    Plain(GuardedStream),
    /// TLS over the guarded stream.
    Tls(Box<tokio_rustls::server::TlsStream<GuardedStream>>),
}

macro_rules! each {
    ($self:ident, $io:ident => $e:expr) => {
        match $self.get_mut() {
            Connection::Plain($io) => {
                let $io = Pin::new($io);
                $e
            }
            Connection::Tls($io) => {
                let $io = Pin::new($io.as_mut());
                $e
            }
        }
    };
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self, io => io.poll_read(cx, buf))
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self, io => io.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, io => io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, io => io.poll_shutdown(cx))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each!(self, io => io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Connection::Plain(io) => io.is_write_vectored(),
            Connection::Tls(io) => io.is_write_vectored(),
        }
    }
}

impl tonic::transport::server::Connected for Connection {
    type ConnectInfo = CallerInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        match self {
            Connection::Plain(io) => io.caller(),
            Connection::Tls(io) => io.get_ref().0.caller(),
        }
    }
}

impl ConnectionGuard {
    /// Terminates TLS with `acceptor` after the first bytes.
    pub fn with_tls(mut self, acceptor: TlsAcceptor) -> Self {
        self.tls = Some(acceptor);
        self
    }

    /// Accepts connections on `listener` in the background and yields those that complete their
    /// handshake in time, while fewer than the bound are open. Stops when the stream is dropped.
    pub fn incoming(self, listener: TcpListener) -> ReceiverStream<io::Result<Connection>> {
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(self.accept_loop(listener, tx));
        ReceiverStream::new(rx)
    }

    /// The same, as an axum listener.
    pub fn axum_listener(self, listener: TcpListener) -> io::Result<GuardedListener> {
        let addr = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(self.accept_loop(listener, tx));
        Ok(GuardedListener { rx, addr })
    }

    async fn accept_loop(self, listener: TcpListener, tx: mpsc::Sender<io::Result<Connection>>) {
        let permits = Arc::new(Semaphore::new(self.max_connections.max(1)));
        let peers = Arc::new(parking_lot::Mutex::new(std::collections::HashMap::new()));
        let open = self.metrics.edge.connections_open(self.listener);
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => return,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(listener = self.listener, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                self.metrics.edge.connection_refused(self.listener, "limit");
                drop(stream);
                continue;
            };
            let Some(slot) = PeerSlot::take(&peers, peer.ip(), self.max_per_peer.max(1)) else {
                self.metrics
                    .edge
                    .connection_refused(self.listener, "peer_limit");
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (guard, tx, open) = (self.clone(), tx.clone(), open.clone());
            tokio::spawn(async move {
                let mut stream = stream;
                let served = tokio::time::timeout(guard.handshake_timeout, async {
                    let replay = first_request(&mut stream, guard.handshake).await?;
                    open.inc();
                    let guarded = GuardedStream {
                        inner: stream,
                        replay,
                        replayed: 0,
                        open,
                        _permit: permit,
                        _peer: slot,
                        identities: None,
                    };
                    match &guard.tls {
                        Some(acceptor) => {
                            let mut tls = acceptor.accept(guarded).await?;
                            let (stream, session) = tls.get_mut();
                            if let Some(leaf) = session.peer_certificates().and_then(|c| c.first())
                            {
                                stream.identities = Some(certificate_identities(leaf).into());
                            }
                            Ok::<_, io::Error>(Connection::Tls(Box::new(tls)))
                        }
                        None => Ok(Connection::Plain(guarded)),
                    }
                })
                .await;
                match served {
                    Ok(Ok(connection)) => {
                        let _ = tx.send(Ok(connection)).await;
                    }
                    Ok(Err(_)) => guard
                        .metrics
                        .edge
                        .connection_refused(guard.listener, "bad_handshake"),
                    Err(_) => guard
                        .metrics
                        .edge
                        .connection_refused(guard.listener, "handshake_timeout"),
                }
            });
        }
    }
}

/// Reads until the client has sent its first request; returns what was read, for the server to
/// read again. A silent client costs nothing while it waits: the read sleeps until data comes.
async fn first_request(stream: &mut TcpStream, handshake: Handshake) -> io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut read = Vec::with_capacity(handshake.read_size().min(1024));
    let mut chunk = [0u8; 1024];
    loop {
        // Never past the handshake: what follows is the server's to read.
        let wanted = match handshake {
            Handshake::Http2 | Handshake::Tls => handshake.read_size() - read.len(),
            Handshake::Http1 => chunk.len(),
        };
        let n = stream.read(&mut chunk[..wanted]).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        read.extend_from_slice(&chunk[..n]);
        if handshake.complete(&read)? {
            return Ok(read);
        }
    }
}

/// A guarded listener for `axum::serve`.
pub struct GuardedListener {
    rx: mpsc::Receiver<io::Result<Connection>>,
    addr: SocketAddr,
}

impl axum::serve::Listener for GuardedListener {
    type Io = Connection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.rx.recv().await {
                Some(Ok(connection)) => {
                    let addr = connection.connect_info().remote_addr.unwrap_or(self.addr);
                    return (connection, addr);
                }
                Some(Err(_)) => continue,
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshakes_complete_only_on_what_the_protocol_sends_first() {
        assert!(!Handshake::Http2.complete(b"PRI * HTTP").unwrap_or(true));
        assert!(Handshake::Http2.complete(HTTP2_PREFACE).unwrap_or(false));
        assert!(Handshake::Http2.complete(b"GET / HTTP/1.1\r\n").is_err());
        assert!(
            !Handshake::Http1
                .complete(b"GET / HTTP/1.1\r\nHost: x\r\n")
                .unwrap_or(true)
        );
        assert!(
            Handshake::Http1
                .complete(b"GET / HTTP/1.1\r\n\r\n")
                .unwrap_or(false)
        );
        assert!(
            Handshake::Http1
                .complete(&vec![b'a'; MAX_HTTP1_HEAD])
                .is_err()
        );
        assert!(!Handshake::Tls.complete(&[22, 3, 1]).unwrap_or(true));
        assert!(
            Handshake::Tls
                .complete(&[22, 3, 1, 0, 200])
                .unwrap_or(false)
        );
    }
}
