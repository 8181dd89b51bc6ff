//! The token-sidecar binary: parse configuration, start, and stop gracefully on a signal.
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use token_sidecar::clock::SystemClock;
use token_sidecar::config::Config;
use token_sidecar::{server, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    telemetry::init(config.log_format);
    let running = server::start(config, Arc::new(SystemClock))
        .await
        .context("token-sidecar could not start")?;
    shutdown_signal().await?;
    tracing::info!("shutting down: finishing in-flight requests");
    running.shutdown().await.context("server error")?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        tokio::select! {
            _ = term.recv() => {}
            r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT")?,
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    Ok(())
}
