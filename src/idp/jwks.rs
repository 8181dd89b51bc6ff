//! An identity provider's signing keys: a JWKS file, or an `https://` URL fetched and cached.
//!
//! A token naming a `kid` the cached set does not hold makes the set be read again (a key
//! rotation at the provider) unless the set was read after the token was issued; at most one
//! read begins every [`READ_INTERVAL_MS`] per provider, whoever asks (SPEC §13: nothing a
//! stranger sends spends what the provider needs). A set older than [`MAX_AGE_MS`] is read
//! again on use, under the same interval. A failed read keeps the keys already held.
use std::path::PathBuf;
use std::sync::Arc;

use super::fetch;
use crate::clock::{Clock, UnixMillis};
use jsonwebtoken::Algorithm;

pub use crate::token::{ProviderKey, ProviderKeySet as KeySet};

/// At most one read of a provider's set begins in this many milliseconds.
pub const READ_INTERVAL_MS: i64 = 1_000;
/// A token's `iat` is in whole seconds.
const IAT_RESOLUTION_MS: i64 = 1_000;
/// A set older than this (milliseconds) is read again when used.
pub const MAX_AGE_MS: i64 = 600_000;

/// Where a provider's keys are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// A JWKS file (e.g. a mounted ConfigMap).
    File(PathBuf),
    /// An `https://` URL (or `http://` to a loopback address).
    Url(String),
}

impl JwksSource {
    /// `https://…` or `http://…` is a URL (checked), anything else a path.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("the JWKS source is empty".into());
        }
        if text.contains("://") {
            fetch::check_url(text).map_err(|e| e.to_string())?;
            return Ok(JwksSource::Url(text.to_owned()));
        }
        Ok(JwksSource::File(PathBuf::from(text)))
    }
}

impl std::fmt::Display for JwksSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwksSource::File(path) => write!(f, "{}", path.display()),
            JwksSource::Url(url) => f.write_str(url),
        }
    }
}

/// Why no key could be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyLookupError {
    /// A key set read after the token was issued holds no key for its `kid` and `alg`: final.
    #[error("no key of the issuer's key set fits the token's kid and alg")]
    NoKey,
    /// No key set that could settle the question can be had now (never read, unreadable, or
    /// not read since the token was issued and no read is allowed yet): the sender retries
    /// after `retry_after_secs`.
    #[error("the issuer's key set cannot be read now: {why}")]
    Unavailable {
        /// Why, for the log.
        why: String,
        /// When a read will be allowed again, in whole seconds (at least 1).
        retry_after_secs: u64,
    },
}

/// A provider's keys, read on first use and again as needed.
///
/// Reads are bounded per provider, never per sender: at most one starts every
/// [`READ_INTERVAL_MS`], whoever asks, and every read serves every request after it. A sender
/// of made-up `kid`s can therefore only make reads happen (once an interval), never keep them
/// from happening: the set it makes us read is the one the provider's own token needs. A `kid`
/// is known to be absent only from a set whose read began at or after the token's `iat` (the
/// provider publishes a key before it signs with it); until such a read, the answer is
/// "retry", never "no such key".
pub struct ProviderKeys {
    source: JwksSource,
    /// Ages are measured on its monotonic clock, and read times compared with `iat` on its
    /// fleet clock (the injected one: tests move it).
    clock: Arc<dyn Clock>,
    state: parking_lot::Mutex<Held>,
}

#[derive(Default)]
struct Held {
    set: Option<Arc<KeySet>>,
    /// Monotonic milliseconds of the last successful read.
    read_at: Option<i64>,
    /// The fleet-clock time at which the last successful read began.
    read_began_ms: Option<UnixMillis>,
    /// Monotonic milliseconds at which the last read (successful or not) began.
    attempted_at: Option<i64>,
}

impl Held {
    /// Claims the read slot at `now` if the interval since the last attempt has passed.
    fn claim_read(&mut self, now: i64) -> bool {
        if self
            .attempted_at
            .is_some_and(|at| now.saturating_sub(at) < READ_INTERVAL_MS)
        {
            return false;
        }
        self.attempted_at = Some(now);
        true
    }

    /// Whole seconds until a read may begin again (at least 1).
    fn retry_after_secs(&self, now: i64) -> u64 {
        let wait = self
            .attempted_at
            .map_or(0, |at| READ_INTERVAL_MS - now.saturating_sub(at))
            .max(1)
            .unsigned_abs();
        wait.div_ceil(1_000).max(1)
    }

    /// Whether a read must be asked for to judge a token with `kid` issued at `iat_ms`.
    fn wants_read(&self, kid: Option<&str>, iat_ms: UnixMillis, now: i64) -> bool {
        let Some(set) = &self.set else { return true };
        let old = self
            .read_at
            .is_none_or(|at| now.saturating_sub(at) >= MAX_AGE_MS);
        let unknown = kid.is_some_and(|kid| !set.has_kid(kid));
        old || (unknown && !self.read_after(iat_ms))
    }

    /// Whether the set held was read after a token issued at `iat_ms`: after the whole second
    /// `iat` names, since the token may have been signed (and its key published) anywhere in it.
    fn read_after(&self, iat_ms: UnixMillis) -> bool {
        self.read_began_ms
            .is_some_and(|began| began >= iat_ms.saturating_add(IAT_RESOLUTION_MS))
    }

    /// The keys for `kid` and `alg` in what is held, or why there are none.
    fn lookup(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
        iat_ms: UnixMillis,
        now: i64,
    ) -> Result<Vec<ProviderKey>, KeyLookupError> {
        let retry = |why: &str| KeyLookupError::Unavailable {
            why: why.to_owned(),
            retry_after_secs: self.retry_after_secs(now),
        };
        let Some(set) = &self.set else {
            return Err(retry("not read yet"));
        };
        let found = set.candidates(kid, alg);
        if !found.is_empty() {
            return Ok(found);
        }
        match kid {
            Some(kid) if !set.has_kid(kid) && !self.read_after(iat_ms) => Err(retry(
                "the key set has not been read since the token was issued (a key rotation?)",
            )),
            _ => Err(KeyLookupError::NoKey),
        }
    }
}

impl ProviderKeys {
    /// Keys to be read from `source`.
    pub fn new(source: JwksSource, clock: Arc<dyn Clock>) -> Self {
        Self {
            source,
            clock,
            state: parking_lot::Mutex::new(Held::default()),
        }
    }

    /// Where the keys come from.
    pub fn source(&self) -> &JwksSource {
        &self.source
    }

    /// The keys that may check a token with header `kid` and `alg`, issued at `iat_ms` (as the
    /// token says, on the fleet clock), reading the set again if it is old, or if it lacks the
    /// `kid` and was read before the token was issued — at most one read per interval.
    pub async fn candidates(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
        iat_ms: UnixMillis,
    ) -> Result<Vec<ProviderKey>, KeyLookupError> {
        let now = self.clock.monotonic_ms();
        let claimed = {
            let mut held = self.state.lock();
            if !held.wants_read(kid, iat_ms, now) || !held.claim_read(now) {
                return held.lookup(kid, alg, iat_ms, now);
            }
            self.clock.now_ms()
        };
        // No lock is held while reading: requests that need no read never wait on one.
        let read = read_key_set(&self.source).await;
        let mut held = self.state.lock();
        match read {
            Ok(set) => {
                // A slower read that began earlier does not replace a newer one.
                if held.read_began_ms.is_none_or(|began| began <= claimed) {
                    held.set = Some(Arc::new(set));
                    held.read_at = Some(self.clock.monotonic_ms());
                    held.read_began_ms = Some(claimed);
                }
            }
            Err(why) => {
                // At most one attempt per interval, so at most one line per interval.
                tracing::warn!(source = %self.source, error = %why, "an identity provider's key set could not be read; the keys held are kept");
                if held.set.is_none() {
                    return Err(KeyLookupError::Unavailable {
                        why,
                        retry_after_secs: held.retry_after_secs(self.clock.monotonic_ms()),
                    });
                }
            }
        }
        held.lookup(kid, alg, iat_ms, self.clock.monotonic_ms())
    }
}

/// Reads and parses the key set at `source` once (also what `check-config` does).
pub async fn read_key_set(source: &JwksSource) -> Result<KeySet, String> {
    KeySet::parse(&read_raw(source).await?)
}

/// Reads the document at `source` once, bounded in size (and, for a URL, in time).
pub async fn read_raw(source: &JwksSource) -> Result<Vec<u8>, String> {
    Ok(match source {
        JwksSource::File(path) => {
            let bytes = tokio::fs::read(path)
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if bytes.len() > fetch::MAX_JWKS_BYTES {
                return Err(format!("{} is too large", path.display()));
            }
            bytes
        }
        JwksSource::Url(url) => fetch::get(url)
            .await
            .map_err(|e| format!("{url}: {e}"))?
            .to_vec(),
    })
}

#[cfg(test)]
#[path = "jwks_tests.rs"]
mod tests;
