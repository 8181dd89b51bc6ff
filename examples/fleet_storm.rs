//! fleet_storm: how a fleet started (or reconnected) all at once comes up (issue 46; driven by
//! `scripts/storm`). Two questions, each answered by asking every sidecar at once:
//!
//!   cargo run --release --example fleet_storm -- serving --first-port 18000 --sidecars 500
//!       seconds until every sidecar's health says SERVING (and how many never did);
//!   cargo run --release --example fleet_storm -- refused --first-port 18000 --sidecars 500
//!       a token issued and revoked on the first sidecar: seconds until every sidecar refuses it
//!       (`REASON_TOKEN_REVOKED`).
//!
//! One JSON line on stdout. Every wait is bounded by `--timeout-secs`.
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use token_sidecar::api::pb;
use token_sidecar::api::pb::token_service_client::TokenServiceClient;

#[derive(Debug, Parser)]
#[command(about = "How a fleet of sidecars started at once comes up")]
struct Args {
    #[command(subcommand)]
    question: Question,
    /// The first sidecar's gRPC port; the others follow it.
    #[arg(long, global = true, default_value_t = 18000)]
    first_port: u16,
    /// How many sidecars.
    #[arg(long, global = true, default_value_t = 1)]
    sidecars: u16,
    /// The longest wait.
    #[arg(long, global = true, default_value_t = 120)]
    timeout_secs: u64,
}

#[derive(Debug, Subcommand)]
enum Question {
    /// Seconds until every sidecar is SERVING.
    Serving,
    /// Seconds from a revocation on the first sidecar until every sidecar refuses the token.
    Refused,
}

/// Watches one sidecar's health until it says SERVING (true) or the stream ends (false).
async fn serving_seen(channel: Channel, deadline: Instant) -> bool {
    let watch = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await;
    let Ok(stream) = watch else {
        return false;
    };
    let mut stream = stream.into_inner();
    let left = deadline.saturating_duration_since(Instant::now());
    tokio::time::timeout(left, async {
        while let Ok(Some(update)) = stream.message().await {
            if update.status == ServingStatus::Serving as i32 {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false)
}

fn channel(port: u16) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(2))
        .connect_lazy())
}

/// Asks `ask` of every sidecar until it says yes, each at its own pace (100 ms apart), all
/// at once; how long the last took, and how many never said yes before `deadline`.
async fn until_all<F, Fut>(ports: Vec<u16>, deadline: Instant, ask: F) -> (Duration, usize)
where
    F: Fn(Channel) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let started = Instant::now();
    let mut tasks = Vec::new();
    for port in ports {
        let ask = ask.clone();
        tasks.push(tokio::spawn(async move {
            let Ok(channel) = channel(port) else {
                return None;
            };
            while Instant::now() < deadline {
                if ask(channel.clone()).await {
                    return Some(started.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            None
        }));
    }
    let (mut slowest, mut never) = (Duration::ZERO, 0);
    for task in tasks {
        match task.await.ok().flatten() {
            Some(took) => slowest = slowest.max(took),
            None => never += 1,
        }
    }
    (slowest, never)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let ports: Vec<u16> = (0..args.sidecars).map(|i| args.first_port + i).collect();
    match args.question {
        Question::Serving => {
            // Health's Watch: each sidecar says when it turns SERVING (no polling, which at a
            // thousand sidecars would itself load the machine being measured).
            let (took, never) = until_all(ports, deadline, move |channel| {
                serving_seen(channel, deadline)
            })
            .await;
            println!(
                "{{\"sidecars\": {}, \"all_serving_s\": {:.2}, \"never\": {never}}}",
                args.sidecars,
                took.as_secs_f64()
            );
        }
        Question::Refused => {
            // The write may wait its turn at a busy pooler: retried (a fresh jti each time)
            // until it commits or the deadline passes.
            let writes = Endpoint::from_shared(format!("http://127.0.0.1:{}", args.first_port))?
                .timeout(Duration::from_secs(10))
                .connect_lazy();
            let mut first = TokenServiceClient::new(writes);
            let issued = loop {
                let attempt = async {
                    let issued = first
                        .issue(pb::IssueRequest {
                            user_id: "storm-user".into(),
                            ..Default::default()
                        })
                        .await?
                        .into_inner();
                    first
                        .revoke(pb::RevokeRequest {
                            target: Some(pb::revoke_request::Target::Jti(issued.jti.clone())),
                            ..Default::default()
                        })
                        .await?;
                    Ok::<_, tonic::Status>(issued)
                };
                match attempt.await {
                    Ok(issued) => break issued,
                    Err(status) if Instant::now() < deadline => {
                        eprintln!("the revocation did not commit ({}); again", status.code());
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(status) => return Err(status.into()),
                }
            };
            let token = issued.token;
            let (took, never) = until_all(ports, deadline, move |channel| {
                let token = token.clone();
                async move {
                    let answer = TokenServiceClient::new(channel)
                        .verify(pb::VerifyRequest {
                            token,
                            ..Default::default()
                        })
                        .await;
                    // Refused for the revocation, not for anything else.
                    answer.is_ok_and(|a| a.into_inner().reason() == pb::Reason::TokenRevoked)
                }
            })
            .await;
            println!(
                "{{\"sidecars\": {}, \"all_refused_s\": {:.3}, \"never\": {never}}}",
                args.sidecars,
                took.as_secs_f64()
            );
        }
    }
    Ok(())
}
