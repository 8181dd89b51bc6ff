//! The revocation policy: SPEC §4 as pure rules over claims, the user's cutoff and the clock.
//!
//! Nothing here knows about gRPC, SQL or caches; every rule is unit-tested below.
use crate::clock::{UnixMillis, UnixSeconds};
use crate::model::DenyKind;
use crate::reason::Reason;
use crate::token::Claims;

/// The longest user id accepted, in bytes.
pub const MAX_USER_ID_BYTES: usize = 256;

/// Unicode format characters (general category Cf, from the crate that carries the Unicode
/// tables): invisible, so an id made of them, or padded with them, looks like another id in
/// every log and console.
pub fn is_format_char(c: char) -> bool {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
    c.general_category() == GeneralCategory::Format
}

fn is_invisible(c: char) -> bool {
    c.is_whitespace() || is_format_char(c)
}

/// What is wrong with a user id, if anything: what no caller means — empty, oversized, control
/// characters, invisible characters at either end. The API and the change feed's announcements
/// refuse the same ids.
pub fn user_id_problem(user_id: &str) -> Option<String> {
    if user_id.is_empty() {
        return Some("must not be empty".into());
    }
    if user_id.len() > MAX_USER_ID_BYTES {
        return Some(format!("must be at most {MAX_USER_ID_BYTES} bytes"));
    }
    if user_id.chars().any(char::is_control) {
        return Some("must not contain control characters".into());
    }
    let ends = [user_id.chars().next(), user_id.chars().next_back()];
    if ends.into_iter().flatten().any(is_invisible) {
        return Some(
            "must not start or end with whitespace or invisible (format) characters".into(),
        );
    }
    None
}

/// Whether a denylist row refuses a token, and by which of its ids ([`Claims::deny_ids`]):
/// the token itself, its session, or the identity provider's session it was minted for.
///
/// [`Claims::deny_ids`]: crate::token::Claims::deny_ids
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DenyStatus {
    /// The first kind of row found refusing it; None: no row does.
    pub denied_by: Option<DenyKind>,
}

/// When a freshly minted token starts and ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenTimes {
    /// `orig_iat`, in milliseconds.
    pub orig_iat_ms: UnixMillis,
    /// `iat`, in seconds.
    pub issued_at: UnixSeconds,
    /// `exp`, in seconds.
    pub expires_at: UnixSeconds,
    /// The end of the session's refresh window, in milliseconds.
    pub refresh_expires_ms: UnixMillis,
}

/// The time limits every rule is evaluated with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevocationPolicy {
    /// Default and maximum token lifetime.
    pub token_ttl_ms: i64,
    /// How long after `orig_iat` a session may still be refreshed.
    pub refresh_window_ms: i64,
    /// Tolerance for clock skew, on `exp` and `nbf` only.
    pub leeway_ms: i64,
    /// SPEC §11: how long after a session's newest token was minted a Refresh of an older one
    /// is still a retry; `None` turns reuse detection off.
    pub refresh_reuse_interval_ms: Option<i64>,
    /// Rule 9: how far an instance's own clock may be off the fleet's before it refuses to
    /// mint; also the margin the purge keeps.
    pub max_clock_skew_ms: i64,
    /// How long the audit trail keeps a change (independent of the denylist's purge).
    pub audit_retention_ms: i64,
}

impl Default for RevocationPolicy {
    /// SPEC §7's defaults: a 5-minute TTL, a 7-day refresh window, no leeway, a 10-second reuse
    /// interval, 500 ms of clock skew, 90 days of audit trail.
    fn default() -> Self {
        Self {
            token_ttl_ms: 5 * 60_000,
            refresh_window_ms: 7 * 86_400_000,
            leeway_ms: 0,
            refresh_reuse_interval_ms: Some(10_000),
            max_clock_skew_ms: 500,
            audit_retention_ms: 90 * 86_400_000,
        }
    }
}

/// Where the purge stops (all on the fleet's clock, less a margin of the tolerated skew).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurgeHorizon {
    /// Denylist rows and session heads moot before this may go.
    pub moot_before: UnixMillis,
    /// Cutoffs before this may go.
    pub cutoffs_before: UnixMillis,
    /// Audit trail rows before this may go (`--audit-retention`).
    pub audit_before: UnixMillis,
}

/// Rule 9: whether an instance whose clock is `skew_ms` off the fleet's (None: not read yet)
/// may mint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockCheck {
    /// Within the tolerance.
    InStep,
    /// The fleet's clock has not been read yet.
    Unread,
    /// Off by more than the tolerance.
    Skewed {
        /// Own clock minus the fleet's.
        skew_ms: i64,
    },
}

/// What to do with a Refresh of a token that is not its session's newest (SPEC §11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Superseded {
    /// Within the reuse interval: a retry (or another tab); answer with the newest token.
    Retry,
    /// Later: two parties hold the session; revoke it.
    Reused,
}

impl RevocationPolicy {
    /// Rules 6 and 8: `exp` and `nbf` with leeway, and no `iat` from the future beyond it (only a
    /// signer with a wrong clock mints one, and it would outlive a revoke-all made now).
    pub fn check_lifetime(&self, claims: &Claims, now: UnixMillis) -> Result<(), Reason> {
        if now >= claims.expires_at.as_millis().saturating_add(self.leeway_ms) {
            return Err(Reason::Expired);
        }
        let not_before = claims
            .not_before
            .map_or(claims.issued_at, |nbf| nbf.max(claims.issued_at));
        if now.saturating_add(self.leeway_ms) < not_before.as_millis() {
            return Err(Reason::NotYetValid);
        }
        Ok(())
    }

    /// Rule 1: banned while the cutoff lies ahead, else revoked if issued at or before it.
    pub fn check_cutoff(
        cutoff: Option<UnixMillis>,
        orig_iat_ms: UnixMillis,
        now: UnixMillis,
    ) -> Result<(), Reason> {
        match cutoff {
            Some(c) if c > now => Err(Reason::UserBanned),
            Some(c) if orig_iat_ms <= c => Err(Reason::UserRevoked),
            _ => Ok(()),
        }
    }

    /// Rule 5: a revoked token or session is refused.
    pub fn check_denylist(deny: DenyStatus) -> Result<(), Reason> {
        if deny.denied_by.is_some() {
            Err(Reason::TokenRevoked)
        } else {
            Ok(())
        }
    }

    /// Whether the user is banned at `now`.
    pub fn is_banned(cutoff: Option<UnixMillis>, now: UnixMillis) -> bool {
        cutoff.is_some_and(|c| c > now)
    }

    /// Rule 3: the `orig_iat` of a new session: refused while banned, never at or before the
    /// cutoff (a login right after "logout everywhere" works even within the same millisecond).
    /// Rule 9: the ban is judged at `now`, the fleet's time; the session is stamped `mint_at`,
    /// the earliest the fleet's time can be (never later than the moment of minting).
    pub fn new_session_start(
        cutoff: Option<UnixMillis>,
        now: UnixMillis,
        mint_at: UnixMillis,
    ) -> Result<UnixMillis, Reason> {
        if Self::is_banned(cutoff, now) {
            return Err(Reason::UserBanned);
        }
        Ok(cutoff.map_or(mint_at, |c| mint_at.max(c + 1)))
    }

    /// The times of a token minted at `now` for a session that started at `orig_iat_ms`:
    /// `exp = min(now + ttl, orig_iat + refresh_window)`, so no token outlives its session.
    /// `ttl_ms` is the caller's wish, capped by the configured TTL.
    pub fn token_times(
        &self,
        orig_iat_ms: UnixMillis,
        now: UnixMillis,
        ttl_ms: Option<i64>,
    ) -> Result<TokenTimes, Reason> {
        let ttl = ttl_ms.map_or(self.token_ttl_ms, |t| t.min(self.token_ttl_ms));
        let refresh_expires_ms = orig_iat_ms + self.refresh_window_ms;
        // exp is a whole second; rounding down keeps it inside both limits.
        let expires_at = UnixSeconds::floor_of((now + ttl).min(refresh_expires_ms));
        let issued_at = UnixSeconds::floor_of(now);
        if expires_at <= issued_at {
            return Err(Reason::RefreshExpired);
        }
        Ok(TokenTimes {
            orig_iat_ms,
            issued_at,
            expires_at,
            refresh_expires_ms,
        })
    }

    /// Rule 4: a session can be refreshed until `orig_iat + refresh_window` (no leeway).
    pub fn check_refresh(&self, claims: &Claims, now: UnixMillis) -> Result<(), Reason> {
        if now >= claims.orig_iat_ms + self.refresh_window_ms {
            Err(Reason::RefreshExpired)
        } else {
            Ok(())
        }
    }

    /// Rule 2: the cutoff a revoke-all asks for: `until`, or now. The store applies it as
    /// `C := max(C, this)` atomically, so a running ban is never shortened.
    pub fn revoke_all_cutoff(until: Option<UnixMillis>, now: UnixMillis) -> UnixMillis {
        until.unwrap_or(now)
    }

    /// After this instant no token of a session that started at `orig_iat_ms` can be accepted.
    pub fn session_row_moot_at(&self, orig_iat_ms: UnixMillis) -> UnixMillis {
        orig_iat_ms + self.refresh_window_ms + self.leeway_ms
    }

    /// Rule §11: a Refresh of a token older than its session's newest (minted at `newest_minted`)
    /// is a retry within the reuse interval, reuse after it.
    pub fn superseded(&self, newest_minted: UnixMillis, now: UnixMillis) -> Superseded {
        let interval = self.refresh_reuse_interval_ms.unwrap_or(i64::MAX);
        if now.saturating_sub(newest_minted) <= interval {
            Superseded::Retry
        } else {
            Superseded::Reused
        }
    }

    /// A bound for a token or session known only by its id: anything alive now started no
    /// later than now (plus the one millisecond rule 3 may add), so it is dead after this.
    pub fn unknown_row_moot_at(&self, now: UnixMillis) -> UnixMillis {
        self.session_row_moot_at(now + 1)
    }

    /// A cutoff this old revokes nothing that could still be alive, so it may be purged.
    fn cutoff_purgeable_before(&self, now: UnixMillis) -> UnixMillis {
        now - self.refresh_window_ms - self.leeway_ms - 1
    }

    /// When a cutoff at `cutoff_ms` becomes moot: the purge may delete it at any later instant
    /// ([`Self::purge_horizon`]), so a proxy filter's copy drops it then too.
    pub fn cutoff_moot_after(&self, cutoff_ms: UnixMillis) -> UnixMillis {
        cutoff_ms
            .saturating_add(self.refresh_window_ms)
            .saturating_add(self.leeway_ms)
            .saturating_add(1)
            .saturating_add(self.max_clock_skew_ms.saturating_mul(2))
    }

    /// When a denylist row moot at `moot_ms` may go: the purge keeps it a margin of twice the
    /// tolerated skew longer ([`Self::purge_horizon`]), so a proxy filter's copy drops it then.
    pub fn denied_moot_after(&self, moot_ms: UnixMillis) -> UnixMillis {
        moot_ms.saturating_add(self.max_clock_skew_ms.saturating_mul(2))
    }

    /// What the purge may delete at `now`: it keeps a margin of twice the tolerated clock skew
    /// (the purger ahead, another instance behind), so that no row goes while an instance
    /// within the tolerance could still accept what it refuses.
    pub fn purge_horizon(&self, now: UnixMillis) -> PurgeHorizon {
        let now = now.saturating_sub(self.max_clock_skew_ms.saturating_mul(2));
        PurgeHorizon {
            moot_before: now,
            cutoffs_before: self.cutoff_purgeable_before(now),
            audit_before: now.saturating_sub(self.audit_retention_ms),
        }
    }

    /// Rule 9: may an instance whose clock is `skew_ms` off the fleet's mint?
    pub fn check_clock(&self, skew_ms: Option<i64>) -> ClockCheck {
        match skew_ms {
            None => ClockCheck::Unread,
            Some(skew_ms) if skew_ms.saturating_abs() > self.max_clock_skew_ms => {
                ClockCheck::Skewed { skew_ms }
            }
            Some(_) => ClockCheck::InStep,
        }
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
