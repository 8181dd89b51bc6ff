//! One request: the verdict applied. Allowed: the identity headers set (replacing the client's)
//! and the forwarded-claim headers this token does not set removed. Denied: 401 with the
//! challenge. Stale: 503, or — with `when_stale: ask_sidecar` — the request paused while the
//! sidecar's `/auth` decides.
use std::time::Duration;

use log::warn;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use token_sidecar_core::decision::{Decision, IDENTITY_HEADERS, Presented};
use token_sidecar_core::sender::Presentation;

use crate::config::WhenStale;
use crate::state::Verdict;
use crate::{SharedState, metrics, monotonic_ms, refusal_words, wall_ms};

const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// What a request carries for a DPoP proof's checks (SPEC §15).
#[derive(Default)]
struct ProofFacts {
    proofs: Vec<String>,
    method: String,
    scheme: String,
    authority: String,
    path: String,
}

/// The HTTP context of one request.
pub struct Request {
    shared: SharedState,
    asked: Option<u32>,
    /// The headers a sidecar's `/auth` answer may set (identity and forwarded claims).
    owned: Vec<String>,
    /// The `DPoP-Nonce` the sidecar's `/auth` gave, for the client's response.
    nonce: Option<String>,
}

impl Request {
    pub(crate) fn new(shared: SharedState) -> Self {
        Self {
            shared,
            asked: None,
            owned: Vec::new(),
            nonce: None,
        }
    }

    /// The request's `authorization` values, what a DPoP proof is checked against, and the
    /// names of the headers it carries (one fetch of the header map: a host call each is what
    /// the hot path pays for).
    fn authorizations(&self) -> (Vec<String>, ProofFacts, Vec<String>) {
        let mut authorizations = Vec::new();
        let mut facts = ProofFacts::default();
        let mut names = Vec::new();
        for (name, value) in self.get_http_request_headers_bytes() {
            // The values are the host's copies already: moved, never cloned.
            let text = String::from_utf8(value).unwrap_or_default();
            match name.as_str() {
                // A value that is not text counts too (and is no bearer token).
                n if n.eq_ignore_ascii_case("authorization") => authorizations.push(text),
                n if n.eq_ignore_ascii_case("dpop") => facts.proofs.push(text),
                ":method" => facts.method = text,
                ":scheme" => facts.scheme = text,
                ":authority" => facts.authority = text,
                ":path" => facts.path = text,
                _ => {}
            }
            names.push(name);
        }
        (authorizations, facts, names)
    }

    /// The peer certificate's SHA-256, as Envoy's connection attributes give it (hex).
    fn peer_certificate(&self) -> Option<[u8; 32]> {
        let hex = self.get_property(vec!["connection", "sha256_peer_certificate_digest"])?;
        let hex = std::str::from_utf8(&hex).ok()?;
        let mut digest = [0u8; 32];
        for (i, byte) in digest.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        (hex.len() == 64).then_some(digest)
    }

    /// Applies `decision`; `present`: the names of the headers the request carries.
    fn apply(&mut self, decision: Decision, present: &[String]) -> Action {
        match decision {
            Decision::Allow { set, remove, .. } => {
                for (name, value) in &set {
                    self.set_http_request_header(name, Some(value));
                }
                // Only a header the client sent needs removing (Envoy's map holds names in
                // lower case, as the decision names them).
                for name in remove
                    .iter()
                    .filter(|name| present.iter().any(|p| p.eq_ignore_ascii_case(name)))
                {
                    self.set_http_request_header(name, None);
                }
                Action::Continue
            }
            Decision::Deny { challenge, .. } => self.unauthorized(&challenge, None),
            Decision::Unavailable => self.unavailable(),
        }
    }

    fn unauthorized(&self, challenge: &str, nonce: Option<&str>) -> Action {
        let mut headers = vec![
            ("www-authenticate", challenge),
            ("cache-control", "no-store"),
        ];
        headers.extend(nonce.map(|n| ("dpop-nonce", n)));
        self.send_http_response(401, headers, Some(b"unauthorized\n"));
        Action::Pause
    }

    fn unavailable(&self) -> Action {
        self.send_http_response(
            503,
            vec![("retry-after", "1"), ("cache-control", "no-store")],
            Some(b"the revocation state is not in step with token-sidecar\n"),
        );
        Action::Pause
    }

    fn ask_sidecar(&mut self, authorizations: &[String], facts: &ProofFacts) -> Action {
        let Some((cluster, authority, owned)) = self.shared.borrow().as_ref().map(|s| {
            let c = &s.checked.config;
            let mut owned: Vec<String> = IDENTITY_HEADERS.iter().map(|h| (*h).to_owned()).collect();
            owned.extend(s.checked.forwarded.iter().map(|f| f.header.clone()));
            (
                c.sidecar_cluster.clone(),
                c.sidecar_authority.clone(),
                owned,
            )
        }) else {
            return self.unavailable();
        };
        let mut headers = vec![
            (":method", "GET"),
            (":path", "/auth"),
            (":authority", authority.as_str()),
        ];
        headers.extend(authorizations.iter().map(|v| ("authorization", v.as_str())));
        // What a DPoP proof is checked against (SPEC §15), as `/auth` reads it.
        headers.extend(facts.proofs.iter().map(|v| ("dpop", v.as_str())));
        headers.extend([
            ("x-forwarded-method", facts.method.as_str()),
            ("x-forwarded-proto", facts.scheme.as_str()),
            ("x-forwarded-host", facts.authority.as_str()),
            ("x-forwarded-uri", facts.path.as_str()),
        ]);
        match self.dispatch_http_call(&cluster, headers, None, vec![], ASK_TIMEOUT) {
            Ok(token) => {
                self.asked = Some(token);
                self.owned = owned;
                Action::Pause
            }
            Err(status) => {
                warn!(
                    "token-sidecar: cannot ask the sidecar: {}",
                    refusal_words(status)
                );
                self.unavailable()
            }
        }
    }
}

impl Context for Request {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, _body: usize, _: usize) {
        if self.asked != Some(token) {
            return;
        }
        self.asked = None;
        match self.get_http_call_response_header(":status").as_deref() {
            Some("200") => {
                for name in std::mem::take(&mut self.owned) {
                    let value = self.get_http_call_response_header(&name);
                    self.set_http_request_header(&name, value.as_deref());
                }
                self.nonce = self.get_http_call_response_header("dpop-nonce");
                self.resume_http_request();
            }
            Some("401") => {
                let challenge = self
                    .get_http_call_response_header("www-authenticate")
                    .unwrap_or_else(|| "Bearer".into());
                let nonce = self.get_http_call_response_header("dpop-nonce");
                self.unauthorized(&challenge, nonce.as_deref());
            }
            _ => {
                self.unavailable();
            }
        }
    }
}

impl HttpContext for Request {
    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        if let Some(nonce) = self.nonce.take() {
            self.set_http_response_header("dpop-nonce", Some(&nonce));
        }
        Action::Continue
    }

    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        if cfg!(feature = "trivial") {
            let value = self
                .get_http_request_header("authorization")
                .unwrap_or_default();
            if cfg!(feature = "trivial-contract") {
                // The host calls the contract needs and nothing else: the header map (two
                // `authorization` headers are refused), a clock, the four identity headers.
                let headers = self.get_http_request_headers_bytes();
                let _ = (monotonic_ms(), headers.len());
                for name in ["x-session-id", "x-token-jti", "x-token-exp"] {
                    self.set_http_request_header(name, Some("0123456789abcdef"));
                }
            }
            if cfg!(feature = "trivial-shared") {
                // The floor of one copy per Envoy in proxy-wasm shared data: a lookup per id a
                // token carries (jti, sid, IdP session, user), each a host call, all absent.
                for id in ["jti", "sid", "idp", "user"] {
                    let key = format!("{id}:{}", &value[..value.len().min(24)]);
                    let _ = self.get_shared_data(&key);
                }
            }
            self.set_http_request_header("x-user-id", Some(&value[..value.len().min(16)]));
            return Action::Continue;
        }
        let (authorizations, facts, present) = self.authorizations();
        let presented = Presented::from_values(authorizations.iter().map(String::as_str));
        let proofs: Vec<&str> = facts.proofs.iter().map(String::as_str).collect();
        // Only a proof is checked against the URI: no string is built for other requests.
        let uri = match facts.proofs.is_empty() {
            true => String::new(),
            false => format!("{}://{}{}", facts.scheme, facts.authority, facts.path),
        };
        let request = Presentation {
            proofs: &proofs,
            method: &facts.method,
            uri: &uri,
            ..Presentation::BARE
        };

        let verdict = self.shared.borrow().as_ref().map(|s| {
            (
                s.judge(
                    presented,
                    request,
                    || self.peer_certificate(),
                    || wall_ms(self.get_current_time()),
                    monotonic_ms(),
                ),
                s.checked.config.when_stale,
            )
        });
        match verdict {
            Some((Verdict::Decided(decision), _)) => {
                let (result, reason) = match &decision {
                    Decision::Allow { .. } => ("allow", "none"),
                    Decision::Deny { reason, .. } => {
                        ("deny", reason.map_or("MISSING_TOKEN", |r| r.code()))
                    }
                    Decision::Unavailable => ("unavailable", "none"),
                };
                metrics::decision(result, reason);
                self.apply(decision, &present)
            }
            Some((Verdict::AskSidecar, _)) => {
                metrics::decision("ask_sidecar", "none");
                self.ask_sidecar(&authorizations, &facts)
            }
            Some((Verdict::Stale, WhenStale::AskSidecar)) => {
                metrics::decision("ask_sidecar", "none");
                self.ask_sidecar(&authorizations, &facts)
            }
            Some((Verdict::Stale, WhenStale::FailClosed)) | None => {
                metrics::decision("unavailable", "none");
                self.unavailable()
            }
        }
    }
}
