//! Keeping instances that share one PostgreSQL in step (SPEC §6, §10).
//!
//! Every committed change carries a number from one gapless sequence and is announced with its
//! content: by PostgreSQL NOTIFY in the writer's transaction (`notify` mode), or by the writer on
//! NATS after its commit (`nats` mode). An instance applies announced changes directly, in
//! number order ([`sequencer`]), so a change costs the database nothing per instance; it reads
//! "changes after the last number I applied" from the store only
//! - when a number is missing (a lost announcement),
//! - after the channel (re)connects (announcements sent meanwhile are lost),
//! - on its safety-net poll: every `--sync-safety-poll-interval` while the channel is up (in
//!   notify mode on the LISTEN connection itself, so an idle instance holds one connection), every
//!   `--sync-poll-interval` while it is down, and always in `poll` mode (for PgBouncer-style
//!   poolers that do not carry LISTEN).
//!
//! PostgreSQL stays the source of truth: a channel only carries news, and it is untrusted. An
//! announcement is opened with the fleet's key ([`announcement::FleetKey`]) before anything is
//! looked at; one that is oversized, malformed, foreign, unauthenticated, carries an id the API
//! would refuse, or continues another history is dropped without a query, counted and logged at
//! most once a minute per reason. Only a successful store read, or an authenticated
//! announcement that moved the watermark, counts as being in step. At every contact the store's
//! history is compared with the one applied here; a fork (lossy failover, restore) reloads.
mod nats;
mod notify;
mod untrusted;
pub use token_sidecar_core::sequencer;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

use crate::revocations::Revocations;
use crate::store::announcement::Announcement;
use crate::store::{ChangeFeed, StoreError, SyncTransport};
use sequencer::{Offer, Sequencer};
use untrusted::{Rejections, open};

pub use nats::{NatsAuth, redacted};
pub use notify::LISTENER_APPLICATION_NAME;

/// How an instance learns of other instances' changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SyncMode {
    /// PostgreSQL LISTEN/NOTIFY, plus the slow safety-net poll.
    Notify,
    /// The periodic poll only (works behind transaction-pooling PgBouncer).
    Poll,
    /// NATS (`--nats-url`), plus the slow safety-net poll: for fleets beyond what one database
    /// should hold connections for.
    Nats,
}

/// How an instance keeps in step.
#[derive(Debug, Clone)]
pub struct SyncSettings {
    /// The channel, if any.
    pub mode: SyncMode,
    /// The poll interval while no channel is up (always, in poll mode).
    pub poll_interval: Duration,
    /// The safety-net poll interval while the channel is up.
    pub safety_poll_interval: Duration,
    /// The NATS server, in nats mode.
    pub nats_url: Option<String>,
    /// The NATS subject changes are announced on.
    pub nats_subject: String,
    /// How to authenticate to NATS.
    pub nats_auth: NatsAuth,
}

/// How soon to retry opening a channel that is down.
const RETRY: Duration = Duration::from_millis(250);

/// How soon to try again to open a polling connection the database refused.
const FEED_RETRY: Duration = Duration::from_secs(10);

/// The soonest a catch-up asked for by announcements (a gap, an overflow, another history)
/// follows the previous one: however many arrive, they cost the store one query per interval.
const ANNOUNCED_CATCH_UP_SPACING: Duration = Duration::from_millis(250);

/// How long a catch-up on the channel's own connection may take before the connection is
/// deemed dead (a silently dropped TCP connection would otherwise hang the poll).
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(5);

/// What a channel reports.
#[derive(Debug)]
enum Event {
    /// A change was announced (the payload, unread: see [`announcement`]).
    Announced(Vec<u8>),
    /// The channel is up again: announcements sent meanwhile may be lost.
    Up,
    /// The channel went down, for this reason.
    Down(String),
}

/// A channel on which committed changes are announced.
#[async_trait]
trait Channel: Send {
    /// Whether it exists (connected or reconnecting on its own).
    fn is_open(&self) -> bool;
    /// Whether announcements arrive now.
    fn is_up(&self) -> bool;
    /// Tries to open it.
    async fn open(&mut self);
    /// The next event. Cancel-safe: it is raced against timers.
    async fn next(&mut self) -> Event;
    /// Where to catch up while it is up: its own connection, or None for the store's pool.
    fn feed(&mut self) -> Option<&mut dyn ChangeFeed>;
    /// Gives up its connection (after it failed to answer); [`Channel::open`] starts again.
    fn close(&mut self);
}

/// Runs until `shutdown` turns true.
pub async fn run(
    revocations: Arc<Revocations>,
    transport: Arc<dyn SyncTransport>,
    settings: SyncSettings,
    shutdown: watch::Receiver<bool>,
) {
    let channel: Option<Box<dyn Channel>> = match settings.mode {
        SyncMode::Poll => None,
        SyncMode::Notify => transport
            .listen_connection()
            .map(|shared| Box::new(notify::Listener::new(shared)) as Box<dyn Channel>),
        SyncMode::Nats => Some(Box::new(nats::Nats::new(
            settings.nats_url.clone().unwrap_or_default(),
            settings.nats_subject.clone(),
            settings.nats_auth.clone(),
            revocations.clone(),
            transport.clone(),
        ))),
    };
    // In order on one connection, NOTIFY never delivers a number early: a gap is a loss. NATS
    // messages from different writers can overtake each other by a little.
    let gap_wait = match settings.mode {
        SyncMode::Nats => Duration::from_millis(50),
        _ => Duration::ZERO,
    };
    Driver {
        revocations,
        transport,
        settings,
        channel,
        sequencer: Sequencer::default(),
        gap_wait,
        gap_deadline: None,
        up: false,
        own_feed: None,
        feed_error: None,
        feed_retry_at: None,
        last_catch_up: Instant::now(),
        rejections: Rejections::default(),
    }
    .run(shutdown)
    .await;
}

/// Why a catch-up did not complete.
enum CatchUpError {
    /// The store is on another history: reload.
    Forked,
    /// The store did not answer.
    Other(String),
}
use CatchUpError::{Forked, Other};

impl From<StoreError> for CatchUpError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Forked => Forked,
            e => Other(e.to_string()),
        }
    }
}

struct Driver {
    revocations: Arc<Revocations>,
    transport: Arc<dyn SyncTransport>,
    settings: SyncSettings,
    channel: Option<Box<dyn Channel>>,
    sequencer: Sequencer,
    gap_wait: Duration,
    gap_deadline: Option<Instant>,
    up: bool,
    /// The task's own polling connection, while no channel connection carries the polls.
    own_feed: Option<Box<dyn ChangeFeed>>,
    feed_error: Option<String>,
    feed_retry_at: Option<Instant>,
    last_catch_up: Instant,
    rejections: Rejections,
}

impl Driver {
    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut last_poll = Instant::now();
        // Each poll's interval is drawn anew within ±20 %: a fleet started (or reconnected)
        // together spreads its polls instead of sending them in step through one pooler.
        let mut spread = jitter();
        loop {
            if *shutdown.borrow() {
                return;
            }
            if !self.revocations.is_loaded() {
                // The health task loads the caches; nothing to keep in step before that.
                tokio::select! {
                    () = tokio::time::sleep(RETRY) => {}
                    _ = shutdown.changed() => return,
                }
                continue;
            }
            if let Some(channel) = self.channel.as_mut()
                && !channel.is_open()
            {
                channel.open().await;
            }
            let up = self.channel.as_ref().is_some_and(|c| c.is_up());
            if up != self.up {
                if up {
                    // Announcements sent while we were not listening are lost.
                    self.catch_up("connected").await;
                    last_poll = Instant::now();
                    // The channel's connection carries the polls: the pool's are not needed.
                    self.transport.release_idle(0).await;
                }
                self.set_up(up);
            }
            let interval = if self.up {
                self.settings.safety_poll_interval
            } else {
                self.settings.poll_interval
            }
            .mul_f64(spread);
            let open = self.channel.as_ref().is_some_and(|c| c.is_open());
            let has_channel = self.channel.is_some();
            let channel = &mut self.channel;
            let event = async {
                match channel.as_mut() {
                    Some(c) if c.is_open() => c.next().await,
                    _ => std::future::pending().await,
                }
            };
            let gap_deadline = self.gap_deadline;
            let gap = async {
                match gap_deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                event = event => self.handle(event).await,
                () = tokio::time::sleep_until(last_poll + interval) => {
                    self.catch_up("poll").await;
                    self.revocations.observe_lag();
                    last_poll = Instant::now();
                    spread = jitter();
                }
                () = gap => self.catch_up("gap").await,
                () = tokio::time::sleep(RETRY), if has_channel && !open => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    fn set_up(&mut self, up: bool) {
        self.up = up;
        self.revocations
            .metrics()
            .sync
            .channel_up
            .set(i64::from(up));
    }

    /// Asks for a catch-up on behalf of announcements: at the gap deadline, never sooner than
    /// [`ANNOUNCED_CATCH_UP_SPACING`] after the last one, so that they coalesce.
    fn catch_up_soon(&mut self, wait: Duration) {
        let at = (Instant::now() + wait).max(self.last_catch_up + ANNOUNCED_CATCH_UP_SPACING);
        if self.gap_deadline.is_none_or(|due| due > at) {
            self.gap_deadline = Some(at);
        }
    }

    async fn handle(&mut self, event: Event) {
        match event {
            Event::Announced(payload) => match open(&self.revocations, &payload).await {
                Ok(announcement) => self.announced(announcement).await,
                Err(why) => self.rejections.record(&self.revocations, why),
            },
            Event::Up => {
                self.catch_up("reconnected").await;
                self.set_up(true);
            }
            Event::Down(reason) => {
                tracing::warn!(
                    reason,
                    "change announcements stopped; polling until they resume"
                );
                self.set_up(false);
                self.catch_up("channel_down").await;
            }
        }
    }

    async fn announced(&mut self, announcement: Announcement) {
        match self
            .sequencer
            .offer(self.revocations.watermark(), announcement)
        {
            Offer::Apply(ready) => {
                self.apply_in_order(ready).await;
                if !self.sequencer.has_gap() {
                    self.gap_deadline = None;
                }
            }
            Offer::Gap => self.catch_up_soon(self.gap_wait),
            Offer::Overflow => self.catch_up_soon(Duration::ZERO),
        }
    }

    /// Applies announcements that continue the watermark, in order, until one is on another
    /// history: that one and the rest are dropped, and the store is asked.
    async fn apply_in_order(&mut self, ready: Vec<Announcement>) {
        for announcement in ready {
            if let Err(why) = self
                .revocations
                .apply_announced(&announcement, self.up)
                .await
            {
                self.rejections.record(&self.revocations, why);
                self.sequencer.clear();
                self.catch_up_soon(Duration::ZERO);
                return;
            }
        }
    }

    /// Catches up on a connection the task holds: the channel's while it is up (the LISTEN
    /// connection), else one of its own (so that polls do not keep pooled connections alive).
    /// None when there is none to use: the caller asks the pool.
    async fn read_feed(&mut self) -> Option<Result<usize, CatchUpError>> {
        let channel_feed = self
            .channel
            .as_mut()
            .filter(|c| c.is_up())
            .and_then(|c| c.feed());
        let on_channel = channel_feed.is_some();
        let feed = match channel_feed {
            Some(feed) => {
                // Polls ride on the channel's connection: no second one.
                self.own_feed = None;
                feed
            }
            None => {
                let retry_due = self.feed_retry_at.is_none_or(|at| at <= Instant::now());
                if self.own_feed.is_none() && retry_due {
                    match self.transport.open_feed().await {
                        Ok(feed) => {
                            self.feed_error = None;
                            self.feed_retry_at = None;
                            if feed.is_some() {
                                // The pool's connections are not needed while idle.
                                self.transport.release_idle(0).await;
                            }
                            self.own_feed = feed;
                        }
                        Err(e) => {
                            // A full database is not asked again at every poll.
                            self.feed_retry_at = Some(Instant::now() + FEED_RETRY);
                            let error = e.to_string();
                            if self.feed_error.as_deref() != Some(error.as_str()) {
                                tracing::warn!(
                                    error,
                                    "cannot open a polling connection; using the pool"
                                );
                                self.feed_error = Some(error);
                            }
                        }
                    }
                }
                self.own_feed.as_deref_mut()?
            }
        };
        let result = match tokio::time::timeout(
            CATCH_UP_TIMEOUT,
            self.revocations.catch_up_from(feed),
        )
        .await
        {
            Ok(Ok(applied)) => return Some(Ok(applied)),
            Ok(Err(StoreError::Forked)) => return Some(Err(Forked)),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer".to_owned(),
        };
        // The connection is broken: give it up (it is reopened) and ask the pool this time.
        tracing::warn!(
            error = result,
            on_channel,
            "a sync connection failed; reopening it"
        );
        if on_channel {
            if let Some(channel) = self.channel.as_mut() {
                channel.close();
            }
        } else {
            self.own_feed = None;
        }
        None
    }

    /// Reads every change after the watermark from the store (on the channel's connection while
    /// it is up), then applies the announcements that continue it.
    async fn catch_up(&mut self, why: &'static str) {
        // A trace of its own (not a request's), with the store queries as its children.
        let span = crate::otel::sync_span(why);
        self.catch_up_traced(why).instrument(span).await;
    }

    async fn catch_up_traced(&mut self, why: &'static str) {
        self.revocations.metrics().sync.catch_up(why);
        self.last_catch_up = Instant::now();
        self.gap_deadline = None;
        let result = match self.read_feed().await {
            Some(result) => result,
            None => {
                // Before the poll, when the last one's connection is surely back in the pool:
                // keep one, so that first-in-first-out reuse cannot keep several alive.
                self.transport.release_idle(1).await;
                self.revocations
                    .catch_up()
                    .await
                    .map_err(CatchUpError::from)
            }
        };
        match result {
            Ok(0) => {}
            Ok(applied) => tracing::debug!(applied, why, "applied changes from the store"),
            Err(Forked) => return self.reload().await,
            Err(Other(error)) => tracing::warn!(error, why, "could not sync with the store"),
        }
        let watermark = self.revocations.watermark();
        let ready = self.sequencer.caught_up(watermark);
        self.apply_in_order(ready).await;
        if self.sequencer.has_gap() {
            self.catch_up_soon(self.gap_wait.max(RETRY));
        }
    }

    /// After a forked history: forgets the announcements held, hears the channel anew (in nats
    /// mode the subject names the database, which may be another now) and loads everything from
    /// the store, as at start (health says NOT_SERVING until it is loaded).
    async fn reload(&mut self) {
        self.sequencer.clear();
        self.gap_deadline = None;
        if matches!(self.settings.mode, SyncMode::Nats)
            && let Some(channel) = self.channel.as_mut()
        {
            channel.close();
        }
        match self.revocations.load().await {
            Ok(()) => tracing::info!(
                watermark = self.revocations.watermark(),
                "reloaded from the store's history"
            ),
            Err(e) => tracing::warn!(error = %e, "reload failed; health retries it"),
        }
    }
}

/// A factor within ±20 % for an interval, so that instances started together drift apart.
pub(crate) fn jitter() -> f64 {
    rand::random_range(0.8..1.2)
}
