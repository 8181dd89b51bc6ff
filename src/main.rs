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
    wait_for_shutdown(&running).await?;
    tracing::info!("shutting down: finishing in-flight requests");
    running.shutdown().await.context("server error")?;
    tracing::info!("stopped");
    Ok(())
}

/// Waits for SIGTERM or SIGINT; SIGHUP reloads the key files meanwhile.
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
                _ = hup.recv() => match running.reload_keys() {
                    Ok(true) => {}
                    Ok(false) => tracing::info!("SIGHUP: key files unchanged"),
                    Err(e) => tracing::warn!(error = %e, "SIGHUP: keeping the current keys"),
                },
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = running;
        tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")
    }
}
