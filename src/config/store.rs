//! The store and how instances keep in step.
use std::path::PathBuf;
use std::time::Duration;

use super::parse::{parse_interval, parse_positive_duration};
use super::secret::Secret;
use super::values::{DatabasePooler, MigrateAtStart, OnStoreOutage};
use crate::sync::SyncMode;

/// The store and how instances keep in step.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// PostgreSQL URL (postgres://...), sqlite:PATH, or memory: (nothing kept; for tests).
    /// Default: an embedded SQLite file,
    /// ./token-sidecar.db (single instance only).
    #[arg(
        help_heading = "Store and sync",
        long,
        env = "DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Option<Secret>,

    /// At most this many PostgreSQL connections, under any load. With 1 (the default) a
    /// sidecar does all its database work on one connection: in notify mode the one that
    /// LISTENs carries every query and write too; in nats and poll modes the sync task polls
    /// through it. Above 1 (a shared service that wants parallel writes): the sync task's own
    /// connection plus a pool of the rest, which close when idle.
    #[arg(help_heading = "Store and sync", long, env = "TOKEN_SIDECAR_DATABASE_MAX_CONNECTIONS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub database_max_connections: u32,

    /// Pooled PostgreSQL connections idle this long are closed.
    #[arg(help_heading = "Store and sync", long, env = "TOKEN_SIDECAR_DATABASE_IDLE_TIMEOUT", default_value = "5s", value_parser = parse_interval)]
    pub database_idle_timeout: Duration,

    /// The longest a write waits on the store for a lock or a statement (PostgreSQL's
    /// lock_timeout and statement_timeout in the write's transaction): a lock held by anyone
    /// else — a stuck sidecar, another role — fails the write with UNAVAILABLE (retry) rather
    /// than stalling it and every write queued behind it.
    #[arg(help_heading = "Store and sync", long, env = "TOKEN_SIDECAR_STORE_TIMEOUT", default_value = "5s", value_parser = parse_positive_duration)]
    pub store_timeout: Duration,

    /// Whether a start applies missing PostgreSQL migrations. auto: yes, unless
    /// --database-pooler says the URL leads through a transaction pooler (sqlx's migrator needs
    /// a session): there the sidecar waits NOT_SERVING and says what to run (`token-sidecar
    /// migrate` with a direct URL, or the migrate Job). never: always wait for that. (The
    /// embedded SQLite file is always migrated: one process owns it.)
    #[arg(help_heading = "Store and sync", long, env = "TOKEN_SIDECAR_MIGRATE", value_enum, default_value_t = MigrateAtStart::Auto)]
    pub migrate: MigrateAtStart,

    /// What stands between the sidecar and PostgreSQL: none, or a transaction pooler
    /// (PgBouncer in transaction mode): then statements are sent unnamed (as the URL's
    /// statement-cache-capacity=0 also asks) and a start never runs the migrator through it.
    #[arg(help_heading = "Store and sync", long, env = "TOKEN_SIDECAR_DATABASE_POOLER", value_enum, default_value_t = DatabasePooler::None)]
    pub database_pooler: DatabasePooler,

    /// How changes made by other instances arrive: PostgreSQL LISTEN/NOTIFY, NATS
    /// (--nats-url), or polling only (behind transaction-pooling PgBouncer).
    #[arg(help_heading = "Store and sync", long, env = "TOKEN_SIDECAR_SYNC_MODE", value_enum, default_value_t = SyncMode::Notify)]
    pub sync_mode: SyncMode,

    /// How often the change feed is polled when no announcement channel is up (always in poll
    /// mode; in notify and nats modes while LISTEN or NATS is down).
    #[arg(help_heading = "Store and sync", long, env = "TOKEN_SIDECAR_SYNC_POLL_INTERVAL", default_value = "1s", value_parser = parse_interval)]
    pub sync_poll_interval: Duration,

    /// How often the change feed is still polled while announcements arrive (the safety net;
    /// kept under half of --max-staleness).
    #[arg(help_heading = "Store and sync", long, env = "TOKEN_SIDECAR_SYNC_SAFETY_POLL_INTERVAL", default_value = "5s", value_parser = parse_interval)]
    pub sync_safety_poll_interval: Duration,

    /// The NATS server for --sync-mode nats, e.g. nats://nats.nats.svc:4222.
    #[arg(help_heading = "Store and sync", long, env = "TOKEN_SIDECAR_NATS_URL")]
    pub nats_url: Option<Secret>,

    /// The NATS subject changes are announced on (every sidecar sharing the database uses the
    /// same one).
    #[arg(
        help_heading = "Store and sync",
        long,
        env = "TOKEN_SIDECAR_NATS_SUBJECT",
        default_value = "token-sidecar.changes"
    )]
    pub nats_subject: String,

    /// A NATS credentials file (user JWT and nkey seed, as `nsc` writes it).
    #[arg(
        help_heading = "Store and sync",
        long,
        env = "TOKEN_SIDECAR_NATS_CREDS_FILE"
    )]
    pub nats_creds_file: Option<PathBuf>,

    /// A file holding a NATS nkey seed (SU...).
    #[arg(
        help_heading = "Store and sync",
        long,
        env = "TOKEN_SIDECAR_NATS_NKEY_FILE"
    )]
    pub nats_nkey_file: Option<PathBuf>,

    /// A file holding a NATS token (a token in --nats-url works too, and is never logged).
    #[arg(
        help_heading = "Store and sync",
        long,
        env = "TOKEN_SIDECAR_NATS_TOKEN_FILE"
    )]
    pub nats_token_file: Option<PathBuf>,

    /// The CA that signs the NATS server's certificate, in PEM: TLS is then required.
    #[arg(
        help_heading = "Store and sync",
        long,
        env = "TOKEN_SIDECAR_NATS_TLS_CA"
    )]
    pub nats_tls_ca: Option<PathBuf>,

    /// A client certificate for NATS (PEM), with --nats-tls-key.
    #[arg(
        help_heading = "Store and sync",
        long,
        env = "TOKEN_SIDECAR_NATS_TLS_CERT",
        requires = "nats_tls_key"
    )]
    pub nats_tls_cert: Option<PathBuf>,

    /// The client certificate's private key for NATS (PEM), with --nats-tls-cert.
    #[arg(
        help_heading = "Store and sync",
        long,
        env = "TOKEN_SIDECAR_NATS_TLS_KEY",
        requires = "nats_tls_cert"
    )]
    pub nats_tls_key: Option<PathBuf>,

    /// The fleet's secret for authenticating change announcements (NOTIFY payloads and NATS
    /// messages), at least 32 bytes; by default the one the migrations generated in the table
    /// sync_key (readable by the sidecars' role only). Every instance of a fleet uses the same.
    #[arg(
        help_heading = "Store and sync",
        long,
        env = "TOKEN_SIDECAR_SYNC_KEY_FILE"
    )]
    pub sync_key_file: Option<PathBuf>,

    /// After this long without a successful sync the caches are not trusted.
    #[arg(help_heading = "Store and sync", long, env = "TOKEN_SIDECAR_MAX_STALENESS", default_value = "10s", value_parser = parse_positive_duration)]
    pub max_staleness: Duration,

    /// When the caches are stale and the store is unreachable: fail closed (Verify answers
    /// UNAVAILABLE) or serve stale answers from the caches.
    #[arg(help_heading = "Store and sync", long, env = "TOKEN_SIDECAR_ON_STORE_OUTAGE", value_enum, default_value_t = OnStoreOutage::FailClosed)]
    pub on_store_outage: OnStoreOutage,

    /// How often expired denylist rows and stale cutoffs are purged.
    #[arg(help_heading = "Store and sync", long, env = "TOKEN_SIDECAR_PURGE_INTERVAL", default_value = "10m", value_parser = parse_positive_duration)]
    pub purge_interval: Duration,

    /// How often the store is pinged to keep the health status true.
    #[arg(help_heading = "Store and sync", long, env = "TOKEN_SIDECAR_HEALTH_INTERVAL", default_value = "5s", value_parser = parse_positive_duration)]
    pub health_interval: Duration,
}
