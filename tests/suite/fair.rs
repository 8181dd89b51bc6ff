//! The fleet's ear is never for sale (issue 40): with the default single PostgreSQL connection,
//! one caller flooding an instance with what it may do without privilege — Refresh of its own
//! token over many streams, or reads of the change feed — neither deafens the instance to the
//! fleet's revocations nor holds up other callers' verifications.
//!
//! The flood runs in a runtime of its own on its own threads (a separate client, as an
//! attacker's would be); the measurements run in the test's. Figures are printed (`--nocapture`)
//! for BENCHMARKS.md (`scripts/bench-flood`); `FLOOD_STREAMS` changes the flood's width (default
//! 64, 0 for none) and `FLOOD_CONNECTIONS` the instances' connection budget (default 1).
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use token_sidecar::api::pb;
use token_sidecar::api::pb::revoke_request::Target;
use token_sidecar::clock::ManualClock;

use crate::common::{Backend, Settings, TestApp, http_request};

/// What the flood sends.
#[derive(Clone, Copy, Debug)]
enum Flood {
    /// Refresh of one token, over many streams, by its one holder.
    Refresh,
    /// Reads of `GET /revocations/changes` from the start.
    Feed,
}

/// A flood running on threads of its own until dropped.
struct Running {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    fn start(
        kind: Flood,
        streams: usize,
        api: SocketAddr,
        http: Option<SocketAddr>,
        token: String,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let thread = std::thread::spawn({
            let (stop, sent, refused) = (stop.clone(), sent.clone(), refused.clone());
            move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .expect("the flood's runtime");
                runtime.block_on(async move {
                    let channel = tonic::transport::Endpoint::from_shared(format!("http://{api}"))
                        .expect("uri")
                        .connect_lazy();
                    let mut tasks = Vec::new();
                    for _ in 0..streams {
                        let (stop, sent, refused, token) =
                            (stop.clone(), sent.clone(), refused.clone(), token.clone());
                        let mut client =
                            pb::token_service_client::TokenServiceClient::new(channel.clone());
                        tasks.push(tokio::spawn(async move {
                            // Bounded: at most 200,000 requests per stream.
                            for _ in 0..200_000 {
                                if stop.load(Ordering::Relaxed) {
                                    break;
                                }
                                let ok = match kind {
                                    Flood::Refresh => client
                                        .refresh(pb::RefreshRequest {
                                            token: token.clone(),
                                            ..Default::default()
                                        })
                                        .await
                                        .is_ok(),
                                    Flood::Feed => {
                                        let addr = http.expect("an HTTP listener");
                                        http_request(
                                            addr,
                                            "GET",
                                            "/revocations/changes?after=0",
                                            &[],
                                            None,
                                        )
                                        .await
                                        .is_ok_and(|r| r.status == 200)
                                    }
                                };
                                sent.fetch_add(1, Ordering::Relaxed);
                                if !ok {
                                    refused.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }));
                    }
                    for task in tasks {
                        let _ = task.await;
                    }
                });
            }
        });
        Self {
            stop,
            sent,
            refused,
            thread: Some(thread),
        }
    }
}

impl Running {
    /// Stops the flood and waits for its requests in flight (off the test's threads: they run
    /// the sidecars that answer them).
    async fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // (A test that panicked: the flood ends by itself, bounded.)
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let at = ((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1;
    samples[at]
}

/// Two instances on one database, each on `connections` connections (the default: one),
/// sharing a clock.
async fn pair(connections: &str) -> (TestApp, TestApp) {
    let clock = ManualClock::new(crate::common::T0_MS);
    let a = Settings::new(Backend::Postgres)
        .clock(clock.clone())
        .arg("--http-listen", "127.0.0.1:0")
        .arg("--database-max-connections", connections)
        .spawn()
        .await;
    let b = Settings::new(Backend::Postgres)
        .clock(clock)
        .sharing(&a)
        .arg("--http-listen", "127.0.0.1:0")
        .arg("--database-max-connections", connections)
        .spawn()
        .await;
    (a, b)
}

async fn flooded_instance_hears_the_fleet(kind: Flood) {
    let streams: usize = std::env::var("FLOOD_STREAMS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(64);
    let connections = std::env::var("FLOOD_CONNECTIONS").unwrap_or_else(|_| "1".into());
    let (a, b) = pair(&connections).await;
    let mut victims: Vec<pb::IssueResponse> = Vec::new();
    for i in 0..50 {
        victims.push(a.issue(&format!("victim-{i}")).await);
    }
    let holder = b.issue("flooder").await;
    let flood = Running::start(kind, streams, b.addr, b.http_addr, holder.token);
    let flooding = Instant::now();
    // Measure once the flood is under way (bounded).
    if streams > 0 {
        crate::common::eventually(Duration::from_secs(10), "the flood is under way", || {
            let sent = flood.sent.clone();
            async move { sent.load(Ordering::Relaxed) >= streams as u64 }
        })
        .await;
    }

    let mut propagation = Vec::new();
    let mut verify = Vec::new();
    let mut unavailable = 0;
    for (i, victim) in victims.iter().enumerate() {
        // Verify of a user this instance has not cached: a read on the one connection.
        let started = Instant::now();
        let mut client = b.client.clone();
        match client
            .verify(pb::VerifyRequest {
                token: a.issue(&format!("uncached-{i}")).await.token,
                ..Default::default()
            })
            .await
        {
            Ok(answer) => assert!(answer.into_inner().valid),
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable);
                unavailable += 1;
            }
        }
        verify.push(started.elapsed());
        // A revocation made on the other instance, timed until the flooded one refuses.
        a.revoke(Target::Jti(victim.jti.clone()))
            .await
            .expect("revoke");
        let waited = crate::common::eventually(
            Duration::from_secs(10),
            "the flooded instance refuses the revoked token",
            || async { b.try_verdict(&victim.token).await == Ok(pb::Reason::TokenRevoked) },
        )
        .await;
        propagation.push(waited);
    }
    let (sent, refused) = (
        flood.sent.load(Ordering::Relaxed),
        flood.refused.load(Ordering::Relaxed),
    );
    let served_per_second = (sent - refused) as f64 / flooding.elapsed().as_secs_f64();
    flood.stop().await;
    let (p50, p99) = (
        percentile(&mut propagation, 0.50),
        percentile(&mut propagation, 0.99),
    );
    let (v50, v99) = (percentile(&mut verify, 0.50), percentile(&mut verify, 0.99));
    println!(
        "FLOOD {kind:?} x{streams}, {connections} connection(s): propagation p50 {p50:?} p99 \
         {p99:?}; uncached Verify p50 {v50:?} p99 {v99:?}, {unavailable} UNAVAILABLE; flood sent \
         {sent}, refused {refused}, served {served_per_second:.0}/s"
    );
    b.wait_for_health(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    // Before issue 40 a 64-stream Refresh flood held revocations back until the 5 s safety
    // poll (2.3–5 s): every revocation, so the median. The bounds hold for this test's debug
    // build with the flood's client in the same process on two cores: the median within 25 ms,
    // the slowest of the twenty within 250 ms (the machine's noise alone put it at 100–130 ms
    // on 2026-12-07, with the code of the day before); a wider flood (FLOOD_STREAMS) is a
    // measurement: scripts/bench-flood reports it.
    if streams <= 64 {
        assert!(
            p50 <= Duration::from_millis(25),
            "propagation to the flooded instance: p50 {p50:?}"
        );
        assert!(
            p99 <= Duration::from_millis(250),
            "propagation to the flooded instance: p99 {p99:?}"
        );
        assert_eq!(unavailable, 0, "no Verify is refused");
        assert!(
            v99 <= Duration::from_millis(100),
            "uncached Verify p99 {v99:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_flood_does_not_deafen_an_instance() {
    crate::require!(Postgres);
    flooded_instance_hears_the_fleet(Flood::Refresh).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_reader_flood_does_not_deafen_an_instance() {
    crate::require!(Postgres);
    flooded_instance_hears_the_fleet(Flood::Feed).await;
}
