//! Who may call the privileged RPCs (Issue, Revoke by id or user, LiftBan, GetUserStatus) and
//! introspection: with `--admin-token-file`, callers present `authorization: Bearer
//! <credential>`, compared in constant time; the file is re-read like the keys. Without it they
//! are open (loopback sidecar, or mutual TLS beyond it).
use crate::error_code::ErrorCode;
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
        Some(swap_if_changed(&self.0, Self::usable(raw)?))
    }

    /// Compares in time independent of where the first difference is.
    pub fn matches(&self, presented: &[u8]) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(presented, &self.0.load()).is_ok()
    }
}

/// Stores `new` unless it is what `slot` holds already; whether it changed.
fn swap_if_changed<T: PartialEq>(slot: &arc_swap::ArcSwap<T>, new: T) -> bool {
    if **slot.load() == new {
        return false;
    }
    slot.store(std::sync::Arc::new(new));
    true
}

impl std::fmt::Debug for AdminCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminCredential(..)")
    }
}

/// Credentials, one per line of a file (`--introspection-token-file`): each admits its holder
/// to one thing. Replaceable while serving like the admin credential; Debug hides them.
pub struct CredentialList(arc_swap::ArcSwap<Vec<Vec<u8>>>);

impl CredentialList {
    /// The credentials in `raw`, one per line (blank lines and `#` comments skipped); None when a
    /// line is shorter than [`AdminCredential::MIN_LEN`] or there is none.
    pub fn new(raw: &[u8]) -> Option<Self> {
        Self::usable(raw).map(|list| Self(arc_swap::ArcSwap::from_pointee(list)))
    }

    fn usable(raw: &[u8]) -> Option<Vec<Vec<u8>>> {
        let mut list = Vec::new();
        for line in raw.split(|b| *b == b'\n') {
            let line = line.trim_ascii();
            if line.is_empty() || line.starts_with(b"#") {
                continue;
            }
            if line.len() < AdminCredential::MIN_LEN {
                return None;
            }
            list.push(line.to_vec());
        }
        (!list.is_empty()).then_some(list)
    }

    /// Replaces the list; None (and the old one kept) when `raw` is unusable. Some(true) when it
    /// changed.
    pub fn replace(&self, raw: &[u8]) -> Option<bool> {
        Some(swap_if_changed(&self.0, Self::usable(raw)?))
    }

    /// Whether `presented` is one of them (each compared in constant time).
    pub fn matches(&self, presented: &[u8]) -> bool {
        self.0.load().iter().fold(false, |found, credential| {
            found | aws_lc_rs::constant_time::verify_slices_are_equal(presented, credential).is_ok()
        })
    }
}

impl std::fmt::Debug for CredentialList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CredentialList(..)")
    }
}

/// An allowed mutual-TLS client identity (`--admin-identity`): a SPIFFE ID (or other URI) or a
/// DNS name from the certificate's subject alternative names, exact, or with `*` standing for
/// one last path segment (`spiffe://cluster.local/ns/ops/sa/*`) or one leftmost DNS label
/// (`*.ops.svc.cluster.local`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityPattern {
    /// This identity only.
    Exact(String),
    /// A URI whose path ends in one more segment after this prefix (ending in `/`).
    UriSegment(String),
    /// A DNS name with one more label before this suffix (starting with `.`).
    DnsLabel(String),
}

impl IdentityPattern {
    /// Parses a pattern; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let bad = |why: &str| Err(format!("{text:?}: {why}"));
        if text.is_empty() {
            return bad("empty");
        }
        let wildcards = text.matches('*').count();
        if wildcards == 0 {
            return Ok(IdentityPattern::Exact(text.to_owned()));
        }
        if wildcards > 1 {
            return bad("at most one `*`");
        }
        if text.contains("://") {
            return match text.strip_suffix('*') {
                // A trust domain (authority) and a path before the last segment.
                Some(prefix)
                    if prefix.ends_with('/')
                        && prefix
                            .split_once("://")
                            .is_some_and(|(_, rest)| rest.find('/').is_some_and(|i| i > 0)) =>
                {
                    Ok(IdentityPattern::UriSegment(prefix.to_owned()))
                }
                _ => bad("`*` may only be a URI's whole last path segment (…/sa/*)"),
            };
        }
        match text.strip_prefix('*') {
            Some(suffix) if suffix.starts_with('.') && suffix.len() > 1 => {
                Ok(IdentityPattern::DnsLabel(suffix.to_ascii_lowercase()))
            }
            _ => bad("`*` may only be a DNS name's whole leftmost label (*.example.com)"),
        }
    }

    /// Whether a certificate identity matches.
    pub fn matches(&self, identity: &str) -> bool {
        match self {
            IdentityPattern::Exact(exact) => {
                exact == identity
                    || (!exact.contains("://") && exact.eq_ignore_ascii_case(identity))
            }
            IdentityPattern::UriSegment(prefix) => identity
                .strip_prefix(prefix.as_str())
                .is_some_and(|rest| !rest.is_empty() && !rest.contains(['/', '?', '#'])),
            IdentityPattern::DnsLabel(suffix) => {
                let identity = identity.to_ascii_lowercase();
                identity
                    .strip_suffix(suffix.as_str())
                    .is_some_and(|label| !label.is_empty() && !label.contains('.'))
            }
        }
    }
}

/// Who the caller on a connection is: its address and, over mutual TLS, the identities its
/// certificate names (URI and DNS subject alternative names). Put in every request's
/// extensions by the server.
#[derive(Debug, Clone, Default)]
pub struct CallerInfo {
    /// The peer's address.
    pub remote_addr: Option<std::net::SocketAddr>,
    /// The identities the client certificate names; None without a client certificate.
    pub identities: Option<std::sync::Arc<[String]>>,
}

/// The caller's IP address from the `CallerInfo` a listener put in the request, if any: what
/// per-caller budgets and the store's open lane are keyed by.
pub fn caller_ip(caller: Option<&CallerInfo>) -> Option<std::net::IpAddr> {
    caller
        .and_then(|caller| caller.remote_addr)
        .map(|addr| addr.ip())
}

/// The URI and DNS subject alternative names of a DER certificate (none if it cannot be read).
pub fn certificate_identities(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, certificate)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = certificate.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some((*uri).to_owned()),
            GeneralName::DNSName(dns) => Some((*dns).to_owned()),
            _ => None,
        })
        .collect()
}

/// Who a privileged caller on the open loopback API is, in the audit trail.
pub const LOOPBACK: &str = "loopback";
/// Who a caller with the admin credential is, in the audit trail.
pub const ADMIN: &str = "admin";
/// Who revoked a token they hold (Revoke{token}, RFC 7009) without a privileged credential.
pub const TOKEN_HOLDER: &str = "token-holder";

/// Who may call what (SPEC §12). The open RPCs need nothing; the privileged ones are open only on
/// an API with no caller authentication configured (a loopback sidecar), and otherwise need the
/// admin credential or a client certificate naming an allowed identity — a certificate the
/// client CA signed is not enough by itself. Introspection needs an introspection credential or
/// the admin credential.
#[derive(Debug, Clone, Default)]
pub struct Callers {
    /// `--admin-token-file`.
    pub admin: Option<std::sync::Arc<AdminCredential>>,
    /// `--admin-identity`.
    pub identities: std::sync::Arc<[IdentityPattern]>,
    /// Whether the privileged RPCs are open to every caller: only on a loopback-only API with
    /// no caller authentication configured (a sidecar serving its own pod).
    pub open: bool,
    /// `--introspection-token-file`.
    pub introspection: Option<std::sync::Arc<CredentialList>>,
    /// `--feed-token-file`.
    pub feed: Option<std::sync::Arc<CredentialList>>,
    /// Whether the change feed is open to every caller: only on a loopback-only HTTP listener
    /// with neither the admin nor a feed credential configured (a proxy in the same pod).
    pub feed_open: bool,
}

/// Why a caller may not call a privileged RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No credential and no allowed identity.
    Missing,
    /// A bearer credential that is not the admin's.
    Invalid,
    /// A client certificate whose identities are not on the allow-list.
    IdentityNotAllowed,
}

impl Refusal {
    /// The ErrorInfo reason.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Missing => ErrorCode::MissingCredential.as_str(),
            Refusal::Invalid => ErrorCode::InvalidCredential.as_str(),
            Refusal::IdentityNotAllowed => ErrorCode::IdentityNotAllowed.as_str(),
        }
    }

    /// A message for people.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::Missing => {
                "this RPC needs the admin credential (`authorization: Bearer <credential>`) or a \
                 client certificate naming an allowed identity (--admin-identity)"
            }
            Refusal::Invalid => "the bearer credential is not valid",
            Refusal::IdentityNotAllowed => {
                "the client certificate names no identity allowed to call this RPC \
                 (--admin-identity)"
            }
        }
    }
}

impl Callers {
    /// Whether a caller presenting `bearer` (the credential of an `authorization: Bearer`
    /// header) over a connection whose client certificate names `identities` (None: no
    /// certificate) may call a privileged RPC.
    pub fn admit_privileged(
        &self,
        bearer: Option<&str>,
        identities: Option<&[String]>,
    ) -> Result<String, Refusal> {
        if self.open {
            return Ok(LOOPBACK.to_owned());
        }
        if let (Some(admin), Some(credential)) = (&self.admin, bearer)
            && admin.matches(credential.as_bytes())
        {
            return Ok(ADMIN.to_owned());
        }
        if let Some(identity) = identities
            .unwrap_or_default()
            .iter()
            .find(|id| self.identities.iter().any(|p| p.matches(id)))
        {
            return Ok(identity.clone());
        }
        Err(match (bearer, identities) {
            (Some(_), _) => Refusal::Invalid,
            (None, Some(_)) => Refusal::IdentityNotAllowed,
            (None, None) => Refusal::Missing,
        })
    }

    /// Whether a caller presenting `bearer` may read the change feed: a feed credential, the
    /// admin's, or anyone while the feed is open.
    pub fn admit_feed(&self, bearer: Option<&str>) -> bool {
        self.feed_open || self.on_list_or_admin(self.feed.as_deref(), bearer)
    }

    /// Whether `bearer` may introspect: an introspection credential or the admin credential.
    pub fn admit_introspection(&self, bearer: Option<&str>) -> bool {
        self.on_list_or_admin(self.introspection.as_deref(), bearer)
    }

    /// Whether `bearer` is on `list` or is the admin credential.
    fn on_list_or_admin(&self, list: Option<&CredentialList>, bearer: Option<&str>) -> bool {
        let Some(credential) = bearer.map(str::as_bytes) else {
            return false;
        };
        list.is_some_and(|list| list.matches(credential))
            || self
                .admin
                .as_ref()
                .is_some_and(|admin| admin.matches(credential))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_patterns_match_one_segment_or_label_only() {
        let sa = IdentityPattern::parse("spiffe://cluster.local/ns/ops/sa/*").expect("valid");
        assert!(sa.matches("spiffe://cluster.local/ns/ops/sa/token-admin"));
        assert!(!sa.matches("spiffe://cluster.local/ns/ops/sa/"));
        assert!(!sa.matches("spiffe://cluster.local/ns/ops/sa/a/b"));
        assert!(!sa.matches("spiffe://cluster.local/ns/other/sa/token-admin"));
        let exact = IdentityPattern::parse("spiffe://cluster.local/ns/ops/sa/admin").expect("ok");
        assert!(exact.matches("spiffe://cluster.local/ns/ops/sa/admin"));
        assert!(!exact.matches("spiffe://cluster.local/ns/ops/sa/admin2"));
        let dns = IdentityPattern::parse("*.ops.svc.cluster.local").expect("valid");
        assert!(dns.matches("admin.ops.svc.cluster.local"));
        assert!(dns.matches("Admin.OPS.svc.cluster.local"));
        assert!(!dns.matches("a.b.ops.svc.cluster.local"));
        assert!(!dns.matches("ops.svc.cluster.local"));
        for bad in [
            "",
            "spiffe://x/*/sa",
            "a*.example.com",
            "*.*.example.com",
            "*",
            "spiffe://*",
        ] {
            assert!(IdentityPattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_certificate_alone_admits_nothing_privileged() {
        let callers = Callers {
            admin: None,
            identities: vec![IdentityPattern::parse("spiffe://td/ns/ops/sa/*").expect("ok")].into(),
            open: false,
            introspection: CredentialList::new(b"introspection-credential-0001\n").map(Into::into),
            feed: CredentialList::new(b"feed-credential-00000000001\n").map(Into::into),
            feed_open: false,
        };
        let other = ["spiffe://td/ns/other/sa/some-workload".to_owned()];
        assert_eq!(
            callers.admit_privileged(None, Some(&other)),
            Err(Refusal::IdentityNotAllowed)
        );
        let ops = ["spiffe://td/ns/ops/sa/token-admin".to_owned()];
        assert_eq!(
            callers.admit_privileged(None, Some(&ops)),
            Ok("spiffe://td/ns/ops/sa/token-admin".to_owned())
        );
        assert_eq!(callers.admit_privileged(None, None), Err(Refusal::Missing));
        assert_eq!(
            callers.admit_privileged(None, Some(&[])),
            Err(Refusal::IdentityNotAllowed)
        );
        // An introspection credential introspects and nothing else.
        assert_eq!(
            callers.admit_privileged(Some("introspection-credential-0001"), None),
            Err(Refusal::Invalid)
        );
        assert!(callers.admit_introspection(Some("introspection-credential-0001")));
        assert!(!callers.admit_introspection(Some("introspection-credential-0002")));
        // A feed credential reads the feed and nothing else; an introspection one does not.
        assert!(callers.admit_feed(Some("feed-credential-00000000001")));
        assert!(!callers.admit_feed(Some("introspection-credential-0001")));
        assert!(!callers.admit_feed(None));
        assert!(!callers.admit_introspection(Some("feed-credential-00000000001")));
        assert_eq!(
            callers.admit_privileged(Some("feed-credential-00000000001"), None),
            Err(Refusal::Invalid)
        );
        // A loopback API with no caller authentication configured (a sidecar): open.
        let sidecar = Callers {
            open: true,
            ..Callers::default()
        };
        assert_eq!(
            sidecar.admit_privileged(None, None),
            Ok(LOOPBACK.to_owned())
        );
        // Beyond loopback with nothing configured (--allow-insecure-remote): nobody.
        assert_eq!(
            Callers::default().admit_privileged(None, None),
            Err(Refusal::Missing)
        );
    }

    #[test]
    fn credential_lists_take_one_per_line() {
        let list = CredentialList::new(
            b"# resource servers\nfirst-credential-0001\n\nsecond-credential-002\n",
        )
        .expect("usable");
        assert!(list.matches(b"first-credential-0001"));
        assert!(list.matches(b"second-credential-002"));
        assert!(!list.matches(b"first-credential-000"));
        assert!(CredentialList::new(b"short\n").is_none());
        assert!(CredentialList::new(b"\n# nothing\n").is_none());
    }
}
