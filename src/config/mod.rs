//! Configuration: command-line flags, each also readable from an environment variable.
use std::path::PathBuf;

use clap::Parser;

mod api;
mod caches;
mod idp;
mod limits;
mod parse;
mod secret;
mod settings;
mod store;
mod telemetry;
mod tokens;
mod values;

pub use api::ApiArgs;
pub use caches::CacheArgs;
pub use idp::IdpArgs;
pub use limits::LimitArgs;
pub use parse::parse_duration;
pub use secret::Secret;
pub use store::StoreArgs;
pub use telemetry::TelemetryArgs;
pub use tokens::TokenArgs;
pub use values::{DatabasePooler, LogFormat, MigrateAtStart, OnStoreOutage, Toggle};

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
    /// The gRPC API, TLS, the HTTP listener and the proxies.
    #[command(flatten)]
    pub api: ApiArgs,

    /// Tokens and the keys that sign and verify them.
    #[command(flatten)]
    pub tokens: TokenArgs,

    /// The store and how instances keep in step.
    #[command(flatten)]
    pub store: StoreArgs,

    /// The caches in front of the store.
    #[command(flatten)]
    pub caches: CacheArgs,

    /// Bounds on connections, requests and waits.
    #[command(flatten)]
    pub limits: LimitArgs,

    /// Logs, metrics and traces.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,

    /// The identity providers heard, and the audit trail.
    #[command(flatten)]
    pub idp: IdpArgs,
}

impl Config {
    /// The identity provider receivers' settings, parsed and checked (every issuer's subjects
    /// map to users of its own).
    pub fn idp_settings(
        &self,
    ) -> Result<crate::idp::IdpSettings, crate::startup_error::StartupError> {
        use crate::idp::TrustedIssuer;
        use crate::startup_error::StartupError;
        let oidc_issuers = TrustedIssuer::parse_list(&self.idp.oidc_issuers)
            .map_err(|e| StartupError::IdpConfig(format!("--oidc-issuer: {e}")))?;
        let ssf_transmitters = TrustedIssuer::parse_list(&self.idp.ssf_transmitters)
            .map_err(|e| StartupError::IdpConfig(format!("--ssf-transmitter: {e}")))?;
        let token_issuers =
            crate::idp::token_issuers::TokenIssuer::parse_list(&self.idp.trusted_issuers)
                .map_err(|e| StartupError::IdpConfig(format!("--trusted-issuer: {e}")))?;
        if let Some(own) = token_issuers
            .iter()
            .find(|t| t.issuer == self.tokens.issuer)
        {
            return Err(StartupError::IdpConfig(format!(
                "--trusted-issuer: {} is this sidecar's own --issuer: its tokens are checked with \
                 --key and --issuer-jwks",
                own.issuer
            )));
        }
        crate::idp::check_subject_prefixes(
            oidc_issuers
                .iter()
                .chain(&ssf_transmitters)
                .map(|t| (t.issuer.as_str(), t.subject_prefix.as_str()))
                .chain(
                    token_issuers
                        .iter()
                        .map(|t| (t.issuer.as_str(), t.subject_prefix.as_str())),
                ),
        )
        .map_err(StartupError::IdpConfig)?;
        Ok(crate::idp::IdpSettings {
            token_issuers,
            oidc_issuers,
            oidc_client_id: self.idp.oidc_client_id.clone(),
            ssf_transmitters,
            ssf_audience: self.idp.ssf_audience.clone(),
            ssf_email_subjects: self.idp.ssf_email_subjects,
        })
    }

    /// The database URL in force: the configured one, or the embedded SQLite default.
    pub fn database_url(&self) -> String {
        self.store.database_url.as_ref().map_or_else(
            || format!("sqlite:{DEFAULT_SQLITE_FILE}"),
            |url| url.expose().to_owned(),
        )
    }

    /// Whether the store is the embedded SQLite file.
    pub fn is_sqlite(&self) -> bool {
        self.database_url().starts_with("sqlite:")
    }

    /// Who issues for a verify-only sidecar, as its refusals name it: the `iss` it accepts and
    /// where it reads the issuer's keys.
    pub fn issuing_service(&self) -> String {
        match &self.tokens.issuer_jwks {
            Some(source) => format!("iss {:?}, keys at {source}", self.tokens.issuer),
            None => format!("iss {:?}", self.tokens.issuer),
        }
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

#[cfg(test)]
mod tests;
