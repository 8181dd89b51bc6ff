//! Sender-constrained tokens through every proxy surface (SPEC §15): Envoy's gRPC and HTTP
//! ext_authz, the Envoy filter, nginx `auth_request` and Traefik `ForwardAuth`, with the
//! configurations of `tests/proxies`. Proofs by panva's `dpop`; the client addresses each proxy
//! as `http://localhost/hello` (the test client's `Host`).
//!
//! The proof's `iat` is the client's real clock, and the Envoy filter reads the fleet's time
//! from the feed's pages, so here the sidecar's injected clock follows the real one (one second
//! ahead, so that a proof made just now is never "from the future" to a copy that heard the
//! time a moment ago). No rule of time is tested here: tests/suite/dpop.rs moves the clock.
use std::time::Duration;

use token_sidecar::api::pb;
use token_sidecar::clock::ManualClock;

use crate::common::dpop::{ClientKey, ProofMaker, Target, real_now_ms};
use crate::common::process::{HttpResponse, http_request};
use crate::common::{Backend, Settings, TestApp};
use crate::proxies::{Proxy, Running, start, upstream, wait_ready};

const HTU: &str = "http://localhost/hello";

/// Keeps `clock` a second ahead of the real time until dropped.
struct FollowRealTime(tokio::task::JoinHandle<()>);

impl FollowRealTime {
    fn start(clock: ManualClock) -> Self {
        clock.set_ms(real_now_ms() + 1_000);
        Self(tokio::spawn(async move {
            loop {
                clock.set_ms(real_now_ms() + 1_000);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }))
    }
}

impl Drop for FollowRealTime {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn sidecar(nonce: bool) -> TestApp {
    let mut settings = Settings::new(Backend::Sqlite)
        .clock(ManualClock::new(real_now_ms() + 1_000))
        .arg("--http-listen", "127.0.0.1:0");
    if nonce {
        settings = settings.flag("--dpop-nonce");
    }
    settings.spawn().await
}

async fn bound(app: &TestApp, key: &ClientKey) -> String {
    app.issue_with(pb::IssueRequest {
        user_id: "alice".into(),
        dpop_jkt: key.jkt.clone(),
        ..Default::default()
    })
    .await
    .expect("issue a bound token")
    .token
}

async fn send(proxy: &Running, method: &str, headers: &[(&str, &str)]) -> HttpResponse {
    http_request(proxy.addr, method, "/hello", headers, None)
        .await
        .expect("the proxy answers")
}

fn challenge(r: &HttpResponse) -> String {
    r.header("www-authenticate").unwrap_or_default()
}

async fn proxied(which: Proxy, app: &TestApp) -> Running {
    let (app_addr, _seen) = upstream().await;
    let sidecar_port = match which {
        Proxy::EnvoyGrpc => app.addr.port(),
        _ => app.http_addr.expect("http listener").port(),
    };
    let proxy = start(which, app_addr.port(), sidecar_port);
    wait_ready(&proxy, which).await;
    proxy
}

#[tokio::test]
async fn every_proxy_admits_a_bound_token_only_with_its_proof() {
    crate::require!(Envoy, Nginx, Traefik, WasmFilter, DpopClient);
    let app = sidecar(false).await;
    let _time = FollowRealTime::start(app.clock.clone());
    let mut maker = ProofMaker::start();
    let key = maker.key("ES256");
    let other_key = maker.key("ES256");
    for which in [
        Proxy::EnvoyGrpc,
        Proxy::EnvoyHttp,
        Proxy::Nginx,
        Proxy::Traefik,
        Proxy::EnvoyWasm,
    ] {
        let proxy = proxied(which, &app).await;
        let token = bound(&app, &key).await;
        let dpop_auth = format!("DPoP {token}");
        let target = Target {
            htm: "GET",
            htu: HTU,
            token: Some(&token),
            nonce: None,
        };
        // The filter reads the sidecar's state on its first tick: wait until it admits.
        let mut admitted = None;
        for _ in 0..200 {
            let proof = maker.proof(&key, target);
            let r = send(
                &proxy,
                "GET",
                &[("authorization", &dpop_auth), ("dpop", &proof)],
            )
            .await;
            if r.status == 200 {
                admitted = Some((r, proof));
                break;
            }
            assert!(
                which == Proxy::EnvoyWasm && r.status == 503,
                "{which:?}: a valid proof: {r:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (r, proof) = admitted.unwrap_or_else(|| panic!("{which:?} never admitted the proof"));
        assert_eq!(r.body, "hello from the app", "{which:?}");

        let refused = |r: &HttpResponse, error: &str, reason: &str| {
            assert_eq!(r.status, 401, "{which:?} {reason}: {r:?}");
            let c = challenge(r);
            assert!(
                c.starts_with(&format!("DPoP error=\"{error}\"")) && c.contains(reason),
                "{which:?}: {c}"
            );
        };
        // The same proof again.
        let r = send(
            &proxy,
            "GET",
            &[("authorization", &dpop_auth), ("dpop", &proof)],
        )
        .await;
        refused(&r, "invalid_dpop_proof", "REASON_PROOF_REPLAYED");
        // No proof; presented as a bearer token (with or without one).
        let r = send(&proxy, "GET", &[("authorization", &dpop_auth)]).await;
        refused(&r, "invalid_token", "REASON_PROOF_REQUIRED");
        let bearer = format!("Bearer {token}");
        let r = send(&proxy, "GET", &[("authorization", &bearer)]).await;
        refused(&r, "invalid_token", "REASON_PROOF_REQUIRED");
        let proof = maker.proof(&key, target);
        let r = send(
            &proxy,
            "GET",
            &[("authorization", &bearer), ("dpop", &proof)],
        )
        .await;
        refused(&r, "invalid_token", "REASON_PROOF_REQUIRED");
        // A proof for another method, another URI, by another key; two proofs.
        let proof = maker.proof(&key, target);
        let r = send(
            &proxy,
            "POST",
            &[("authorization", &dpop_auth), ("dpop", &proof)],
        )
        .await;
        refused(&r, "invalid_dpop_proof", "REASON_PROOF_INVALID");
        let elsewhere = Target {
            htu: "http://localhost/other",
            ..target
        };
        let proof = maker.proof(&key, elsewhere);
        let r = send(
            &proxy,
            "GET",
            &[("authorization", &dpop_auth), ("dpop", &proof)],
        )
        .await;
        refused(&r, "invalid_dpop_proof", "REASON_PROOF_INVALID");
        let proof = maker.proof(&other_key, target);
        let r = send(
            &proxy,
            "GET",
            &[("authorization", &dpop_auth), ("dpop", &proof)],
        )
        .await;
        refused(&r, "invalid_dpop_proof", "REASON_PROOF_INVALID");
        let (one, two) = (maker.proof(&key, target), maker.proof(&key, target));
        let r = send(
            &proxy,
            "GET",
            &[
                ("authorization", &dpop_auth),
                ("dpop", &one),
                ("dpop", &two),
            ],
        )
        .await;
        refused(&r, "invalid_dpop_proof", "REASON_PROOF_INVALID");
        // A query is not part of `htu`.
        let proof = maker.proof(&key, target);
        let r = http_request(
            proxy.addr,
            "GET",
            "/hello?page=2",
            &[("authorization", &dpop_auth), ("dpop", &proof)],
            None,
        )
        .await
        .expect("the proxy answers");
        assert_eq!(r.status, 200, "{which:?} with a query: {r:?}");
        // An unbound token is a bearer token as before.
        let unbound = app.issue("bob").await;
        let r = send(
            &proxy,
            "GET",
            &[("authorization", &format!("Bearer {}", unbound.token))],
        )
        .await;
        assert_eq!(r.status, 200, "{which:?} unbound: {r:?}");
    }
}

#[tokio::test]
async fn the_nonce_challenge_reaches_the_client_through_each_proxy() {
    crate::require!(Envoy, Nginx, Traefik, DpopClient);
    let app = sidecar(true).await;
    let _time = FollowRealTime::start(app.clock.clone());
    let mut maker = ProofMaker::start();
    let key = maker.key("ES256");
    for which in [
        Proxy::EnvoyGrpc,
        Proxy::EnvoyHttp,
        Proxy::Nginx,
        Proxy::Traefik,
    ] {
        let proxy = proxied(which, &app).await;
        let token = bound(&app, &key).await;
        let dpop_auth = format!("DPoP {token}");
        let target = Target {
            htm: "GET",
            htu: HTU,
            token: Some(&token),
            nonce: None,
        };
        let proof = maker.proof(&key, target);
        let r = send(
            &proxy,
            "GET",
            &[("authorization", &dpop_auth), ("dpop", &proof)],
        )
        .await;
        assert_eq!(r.status, 401, "{which:?}: {r:?}");
        assert!(
            challenge(&r).starts_with("DPoP error=\"use_dpop_nonce\""),
            "{which:?}: {r:?}"
        );
        let nonce = r
            .header("dpop-nonce")
            .unwrap_or_else(|| panic!("{which:?}: no DPoP-Nonce: {r:?}"));
        let proof = maker.proof(
            &key,
            Target {
                nonce: Some(&nonce),
                ..target
            },
        );
        let r = send(
            &proxy,
            "GET",
            &[("authorization", &dpop_auth), ("dpop", &proof)],
        )
        .await;
        assert_eq!(r.status, 200, "{which:?} with the nonce: {r:?}");
    }
}
