//! loadgen: drives a running token-sidecar over gRPC and reports throughput and latency.
//!
//! It sets up a realistic token mix itself (users, tokens, a share of them revoked, some users
//! revoked-all), then runs one RPC (`verify`, `health`, `issue`, `refresh`, `revoke`) from many
//! concurrent tasks over several connections, closed-loop or at a fixed offered rate.
//!
//!   cargo run --release --example loadgen -- --target http://127.0.0.1:50051 --rpc verify \
//!       --connections 4 --concurrency 64 --duration 10s --json verify.json
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use futures::StreamExt;
use hdrhistogram::Histogram;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

use token_sidecar::api::ext_authz::pb as ext_authz;
use token_sidecar::api::pb;
use token_sidecar::api::pb::token_service_client::TokenServiceClient;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Rpc {
    Verify,
    Health,
    Issue,
    Refresh,
    Revoke,
    /// Envoy ext_authz `Authorization/Check` with the token as a bearer header.
    Check,
}

#[derive(Debug, Parser)]
#[command(about = "Load generator for token-sidecar")]
struct Args {
    /// The sidecar's gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    target: String,
    /// The RPC to drive.
    #[arg(long, value_enum, default_value_t = Rpc::Verify)]
    rpc: Rpc,
    /// HTTP/2 connections to spread the tasks over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Concurrent in-flight requests.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// How long to measure (after warm-up), e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = token_sidecar::config::parse_duration)]
    duration: Duration,
    /// Stop after this many requests instead of after --duration.
    #[arg(long)]
    requests: Option<u64>,
    /// Warm-up before measuring.
    #[arg(long, default_value = "2s", value_parser = token_sidecar::config::parse_duration)]
    warmup: Duration,
    /// Offered load in requests per second (open schedule; latency counts from the scheduled
    /// time). Default: as fast as the server answers.
    #[arg(long)]
    rate: Option<f64>,
    /// Distinct users in the token mix.
    #[arg(long, default_value_t = 10_000)]
    users: usize,
    /// Distinct tokens in the token mix.
    #[arg(long, default_value_t = 100_000)]
    tokens: usize,
    /// Percentage of tokens revoked one by one.
    #[arg(long, default_value_t = 1.0)]
    revoked_percent: f64,
    /// Users revoked-all.
    #[arg(long, default_value_t = 10)]
    revoked_users: usize,
    /// Reuse the token mix saved here (one token per line), or save the one set up.
    #[arg(long)]
    tokens_file: Option<std::path::PathBuf>,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// A label for the results.
    #[arg(long, default_value = "")]
    label: String,
}

type Client = TokenServiceClient<Channel>;
type AuthzClient =
    ext_authz::envoy::service::auth::v3::authorization_client::AuthorizationClient<Channel>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        channels.push(connect(&args.target).await?);
    }
    let ready_in = wait_serving(channels[0].clone()).await?;
    eprintln!("sidecar SERVING (waited {:.2}s)", ready_in.as_secs_f64());

    let tokens = if matches!(
        args.rpc,
        Rpc::Verify | Rpc::Refresh | Rpc::Revoke | Rpc::Check
    ) {
        let saved = args
            .tokens_file
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|text| text.lines().map(str::to_owned).collect::<Vec<_>>())
            .filter(|t| !t.is_empty());
        match saved {
            Some(tokens) => tokens,
            None => {
                let tokens = setup(&args, Client::new(channels[0].clone())).await?;
                if let Some(path) = &args.tokens_file {
                    std::fs::write(path, tokens.join("\n"))?;
                }
                tokens
            }
        }
    } else {
        Vec::new()
    };
    let tokens = Arc::new(tokens);

    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for w in 0..args.concurrency.max(1) {
        let channel = channels[w % channels.len()].clone();
        let tokens = tokens.clone();
        let (stop, measuring, done, errors) = (
            stop.clone(),
            measuring.clone(),
            done.clone(),
            errors.clone(),
        );
        let rpc = args.rpc;
        let interval = args
            .rate
            .map(|r| Duration::from_secs_f64(args.concurrency.max(1) as f64 / r));
        workers.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                .unwrap_or_else(|e| panic!("histogram: {e}"));
            let mut client = Client::new(channel.clone());
            let mut health = HealthClient::new(channel.clone());
            let mut authz = AuthzClient::new(channel);
            let mut next =
                Instant::now() + interval.map_or(Duration::ZERO, |i| i.mul_f64(w as f64 / 64.0));
            let mut i = w;
            // Refresh follows a chain: each refresh presents the newest token, as clients must
            // (SPEC §11), starting from a token of the mix.
            let mut chain: Option<String> = None;
            while !stop.load(Ordering::Relaxed) {
                let scheduled = match interval {
                    Some(step) => {
                        tokio::time::sleep_until(next.into()).await;
                        let s = next;
                        next += step;
                        s
                    }
                    None => Instant::now(),
                };
                let clients = (&mut client, &mut health, &mut authz);
                let ok = call(rpc, clients, &tokens, i, &mut chain).await;
                i = i.wrapping_add(7919);
                if measuring.load(Ordering::Relaxed) {
                    let micros = scheduled.elapsed().as_micros().max(1) as u64;
                    let _ = hist.record(micros.min(60_000_000));
                    done.fetch_add(1, Ordering::Relaxed);
                    if !ok {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            hist
        }));
    }

    tokio::time::sleep(args.warmup).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let mut last = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let n = done.load(Ordering::Relaxed);
        let elapsed = started.elapsed();
        if elapsed.as_millis() % 1000 < 250 {
            eprint!(
                "\r[{:>4.1}s] {:>10} requests  {:>9.0} req/s now  {} errors   ",
                elapsed.as_secs_f64(),
                n,
                (n - last) as f64 / 1.0,
                errors.load(Ordering::Relaxed)
            );
            last = n;
        }
        let finished = match args.requests {
            Some(limit) => n >= limit,
            None => elapsed >= args.duration,
        };
        if finished {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    eprintln!();
    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for w in workers {
        total.add(w.await?)?;
    }
    let count = total.len();
    let report = serde_json::json!({
        "label": args.label,
        "rpc": format!("{:?}", args.rpc).to_lowercase(),
        "connections": args.connections,
        "concurrency": args.concurrency,
        "offered_rate": args.rate,
        "requests": count,
        "errors": errors.load(Ordering::Relaxed),
        "seconds": elapsed.as_secs_f64(),
        "throughput": count as f64 / elapsed.as_secs_f64(),
        "latency_us": {
            "p50": total.value_at_quantile(0.5),
            "p90": total.value_at_quantile(0.9),
            "p99": total.value_at_quantile(0.99),
            "p999": total.value_at_quantile(0.999),
            "max": total.max(),
        },
        "ready_seconds": ready_in.as_secs_f64(),
    });
    println!(
        "{:<8} {:>5} conn {:>4} conc  {:>10.0} req/s  p50 {:>6}us  p90 {:>6}us  p99 {:>6}us  p99.9 {:>6}us  errors {}",
        report["rpc"].as_str().unwrap_or_default(),
        args.connections,
        args.concurrency,
        report["throughput"].as_f64().unwrap_or_default(),
        total.value_at_quantile(0.5),
        total.value_at_quantile(0.9),
        total.value_at_quantile(0.99),
        total.value_at_quantile(0.999),
        report["errors"]
    );
    if let Some(path) = args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}

/// Connects, retrying for a while: the sidecar may have been started a moment ago.
async fn connect(target: &str) -> anyhow::Result<Channel> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Channel::from_shared(target.to_owned())?.connect().await {
            Ok(channel) => return Ok(channel),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Waits (through the health Watch stream) until the sidecar is SERVING.
async fn wait_serving(channel: Channel) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut health = HealthClient::new(channel);
    let mut stream = health
        .watch(HealthCheckRequest {
            service: "tokensidecar.v1.TokenService".into(),
        })
        .await?
        .into_inner();
    let wait = async {
        while let Some(update) = stream.next().await {
            if update?.status == ServingStatus::Serving as i32 {
                return Ok::<_, anyhow::Error>(());
            }
        }
        anyhow::bail!("health stream ended")
    };
    tokio::time::timeout(Duration::from_secs(120), wait).await??;
    Ok(started.elapsed())
}

/// Issues the token mix; revokes a share one by one and some users entirely.
async fn setup(args: &Args, client: Client) -> anyhow::Result<Vec<String>> {
    let started = Instant::now();
    let users = args.users.max(1);
    let tokens: Vec<(String, String)> = futures::stream::iter(0..args.tokens)
        .map(|i| {
            let mut c = client.clone();
            async move {
                let r = c
                    .issue(pb::IssueRequest {
                        user_id: format!("user-{}", i % users),
                        ttl: Some(prost_types::Duration {
                            seconds: 3600,
                            nanos: 0,
                        }),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                Ok::<_, tonic::Status>((r.token, r.jti))
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let revoked = (tokens.len() as f64 * args.revoked_percent / 100.0) as usize;
    futures::stream::iter(
        tokens
            .iter()
            .step_by((tokens.len() / revoked.max(1)).max(1))
            .take(revoked),
    )
    .map(|(_, jti)| {
        let mut c = client.clone();
        async move {
            c.revoke(pb::RevokeRequest {
                target: Some(pb::revoke_request::Target::Jti(jti.clone())),
                ..Default::default()
            })
            .await
        }
    })
    .buffer_unordered(16)
    .collect::<Vec<_>>()
    .await
    .into_iter()
    .collect::<Result<Vec<_>, _>>()?;
    for u in 0..args.revoked_users.min(users) {
        let mut c = client.clone();
        c.revoke(pb::RevokeRequest {
            target: Some(pb::revoke_request::Target::User(pb::UserRevocation {
                user_id: format!("user-{}", users - 1 - u),
                until: None,
            })),
            ..Default::default()
        })
        .await?;
    }
    eprintln!(
        "set up {} tokens for {} users ({} revoked, {} users revoked-all) in {:.1}s",
        tokens.len(),
        users,
        revoked,
        args.revoked_users.min(users),
        started.elapsed().as_secs_f64()
    );
    Ok(tokens.into_iter().map(|(t, _)| t).collect())
}

/// One request; false if it failed (a Verify of a revoked token is not a failure).
async fn call(
    rpc: Rpc,
    (client, health, authz): (&mut Client, &mut HealthClient<Channel>, &mut AuthzClient),
    tokens: &[String],
    i: usize,
    chain: &mut Option<String>,
) -> bool {
    let token = || {
        tokens
            .get(i % tokens.len().max(1))
            .cloned()
            .unwrap_or_default()
    };
    match rpc {
        Rpc::Health => health
            .check(HealthCheckRequest {
                service: "tokensidecar.v1.TokenService".into(),
            })
            .await
            .is_ok(),
        Rpc::Verify => client
            .verify(pb::VerifyRequest {
                token: token(),
                ..Default::default()
            })
            .await
            .is_ok(),
        Rpc::Issue => client
            .issue(pb::IssueRequest {
                user_id: format!("load-{}", i % 10_000),
                ..Default::default()
            })
            .await
            .is_ok(),
        // Refused refreshes (revoked tokens) are answers, not failures.
        Rpc::Refresh => {
            let token = chain.take().unwrap_or_else(token);
            match client
                .refresh(pb::RefreshRequest {
                    token,
                    ..Default::default()
                })
                .await
            {
                Ok(answer) => {
                    *chain = Some(answer.into_inner().token);
                    true
                }
                Err(s) => s.code() == tonic::Code::Unauthenticated,
            }
        }
        // A denial is an answer, not a failure; only an RPC error is.
        Rpc::Check => {
            use ext_authz::envoy::service::auth::v3::{AttributeContext, attribute_context};
            let headers = [("authorization".to_string(), format!("Bearer {}", token()))];
            let request = ext_authz::CheckRequest {
                attributes: Some(AttributeContext {
                    request: Some(attribute_context::Request {
                        http: Some(attribute_context::HttpRequest {
                            method: "GET".into(),
                            path: "/".into(),
                            headers: headers.into_iter().collect(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            };
            authz.check(request).await.is_ok()
        }
        Rpc::Revoke => client
            .revoke(pb::RevokeRequest {
                target: Some(pb::revoke_request::Target::Jti(
                    token_sidecar::token::new_random_id(),
                )),
                ..Default::default()
            })
            .await
            .is_ok(),
    }
}
