//! One process owns the embedded database file (SPEC §6): the lock it holds, and the identity
//! of the file (and its write-ahead log) as it was opened.
use std::io::{Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::store::StoreError;

/// How long a starting process waits for the file's previous owner to exit (a restart on the
/// same volume) before it refuses to start.
const OWNER_WAIT: Duration = Duration::from_secs(2);

/// This process's claim on a database file, and the identity the file (and its write-ahead
/// log) had when it was opened.
#[derive(Debug)]
pub(super) struct Owner {
    /// Holds the exclusive lock while open.
    pub(super) _lock: std::fs::File,
    /// The connection that keeps the write-ahead log in place (see [`SqliteStore::open`]).
    pub(super) _keeper: parking_lot::Mutex<Option<sqlx::SqliteConnection>>,
    pub(super) file: PathBuf,
    pub(super) identity: (u64, u64),
    /// `<file>-wal`, and its identity once it has been seen. The pool keeps a connection open
    /// for the process's life, so SQLite never deletes or recreates it by itself: missing or
    /// replaced, someone else did.
    pub(super) wal: PathBuf,
    pub(super) wal_identity: parking_lot::Mutex<Option<(u64, u64)>>,
}

impl Owner {
    /// Takes the lock on `<file>.lock`, waiting up to [`OWNER_WAIT`] for a previous owner.
    pub(super) async fn claim(file: &Path) -> Result<std::fs::File, StoreError> {
        let mut lock_path = file.as_os_str().to_owned();
        lock_path.push(".lock");
        let lock_path = PathBuf::from(lock_path);
        let mut lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| StoreError::Owner(format!("{}: {e}", lock_path.display())))?;
        let deadline = tokio::time::Instant::now() + OWNER_WAIT;
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock)
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    let mut holder = String::new();
                    let _ = lock.read_to_string(&mut holder);
                    let holder = holder.trim();
                    let holder = if holder.is_empty() {
                        "another process"
                    } else {
                        holder
                    };
                    return Err(StoreError::Owner(format!(
                        "{} is in use by process {holder} (it holds {}); one process per \
                         SQLite file: stop it, or give this one another file or PostgreSQL",
                        file.display(),
                        lock_path.display()
                    )));
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(StoreError::Owner(format!("{}: {e}", lock_path.display())));
                }
            }
        }
        // Name this process for the next one that tries.
        let named = lock
            .set_len(0)
            .and_then(|()| lock.rewind())
            .and_then(|()| writeln!(lock, "{}", std::process::id()));
        if let Err(e) = named {
            tracing::debug!(error = %e, "could not write the owner's pid into the lock file");
        }
        Ok(lock)
    }

    /// The file's identity: device and inode.
    pub(super) fn identity_of(file: &Path) -> std::io::Result<(u64, u64)> {
        std::fs::metadata(file).map(|m| (m.dev(), m.ino()))
    }

    /// Whether the file this process opened, and its write-ahead log, are still the ones at
    /// their paths.
    pub(super) fn check(&self) -> Result<(), StoreError> {
        Self::check_one(&self.file, self.identity)?;
        let mut wal = self.wal_identity.lock();
        match *wal {
            Some(identity) => Self::check_one(&self.wal, identity),
            None => {
                // Not created yet (no write so far): remembered from the first time it exists.
                *wal = Self::identity_of(&self.wal).ok();
                Ok(())
            }
        }
    }

    fn check_one(path: &Path, identity: (u64, u64)) -> Result<(), StoreError> {
        match Self::identity_of(path) {
            Ok(found) if found == identity => Ok(()),
            Ok(_) => Err(StoreError::Lost(format!(
                "{} was replaced under the running process",
                path.display()
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StoreError::Lost(format!(
                "{} was deleted under the running process",
                path.display()
            ))),
            Err(e) => Err(StoreError::Lost(format!("{}: {e}", path.display()))),
        }
    }
}
