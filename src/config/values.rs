//! The values some flags take, as types.
use clap::ValueEnum;

use crate::revocations::OutageMode;

/// A feature switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Toggle {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `--database-pooler`: what stands between the sidecar and PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DatabasePooler {
    /// A direct connection (or a session pooler).
    None,
    /// A transaction pooler: no session survives a transaction.
    Transaction,
}

/// `--migrate`: whether a start applies missing migrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MigrateAtStart {
    /// On a direct connection; not through a transaction pooler.
    Auto,
    /// Never: the schema is the migrate Job's (or `token-sidecar migrate`'s) to apply.
    Never,
    /// Always, wherever the URL leads (what `token-sidecar migrate` does; not a flag value).
    #[value(skip)]
    Always,
}

/// `--on-store-outage`: the flag's spelling of [`OutageMode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnStoreOutage {
    /// Refuse to answer (Verify returns UNAVAILABLE): no revocation is ever missed.
    FailClosed,
    /// Answer from the caches as they are (an explicit opt-in).
    ServeStale,
}

impl From<OnStoreOutage> for OutageMode {
    fn from(flag: OnStoreOutage) -> Self {
        match flag {
            OnStoreOutage::FailClosed => OutageMode::FailClosed,
            OnStoreOutage::ServeStale => OutageMode::ServeStale,
        }
    }
}
