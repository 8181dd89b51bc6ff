//! The token-sidecar binary: parse configuration, start, and stop gracefully on a signal.
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use token_sidecar::clock::FleetClock;
use token_sidecar::config::{Cli, Command};
use token_sidecar::{server, telemetry};

fn main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("token-sidecar: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line with the chain of causes; no backtrace for an operator to wade through.
            eprintln!("token-sidecar: {}", one_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line. Library errors keep a cause either in their message or
/// in the chain, never both, so nothing is repeated.
fn one_line(e: &anyhow::Error) -> String {
    e.chain()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Migrate(config)) => {
            telemetry::init(config.telemetry.log_format);
            let kind = server::migrate(&config).await.context("migration failed")?;
            println!("migrations applied ({kind})");
            return Ok(());
        }
        Some(Command::CheckConfig(config)) => {
            telemetry::init(config.telemetry.log_format);
            let report = server::check_config(&config)
                .await
                .context("configuration check failed")?;
            for line in report {
                println!("{line}");
            }
            println!("configuration OK");
            return Ok(());
        }
        None => {}
    }
    let config = cli.config;
    let traces = telemetry::init_with_traces(config.telemetry.log_format, &(&config).into())
        .context("could not start tracing")?;
    let mut running = server::start(config, Arc::new(FleetClock::new()))
        .await
        .context("could not start")?;
    let mut failures = running.take_failures();
    // A signal stops it cleanly; a task it cannot live without ending stops it non-zero.
    let failed = tokio::select! {
        signalled = wait_for_shutdown(&running) => {
            signalled?;
            None
        }
        Some(reason) = async { failures.as_mut()?.recv().await } => Some(reason),
    };
    match &failed {
        None => {
            tracing::info!("shutting down: health is NOT_SERVING, finishing in-flight requests")
        }
        Some(reason) => {
            tracing::error!(reason = %reason, "shutting down: a task the service needs ended")
        }
    }
    running.shutdown().await;
    if let Some(traces) = traces {
        // The last spans, if the collector takes them within the bound.
        traces.shutdown(std::time::Duration::from_secs(5)).await;
    }
    tracing::info!("stopped");
    match failed {
        None => Ok(()),
        Some(reason) => Err(anyhow::anyhow!("stopped because {reason}")),
    }
}

/// Waits for SIGTERM or SIGINT; SIGHUP reloads the secret files (keys, TLS, admin credential)
/// meanwhile.
async fn wait_for_shutdown(running: &server::RunningSidecar) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
        loop {
            tokio::select! {
                _ = term.recv() => return Ok(()),
                r = tokio::signal::ctrl_c() => return r.context("waiting for SIGINT"),
                _ = hup.recv() => {
                    let problems = running.reload_secrets();
                    if problems.is_empty() {
                        tracing::info!("SIGHUP: secret files re-read");
                    }
                    for problem in problems {
                        tracing::warn!(error = %problem, "SIGHUP: keeping the current one");
                    }
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = running;
        tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")
    }
}
