//! Who gets a database connection next (issue 40: the fleet's ear is never for sale).
//!
//! Every operation on PostgreSQL asks for a turn in a lane, set by the surface that serves the
//! request ([`Lane::scope`]); outside any scope it is [`Lane::First`]:
//!
//! - [`Lane::First`] — the instance's own work (catch-ups, health pings, clock readings,
//!   purges) and the verification surfaces' cache-miss reads (Verify, Check, `/auth`,
//!   introspection: no scope, so the hot path pays nothing for it) — goes first, but after
//!   [`READ_STREAK`] turns in a row a waiting write gets one: a read waits behind at most the
//!   operation in progress and one write;
//! - [`Lane::Privileged`] (the admin's Issue, revocations, LiftBan) next;
//! - [`Lane::Open`] — what any caller can cause without privilege (Refresh, Revoke of a token it
//!   holds, RFC 7009, the identity providers' events, feed reads) — last, round-robin by the
//!   caller's address, so that no one caller takes the connection from the others; and bounded:
//!   beyond [`OPEN_PER_CALLER`] waiting for one caller, or [`OPEN_WAITING`] in all, the operation
//!   is refused at once ([`crate::store::StoreError::Overloaded`], answered UNAVAILABLE
//!   `OVERLOADED`) instead of queueing.
//!
//! A turn is a [`Turn`] value handed from one holder to the next; dropping it (the operation
//! ended, or its caller gave up while queued) passes it on, so no turn is ever lost.
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::StoreError;

/// Reads and upkeep served in a row while a write waits.
pub const READ_STREAK: u32 = 4;
/// Operations of one caller waiting in the open lane at most. (In a pod every caller of the
/// sidecar is on loopback, one address: a burst of an application's own Refreshes must queue,
/// not fail; a queue this long is served in well under a second.)
pub const OPEN_PER_CALLER: usize = 64;
/// Operations waiting in the open lane at most, all callers together.
pub const OPEN_WAITING: usize = 512;

/// Whose operation it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// The instance's own work and verification reads: what runs outside any scope.
    First,
    /// A privileged caller's RPC.
    Privileged,
    /// What any caller (by its address) can cause without privilege.
    Open(Option<IpAddr>),
}

tokio::task_local! {
    static LANE: Lane;
}

impl Lane {
    /// The lane of the operations `future` makes (in its task).
    pub async fn scope<F: Future>(self, future: F) -> F::Output {
        LANE.scope(self, future).await
    }

    /// The lane of the current task: [`Lane::First`] outside any scope.
    pub fn current() -> Self {
        LANE.try_with(|lane| *lane).unwrap_or(Lane::First)
    }
}

/// The turns of a number of connections.
#[derive(Debug)]
pub struct Turnstile {
    capacity: usize,
    state: Mutex<Queues>,
}

#[derive(Debug, Default)]
struct Queues {
    /// Turns held now.
    busy: usize,
    first: VecDeque<oneshot::Sender<Turn>>,
    privileged: VecDeque<oneshot::Sender<Turn>>,
    /// The open lane: each caller's queue, and the order callers are served in.
    open: HashMap<Option<IpAddr>, VecDeque<oneshot::Sender<Turn>>>,
    open_order: VecDeque<Option<IpAddr>>,
    open_waiting: usize,
    /// Turns given to the first lane in a row while others waited.
    streak: u32,
}

/// The right to use a connection; dropping it gives the turn to the next in line.
#[derive(Debug)]
pub struct Turn {
    turnstile: Option<Arc<Turnstile>>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let Some(turnstile) = self.turnstile.take() {
            turnstile.pass_on();
        }
    }
}

impl Turnstile {
    /// Turns for `capacity` connections at once.
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity: capacity.max(1),
            state: Mutex::new(Queues::default()),
        })
    }

    /// A turn in the current task's lane, waiting at most `timeout`.
    pub async fn turn(self: &Arc<Self>, timeout: Duration) -> Result<Turn, StoreError> {
        let lane = Lane::current();
        let waiting = {
            let mut queues = self.state.lock();
            // (Operations wait only while every turn is taken.)
            if queues.busy < self.capacity {
                queues.busy += 1;
                return Ok(self.issue());
            }
            let (tx, rx) = oneshot::channel();
            match lane {
                Lane::First => queues.first.push_back(tx),
                Lane::Privileged => queues.privileged.push_back(tx),
                Lane::Open(caller) => {
                    let mine = queues.open.get(&caller).map_or(0, VecDeque::len);
                    if mine >= OPEN_PER_CALLER || queues.open_waiting >= OPEN_WAITING {
                        return Err(StoreError::Overloaded);
                    }
                    if mine == 0 {
                        queues.open_order.push_back(caller);
                    }
                    queues.open.entry(caller).or_default().push_back(tx);
                    queues.open_waiting += 1;
                }
            }
            rx
        };
        match tokio::time::timeout(timeout, waiting).await {
            Ok(Ok(turn)) => Ok(turn),
            // Dropped unanswered: the queue was torn down (never while the turnstile lives).
            Ok(Err(_)) => Err(sqlx::Error::PoolTimedOut.into()),
            // Given up: a turn sent meanwhile is dropped with the channel and passed on.
            Err(_) => Err(sqlx::Error::PoolTimedOut.into()),
        }
    }

    fn issue(self: &Arc<Self>) -> Turn {
        Turn {
            turnstile: Some(self.clone()),
        }
    }

    /// The turn just ended: to the next in line, or back to the pool of free turns.
    fn pass_on(self: &Arc<Self>) {
        let mut queues = self.state.lock();
        loop {
            let Some(next) = queues.next() else {
                queues.busy = queues.busy.saturating_sub(1);
                return;
            };
            match next.send(self.issue()) {
                Ok(()) => return,
                Err(mut unwanted) => {
                    // Its caller gave up: the turn goes to the one after (not through Drop,
                    // which would take the lock held here).
                    unwanted.turnstile = None;
                }
            }
        }
    }
}

impl Queues {
    /// The next waiter by the lanes' rules.
    fn next(&mut self) -> Option<oneshot::Sender<Turn>> {
        let writes_wait = !self.privileged.is_empty() || self.open_waiting > 0;
        if !self.first.is_empty() && (self.streak < READ_STREAK || !writes_wait) {
            self.streak = if writes_wait { self.streak + 1 } else { 0 };
            return self.first.pop_front();
        }
        self.streak = 0;
        if let Some(next) = self.privileged.pop_front() {
            return Some(next);
        }
        if let Some(next) = self.next_open() {
            return Some(next);
        }
        self.first.pop_front()
    }

    /// The open lane, one operation per caller in turn.
    fn next_open(&mut self) -> Option<oneshot::Sender<Turn>> {
        let caller = self.open_order.pop_front()?;
        let queue = self.open.get_mut(&caller)?;
        let next = queue.pop_front();
        if queue.is_empty() {
            self.open.remove(&caller);
        } else {
            self.open_order.push_back(caller);
        }
        self.open_waiting = self.open_waiting.saturating_sub(1);
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(5);

    fn caller(last: u8) -> Lane {
        Lane::Open(Some(IpAddr::from([127, 0, 0, last])))
    }

    /// Queues an operation in `lane` that records its name when it gets its turn, then holds
    /// the turn until told to end.
    fn queue(
        turnstile: &Arc<Turnstile>,
        lane: Lane,
        name: &'static str,
        served: &Arc<Mutex<Vec<&'static str>>>,
    ) -> tokio::task::JoinHandle<Result<(), StoreError>> {
        let (turnstile, served) = (turnstile.clone(), served.clone());
        tokio::spawn(lane.scope(async move {
            let turn = turnstile.turn(WAIT).await?;
            served.lock().push(name);
            tokio::task::yield_now().await;
            drop(turn);
            Ok(())
        }))
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn reads_pass_queued_writes_and_callers_take_turns() {
        let turnstile = Turnstile::new(1);
        let served = Arc::new(Mutex::new(Vec::new()));
        let held = Lane::First.scope(turnstile.turn(WAIT)).await.expect("free");
        let mut tasks = Vec::new();
        for name in ["a1", "a2", "a3"] {
            tasks.push(queue(&turnstile, caller(1), name, &served));
        }
        tasks.push(queue(&turnstile, caller(2), "b1", &served));
        settle().await;
        tasks.push(queue(&turnstile, Lane::First, "read", &served));
        tasks.push(queue(&turnstile, Lane::Privileged, "admin", &served));
        settle().await;
        drop(held);
        for task in tasks {
            task.await.expect("joined").expect("served");
        }
        assert_eq!(
            *served.lock(),
            ["read", "admin", "a1", "b1", "a2", "a3"],
            "the read first, the admin next, then one caller after the other"
        );
    }

    #[tokio::test]
    async fn one_caller_cannot_queue_without_bound() {
        let turnstile = Turnstile::new(1);
        let served = Arc::new(Mutex::new(Vec::new()));
        let held = turnstile.turn(WAIT).await.expect("free");
        let tasks: Vec<_> = (0..OPEN_PER_CALLER + 2)
            .map(|_| queue(&turnstile, caller(9), "flood", &served))
            .collect();
        settle().await;
        let other = queue(&turnstile, caller(8), "other", &served);
        settle().await;
        drop(held);
        let mut refused = 0;
        for task in tasks {
            if let Err(StoreError::Overloaded) = task.await.expect("joined") {
                refused += 1;
            }
        }
        assert_eq!(
            refused, 2,
            "beyond {OPEN_PER_CALLER} waiting, refused at once"
        );
        other
            .await
            .expect("joined")
            .expect("another caller is served");
    }

    #[tokio::test]
    async fn a_write_gets_a_turn_between_streaks_of_reads() {
        let turnstile = Turnstile::new(1);
        let served = Arc::new(Mutex::new(Vec::new()));
        let held = turnstile.turn(WAIT).await.expect("free");
        let mut tasks = vec![queue(&turnstile, caller(1), "write", &served)];
        for _ in 0..(READ_STREAK + 2) {
            tasks.push(queue(&turnstile, Lane::First, "read", &served));
        }
        settle().await;
        drop(held);
        for task in tasks {
            task.await.expect("joined").expect("served");
        }
        let order = served.lock().clone();
        let at = order.iter().position(|n| *n == "write").expect("served");
        assert_eq!(at, READ_STREAK as usize, "{order:?}");
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_passes_its_turn_on() {
        let turnstile = Turnstile::new(1);
        let held = turnstile.turn(WAIT).await.expect("free");
        let impatient = Lane::First
            .scope(turnstile.turn(Duration::from_millis(10)))
            .await;
        assert!(impatient.is_err());
        let served = Arc::new(Mutex::new(Vec::new()));
        let next = queue(&turnstile, Lane::First, "next", &served);
        settle().await;
        drop(held);
        next.await.expect("joined").expect("the turn was not lost");
        assert!(turnstile.turn(WAIT).await.is_ok(), "and it came back");
    }
}
