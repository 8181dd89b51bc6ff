//! Configuration: command-line flags, each also readable from an environment variable.
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use crate::policy::RevocationPolicy;
use crate::revocations::CacheSettings;

use clap::{Parser, ValueEnum};

use crate::otel::{OtlpProtocol, SamplerName, TraceSettings};
use crate::revocations::OutageMode;
use crate::store::PoolSettings;
use crate::sync::{SyncMode, SyncSettings};
use crate::token::KeySpec;

/// The embedded database used when no `--database-url` is given.
pub const DEFAULT_SQLITE_FILE: &str = "token-sidecar.db";

/// The command line: the sidecar's configuration, or an operator subcommand.
#[derive(Debug, Parser)]
#[command(
    name = "token-sidecar",
    version,
    about,
    max_term_width = 100,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// What to do instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The configuration to serve with.
    #[command(flatten)]
    pub config: Config,
}

/// Operator subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Apply the database migrations and exit (for a Kubernetes Job before a rollout).
    Migrate(Config),
    /// Validate flags, keys and database reachability; exit non-zero with the reason.
    CheckConfig(Config),
}

/// token-sidecar's configuration: every flag, each also readable from an environment variable.
#[derive(Debug, Clone, Parser)]
#[command(max_term_width = 100)]
pub struct Config {
    /// Address of the gRPC API (TokenService, health, reflection).
    #[arg(help_heading = "API, TLS and proxies", long, env = "TOKEN_SIDECAR_LISTEN", default_value = "127.0.0.1:50051", value_parser = parse_listen)]
    pub listen: SocketAddr,

    /// Address of the Prometheus metrics endpoint.
    #[arg(help_heading = "API, TLS and proxies", long, env = "TOKEN_SIDECAR_METRICS_LISTEN", default_value = "127.0.0.1:9464", value_parser = parse_listen)]
    pub metrics_listen: SocketAddr,

    /// Extra address serving only grpc.health.v1 (for kubelet probes on the Pod IP). Off if unset.
    #[arg(help_heading = "API, TLS and proxies", long, env = "TOKEN_SIDECAR_HEALTH_LISTEN", value_parser = parse_listen)]
    pub health_listen: Option<SocketAddr>,

    /// The HTTP listener for proxies and OAuth clients: forward-auth at `/auth` (nginx
    /// auth_request, Traefik ForwardAuth, Envoy HTTP ext_authz), RFC 7662 introspection and RFC
    /// 7009 revocation. Off unless set.
    #[arg(help_heading = "API, TLS and proxies", long, env = "TOKEN_SIDECAR_HTTP_LISTEN", value_parser = parse_listen)]
    pub http_listen: Option<SocketAddr>,

    /// Forward a custom claim to the upstream as a header on allow (ext_authz and forward-auth),
    /// e.g. `role=x-user-role`; repeatable. Absent claims remove the header.
    #[arg(help_heading = "API, TLS and proxies", long = "forward-claim", env = "TOKEN_SIDECAR_FORWARD_CLAIMS", value_delimiter = ',', value_parser = crate::api::forward_auth::parse_forwarded_claim)]
    pub forward_claims: Vec<crate::api::forward_auth::ForwardedClaim>,

    /// PostgreSQL URL (postgres://...) or sqlite:PATH. Default: an embedded SQLite file,
    /// ./token-sidecar.db (single instance only).
    #[arg(
        help_heading = "Store and sync",
        long,
        env = "DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,

    /// A key as KID=ALG:PATH (repeatable). HS* keys: PATH holds the secret's bytes (at least 32).
    /// Without any key, SQLite mode generates one beside the database; PostgreSQL mode refuses
    /// to start.
    #[arg(help_heading = "Tokens and keys", long = "key", env = "TOKEN_SIDECAR_KEYS", value_delimiter = ',', value_parser = parse_key)]
    pub keys: Vec<KeySpec>,

    /// The key id that signs new tokens. Default: the first key.
    #[arg(
        help_heading = "Tokens and keys",
        long,
        env = "TOKEN_SIDECAR_SIGNING_KID"
    )]
    pub signing_kid: Option<String>,

    /// How often the key files, the TLS certificate and key, and the admin credential are
    /// checked for changes (mounted Secrets change in place); SIGHUP reloads at once.
    #[arg(help_heading = "Tokens and keys", long, env = "TOKEN_SIDECAR_KEY_RELOAD_INTERVAL", default_value = "10s", value_parser = parse_positive_duration)]
    pub key_reload_interval: Duration,

    /// A file holding the bearer credential that privileged RPCs (Issue, Revoke by jti, session
    /// or user, LiftBan, GetUserStatus) must present as `authorization: Bearer <credential>`.
    /// Verify, Refresh and Revoke of one's own token stay open. Off if unset.
    #[arg(
        help_heading = "API, TLS and proxies",
        long,
        env = "TOKEN_SIDECAR_ADMIN_TOKEN_FILE"
    )]
    pub admin_token_file: Option<PathBuf>,

    /// PEM certificate chain of the gRPC API; with --tls-key, the API speaks TLS only.
    #[arg(
        help_heading = "API, TLS and proxies",
        long,
        env = "TOKEN_SIDECAR_TLS_CERT",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(
        help_heading = "API, TLS and proxies",
        long,
        env = "TOKEN_SIDECAR_TLS_KEY",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificates; when set, callers must present a client certificate they signed
    /// (mutual TLS). Such a certificate admits its holder to the open RPCs only; the privileged
    /// ones need the admin credential or an --admin-identity.
    #[arg(
        help_heading = "API, TLS and proxies",
        long,
        env = "TOKEN_SIDECAR_TLS_CLIENT_CA",
        requires = "tls_cert"
    )]
    pub tls_client_ca: Option<PathBuf>,

    /// A mutual-TLS client identity allowed to call the privileged RPCs: a SPIFFE ID (or other
    /// URI) or DNS name from the client certificate's subject alternative names, with `*` as
    /// the whole last path segment (spiffe://cluster.local/ns/ops/sa/*) or leftmost label
    /// (*.ops.svc.cluster.local); repeatable. Needs --tls-client-ca.
    #[arg(help_heading = "API, TLS and proxies", long = "admin-identity", env = "TOKEN_SIDECAR_ADMIN_IDENTITIES", value_delimiter = ',', value_parser = crate::api::caller::IdentityPattern::parse, requires = "tls_client_ca")]
    pub admin_identities: Vec<crate::api::caller::IdentityPattern>,

    /// A file of credentials (one per line) with which resource servers introspect tokens
    /// (RFC 7662, `POST /oauth2/introspect`); they authorise nothing else.
    #[arg(
        help_heading = "API, TLS and proxies",
        long,
        env = "TOKEN_SIDECAR_INTROSPECTION_TOKEN_FILE"
    )]
    pub introspection_token_file: Option<PathBuf>,

    /// A file of credentials (one per line) with which proxy filters read the change feed
    /// (`GET /revocations/changes` on --http-listen); they authorise nothing else. Without it
    /// (and without --admin-token-file) the feed is open only on a loopback --http-listen.
    #[arg(
        help_heading = "API, TLS and proxies",
        long,
        env = "TOKEN_SIDECAR_FEED_TOKEN_FILE"
    )]
    pub feed_token_file: Option<PathBuf>,

    /// Accept listening beyond loopback without caller authentication: neither the admin
    /// credential nor client certificates. Anyone who reaches the port may then verify,
    /// refresh and revoke the tokens it holds; the privileged RPCs (Issue, Revoke by id or
    /// user, LiftBan, GetUserStatus) are refused to everyone.
    #[arg(
        help_heading = "API, TLS and proxies",
        long,
        env = "TOKEN_SIDECAR_ALLOW_INSECURE_REMOTE"
    )]
    pub allow_insecure_remote: bool,

    /// Most API requests served at once, over all connections; beyond it requests are shed
    /// with RESOURCE_EXHAUSTED instead of queueing without bound (health checks never are).
    #[arg(
        help_heading = "Limits",
        long,
        env = "TOKEN_SIDECAR_MAX_CONCURRENT_REQUESTS",
        default_value_t = 1024
    )]
    pub max_concurrent_requests: usize,

    /// Most connections open at once on each listener; a new one beyond is closed at once.
    #[arg(
        help_heading = "Limits",
        long,
        env = "TOKEN_SIDECAR_MAX_CONNECTIONS",
        default_value_t = 4096
    )]
    pub max_connections: usize,

    /// A connection that has not sent its first request (the HTTP/2 preface, or an HTTP/1
    /// request head) within this is closed.
    #[arg(help_heading = "Limits", long, env = "TOKEN_SIDECAR_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub handshake_timeout: Duration,

    /// Most connections one peer address may hold open on a listener, so that one client cannot
    /// take them all. A sidecar's own callers all come from loopback: keep it above what the
    /// pod's proxy opens.
    #[arg(
        help_heading = "Limits",
        long,
        env = "TOKEN_SIDECAR_MAX_CONNECTIONS_PER_PEER",
        default_value_t = 1024
    )]
    pub max_connections_per_peer: usize,

    /// An HTTP/1 connection (forward-auth, metrics) that sends no complete request head for this
    /// long is closed — while it dribbles one, and between keep-alive requests alike.
    #[arg(help_heading = "Limits", long, env = "TOKEN_SIDECAR_IDLE_TIMEOUT", default_value = "30s", value_parser = parse_positive_duration)]
    pub idle_timeout: Duration,

    /// How often an HTTP/2 connection is pinged; one that does not answer within half of it is
    /// closed (a silent or vanished client).
    #[arg(help_heading = "Limits", long, env = "TOKEN_SIDECAR_KEEPALIVE_INTERVAL", default_value = "20s", value_parser = parse_positive_duration)]
    pub keepalive_interval: Duration,

    /// Connections are closed gracefully at this age (HTTP/2: GOAWAY, requests in flight get
    /// 30 s more; HTTP/1: after the request in flight); clients reconnect, and load spreads
    /// again over the sidecars behind a Service.
    #[arg(help_heading = "Limits", long, env = "TOKEN_SIDECAR_MAX_CONNECTION_AGE", default_value = "10m", value_parser = parse_positive_duration)]
    pub max_connection_age: Duration,

    /// Every request's deadline, its body and its handling included (a gRPC caller's own
    /// grpc-timeout applies when it is sooner).
    #[arg(help_heading = "Limits", long, env = "TOKEN_SIDECAR_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_positive_duration)]
    pub request_timeout: Duration,

    /// The `iss` written into and required of every token.
    #[arg(
        help_heading = "Tokens and keys",
        long,
        env = "TOKEN_SIDECAR_ISSUER",
        default_value = "token-sidecar"
    )]
    pub issuer: String,

    /// The `aud` written into and required of every token. None if unset.
    #[arg(help_heading = "Tokens and keys", long, env = "TOKEN_SIDECAR_AUDIENCE")]
    pub audience: Option<String>,

    /// Default and maximum token lifetime (e.g. 30s, 5m, 1h).
    #[arg(help_heading = "Tokens and keys", long, env = "TOKEN_SIDECAR_TOKEN_TTL", default_value = "5m", value_parser = parse_positive_duration)]
    pub token_ttl: Duration,

    /// How long after a session's first token it may still be refreshed.
    #[arg(help_heading = "Tokens and keys", long, env = "TOKEN_SIDECAR_REFRESH_WINDOW", default_value = "7d", value_parser = parse_positive_duration)]
    pub refresh_window: Duration,

    /// Clock-skew tolerance applied to `exp` and `nbf` only.
    #[arg(help_heading = "Tokens and keys", long, env = "TOKEN_SIDECAR_LEEWAY", default_value = "0s", value_parser = parse_duration)]
    pub leeway: Duration,

    /// Refresh reuse detection (SPEC §11): refreshing a token older than its session's newest,
    /// after --refresh-reuse-interval, revokes the session (REASON_REFRESH_REUSED).
    #[arg(help_heading = "Tokens and keys", long, env = "TOKEN_SIDECAR_REFRESH_REUSE_DETECTION", value_enum, default_value_t = Toggle::On)]
    pub refresh_reuse_detection: Toggle,

    /// How long after a session's newest token was minted a Refresh of an older one is a retry
    /// (answered with the same new token) rather than reuse.
    #[arg(help_heading = "Tokens and keys", long, env = "TOKEN_SIDECAR_REFRESH_REUSE_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub refresh_reuse_interval: Duration,

    /// How far this process's clock may be off the database's (the fleet's one clock, SPEC §4
    /// rule 9) before Issue and Refresh answer UNAVAILABLE; the purge keeps as much margin.
    #[arg(help_heading = "Tokens and keys", long, env = "TOKEN_SIDECAR_MAX_CLOCK_SKEW", default_value = "500ms", value_parser = parse_duration)]
    pub max_clock_skew: Duration,

    /// How long the audit trail (who revoked what and why; ListChanges) keeps a change,
    /// independently of the denylist's purge.
    #[arg(help_heading = "Identity providers and audit", long, env = "TOKEN_SIDECAR_AUDIT_RETENTION", default_value = "90d", value_parser = parse_positive_duration)]
    pub audit_retention: Duration,

    /// An OpenID Provider whose back-channel logout tokens are accepted, as
    /// ISSUER=JWKS_SOURCE[,subject-prefix=P] (a JWKS file, or an https:// URL fetched and
    /// cached; user id = P + the token's sub, and IdP session ids are scoped by P); repeatable.
    /// With several identity providers each needs its own prefix. Served on --http-listen at
    /// POST /oidc/backchannel-logout. Needs --oidc-client-id.
    #[arg(
        help_heading = "Identity providers and audit",
        long = "oidc-issuer",
        env = "TOKEN_SIDECAR_OIDC_ISSUERS",
        value_delimiter = ',',
        requires = "oidc_client_id"
    )]
    pub oidc_issuers: Vec<String>,

    /// The client id a logout token must name in its `aud`.
    #[arg(
        help_heading = "Identity providers and audit",
        long,
        env = "TOKEN_SIDECAR_OIDC_CLIENT_ID"
    )]
    pub oidc_client_id: Option<String>,

    /// A Shared Signals transmitter whose Security Event Tokens are accepted, as
    /// ISSUER=JWKS_SOURCE[,subject-prefix=P] (user id = P + the subject); repeatable. With
    /// several identity providers each needs its own prefix. Served on --http-listen at POST
    /// /ssf/events (RFC 8935 push). Needs --ssf-audience.
    #[arg(
        help_heading = "Identity providers and audit",
        long = "ssf-transmitter",
        env = "TOKEN_SIDECAR_SSF_TRANSMITTERS",
        value_delimiter = ',',
        requires = "ssf_audience"
    )]
    pub ssf_transmitters: Vec<String>,

    /// The `aud` a Security Event Token must name (this receiver, as the stream's audience).
    #[arg(
        help_heading = "Identity providers and audit",
        long,
        env = "TOKEN_SIDECAR_SSF_AUDIENCE"
    )]
    pub ssf_audience: Option<String>,

    /// Map Shared Signals `email` subjects to users: say so when user ids are email addresses.
    #[arg(
        help_heading = "Identity providers and audit",
        long,
        env = "TOKEN_SIDECAR_SSF_EMAIL_SUBJECTS"
    )]
    pub ssf_email_subjects: bool,

    /// How long a user's cutoff stays cached; 0 disables the cutoff cache (every check asks
    /// the store). Entries are kept current by the change feed; the TTL is a safety net.
    #[arg(help_heading = "Caches", long, env = "TOKEN_SIDECAR_CUTOFF_CACHE_TTL", default_value = "5m", value_parser = parse_duration)]
    pub cutoff_cache_ttl: Duration,

    /// Most users whose cutoff is cached.
    #[arg(
        help_heading = "Caches",
        long,
        env = "TOKEN_SIDECAR_CUTOFF_CACHE_CAPACITY",
        default_value_t = 100_000
    )]
    pub cutoff_cache_capacity: u64,

    /// Most tokens whose decode (signature and claims) is remembered, by SHA-256 digest, until
    /// their `exp`; 0 turns the verified-token cache off. Every rule still runs on every call.
    #[arg(
        help_heading = "Caches",
        long,
        env = "TOKEN_SIDECAR_VERIFIED_CACHE_CAPACITY",
        default_value_t = 50_000
    )]
    pub verified_cache_capacity: u64,

    /// The bloom-style negative cache of the denylist; off makes every check ask the store.
    #[arg(help_heading = "Caches", long, env = "TOKEN_SIDECAR_DENYLIST_FILTER", value_enum, default_value_t = Toggle::On)]
    pub denylist_filter: Toggle,

    /// Expected number of live denylist rows (sizes the filter; it grows when exceeded).
    #[arg(
        help_heading = "Caches",
        long,
        env = "TOKEN_SIDECAR_DENYLIST_EXPECTED_ITEMS",
        default_value_t = 1_000_000
    )]
    pub denylist_expected_items: usize,

    /// Target false-positive rate of the denylist filter.
    #[arg(help_heading = "Caches", long, env = "TOKEN_SIDECAR_DENYLIST_FP_RATE", default_value_t = 0.01, value_parser = parse_rate)]
    pub denylist_fp_rate: f64,

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
    pub nats_url: Option<String>,

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

    /// On SIGTERM, once the listeners stop accepting, how long in-flight RPCs may still run
    /// before they are cut.
    #[arg(help_heading = "Limits", long, env = "TOKEN_SIDECAR_SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// On SIGTERM, health turns NOT_SERVING at once, and the listeners keep accepting and
    /// answering this long before they close, so that health checkers and endpoint updates move
    /// traffic away first (use it, or a preStop sleep, not both).
    #[arg(help_heading = "Limits", long, env = "TOKEN_SIDECAR_DRAIN_DELAY", default_value = "0s", value_parser = parse_duration)]
    pub drain_delay: Duration,

    /// Log format.
    #[arg(help_heading = "Telemetry", long, env = "TOKEN_SIDECAR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// OTLP collector base URL (e.g. http://collector:4318; gRPC: http://collector:4317):
    /// traces are exported there. Unset: no tracing, at no cost.
    #[arg(help_heading = "Telemetry", long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otel_exporter_otlp_endpoint: Option<String>,

    /// OTLP traces URL, used as it is (overrides the base URL's `/v1/traces`).
    #[arg(
        help_heading = "Telemetry",
        long,
        env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    )]
    pub otel_exporter_otlp_traces_endpoint: Option<String>,

    /// OTLP transport.
    #[arg(help_heading = "Telemetry", long, env = "OTEL_EXPORTER_OTLP_PROTOCOL", value_enum, default_value_t = OtlpProtocol::HttpProtobuf)]
    pub otel_exporter_otlp_protocol: OtlpProtocol,

    /// The longest one export may take, in milliseconds.
    #[arg(help_heading = "Telemetry", long, env = "OTEL_EXPORTER_OTLP_TIMEOUT", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub otel_exporter_otlp_timeout: u64,

    /// `service.name` of the spans.
    #[arg(
        help_heading = "Telemetry",
        long,
        env = "OTEL_SERVICE_NAME",
        default_value = "token-sidecar"
    )]
    pub otel_service_name: String,

    /// More resource attributes: `key=value,key=value` (values percent-encoded), e.g.
    /// `deployment.environment=prod,k8s.pod.name=orders-7d9f`.
    #[arg(help_heading = "Telemetry", long, env = "OTEL_RESOURCE_ATTRIBUTES")]
    pub otel_resource_attributes: Option<String>,

    /// Which traces are recorded (the OpenTelemetry sampler names); by default a request
    /// follows its caller's decision and is recorded when it starts a trace.
    #[arg(help_heading = "Telemetry", long, env = "OTEL_TRACES_SAMPLER", value_enum, default_value_t = SamplerName::parentbased_always_on)]
    pub otel_traces_sampler: SamplerName,

    /// The sampler's ratio (0 to 1) for `traceidratio` and `parentbased_traceidratio`.
    #[arg(help_heading = "Telemetry", long, env = "OTEL_TRACES_SAMPLER_ARG")]
    pub otel_traces_sampler_arg: Option<f64>,

    /// Turns tracing off whatever else is set.
    #[arg(help_heading = "Telemetry", long, env = "OTEL_SDK_DISABLED", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub otel_sdk_disabled: bool,

    /// Spans carry the user id (`user.id`); off by default (traces often go to places logs do
    /// not). Tokens and keys are never in a span.
    #[arg(help_heading = "Telemetry", long, env = "TOKEN_SIDECAR_TRACE_USER_IDS", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub trace_user_ids: bool,
}

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

impl Config {
    /// The identity provider receivers' settings, parsed and checked (every issuer's subjects
    /// map to users of its own).
    pub fn idp_settings(
        &self,
    ) -> Result<crate::idp::IdpSettings, crate::startup_error::StartupError> {
        use crate::idp::TrustedIssuer;
        use crate::startup_error::StartupError;
        let oidc_issuers = TrustedIssuer::parse_list(&self.oidc_issuers)
            .map_err(|e| StartupError::IdpConfig(format!("--oidc-issuer: {e}")))?;
        let ssf_transmitters = TrustedIssuer::parse_list(&self.ssf_transmitters)
            .map_err(|e| StartupError::IdpConfig(format!("--ssf-transmitter: {e}")))?;
        let all: Vec<&TrustedIssuer> = oidc_issuers.iter().chain(&ssf_transmitters).collect();
        crate::idp::check_subject_prefixes(&all).map_err(StartupError::IdpConfig)?;
        Ok(crate::idp::IdpSettings {
            oidc_issuers,
            oidc_client_id: self.oidc_client_id.clone(),
            ssf_transmitters,
            ssf_audience: self.ssf_audience.clone(),
            ssf_email_subjects: self.ssf_email_subjects,
        })
    }

    /// The database URL in force: the configured one, or the embedded SQLite default.
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite:{DEFAULT_SQLITE_FILE}"))
    }

    /// Whether the store is the embedded SQLite file.
    pub fn is_sqlite(&self) -> bool {
        self.database_url().starts_with("sqlite:")
    }

    /// Where the generated development key lives: beside the SQLite database file.
    pub fn dev_key_path(&self) -> Option<PathBuf> {
        let url = self.database_url();
        let path = url.strip_prefix("sqlite:")?;
        let path = path.trim_start_matches("//");
        let path = path.split('?').next().unwrap_or(path);
        if path.is_empty() || path == ":memory:" {
            return None;
        }
        let db = PathBuf::from(path);
        let name = db.file_name()?.to_string_lossy().into_owned();
        Some(db.with_file_name(format!("{name}.dev-key")))
    }
}

fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    s.to_socket_addrs()
        .map_err(|e| format!("{s:?} is not HOST:PORT: {e}"))?
        .next()
        .ok_or_else(|| format!("{s:?} resolves to no address"))
}

fn parse_key(s: &str) -> Result<KeySpec, String> {
    s.parse().map_err(|e: crate::token::KeyError| e.to_string())
}

/// Parses durations like `250ms`, `30s`, `5m`, `1h`, `7d`, or sums like `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration (examples: 30s, 5m, 1h, 7d, 1h30m, 250ms)");
    let s = s.trim();
    if s.is_empty() {
        return Err(bad());
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total_ms: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let value: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit_ms: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total_ms = value
            .checked_mul(unit_ms)
            .and_then(|ms| total_ms.checked_add(ms))
            .filter(|ms| *ms <= i64::MAX as u64 / 4)
            .ok_or_else(bad)?;
    }
    Ok(Duration::from_millis(total_ms))
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r > 0.0 && r < 0.5 => Ok(r),
        _ => Err(format!("{s:?} is not a rate between 0 and 0.5 (e.g. 0.01)")),
    }
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(10) {
        return Err(format!("{s:?} is too short: at least 10ms"));
    }
    Ok(d)
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_secs(1) {
        return Err(format!("{s:?} is too short: at least 1s"));
    }
    Ok(d)
}

/// The rules' parameters the flags ask for.
impl From<&Config> for RevocationPolicy {
    fn from(config: &Config) -> Self {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4);
        RevocationPolicy {
            token_ttl_ms: ms(config.token_ttl),
            refresh_window_ms: ms(config.refresh_window),
            leeway_ms: ms(config.leeway),
            refresh_reuse_interval_ms: (config.refresh_reuse_detection == Toggle::On)
                .then(|| ms(config.refresh_reuse_interval)),
            max_clock_skew_ms: ms(config.max_clock_skew),
            audit_retention_ms: ms(config.audit_retention),
        }
    }
}

/// How the flags ask this instance to keep in step with the others.
impl From<&Config> for SyncSettings {
    fn from(config: &Config) -> Self {
        SyncSettings {
            mode: config.sync_mode,
            poll_interval: config.sync_poll_interval,
            // A safety net slower than half the staleness bound would let the caches go stale
            // while nothing is wrong.
            safety_poll_interval: config
                .sync_safety_poll_interval
                .min(config.max_staleness / 2)
                .max(Duration::from_millis(10)),
            nats_url: config.nats_url.clone(),
            nats_subject: config.nats_subject.clone(),
            nats_auth: crate::sync::NatsAuth {
                creds_file: config.nats_creds_file.clone(),
                nkey_file: config.nats_nkey_file.clone(),
                token_file: config.nats_token_file.clone(),
                tls_ca: config.nats_tls_ca.clone(),
                tls_client: config
                    .nats_tls_cert
                    .clone()
                    .zip(config.nats_tls_key.clone()),
            },
        }
    }
}

/// The tracing the flags ask for.
impl From<&Config> for TraceSettings {
    fn from(config: &Config) -> Self {
        TraceSettings {
            endpoint: config.otel_exporter_otlp_endpoint.clone(),
            traces_endpoint: config.otel_exporter_otlp_traces_endpoint.clone(),
            protocol: config.otel_exporter_otlp_protocol,
            timeout: Duration::from_millis(config.otel_exporter_otlp_timeout),
            service_name: config.otel_service_name.clone(),
            resource_attributes: config.otel_resource_attributes.clone(),
            sampler: config.otel_traces_sampler,
            sampler_arg: config.otel_traces_sampler_arg,
            disabled: config.otel_sdk_disabled,
            user_ids: config.trace_user_ids,
        }
    }
}

/// The PostgreSQL pool the flags ask for.
impl From<&Config> for PoolSettings {
    fn from(config: &Config) -> Self {
        PoolSettings {
            max_connections: config.database_max_connections,
            idle_timeout: config.database_idle_timeout,
            store_timeout: config.store_timeout,
            sync_key_file: config.sync_key_file.clone(),
            listen: config.sync_mode == SyncMode::Notify,
            migrate: config.migrate,
            transaction_pooler: config.database_pooler == DatabasePooler::Transaction,
        }
    }
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

/// The caches' sizes and trust the flags ask for.
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

impl From<&Config> for CacheSettings {
    fn from(config: &Config) -> Self {
        CacheSettings {
            cutoff_ttl: config.cutoff_cache_ttl,
            cutoff_capacity: config.cutoff_cache_capacity,
            denylist_filter: config.denylist_filter == Toggle::On,
            filter_expected_items: config.denylist_expected_items,
            filter_fp_rate: config.denylist_fp_rate,
            max_staleness: config.max_staleness,
            on_outage: config.on_store_outage.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracing_flags_take_the_opentelemetry_specifications_names() {
        let cli = Cli::try_parse_from([
            "token-sidecar",
            "--otel-exporter-otlp-endpoint",
            "http://collector:4317",
            "--otel-exporter-otlp-protocol",
            "grpc",
            "--otel-traces-sampler",
            "parentbased_traceidratio",
            "--otel-traces-sampler-arg",
            "0.1",
            "--trace-user-ids",
        ])
        .expect("parses");
        let traces = TraceSettings::from(&cli.config);
        assert_eq!(traces.protocol, OtlpProtocol::Grpc);
        assert_eq!(traces.sampler, SamplerName::parentbased_traceidratio);
        assert_eq!(traces.sampler_arg, Some(0.1));
        assert!(traces.user_ids);
        let defaults = Cli::try_parse_from(["token-sidecar"]).expect("parses");
        let traces = TraceSettings::from(&defaults.config);
        assert_eq!(traces.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(traces.sampler, SamplerName::parentbased_always_on);
        assert!(!traces.user_ids);
        assert!(
            Cli::try_parse_from([
                "token-sidecar",
                "--otel-exporter-otlp-protocol",
                "http/protobuf"
            ])
            .is_ok()
        );
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "5", "m", "5x", "-5s", "1.5h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert!(parse_positive_duration("0s").is_err());
    }

    #[test]
    fn defaults_match_the_spec() {
        let c = Config::parse_from(["token-sidecar"]);
        assert_eq!(c.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(c.metrics_listen.to_string(), "127.0.0.1:9464");
        assert_eq!(c.health_listen, None);
        assert_eq!(c.issuer, "token-sidecar");
        assert_eq!(c.audience, None);
        assert_eq!(c.token_ttl, Duration::from_secs(300));
        assert_eq!(c.refresh_window, Duration::from_secs(7 * 86_400));
        assert_eq!(c.leeway, Duration::ZERO);
        assert!(c.is_sqlite());
        assert_eq!(
            c.dev_key_path(),
            Some(PathBuf::from("token-sidecar.db.dev-key"))
        );
    }

    #[test]
    fn keys_repeat_and_the_dev_key_sits_beside_the_database() {
        let c = Config::parse_from([
            "token-sidecar",
            "--key",
            "a=HS256:/k/a",
            "--key",
            "b=HS512:/k/b",
            "--database-url",
            "sqlite:///var/lib/ts/state.db?mode=rwc",
        ]);
        assert_eq!(c.keys.len(), 2);
        assert_eq!(
            c.dev_key_path(),
            Some(PathBuf::from("/var/lib/ts/state.db.dev-key"))
        );
    }
}
