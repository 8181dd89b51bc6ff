//! Who may call the privileged RPCs (Issue, Revoke by id or user, LiftBan, GetUserStatus) and
//! introspection: with `--admin-token-file`, callers present `authorization: Bearer
//! <credential>`, compared in constant time; the file is re-read like the keys. Without it they
//! are open (loopback sidecar, or mutual TLS beyond it).
/// The bearer credential privileged RPCs must present; replaceable while serving (the file is
/// re-read on SIGHUP and every `--key-reload-interval`). Its Debug output hides it.
pub struct AdminCredential(arc_swap::ArcSwap<Vec<u8>>);

impl AdminCredential {
    /// Shortest credential accepted.
    pub const MIN_LEN: usize = 16;

    /// Wraps a credential (surrounding whitespace, such as a file's final newline, is dropped).
    pub fn new(raw: &[u8]) -> Option<Self> {
        Self::usable(raw).map(|c| Self(arc_swap::ArcSwap::from_pointee(c)))
    }

    fn usable(raw: &[u8]) -> Option<Vec<u8>> {
        let text = raw.trim_ascii();
        (text.len() >= Self::MIN_LEN).then(|| text.to_vec())
    }

    /// Replaces the credential; None (and the old one kept) when `raw` is too short. Some(true)
    /// when it changed.
    pub fn replace(&self, raw: &[u8]) -> Option<bool> {
        let new = Self::usable(raw)?;
        if **self.0.load() == new {
            return Some(false);
        }
        self.0.store(std::sync::Arc::new(new));
        Some(true)
    }

    /// Compares in time independent of where the first difference is.
    pub fn matches(&self, presented: &[u8]) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(presented, &self.0.load()).is_ok()
    }
}

impl std::fmt::Debug for AdminCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminCredential(..)")
    }
}
