//! The fleet's key: the secret announcements are sealed with and the database's identity,
//! read at first use and forgotten after a forked history.
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use sqlx::PgConnection;

use crate::store::StoreError;
use crate::store::announcement::{FleetKey, MIN_SECRET_BYTES};

/// Where the fleet's key comes from, and the key once read.
#[derive(Debug, Default)]
pub(super) struct FleetSource {
    cached: ArcSwapOption<FleetKey>,
    /// `--sync-key-file`, instead of the secret the migrations generated.
    sync_key_file: Option<PathBuf>,
}

impl FleetSource {
    pub(super) fn new(sync_key_file: Option<PathBuf>) -> Self {
        Self {
            cached: ArcSwapOption::empty(),
            sync_key_file,
        }
    }

    /// The key, if it was read already.
    pub(super) fn cached(&self) -> Option<Arc<FleetKey>> {
        self.cached.load_full()
    }

    /// Forgets the key: the next use reads it again (the address may now lead elsewhere).
    pub(super) fn forget(&self) {
        self.cached.store(None);
    }

    /// The fleet's key, read on `conn` at first use: the secret (`--sync-key-file`, else the
    /// one the migrations generated) and the database's identity.
    ///
    /// The identity is one a copy cannot keep: the id the migrations generated (a dump carries
    /// it along), the cluster's system identifier (another cluster has another) and the
    /// database's oid (a `CREATE DATABASE … TEMPLATE` copy has another). A promoted streaming
    /// replica has all three, so it keeps its fleet. A physical backup restored as a second
    /// cluster has them too: its history forks from ours with its first change, which the
    /// history chain shows.
    pub(super) async fn key_on(
        &self,
        conn: &mut PgConnection,
        prepared: bool,
    ) -> Result<Arc<FleetKey>, StoreError> {
        if let Some(fleet) = self.cached() {
            return Ok(fleet);
        }
        // The identity and the generated secret in one round trip (a start pays it once).
        macro_rules! identity {
            () => {
                "(SELECT id FROM store_identity LIMIT 1)
                 || ':' || (SELECT system_identifier FROM pg_control_system())::text
                 || ':' || (SELECT oid FROM pg_database WHERE datname = current_database())::text"
            };
        }
        let (identity, secret) = match &self.sync_key_file {
            Some(path) => {
                let (identity,): (String,) = sqlx::query_as(concat!("SELECT ", identity!()))
                    .persistent(prepared)
                    .fetch_one(&mut *conn)
                    .await?;
                (identity, read_sync_key(path)?)
            }
            None => {
                let sql = concat!(
                    "SELECT ",
                    identity!(),
                    ", (SELECT secret FROM sync_key LIMIT 1)"
                );
                let (identity, secret): (String, Vec<u8>) = sqlx::query_as(sql)
                    .persistent(prepared)
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(|e| match e.to_string().contains("sync_key") {
                        true => StoreError::SyncKey(format!(
                            "cannot read the table sync_key ({e}); grant this role SELECT on it, \
                             or give --sync-key-file"
                        )),
                        false => StoreError::from(e),
                    })?;
                (identity, secret)
            }
        };
        let fleet = Arc::new(FleetKey::new(&identity, &secret));
        self.cached.store(Some(fleet.clone()));
        Ok(fleet)
    }
}

/// The sync key in `path`: at least [`MIN_SECRET_BYTES`] bytes, a trailing newline ignored.
pub fn read_sync_key(path: &std::path::Path) -> Result<Vec<u8>, StoreError> {
    let mut secret = crate::secret_file::read(path)
        .map_err(|e| StoreError::SyncKey(format!("{}: {e}", path.display())))?;
    while secret.last().is_some_and(|b| b.is_ascii_whitespace()) {
        secret.pop();
    }
    if secret.len() < MIN_SECRET_BYTES {
        return Err(StoreError::SyncKey(format!(
            "{}: shorter than {MIN_SECRET_BYTES} bytes",
            path.display()
        )));
    }
    Ok(secret)
}
