//! A TCP proxy in front of PostgreSQL for the tests: cut and restored (a store outage without
//! touching the shared server), a commit's answer swallowed, a failover followed, and the round
//! trips its clients ask counted.
use std::net::SocketAddr;

/// A TCP proxy in front of PostgreSQL that a test can cut (every connection dropped, new ones
/// refused) and restore, to simulate a store outage without touching the shared server.
pub struct StoreProxy {
    pub addr: SocketAddr,
    cut: tokio::sync::watch::Sender<bool>,
    upstream: std::sync::Arc<parking_lot::Mutex<SocketAddr>>,
    commit_trap: std::sync::Arc<std::sync::atomic::AtomicBool>,
    commits_cut: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Round trips clients asked of the server: connection starts, simple queries and the
    /// Syncs that end extended-protocol ones (see [`RoundTrips`]).
    round_trips: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl StoreProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (cut, cut_rx) = tokio::sync::watch::channel(false);
        let target = std::sync::Arc::new(parking_lot::Mutex::new(upstream));
        let upstream = target.clone();
        let commit_trap = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let commits_cut = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (trap, counted) = (commit_trap.clone(), commits_cut.clone());
        let round_trips = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let trips = round_trips.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if *cut_rx.borrow() {
                    drop(client);
                    continue;
                }
                let mut cut_rx = cut_rx.clone();
                let upstream = *upstream.lock();
                let (trap, counted) = (trap.clone(), counted.clone());
                let trips = trips.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        () = pump(client, server, trap, counted, trips) => {}
                        _ = cut_rx.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Self {
            addr,
            cut,
            upstream: target,
            commit_trap,
            commits_cut,
            round_trips,
        }
    }

    /// Round trips asked of the server through this proxy so far (connections must not use
    /// TLS: `sslmode=disable`).
    pub fn round_trips(&self) -> usize {
        self.round_trips.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The next COMMIT of a write transaction (one that took the writers' lock) reaches the
    /// server, but its answer never reaches the client: the connection is cut right after.
    /// Statements must go unnamed (`statement-cache-capacity=0`), so that their text is seen.
    pub fn cut_after_next_commit(&self) {
        self.commit_trap
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// How many commits' answers were cut.
    pub fn commits_cut(&self) -> usize {
        self.commits_cut.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Follows a new primary, as a failover's virtual IP or Service does: every connection to
    /// the old one is dropped, new ones go to `upstream`.
    pub async fn follow(&self, upstream: SocketAddr) {
        self.cut();
        // Let every connection task see the cut before new ones are let through.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        *self.upstream.lock() = upstream;
        self.restore();
    }

    /// The database URL `url` rewritten to go through this proxy.
    pub fn url_for(&self, url: &str) -> String {
        url.replace("127.0.0.1:5432", &self.addr.to_string())
    }

    pub fn cut(&self) {
        let _ = self.cut.send(true);
    }

    pub fn restore(&self) {
        let _ = self.cut.send(false);
    }
}

/// Copies bytes both ways until either side closes; a trapped COMMIT (see
/// [`StoreProxy::cut_after_next_commit`]) is forwarded and its answer swallowed.
async fn pump(
    client: tokio::net::TcpStream,
    server: tokio::net::TcpStream,
    trap: std::sync::Arc<std::sync::atomic::AtomicBool>,
    counted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    round_trips: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let contains =
        |haystack: &[u8], needle: &[u8]| haystack.windows(needle.len()).any(|w| w == needle);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let swallowing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swallow = swallowing.clone();
    let up = async move {
        let mut writing = false;
        let mut trips = RoundTrips::default();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let chunk = &buf[..n];
            round_trips.fetch_add(trips.feed(chunk), Ordering::SeqCst);
            writing |= contains(chunk, b"pg_advisory_xact_lock");
            if writing && contains(chunk, b"COMMIT") {
                writing = false;
                if trap.swap(false, Ordering::SeqCst) {
                    swallow.store(true, Ordering::SeqCst);
                    counted.fetch_add(1, Ordering::SeqCst);
                }
            }
            if server_write.write_all(chunk).await.is_err() {
                return;
            }
        }
    };
    let down = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match server_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            // The server answered the trapped COMMIT: it committed; the client never hears.
            if swallowing.load(Ordering::SeqCst) {
                return;
            }
            if client_write.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}

/// Counts the round trips in what a client sends (PostgreSQL's frontend protocol, unencrypted):
/// the start of a connection, each simple query (`Q`) and each `Sync` (`S`), which ends one
/// extended-protocol exchange — each waits for the server's answer.
#[derive(Default)]
pub struct RoundTrips {
    started: bool,
    pending: Vec<u8>,
}

impl RoundTrips {
    /// The round trips completed by `chunk` (messages may span chunks).
    pub fn feed(&mut self, chunk: &[u8]) -> usize {
        self.pending.extend_from_slice(chunk);
        let mut trips = 0;
        loop {
            let word = |at: usize| {
                self.pending
                    .get(at..at + 4)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
            };
            let (total, trip) = if self.started {
                let (Some(kind), Some(len)) = (self.pending.first().copied(), word(1)) else {
                    break;
                };
                (1 + len, kind == b'Q' || kind == b'S')
            } else {
                let (Some(len), Some(code)) = (word(0), word(4)) else {
                    break;
                };
                // SSLRequest, GSSENCRequest and CancelRequest come before (or instead of) a
                // StartupMessage.
                let startup = !matches!(code, 80_877_102..=80_877_104);
                (len, startup)
            };
            if total == 0 || self.pending.len() < total {
                break;
            }
            self.pending.drain(..total);
            self.started |= trip;
            trips += usize::from(trip);
        }
        trips
    }
}
