//! Reading secret files (keys, the admin credential, TLS material) safely: bounded in size, so
//! a path that points at `/dev/zero` or a log file cannot exhaust memory, and with a warning
//! each time a secret is loaded from a file every user on the host can read. Symlinks are
//! followed, as Kubernetes mounts Secrets through them.
use std::io::Read;
use std::path::Path;

/// Largest secret file read, in bytes: far above any PEM key, certificate chain or credential.
pub const MAX_SECRET_FILE_BYTES: u64 = 1024 * 1024;

/// The file's bytes, refusing anything over [`MAX_SECRET_FILE_BYTES`].
pub fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_FILE_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {MAX_SECRET_FILE_BYTES} bytes; not a key or credential file"),
        ));
    }
    Ok(bytes)
}

/// Secrets should be readable by their owner (and group) only; say so if not.
pub fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o004 != 0
        {
            tracing::warn!(
                path = %path.display(),
                "secret file is readable by every user on this host; chmod o-r it"
            );
        }
    }
    // Elsewhere (WebAssembly) there are no Unix permission bits to look at.
    #[cfg(not(unix))]
    let _ = path;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endless_files_are_refused_and_symlinks_followed() {
        assert!(read(Path::new("/dev/zero")).is_err());
        let dir = tempfile::tempdir().expect("temp dir");
        let real = dir.path().join("..data-key");
        std::fs::write(&real, b"secret").expect("write");
        let link = dir.path().join("key");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        assert_eq!(read(&link).ok(), Some(b"secret".to_vec()));
    }
}
