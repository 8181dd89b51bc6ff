//! Keeps the trusted issuers' key sets fresh (SPEC §16, under §13's rules): each is read at
//! start (the sidecar is NOT_SERVING until every one has been read once), again every
//! [`REFRESH_INTERVAL`], and — at most once per [`UNKNOWN_KID_INTERVAL`], whoever sends them —
//! when a token named a `kid` the set lacks (a rotation under way). Nothing a request does waits
//! on a read: the decode path only raises a flag, so a stranger's made-up `kid`s can cause one
//! read a second and never delay the periodic one. A failed read keeps the keys held.
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::authority::TokenAuthority;
use crate::idp::token_issuers::TokenIssuer;
use crate::token::IssuerTrust;

/// How often a set is read again when nothing asks sooner (the IdP receivers' key age).
pub const REFRESH_INTERVAL: Duration = Duration::from_millis(crate::idp::jwks::MAX_AGE_MS as u64);
/// At most one extra read per issuer per this interval, on unknown `kid`s.
pub const UNKNOWN_KID_INTERVAL: Duration = Duration::from_secs(1);
/// The longest pause between attempts while a set has never been read.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// Keeps every trusted issuer's keys fresh, until the task is dropped.
pub async fn watch(authority: Arc<TokenAuthority>, issuers: Vec<TokenIssuer>) {
    let watches = issuers.into_iter().filter_map(|issuer| {
        let trust = authority.trusted_issuers().get(&issuer.issuer)?.clone();
        Some(watch_one(authority.clone(), issuer, trust))
    });
    futures::future::join_all(watches).await;
}

async fn watch_one(authority: Arc<TokenAuthority>, issuer: TokenIssuer, trust: Arc<IssuerTrust>) {
    // The document last put in use (a read that finds it unchanged swaps nothing).
    let mut held: Option<Vec<u8>> = None;
    let mut next_read = Instant::now();
    let mut failures: u32 = 0;
    let mut last_problem: Option<String> = None;
    let mut tick = tokio::time::interval(UNKNOWN_KID_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let due = Instant::now() >= next_read || (held.is_some() && trust.take_unknown_kid());
        if !due {
            continue;
        }
        let read = issuer.read_keys().await.and_then(|(raw, set)| {
            match held.as_deref() == Some(raw.as_slice()) {
                true => Ok(None),
                false => trust.publish_keys(&raw).map(|()| Some((raw, set))),
            }
        });
        match read {
            Ok(changed) => {
                if let Some((raw, set)) = changed {
                    tracing::info!(issuer = %issuer.issuer, keys = %issuer.keys, kids = ?set.kids(), "a trusted issuer's key set read");
                    authority.trusted_keys_changed();
                    held = Some(raw);
                }
                next_read = Instant::now() + REFRESH_INTERVAL;
                failures = 0;
                last_problem = None;
            }
            Err(problem) => {
                failures = failures.saturating_add(1);
                // Try again soon, backing off so that a provider that is down is not hammered
                // by every sidecar at once.
                let pause = UNKNOWN_KID_INTERVAL
                    .saturating_mul(2u32.saturating_pow(failures.min(5)))
                    .min(MAX_RETRY);
                next_read = Instant::now() + pause;
                if last_problem.as_ref() != Some(&problem) {
                    tracing::warn!(issuer = %issuer.issuer, error = %problem, "a trusted issuer's key set could not be read; keeping the keys held");
                    last_problem = Some(problem);
                }
            }
        }
    }
}
