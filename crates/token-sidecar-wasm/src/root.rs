//! The root context: configured once, then it keeps one read of the sidecar's change feed open
//! (a long poll, `wait_ms`: the sidecar answers as soon as it applied a change, or after that
//! long) and reads again at once after each answer — paging on while pages come back full;
//! after a failed read, at the next tick. Every minute or until it has them, it reads the
//! sidecar's public keys. Every call has a timeout; a failed read changes nothing, so the state
//! only ages until `max_staleness_ms` makes the requests' verdicts `Stale`.
use std::rc::Rc;
use std::time::Duration;

use log::{info, warn};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use token_sidecar_core::feed::{FeedPage, MAX_PAGE, binary};

use crate::config::FilterConfig;
use crate::state::Shared;
use crate::{SharedState, answer_words, metrics, monotonic_ms, refusal_words};

const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const JWKS_EVERY_MS: u64 = 60_000;
/// Sooner after a token failed its signature check (a rotation), but not more often than this.
const JWKS_AT_MOST_EVERY_MS: u64 = 5_000;
/// Largest feed page or key set read (a full page of long ids stays well under it).
const MAX_BODY: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Feed,
    Jwks,
    Trusted,
}

/// The root context.
#[derive(Default)]
pub struct Root {
    shared: SharedState,
    feed_call: Option<u32>,
    jwks_call: Option<u32>,
    jwks_at: Option<u64>,
    trusted_call: Option<u32>,
    trusted_at: Option<u64>,
}

impl Root {
    fn with_state<T>(&self, f: impl FnOnce(&mut Shared) -> T) -> Option<T> {
        self.shared.borrow_mut().as_mut().map(f)
    }

    fn call(&mut self, what: Call, path: &str, timeout: Duration) {
        let Some((cluster, authority, credential)) = self.with_state(|s| {
            let c = &s.checked.config;
            (
                c.sidecar_cluster.clone(),
                c.sidecar_authority.clone(),
                c.feed_credential.clone(),
            )
        }) else {
            return;
        };
        let bearer = credential.map(|c| format!("Bearer {c}"));
        let mut headers = vec![
            (":method", "GET"),
            (":path", path),
            (":authority", authority.as_str()),
        ];
        if let (Call::Feed, Some(bearer)) = (what, &bearer) {
            headers.push(("authorization", bearer.as_str()));
        }
        match self.dispatch_http_call(&cluster, headers, None, vec![], timeout) {
            Ok(token) => match what {
                Call::Feed => self.feed_call = Some(token),
                Call::Jwks => self.jwks_call = Some(token),
                Call::Trusted => self.trusted_call = Some(token),
            },
            Err(status) => warn!(
                "token-sidecar: cannot call cluster {cluster}: {}",
                refusal_words(status)
            ),
        }
    }

    fn read_feed(&mut self) {
        let wait_ms = self
            .with_state(|s| {
                let c = &s.checked.config;
                c.long_poll_ms.min(c.max_staleness_ms / 2)
            })
            .unwrap_or(0);
        if self.feed_call.is_none()
            && let Some(path) = self.with_state(|s| s.next_query(MAX_PAGE, wait_ms))
        {
            let timeout = CALL_TIMEOUT + Duration::from_millis(wait_ms);
            self.call(Call::Feed, &path, timeout);
        }
    }

    /// The sidecar's keys (when `fetch_jwks`) and its trusted issuers (always: SPEC §16), every
    /// minute, or every few seconds while tokens fail their signature check.
    fn read_keys(&mut self) {
        let (wanted, soon) = self
            .with_state(|s| (s.checked.config.fetch_jwks, s.keys_wanted()))
            .unwrap_or_default();
        let every = if soon {
            JWKS_AT_MOST_EVERY_MS
        } else {
            JWKS_EVERY_MS
        };
        let now = monotonic_ms();
        let due = |at: Option<u64>| at.is_none_or(|at| now.saturating_sub(at) >= every);
        let mut asked = false;
        if wanted && due(self.jwks_at) && self.jwks_call.is_none() {
            asked = true;
            self.call(Call::Jwks, "/.well-known/jwks.json", CALL_TIMEOUT);
        }
        if due(self.trusted_at) && self.trusted_call.is_none() {
            asked = true;
            // Paced by attempts, not successes: a sidecar that cannot answer is asked again
            // at the same bounded pace.
            self.trusted_at = Some(now);
            self.call(Call::Trusted, "/trusted-issuers", CALL_TIMEOUT);
        }
        if asked {
            self.with_state(|s| s.keys_asked());
        }
    }

    fn on_feed(&mut self, status: Option<&str>, body: Option<Vec<u8>>) {
        match status {
            Some("200") => {
                // The binary form when the sidecar knows it (it was asked for); JSON from one
                // that does not.
                let page = body.as_deref().map(|b| {
                    if b.starts_with(&binary::MAGIC) {
                        binary::decode(b).map_err(|_| ())
                    } else {
                        serde_json::from_slice::<FeedPage>(b).map_err(|_| ())
                    }
                });
                let Some(Ok(page)) = page else {
                    metrics::feed_read(false);
                    warn!("token-sidecar: the feed answered a page that does not parse");
                    return;
                };
                metrics::feed_read(true);
                let applied = self.with_state(|s| s.apply_page(&page, monotonic_ms()));
                // The next page, or the next long poll, at once (a full page: there is more; a
                // short one: the sidecar holds the next read until a change arrives). A
                // broken state (max_entries) waits for the tick.
                let long_polling = self
                    .with_state(|s| s.checked.config.long_poll_ms > 0)
                    .unwrap_or(false);
                let broken = self.with_state(|s| s.is_broken()).unwrap_or(true);
                if applied == Some(true) || (long_polling && !broken) {
                    self.read_feed();
                }
            }
            Some("409") => {
                metrics::feed_read(true);
                info!("token-sidecar: the store's history changed; reloading the revocation state");
                self.with_state(Shared::restart);
                self.read_feed();
            }
            other => {
                metrics::feed_read(false);
                warn!(
                    "token-sidecar: the feed answered {}; the revocation state ages until it answers",
                    answer_words(other)
                );
            }
        }
    }

    fn on_jwks(&mut self, status: Option<&str>, body: Option<Vec<u8>>) {
        let text = body.and_then(|b| String::from_utf8(b).ok());
        match (status, text) {
            (Some("200"), Some(jwks)) => match self.with_state(|s| s.set_fetched_keys(&jwks)) {
                Some(Ok(())) => self.jwks_at = Some(monotonic_ms()),
                Some(Err(e)) => warn!("token-sidecar: the sidecar's key set is refused: {e}"),
                None => {}
            },
            (other, _) => warn!(
                "token-sidecar: the key set answered {}; the keys read before stay",
                answer_words(other)
            ),
        }
    }
}

impl Root {
    fn on_trusted(&mut self, status: Option<&str>, body: Option<Vec<u8>>) {
        match (status, body) {
            (Some("200"), Some(document)) => {
                if let Some(Err(e)) = self.with_state(|s| s.set_trusted_issuers(&document)) {
                    warn!("token-sidecar: the sidecar's trusted issuers are refused: {e}");
                }
            }
            // A sidecar from before trusted issuers: there are none.
            (Some("404"), _) => {
                self.with_state(|s| s.set_trusted_issuers(br#"{"issuers":[]}"#));
            }
            (other, _) => warn!(
                "token-sidecar: the trusted issuers answered {}; the keys read before stay",
                answer_words(other)
            ),
        }
    }
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _: usize) {
        let status = self.get_http_call_response_header(":status");
        let body = (body_size <= MAX_BODY)
            .then(|| self.get_http_call_response_body(0, body_size))
            .flatten();
        if self.feed_call == Some(token) {
            self.feed_call = None;
            self.on_feed(status.as_deref(), body);
        } else if self.jwks_call == Some(token) {
            self.jwks_call = None;
            self.on_jwks(status.as_deref(), body);
        } else if self.trusted_call == Some(token) {
            self.trusted_call = None;
            self.on_trusted(status.as_deref(), body);
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        #[cfg(feature = "trivial-shared")]
        fill_shared_data(self);
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let checked = match FilterConfig::parse(&bytes) {
            Ok(checked) => checked,
            Err(e) => {
                warn!("token-sidecar: refusing the plugin configuration: {e}");
                return false;
            }
        };
        let poll = Duration::from_millis(checked.config.poll_interval_ms);
        match Shared::new(checked) {
            Ok(state) => *self.shared.borrow_mut() = Some(state),
            Err(e) => {
                warn!("token-sidecar: refusing local_jwks: {e}");
                return false;
            }
        }
        self.set_tick_period(poll);
        true
    }

    fn on_tick(&mut self) {
        metrics::flush();
        self.read_keys();
        self.read_feed();
        let now = monotonic_ms();
        let held = self.with_state(|s| (s.entries(), s.staleness_ms(now)));
        if let Some((entries, staleness)) = held {
            let keys_age = self.jwks_at.map(|at| now.saturating_sub(at));
            metrics::state(entries, staleness, keys_age);
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(crate::request::Request::new(Rc::clone(
            &self.shared,
        ))))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// For the benchmark's "shared" mode only: a million denied ids in proxy-wasm shared data (one
/// copy per Envoy), written once by the first VM configured, so that the lookups run against a
/// full map and Envoy's memory shows what a shared copy costs.
#[cfg(feature = "trivial-shared")]
fn fill_shared_data(root: &Root) {
    if root.get_shared_data("token_sidecar_filled").0.is_some() {
        return;
    }
    for i in 0..1_000_000u32 {
        let key = format!("jti:{i:022}");
        let _ = root.set_shared_data(&key, Some(&i.to_le_bytes()), None);
    }
    let _ = root.set_shared_data("token_sidecar_filled", Some(b"1"), None);
}
