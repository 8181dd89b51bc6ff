//! Who may call the privileged RPCs (Issue, Revoke by id or user, LiftBan, GetUserStatus) and
//! introspection: with `--admin-token-file`, callers present `authorization: Bearer
//! <credential>`, compared in constant time. Without it they are open (loopback sidecar, or
//! mutual TLS beyond it).
/// The bearer credential privileged RPCs must present. Its Debug output hides it.
pub struct AdminCredential(Vec<u8>);

impl AdminCredential {
    /// Shortest credential accepted.
    pub const MIN_LEN: usize = 16;

    /// Wraps a credential (surrounding whitespace, such as a file's final newline, is dropped).
    pub fn new(raw: &[u8]) -> Option<Self> {
        let text = raw.trim_ascii();
        (text.len() >= Self::MIN_LEN).then(|| Self(text.to_vec()))
    }

    /// Compares in time independent of where the first difference is.
    pub fn matches(&self, presented: &[u8]) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(presented, &self.0).is_ok()
    }
}

impl std::fmt::Debug for AdminCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminCredential(..)")
    }
}
