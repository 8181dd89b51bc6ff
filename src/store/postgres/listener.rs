//! A sidecar's one PostgreSQL connection in notify mode (SPEC §10): it LISTENs for change
//! announcements and, between them, carries every query and write the instance makes, so that
//! a fleet of N sidecars holds N connections under any load.
//!
//! The listening side ([`ListeningConnection::next`]) holds the connection while it waits for a
//! notification and gives way as soon as an operation asks for it ([`ListeningConnection::lease`]).
//! That is safe because sqlx's wait for the next message is cancel-safe (a message is consumed
//! only once it is whole). Notifications that arrive while statements run are buffered by the
//! driver; every lease hands them to the listening side as it ends, so however many operations
//! queue, an announcement waits at most for the statement in progress (the listener has
//! priority, not leftovers). Operations take the connection by lane ([`Turnstile`]): reads
//! first, then privileged writes, then what any caller can cause, round-robin by caller and
//! bounded — each for at most its own bound.
//!
//! A lease that ends uncleanly (cancelled, or its statement failed) closes the connection: the
//! next user opens a new one, and the listening side reports that announcements may have been
//! missed meanwhile, so the sync task catches up from the store.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{Acquire, Connection, PgConnection, Postgres};
use tokio::sync::{Mutex, Notify, OwnedMutexGuard};

use super::history::history_and_changes_on;
use super::write::CHANGE_CHANNEL;
use crate::store::turnstile::{Turn, Turnstile};
use crate::store::{Change, ChangeFeed, ChangeSeq, History, StoreError, sql};

/// Announcements heard during operations and not yet taken by the listening side, at most;
/// beyond, the oldest are dropped and the listening side catches up from the store.
const HEARD_BOUND: usize = 4_096;
/// The longest the listening side sleeps while operations hold the connection before it looks
/// again for announcements they heard.
const LOOK_AGAIN: Duration = Duration::from_millis(5);

/// The `application_name` of the listening connection (operators see it in pg_stat_activity).
pub const LISTENER_APPLICATION_NAME: &str = "token-sidecar-listener";

/// The connection that listens, and the operations queued for it.
#[derive(Debug)]
pub struct ListeningConnection {
    options: PgConnectOptions,
    slot: Arc<Mutex<Slot>>,
    /// Operations waiting for the connection: the listening side does not take it back while
    /// any wait.
    waiting: AtomicUsize,
    /// Wakes the listening side to give way.
    wanted: Notify,
    /// The longest an operation waits for its turn, or for a new connection.
    acquire_timeout: Duration,
    /// Whose operation goes next.
    turnstile: Arc<Turnstile>,
    /// Announcements the driver buffered while operations ran, handed over as each ended.
    heard: parking_lot::Mutex<Overheard>,
    /// Wakes the listening side when something was heard for it.
    heard_some: Notify,
    /// The slot's epoch, readable without the slot: an operation that reopened the connection
    /// while a flood keeps the listening side off the slot is still reported at once.
    epoch_now: AtomicU64,
}

#[derive(Debug, Default)]
struct Overheard {
    payloads: std::collections::VecDeque<Vec<u8>>,
    /// Some were dropped (the bound): the listening side must catch up.
    lost: bool,
}

#[derive(Debug)]
struct Slot {
    listener: Option<PgListener>,
    /// Counts the connections opened: one opened since the listening side last looked means
    /// that announcements sent in between may be lost.
    epoch: u64,
}

/// What the listening side heard.
#[derive(Debug)]
pub enum Heard {
    /// An announcement's payload, unread.
    Announced(Vec<u8>),
    /// The connection was replaced: announcements sent meanwhile may be lost.
    Reconnected,
    /// The connection is gone, for this reason.
    Lost(String),
}

impl ListeningConnection {
    /// Connects on first use, with `options`; every wait is bounded by `acquire_timeout`.
    pub fn new(options: PgConnectOptions, acquire_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            options: options.application_name(LISTENER_APPLICATION_NAME),
            slot: Arc::new(Mutex::new(Slot {
                listener: None,
                epoch: 0,
            })),
            waiting: AtomicUsize::new(0),
            wanted: Notify::new(),
            acquire_timeout,
            turnstile: Turnstile::new(1),
            heard: parking_lot::Mutex::new(Overheard::default()),
            heard_some: Notify::new(),
            epoch_now: AtomicU64::new(0),
        })
    }

    /// Keeps what the driver buffered during an operation for the listening side.
    fn overheard(&self, listener: &mut PgListener) {
        let mut any = false;
        let mut heard = self.heard.lock();
        while let Some(notification) = listener.next_buffered() {
            if heard.payloads.len() >= HEARD_BOUND {
                heard.payloads.pop_front();
                heard.lost = true;
            }
            heard
                .payloads
                .push_back(notification.payload().as_bytes().to_vec());
            any = true;
        }
        drop(heard);
        if any {
            self.heard_some.notify_one();
        }
    }

    /// What operations heard, oldest first.
    fn take_overheard(&self) -> Option<Heard> {
        let mut heard = self.heard.lock();
        if std::mem::take(&mut heard.lost) {
            heard.payloads.clear();
            return Some(Heard::Reconnected);
        }
        heard.payloads.pop_front().map(Heard::Announced)
    }

    /// A new connection that LISTENs. (PgListener takes its connection from a pool: one of its
    /// own, of one connection, so that nothing else ever shares it.)
    async fn connect(&self) -> Result<PgListener, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(self.acquire_timeout)
            .connect_lazy_with(self.options.clone());
        let open = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(CHANGE_CHANNEL).await?;
            Ok::<_, StoreError>(listener)
        };
        match tokio::time::timeout(self.acquire_timeout, open).await {
            Ok(answer) => answer,
            Err(_) => Err(sqlx::Error::PoolTimedOut.into()),
        }
    }

    /// Opens the connection if it is not open; returns its epoch.
    pub async fn open(&self) -> Result<u64, StoreError> {
        let mut slot = match tokio::time::timeout(self.acquire_timeout, self.slot.lock()).await {
            Ok(slot) => slot,
            Err(_) => return Err(sqlx::Error::PoolTimedOut.into()),
        };
        if slot.listener.is_none() {
            slot.listener = Some(self.connect().await?);
            slot.epoch += 1;
            self.epoch_now.store(slot.epoch, Ordering::SeqCst);
        }
        Ok(slot.epoch)
    }

    /// The connection for one operation, in its lane's turn: the listening side gives way.
    pub async fn lease(self: &Arc<Self>) -> Result<ListenerLease, StoreError> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        self.wanted.notify_one();
        let leased = async {
            let turn = self.turnstile.turn(self.acquire_timeout).await?;
            match tokio::time::timeout(self.acquire_timeout, self.slot.clone().lock_owned()).await {
                Ok(guard) => Ok((guard, turn)),
                Err(_) => Err(StoreError::from(sqlx::Error::PoolTimedOut)),
            }
        }
        .await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        let (guard, turn) = leased?;
        Ok(ListenerLease {
            guard,
            _turn: turn,
            connection: self.clone(),
            checked: false,
        })
    }

    /// The next thing heard on the connection, `epoch` being the connection the caller last
    /// knew of. Cancel-safe: it is raced against timers, and gives the connection to every
    /// operation that asks.
    pub async fn next(&self, epoch: &mut u64) -> Heard {
        loop {
            // A connection reopened by an operation: what was sent meanwhile may be lost.
            let now = self.epoch_now.load(Ordering::SeqCst);
            if now != *epoch {
                *epoch = now;
                return Heard::Reconnected;
            }
            if let Some(heard) = self.take_overheard() {
                return heard;
            }
            if self.waiting.load(Ordering::SeqCst) > 0 {
                // Operations hold the connection: what they hear is handed over as each ends.
                tokio::select! {
                    () = self.heard_some.notified() => {}
                    () = tokio::time::sleep(LOOK_AGAIN) => {}
                }
                continue;
            }
            let mut slot = self.slot.lock().await;
            if self.waiting.load(Ordering::SeqCst) > 0 {
                continue;
            }
            if let Some(heard) = self.take_overheard() {
                return heard;
            }
            if slot.epoch != *epoch && slot.listener.is_some() {
                *epoch = slot.epoch;
                return Heard::Reconnected;
            }
            let Some(listener) = slot.listener.as_mut() else {
                return Heard::Lost("the connection was closed".to_owned());
            };
            tokio::select! {
                biased;
                heard = listener.try_recv() => {
                    return match heard {
                        Ok(Some(notification)) => {
                            Heard::Announced(notification.payload().as_bytes().to_vec())
                        }
                        Ok(None) => {
                            slot.listener = None;
                            Heard::Lost("the LISTEN connection was lost".to_owned())
                        }
                        Err(e) => {
                            slot.listener = None;
                            Heard::Lost(e.to_string())
                        }
                    };
                }
                () = self.wanted.notified() => {}
            }
        }
    }
}

/// The listening connection, held for one operation.
#[derive(Debug)]
pub struct ListenerLease {
    // Dropped in this order: the connection first, then the turn (to the next in line).
    guard: OwnedMutexGuard<Slot>,
    _turn: Turn,
    connection: Arc<ListeningConnection>,
    /// Whether the connection was found alive for this lease.
    checked: bool,
}

impl Drop for ListenerLease {
    fn drop(&mut self) {
        if let Some(listener) = self.guard.listener.as_mut() {
            self.connection.overheard(listener);
        }
    }
}

impl sql::Lease for ListenerLease {
    type Db = Postgres;

    /// The connection, opened anew if the last one was closed or is found dead. (As sqlx's
    /// pool does before handing out a connection, a lease pings it first: a connection the
    /// server ended a moment ago fails no operation.)
    async fn conn(&mut self) -> Result<&mut PgConnection, StoreError> {
        if !self.checked
            && let Some(listener) = self.guard.listener.as_mut()
        {
            let alive = match listener.acquire().await {
                Ok(conn) => conn.ping().await.is_ok(),
                Err(_) => false,
            };
            if !alive {
                self.guard.listener = None;
            }
        }
        self.checked = true;
        if self.guard.listener.is_none() {
            self.guard.listener = Some(self.connection.connect().await?);
            self.guard.epoch += 1;
            self.connection
                .epoch_now
                .store(self.guard.epoch, Ordering::SeqCst);
        }
        match self.guard.listener.as_mut() {
            Some(listener) => Ok(listener.acquire().await?),
            None => Err(sqlx::Error::PoolTimedOut.into()),
        }
    }

    /// Closes the connection as the lease ends (its operation did not end cleanly).
    fn discard(&mut self) {
        self.guard.listener = None;
    }
}

/// The sync task's catch-ups, read on the listening connection in turn with everything else.
pub struct ListenerFeed(pub Arc<ListeningConnection>);

#[async_trait]
impl ChangeFeed for ListenerFeed {
    async fn changes_after(
        &mut self,
        after: ChangeSeq,
        limit: i64,
    ) -> Result<Vec<Change>, StoreError> {
        let mut session = sql::Session::start(self.0.lease().await?, None).await?;
        let changes = sql::changes_after(session.conn().await?, true, after, limit).await?;
        session.done().await?;
        Ok(changes)
    }

    async fn history_and_changes(
        &mut self,
        at: ChangeSeq,
        own: &[ChangeSeq],
        after: ChangeSeq,
        limit: i64,
    ) -> Result<(Option<History>, Vec<Change>), StoreError> {
        let mut session = sql::Session::start(self.0.lease().await?, None).await?;
        let (history, changes) =
            history_and_changes_on(session.conn().await?, true, at, own, after, limit).await?;
        session.done().await?;
        Ok((Some(history), changes))
    }
}
