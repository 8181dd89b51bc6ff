//! What one worker knows — the keys, the copy of the revocation state, how fresh it is — and the
//! verdict on a request, decided from it alone. Pure (no host calls), so it is tested natively.
use std::rc::Rc;

// Entries are only ever inserted for tokens whose signature verified and compared on their full
// text, so a fast non-cryptographic hash is safe for the index.
use rustc_hash::FxHashMap;

use token_sidecar_core::clock::UnixMillis;
use token_sidecar_core::decision::{Decision, Presented};
use token_sidecar_core::feed::{FeedPage, Mirror, MirrorError, link_from_hex};
use token_sidecar_core::model::{ChangeSeq, LinkTag};
use token_sidecar_core::policy::RevocationPolicy;
use token_sidecar_core::reason::Reason;
use token_sidecar_core::sender::{Presentation, ReplayCache, Seen, SenderRules};
use token_sidecar_core::token::{
    Claims, KeyError, MAX_TOKEN_BYTES, TrustedIssuers, VerifyingKeys, decode_token,
};

use crate::config::Checked;

/// What the filter answers a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Decided here, as the sidecar would.
    Decided(Decision),
    /// The token decodes, but the revocation state is not in step: `when_stale` decides.
    Stale,
    /// A DPoP-bound token under the sidecar's `--dpop-nonce`: only the sidecar can check the
    /// nonce, so its `/auth` decides.
    AskSidecar,
}

/// One worker's state.
pub struct Shared {
    /// The configuration.
    pub checked: Checked,
    policy: RevocationPolicy,
    keys: VerifyingKeys,
    /// The sidecar's trusted issuers (SPEC §16), as its `/trusted-issuers` says.
    trusted: TrustedIssuers,
    mirror: Mirror,
    /// Where the next feed page starts.
    after: ChangeSeq,
    anchor: Option<LinkTag>,
    /// Whether the first full read (from 0 to a page that was not full) has finished.
    loaded: bool,
    /// Whether the last page was full: more may follow at once, so the next read must not be
    /// held as a long poll (a full last page would otherwise wait out `wait_ms` for nothing).
    behind: bool,
    /// When the feed was last read to its end, on the monotonic clock (ms).
    in_step_at: Option<u64>,
    /// The fleet's time the last page said, and when it arrived on the monotonic clock: the
    /// fleet's time now is that plus the monotonic time since (one clock read a request).
    fleet_at: Option<(UnixMillis, u64)>,
    /// Why the state cannot be trusted, besides age (it outgrew `max_entries`).
    broken: Option<String>,
    /// When the moot entries were last dropped (monotonic ms).
    purged_at: Option<u64>,
    /// A token failed its signature check: the keys may have rotated, read them again soon.
    keys_wanted: std::cell::Cell<bool>,
    /// Whether the sidecar's key set (when fetched) and its trusted issuers have been read once:
    /// until then a bad signature may only mean "not read yet", and is no final answer.
    keys_read: bool,
    trusted_read: bool,
    /// The proof rules (SPEC §15) and the proofs this worker accepted (single use).
    sender: SenderRules,
    replay: ReplayCache,
    /// Successful decodes with the current keys, by the token's exact text (SPEC §8).
    verified: std::cell::RefCell<FxHashMap<Box<str>, Rc<Claims>>>,
}

impl Shared {
    /// A worker with no state yet: not in step until the feed has been read.
    pub fn new(checked: Checked) -> Result<Self, KeyError> {
        let keys = VerifyingKeys::from_jwks(checked.local_jwks.as_deref())?;
        let policy = RevocationPolicy {
            leeway_ms: checked.config.leeway_seconds * 1_000,
            ..RevocationPolicy::default()
        };
        let mirror = Mirror::new(checked.config.max_entries);
        let keys_read = !checked.config.fetch_jwks;
        let sender = SenderRules {
            max_age_ms: checked.config.dpop_max_age_ms,
            leeway_ms: policy.leeway_ms,
        };
        Ok(Self {
            sender,
            replay: ReplayCache::new(sender.replay_window_ms()),
            checked,
            policy,
            keys,
            trusted: TrustedIssuers::default(),
            mirror,
            after: 0,
            anchor: None,
            loaded: false,
            behind: false,
            in_step_at: None,
            fleet_at: None,
            broken: None,
            purged_at: None,
            keys_wanted: std::cell::Cell::new(false),
            keys_read,
            trusted_read: false,
            verified: std::cell::RefCell::default(),
        })
    }

    /// The sidecar's published keys (its JWKS), with the local ones.
    pub fn set_fetched_keys(&mut self, jwks: &str) -> Result<(), KeyError> {
        let local = self.checked.local_jwks.as_deref();
        self.keys = VerifyingKeys::from_jwks(local.into_iter().chain([jwks]))?;
        self.keys_read = true;
        // A decode checked with a key that may be gone is never answered from memory.
        self.verified.borrow_mut().clear();
        Ok(())
    }

    /// The sidecar's trusted issuers and their keys (its `/trusted-issuers` document).
    pub fn set_trusted_issuers(&mut self, document: &[u8]) -> Result<(), String> {
        self.trusted = TrustedIssuers::from_document(document)?;
        self.trusted_read = true;
        self.verified.borrow_mut().clear();
        Ok(())
    }

    /// Whether a token failed its signature check since the keys were last asked for.
    pub fn keys_wanted(&self) -> bool {
        self.keys_wanted.get()
    }

    /// The keys are being asked for.
    pub fn keys_asked(&self) {
        self.keys_wanted.set(false);
    }

    /// The query of the next feed request: a long poll of `wait_ms` once the state is loaded
    /// and the last page was not full; until then each page is asked for at once.
    pub fn next_query(&self, limit: i64, wait_ms: u64) -> String {
        let mut path = format!(
            "/revocations/changes?after={}&limit={limit}&format=bin",
            self.after
        );
        if wait_ms > 0 && self.loaded && !self.behind {
            path.push_str(&format!("&wait_ms={wait_ms}"));
        }
        if let Some(anchor) = &self.anchor {
            path.push_str("&anchor=");
            path.push_str(&token_sidecar_core::feed::link_hex(anchor));
        }
        path
    }

    /// Applies a page read at `monotonic_ms`; answers whether the next page should be asked
    /// for at once.
    pub fn apply_page(&mut self, page: &FeedPage, monotonic_ms: u64) -> bool {
        self.fleet_at = Some((page.now_ms, monotonic_ms));
        for change in &page.changes {
            match self.mirror.apply(change, page.now_ms) {
                Ok(()) => {}
                Err(MirrorError::Full(n)) => {
                    self.broken = Some(format!("the revocation state outgrew max_entries ({n})"));
                    return false;
                }
                // A kind this build does not know refuses nothing here; a newer sidecar's.
                Err(MirrorError::UnknownKind(_)) => {}
            }
        }
        self.after = page.next;
        self.anchor = page.anchor.as_deref().and_then(link_from_hex);
        self.behind = page.more;
        if !page.more {
            self.loaded = true;
            self.in_step_at = Some(monotonic_ms);
            // Long polls answer on every change: the moot entries go at most once a poll
            // interval (a purge walks every entry).
            let every = self.checked.config.poll_interval_ms;
            if self
                .purged_at
                .is_none_or(|at| monotonic_ms.saturating_sub(at) >= every)
            {
                self.mirror.purge(page.now_ms);
                self.purged_at = Some(monotonic_ms);
            }
        }
        page.more
    }

    /// Whether the state outgrew `max_entries` (then only a restart helps).
    pub fn is_broken(&self) -> bool {
        self.broken.is_some()
    }

    /// The sidecar said the store's history is not the one followed: start again from 0.
    pub fn restart(&mut self) {
        self.mirror = Mirror::new(self.checked.config.max_entries);
        self.after = 0;
        self.anchor = None;
        self.loaded = false;
        self.behind = false;
        self.broken = None;
    }

    /// Whether the state may be trusted at `monotonic_ms`.
    pub fn in_step(&self, monotonic_ms: u64) -> bool {
        self.loaded
            && self.broken.is_none()
            && self.in_step_at.is_some_and(|at| {
                monotonic_ms.saturating_sub(at) <= self.checked.config.max_staleness_ms
            })
    }

    /// How long since a read reached the end (None: never in step).
    pub fn staleness_ms(&self, monotonic_ms: u64) -> Option<u64> {
        self.in_step_at.map(|at| monotonic_ms.saturating_sub(at))
    }

    /// Held entries, for the log and the metrics.
    pub fn entries(&self) -> usize {
        self.mirror.len()
    }

    /// The one decode path, answered from the verified-token cache when this exact token
    /// decoded before with these keys (SPEC §8: keyed by the token itself, so no other token can
    /// hit its entry; bounded by emptying it when full). In a Wasm VM even an HMAC check and the
    /// JSON parse cost far more than the lookup, so every algorithm is remembered.
    fn decode(&self, token: &str) -> Result<Rc<Claims>, Reason> {
        let config = &self.checked.config;
        let decode = || {
            decode_token(
                &self.keys,
                &config.issuer,
                config.audience.as_deref(),
                &self.trusted,
                token,
            )
            .map(Rc::new)
        };
        let capacity = config.verified_cache_entries;
        if capacity == 0 || token.len() > MAX_TOKEN_BYTES {
            return decode();
        }
        if let Some(claims) = self.verified.borrow().get(token) {
            return Ok(Rc::clone(claims));
        }
        let claims = decode()?;
        let mut verified = self.verified.borrow_mut();
        if verified.len() >= capacity {
            verified.clear();
        }
        verified.insert(token.into(), Rc::clone(&claims));
        Ok(claims)
    }

    /// The fleet's time at `monotonic_ms`, once a page has said it.
    pub fn fleet_ms(&self, monotonic_ms: u64) -> Option<UnixMillis> {
        self.fleet_at.map(|(fleet, at)| {
            let since = i64::try_from(monotonic_ms.saturating_sub(at)).unwrap_or(i64::MAX);
            fleet.saturating_add(since)
        })
    }

    /// The verdict on a request carrying `presented`, at `monotonic_ms`: the sidecar's decode
    /// path and rules, in Verify's order (a token that fails its own checks is refused whatever
    /// the state's freshness). The time is the fleet's, from the last page; `wall_ms` (this
    /// worker's clock, read only then) stands in before any page has said it.
    ///
    /// A sender-constrained token (SPEC §15) needs its proof: `request` carries the request's
    /// method, URI and `DPoP` headers; `certificate` (the peer certificate's thumbprint) is
    /// asked for only when the token is bound to one.
    pub fn judge(
        &self,
        presented: Presented<'_>,
        request: Presentation<'_>,
        certificate: impl FnOnce() -> Option<[u8; 32]>,
        wall_ms: impl FnOnce() -> UnixMillis,
        monotonic_ms: u64,
    ) -> Verdict {
        let (token, scheme) = match presented.token() {
            Ok(presented) => presented,
            Err(decided) => return Verdict::Decided(decided),
        };
        let now = self.fleet_ms(monotonic_ms).unwrap_or_else(wall_ms);
        let claims = match self
            .decode(token)
            .and_then(|c| self.policy.check_lifetime(&c, now).map(|()| c))
        {
            Ok(claims) => claims,
            Err(reason) => {
                match reason {
                    Reason::BadSignature if !(self.keys_read && self.trusted_read) => {
                        // Its key may be one not read yet: no final answer before the read.
                        self.keys_wanted.set(true);
                        return Verdict::Stale;
                    }
                    Reason::BadSignature => self.keys_wanted.set(true),
                    // An entry never outlives its token.
                    Reason::Expired => {
                        self.verified.borrow_mut().remove(token);
                    }
                    _ => {}
                }
                return Verdict::Decided(Decision::deny(reason));
            }
        };
        if !self.in_step(monotonic_ms) {
            return Verdict::Stale;
        }
        if let Err(reason) = self.mirror.check(&claims, now) {
            return Verdict::Decided(Decision::deny(reason));
        }
        if claims.binding.is_unbound() {
            return Verdict::Decided(Decision::allow(&claims, &self.checked.forwarded));
        }
        if claims.binding.jkt.is_some() && self.checked.config.dpop_nonce {
            return Verdict::AskSidecar;
        }
        let presentation = Presentation {
            scheme,
            certificate_sha256: match claims.binding.x5t_s256 {
                Some(_) => certificate(),
                None => None,
            },
            ..request
        };
        let refuse =
            |reason, check| Verdict::Decided(Decision::refuse(reason, scheme, Some(check), None));
        match self
            .sender
            .check(&claims.binding, token, &presentation, now)
        {
            Err(refusal) => refuse(refusal.reason, refusal.check),
            Ok(None) => Verdict::Decided(Decision::allow(&claims, &self.checked.forwarded)),
            Ok(Some(proof)) => match self.replay.record(&proof.jkt, &proof.jti, now) {
                Seen::First => Verdict::Decided(Decision::allow(&claims, &self.checked.forwarded)),
                Seen::Again => refuse(Reason::ProofReplayed, "jti"),
                Seen::Full => refuse(Reason::ProofReplayed, "jti-capacity"),
            },
        }
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
