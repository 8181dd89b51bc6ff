//! Sender-constrained tokens through every proxy surface (SPEC §15): Envoy's gRPC and HTTP
//! ext_authz, the Envoy filter, nginx `auth_request` and Traefik `ForwardAuth`, with the
//! configurations of `tests/proxies`. Proofs by panva's `dpop`; the client addresses each proxy
//! as `http://localhost/hello` (the test client's `Host`).
//!
//! The proof's `iat` is the client's real clock: the sidecar's injected clock is set ahead of it
//! for each proxy's round ([`ahead_of_real_time`]). No rule of time is tested here:
//! tests/suite/dpop.rs moves the clock for those.
use std::time::Duration;

use token_sidecar::api::pb;
use token_sidecar::clock::ManualClock;

use crate::common::dpop::{ClientKey, ProofMaker, Target, real_now_ms};
use crate::common::eventually;
use crate::common::process::{HttpResponse, http_request};
use crate::common::{Backend, Settings, TestApp};
use crate::proxies::{Proxy, Running, WasmOptions, start, start_with, upstream, wait_ready};

const HTU: &str = "http://localhost/hello";

/// Sets the sidecar's clock 20 s ahead of the real one before each proxy's round: a proof made
/// during the round (its `iat` is the client's real clock) is then never "from the future", even
/// to the Envoy filter, which hears the fleet's time from the feed's pages, and never older than
/// `--dpop-max-age` (60 s) while the round lasts under 40 s.
fn ahead_of_real_time(app: &TestApp) {
    app.clock.set_ms(real_now_ms() + 20_000);
}

async fn sidecar(nonce: bool) -> TestApp {
    let mut settings = Settings::new(Backend::Sqlite)
        .clock(ManualClock::new(real_now_ms() + 20_000))
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

/// A GET of `/hello` with the token as `DPoP` and one proof.
async fn with_proof(proxy: &Running, dpop_auth: &str, proof: &str) -> HttpResponse {
    send(
        proxy,
        "GET",
        &[("authorization", dpop_auth), ("dpop", proof)],
    )
    .await
}

/// What a proof for a GET of `/hello` carrying `token` names.
fn get_hello(token: &str) -> Target<'_> {
    Target {
        htm: "GET",
        htu: HTU,
        token: Some(token),
        nonce: None,
    }
}

const EVERY_PROXY: [Proxy; 5] = [
    Proxy::EnvoyGrpc,
    Proxy::EnvoyHttp,
    Proxy::Nginx,
    Proxy::Traefik,
    Proxy::EnvoyWasm,
];

fn challenge(r: &HttpResponse) -> String {
    r.header("www-authenticate").unwrap_or_default()
}

/// `which` in front of an app, asking `app`; the Envoy filter told whether the sidecar requires
/// nonces, and in step (an unbound token admitted) before it is returned.
async fn proxied(which: Proxy, app: &TestApp, dpop_nonce: bool) -> Running {
    let (app_addr, _seen) = upstream().await;
    let sidecar_port = match which {
        Proxy::EnvoyGrpc => app.addr.port(),
        _ => app.http_addr.expect("http listener").port(),
    };
    let options = WasmOptions {
        dpop_nonce,
        ..WasmOptions::default()
    };
    let proxy = start_with(which, app_addr.port(), sidecar_port, options);
    wait_ready(&proxy, which).await;
    let unbound = format!("Bearer {}", app.issue("warm-up").await.token);
    eventually(Duration::from_secs(20), "the proxy admits", || async {
        send(&proxy, "GET", &[("authorization", &unbound)])
            .await
            .status
            == 200
    })
    .await;
    proxy
}

#[tokio::test]
async fn every_proxy_admits_a_bound_token_only_with_its_proof() {
    crate::require!(Envoy, Nginx, Traefik, WasmFilter, DpopClient);
    let app = sidecar(false).await;
    let mut maker = ProofMaker::start();
    let key = maker.key("ES256");
    let other_key = maker.key("ES256");
    for which in EVERY_PROXY {
        ahead_of_real_time(&app);
        let proxy = proxied(which, &app, false).await;
        let token = bound(&app, &key).await;
        let dpop_auth = format!("DPoP {token}");
        let target = get_hello(&token);
        let proof = maker.proof(&key, target);
        let r = with_proof(&proxy, &dpop_auth, &proof).await;
        assert_eq!(r.status, 200, "{which:?}: a valid proof: {r:?}");
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
        let r = with_proof(&proxy, &dpop_auth, &proof).await;
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
        let r = with_proof(&proxy, &dpop_auth, &proof).await;
        refused(&r, "invalid_dpop_proof", "REASON_PROOF_INVALID");
        let proof = maker.proof(&other_key, target);
        let r = with_proof(&proxy, &dpop_auth, &proof).await;
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
    crate::require!(Envoy, Nginx, Traefik, WasmFilter, DpopClient);
    let app = sidecar(true).await;
    let mut maker = ProofMaker::start();
    let key = maker.key("ES256");
    for which in EVERY_PROXY {
        ahead_of_real_time(&app);
        let proxy = proxied(which, &app, true).await;
        let token = bound(&app, &key).await;
        let dpop_auth = format!("DPoP {token}");
        let target = get_hello(&token);
        let proof = maker.proof(&key, target);
        let r = with_proof(&proxy, &dpop_auth, &proof).await;
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
        let r = with_proof(&proxy, &dpop_auth, &proof).await;
        assert_eq!(r.status, 200, "{which:?} with the nonce: {r:?}");
        // A nonce that is not the fleet's is refused, with a fresh one.
        let forged = Target {
            nonce: Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            ..target
        };
        let proof = maker.proof(&key, forged);
        let r = with_proof(&proxy, &dpop_auth, &proof).await;
        assert_eq!(r.status, 401, "{which:?} with a forged nonce: {r:?}");
        assert!(r.header("dpop-nonce").is_some(), "{which:?}: {r:?}");
    }
}

/// The SHA-256 thumbprint of a PEM certificate, base64url, as openssl computes it (not our
/// code).
fn openssl_thumbprint(pem: &str) -> String {
    let script = format!(
        "openssl x509 -in {pem} -outform DER | openssl dgst -sha256 -binary | base64 -w0 \
         | tr '+/' '-_' | tr -d '='"
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .output()
        .expect("openssl runs");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .expect("text")
        .trim()
        .to_owned()
}

/// curl over mutual TLS with `client` (a certificate of the mesh CA): the status.
fn curl_mtls(port: u16, client: &str, authorization: &str) -> u16 {
    let tls = format!("{}/tests/keys/tls", env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
        ])
        .args(["--cacert", &format!("{tls}/ca.pem")])
        .args(["--cert", &format!("{tls}/{client}.pem")])
        .args(["--key", &format!("{tls}/{client}.key")])
        .args(["-H", &format!("authorization: {authorization}")])
        .arg(format!("https://localhost:{port}/hello"))
        .output()
        .expect("curl runs");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

#[tokio::test]
async fn a_certificate_bound_token_passes_envoy_only_with_its_certificate() {
    crate::require!(Envoy);
    let app = sidecar(false).await;
    let tls = format!("{}/tests/keys/tls", env!("CARGO_MANIFEST_DIR"));
    let x5t = openssl_thumbprint(&format!("{tls}/some-workload.pem"));
    let issued = app
        .issue_with(pb::IssueRequest {
            user_id: "workload".into(),
            x5t_s256: x5t.clone(),
            ..Default::default()
        })
        .await
        .expect("issue a certificate-bound token");
    let (app_addr, _seen) = upstream().await;
    let proxy = start(Proxy::EnvoyMtls, app_addr.port(), app.addr.port());
    let port = proxy.addr.port();
    let bearer = format!("Bearer {}", issued.token);
    // Envoy starts listening a moment after it starts: until then curl answers 0.
    let mut status = 0;
    for _ in 0..300 {
        status = tokio::task::spawn_blocking({
            let bearer = bearer.clone();
            move || curl_mtls(port, "some-workload", &bearer)
        })
        .await
        .expect("curl");
        if status != 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200, "the bound certificate");
    // Another certificate of the same CA: the connection is accepted, the token is not.
    let other = tokio::task::spawn_blocking({
        let bearer = bearer.clone();
        move || curl_mtls(port, "token-admin", &bearer)
    })
    .await
    .expect("curl");
    assert_eq!(other, 401, "another certificate of the same CA");
    // Over Verify: the certificate (DER) or its thumbprint.
    let der = std::process::Command::new("openssl")
        .args([
            "x509",
            "-in",
            &format!("{tls}/some-workload.pem"),
            "-outform",
            "DER",
        ])
        .output()
        .expect("openssl")
        .stdout;
    let verify = |certificate: Vec<u8>| {
        let mut client = app.client.clone();
        let token = issued.token.clone();
        async move {
            client
                .verify(pb::VerifyRequest {
                    token,
                    client_certificate: certificate,
                    ..Default::default()
                })
                .await
                .expect("verify")
                .into_inner()
        }
    };
    assert!(verify(der.clone()).await.valid);
    let answer = verify(Vec::new()).await;
    assert_eq!(answer.reason(), pb::Reason::ProofRequired);
    let mut wrong = der;
    wrong.push(0);
    assert_eq!(verify(wrong).await.reason(), pb::Reason::ProofInvalid);
    let claims = verify({
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&x5t)
            .expect("thumbprint")
    })
    .await;
    assert_eq!(claims.claims.expect("valid").x5t_s256, x5t);
}
