//! fleet_burst: the load a fleet really sees (SPEC §10; driven by `scripts/scale`). Users log in
//! on one sidecar and their tokens are verified within the second by many others — each of
//! them missing its cutoff cache once — with writes in between; after each round one session is
//! revoked and every sidecar is asked until it refuses the token.
//!
//!   cargo run --release --example fleet_burst -- --first-port 18000 --sidecars 90 \
//!       --every 7 --users 20 --rounds 3 --json burst.json
//!
//! Prints (and writes with --json) the failed writes and verifies, Verify's latency during the
//! burst, and how long each revocation took to be refused by every sidecar.
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use tonic::transport::{Channel, Endpoint};

use token_sidecar::api::pb;
use token_sidecar::api::pb::token_service_client::TokenServiceClient;

#[derive(Debug, Parser)]
#[command(about = "A burst of first logins verified across a fleet of sidecars")]
struct Args {
    /// The sidecars' host.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// The first sidecar's gRPC port; the others follow it.
    #[arg(long, default_value_t = 18000)]
    first_port: u16,
    /// How many sidecars.
    #[arg(long)]
    sidecars: usize,
    /// Each token is verified on every this-many-th sidecar.
    #[arg(long, default_value_t = 7)]
    every: usize,
    /// New users per round.
    #[arg(long, default_value_t = 20)]
    users: usize,
    /// Rounds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// While waiting for a revocation to reach it, each sidecar is asked this often (ms).
    #[arg(long, default_value_t = 20)]
    ask_every_ms: u64,
    /// Where to write the results as JSON.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

type Client = TokenServiceClient<Channel>;

#[derive(Default)]
struct Tally {
    writes: u64,
    failed_writes: u64,
    verifies: u64,
    failed_verifies: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.sidecars > 0 && args.every > 0, "no sidecars");
    let mut clients = Vec::with_capacity(args.sidecars);
    for i in 0..args.sidecars {
        let port = usize::from(args.first_port) + i;
        let endpoint = Endpoint::from_shared(format!("http://{}:{port}", args.host))?
            .timeout(Duration::from_secs(10));
        clients.push(TokenServiceClient::new(endpoint.connect_lazy()));
    }
    let mut tally = Tally::default();
    let mut latency = Histogram::<u64>::new(3)?;
    let mut refused_ms = Vec::new();
    let (mut still_accepted, mut unavailable) = (0, 0);
    for round in 0..args.rounds {
        let mut logins = Vec::new();
        for u in 0..args.users {
            let clients = clients.clone();
            let (n, every) = (args.sidecars, args.every);
            logins.push(tokio::spawn(async move {
                login(clients, n, every, round, u).await
            }));
        }
        let mut survivor = None;
        for login in logins {
            let (t, lat, token) = login.await?;
            tally.writes += t.writes;
            tally.failed_writes += t.failed_writes;
            tally.verifies += t.verifies;
            tally.failed_verifies += t.failed_verifies;
            latency.add(&lat)?;
            survivor = survivor.or(token);
        }
        let Some(token) = survivor else {
            anyhow::bail!("round {round}: no login succeeded");
        };
        let reach = refused_everywhere(&clients, token, args.ask_every_ms).await?;
        refused_ms.push(reach.slowest_ms);
        still_accepted += reach.accepted;
        unavailable += reach.unavailable;
    }
    let ms = |us: u64| us as f64 / 1000.0;
    let result = serde_json::json!({
        "sidecars": args.sidecars,
        "rounds": args.rounds,
        "users_per_round": args.users,
        "writes": tally.writes,
        "failed_writes": tally.failed_writes,
        "verifies": tally.verifies,
        "failed_verifies": tally.failed_verifies,
        "verify_p50_ms": ms(latency.value_at_quantile(0.5)),
        "verify_p99_ms": ms(latency.value_at_quantile(0.99)),
        "verify_max_ms": ms(latency.max()),
        "refused_everywhere_ms": refused_ms,
        "still_accepted_after_10s": still_accepted,
        "unavailable_for_10s": unavailable,
    });
    println!("{result}");
    if let Some(path) = args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&result)?)?;
    }
    Ok(())
}

/// One user's first login: Issue on one sidecar, Verify on every `every`-th, and — for every
/// other user — Revoke(jti) on a third (a write between the reads). Returns the tally, the
/// Verify latencies (µs) and the token if it was left valid.
async fn login(
    clients: Vec<Client>,
    n: usize,
    every: usize,
    round: usize,
    u: usize,
) -> (Tally, Histogram<u64>, Option<String>) {
    let mut tally = Tally::default();
    let mut latency = Histogram::<u64>::new(3).expect("histogram bounds are valid");
    let writer = (u + round * 3) % n;
    tally.writes += 1;
    let issued = clients[writer]
        .clone()
        .issue(pb::IssueRequest {
            user_id: format!("burst-{round}-{u}-{}", std::process::id()),
            ..Default::default()
        })
        .await;
    let Ok(issued) = issued.map(|r| r.into_inner()) else {
        tally.failed_writes += 1;
        return (tally, latency, None);
    };
    let mut verifies = Vec::new();
    for s in (u % every..n).step_by(every) {
        let mut client = clients[s].clone();
        let token = issued.token.clone();
        verifies.push(tokio::spawn(async move {
            let started = Instant::now();
            let answer = client
                .verify(pb::VerifyRequest {
                    token,
                    ..Default::default()
                })
                .await;
            (started.elapsed(), answer.map(|r| r.into_inner().valid))
        }));
    }
    for verify in verifies {
        tally.verifies += 1;
        match verify.await {
            Ok((took, Ok(true))) => {
                let _ = latency.record(took.as_micros() as u64);
            }
            _ => tally.failed_verifies += 1,
        }
    }
    if u % 2 == 1 {
        tally.writes += 1;
        let revoked = clients[(writer + 1) % n]
            .clone()
            .revoke(pb::RevokeRequest {
                target: Some(pb::revoke_request::Target::Jti(issued.jti)),
                ..Default::default()
            })
            .await;
        if revoked.is_err() {
            tally.failed_writes += 1;
        }
        return (tally, latency, None);
    }
    (tally, latency, Some(issued.token))
}

/// How a revocation reached the fleet.
struct Reach {
    /// When the last sidecar that refused the token did, in ms.
    slowest_ms: f64,
    /// Sidecars that still accepted the token after 10 s.
    accepted: u64,
    /// Sidecars that answered only errors (UNAVAILABLE: not serving) for 10 s.
    unavailable: u64,
}

/// Revokes `token`'s session on the first sidecar and asks every sidecar until it refuses the
/// token.
async fn refused_everywhere(
    clients: &[Client],
    token: String,
    ask_every_ms: u64,
) -> anyhow::Result<Reach> {
    let started = Instant::now();
    clients[0]
        .clone()
        .revoke(pb::RevokeRequest {
            target: Some(pb::revoke_request::Target::Token(token.clone())),
            ..Default::default()
        })
        .await?;
    let mut waits = Vec::new();
    for client in clients {
        let mut client = client.clone();
        let token = token.clone();
        waits.push(tokio::spawn(async move {
            let deadline = started + Duration::from_secs(10);
            let mut accepted = false;
            while Instant::now() < deadline {
                let answer = client
                    .verify(pb::VerifyRequest {
                        token: token.clone(),
                        ..Default::default()
                    })
                    .await
                    .map(|answer| answer.into_inner());
                match answer {
                    Ok(answer) if answer.reason == pb::Reason::TokenRevoked as i32 => {
                        return Ok(started.elapsed());
                    }
                    Ok(_) => accepted = true,
                    Err(_) => {}
                }
                tokio::time::sleep(Duration::from_millis(ask_every_ms)).await;
            }
            Err(accepted)
        }));
    }
    let mut reach = Reach {
        slowest_ms: 0.0,
        accepted: 0,
        unavailable: 0,
    };
    for wait in waits {
        match wait.await? {
            Ok(took) => reach.slowest_ms = reach.slowest_ms.max(took.as_secs_f64() * 1000.0),
            Err(true) => reach.accepted += 1,
            Err(false) => reach.unavailable += 1,
        }
    }
    Ok(reach)
}
