//! token-sidecar's rules inside Envoy: a proxy-wasm HTTP filter.
//!
//! Each request is judged in the worker that carries it, with no call out: the core's one decode
//! path ([`token_sidecar_core::token::decode_token`], built here with the pure-Rust crypto
//! backend), its lifetime rules, and a copy of the revocation state
//! ([`token_sidecar_core::feed::Mirror`]) that the filter's root context keeps by reading the
//! sidecar's change feed (`GET /revocations/changes`) and its keys
//! (`GET /.well-known/jwks.json`). It answers as ext_authz does ([`token_sidecar_core::decision`]):
//! allowed with `x-user-id`, `x-session-id`, `x-token-jti`, `x-token-exp` (and the forwarded
//! claims), replacing what the client sent; refused 401 with the same `WWW-Authenticate`.
//! Not in step with the sidecar for longer than `max_staleness_ms` (or never loaded): 503
//! (`when_stale: fail_closed`), or the request paused while the sidecar's `/auth` decides
//! (`when_stale: ask_sidecar`).
//!
//! - [`config`]: the plugin configuration;
//! - [`state`]: one worker's keys and revocation state, and the verdict (pure, tested natively);
//! - [`root`]: the root context: reads the feed and the keys on a timer;
//! - [`request`]: the HTTP context: applies the verdict to one request.
#![forbid(unsafe_code)]

pub mod config;
pub mod metrics;
pub mod request;
pub mod root;
pub mod state;

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::RootContext;
use proxy_wasm::types::LogLevel;

/// One worker's state, shared by its root context and its requests (a Wasm VM is
/// single-threaded: one per Envoy worker).
pub type SharedState = Rc<RefCell<Option<state::Shared>>>;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(root::Root::default())
    });
}}

/// This worker's wall clock, in ms since the epoch.
pub(crate) fn wall_ms(now: std::time::SystemTime) -> i64 {
    now.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// An HTTP answer as a log line says it: `HTTP 503`, or that none came.
pub(crate) fn answer_words(status: Option<&str>) -> String {
    match status {
        Some(code) if code.len() <= 3 && code.bytes().all(|b| b.is_ascii_digit()) => {
            format!("HTTP {code}")
        }
        Some(_) => "an answer with no valid status".to_owned(),
        None => "no answer (the call failed or timed out)".to_owned(),
    }
}

/// Why Envoy refused to make a call, in words an operator can act on.
pub(crate) fn refusal_words(status: proxy_wasm::types::Status) -> &'static str {
    use proxy_wasm::types::Status;
    match status {
        Status::NotFound => "Envoy has no such cluster (check the filter's cluster names)",
        Status::BadArgument => "Envoy refused the call's arguments",
        Status::InternalFailure => "Envoy failed to make the call",
        _ => "Envoy refused the call",
    }
}

/// Milliseconds on this worker's monotonic clock (WASI `clock_time_get`, monotonic), for
/// staleness: a step of the wall clock never makes stale state look fresh.
pub(crate) fn monotonic_ms() -> u64 {
    use std::sync::OnceLock;
    static ORIGIN: OnceLock<std::time::Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(std::time::Instant::now);
    u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_say_what_happened_in_words() {
        assert_eq!(answer_words(Some("503")), "HTTP 503");
        assert_eq!(
            answer_words(None),
            "no answer (the call failed or timed out)"
        );
        assert_eq!(
            answer_words(Some("5\n3x")),
            "an answer with no valid status"
        );
        assert!(refusal_words(proxy_wasm::types::Status::NotFound).contains("cluster"));
    }
}
