//! Sibling services protected by one layer (feature `client`): an axum service and a tonic
//! service wrapped in `VerifyLayer`, as in `examples/protected_*.rs`, against a real sidecar —
//! no token, a valid one (claims reach the handler), a revocation that reaches the service at
//! once, the sidecar gone (fail closed) — and a Python service using stubs generated from
//! `proto/` with grpcio-tools, reading the `Reason` and the `ErrorInfo`.
use std::net::SocketAddr;

use axum::routing::get;
use axum::{Extension, Router};
use token_sidecar::api::pb::TokenClaims;
use token_sidecar::api::pb::revoke_request::Target;
use token_sidecar_api::client::{SidecarClient, VerifyLayer};

use crate::common::{Backend, TestApp, http_request, serve_router};

async fn whoami(Extension(claims): Extension<TokenClaims>) -> String {
    format!("hello {}", claims.user_id)
}

async fn serve_axum(sidecar: SocketAddr) -> SocketAddr {
    let client = SidecarClient::connect_lazy(&format!("http://{sidecar}")).expect("uri");
    serve_router(
        Router::new()
            .route("/whoami", get(whoami))
            .layer(VerifyLayer::new(client)),
    )
    .await
}

#[tokio::test]
async fn an_axum_service_is_protected_by_one_layer() {
    let sidecar = TestApp::spawn(Backend::Sqlite).await;
    let app = serve_axum(sidecar.addr).await;
    let r = http_request(app, "GET", "/whoami", &[], None)
        .await
        .expect("answer");
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate").as_deref(), Some("Bearer"));

    let t = sidecar.issue("alice").await;
    let auth = format!("Bearer {}", t.token);
    let r = http_request(app, "GET", "/whoami", &[("Authorization", &auth)], None)
        .await
        .expect("answer");
    assert_eq!((r.status, r.body.as_str()), (200, "hello alice"));

    // A revocation reaches the service at once.
    sidecar
        .revoke(Target::Token(t.token.clone()))
        .await
        .expect("revoke");
    let r = http_request(app, "GET", "/whoami", &[("Authorization", &auth)], None)
        .await
        .expect("answer");
    assert_eq!(r.status, 401);
    assert!(
        r.header("www-authenticate")
            .unwrap_or_default()
            .contains("REASON_TOKEN_REVOKED")
    );

    // The sidecar gone: fail closed.
    let fresh = sidecar.issue("bob").await;
    sidecar.shutdown().await;
    let auth = format!("Bearer {}", fresh.token);
    let r = http_request(app, "GET", "/whoami", &[("Authorization", &auth)], None)
        .await
        .expect("answer");
    assert_eq!(r.status, 503);
}

#[tokio::test]
async fn a_tonic_service_is_protected_by_one_layer() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let sidecar = TestApp::spawn(Backend::Sqlite).await;
    let client = SidecarClient::connect_lazy(&format!("http://{}", sidecar.addr)).expect("uri");
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(VerifyLayer::new(client))
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let call = |token: Option<String>| {
        let mut client = HealthClient::new(channel.clone());
        async move {
            let mut request = tonic::Request::new(HealthCheckRequest::default());
            if let Some(t) = token {
                request.metadata_mut().insert(
                    "authorization",
                    format!("Bearer {t}").parse().expect("header"),
                );
            }
            client.check(request).await
        }
    };
    let refused = call(None).await.expect_err("no token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let t = sidecar.issue("alice").await;
    assert!(call(Some(t.token.clone())).await.is_ok());
    sidecar
        .revoke(Target::Jti(t.jti.clone()))
        .await
        .expect("revoke");
    let refused = call(Some(t.token)).await.expect_err("revoked");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert_eq!(refused.message(), "REASON_TOKEN_REVOKED");
}

#[tokio::test]
async fn a_python_service_uses_stubs_generated_from_the_proto() {
    crate::require!(PythonGrpc);
    let root = env!("CARGO_MANIFEST_DIR");
    let stubs = tempfile::tempdir().expect("dir");
    let generated = std::process::Command::new("python3")
        .args(["-m", "grpc_tools.protoc", "-I", &format!("{root}/proto")])
        .arg(format!("--python_out={}", stubs.path().display()))
        .arg(format!("--grpc_python_out={}", stubs.path().display()))
        .arg(format!("{root}/proto/tokensidecar/v1/token_sidecar.proto"))
        .output()
        .expect("python3 runs (scripts/test installs grpcio-tools)");
    assert!(
        generated.status.success(),
        "{}",
        String::from_utf8_lossy(&generated.stderr)
    );
    let sidecar = TestApp::spawn(Backend::Sqlite).await;
    let t = sidecar.issue("alice").await;
    sidecar
        .revoke_user("mallory", Some(crate::common::T0_MS + 3_600_000))
        .await;
    let addr = sidecar.addr.to_string();
    let script = format!("{root}/tests/python/verify_client.py");
    let run = |token: String| {
        let (script, addr, path) = (script.clone(), addr.clone(), stubs.path().to_path_buf());
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("python3")
                .arg(&script)
                .args([&addr, &token, "mallory"])
                .env("PYTHONPATH", &path)
                .output()
        })
    };
    let out = run(t.token.clone()).await.expect("join").expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(answer["valid"], true);
    assert_eq!(answer["user_id"], "alice");
    assert_eq!(answer["issue"]["code"], "PERMISSION_DENIED");
    assert_eq!(answer["issue"]["reason"], "REASON_USER_BANNED");
    assert_eq!(answer["issue"]["domain"], "token-sidecar");

    let out = run("not.a.token".into())
        .await
        .expect("join")
        .expect("python");
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(answer["valid"], false);
    assert_eq!(answer["reason"], "REASON_MALFORMED");
}

/// A "sidecar" that answers every RPC with this gRPC status (trailers only).
async fn sidecar_answering(grpc_status: &'static str) -> SocketAddr {
    let app = Router::new().fallback(move || async move {
        (
            [
                ("content-type", "application/grpc"),
                ("grpc-status", grpc_status),
                ("grpc-message", "stub"),
            ],
            "",
        )
    });
    serve_router(app).await
}

/// A service behind `VerifyLayer` with `FailOpen`, in front of `sidecar`.
async fn serve_fail_open(sidecar: SocketAddr) -> SocketAddr {
    use token_sidecar_api::client::WhenUnreachable;
    let client = SidecarClient::connect_lazy(&format!("http://{sidecar}")).expect("uri");
    serve_router(
        Router::new()
            .route("/", get(|| async { "through" }))
            .layer(VerifyLayer::new(client).when_unreachable(WhenUnreachable::FailOpen)),
    )
    .await
}

/// SPEC §9 (issue 25): `FailOpen` lets a request through only when the sidecar cannot be
/// reached — never when it answers, shedding load or past a deadline; and two `Authorization`
/// headers are refused as MALFORMED by the layer too.
#[tokio::test]
async fn fail_open_is_only_for_a_sidecar_that_cannot_be_reached() {
    let auth = [("Authorization", "Bearer some.token.value")];
    for (status, what) in [("8", "shedding load"), ("4", "past its deadline")] {
        let app = serve_fail_open(sidecar_answering(status).await).await;
        let r = http_request(app, "GET", "/", &auth, None)
            .await
            .expect("answer");
        assert_eq!(r.status, 503, "a sidecar {what} is not bypassed: {r:?}");
    }
    // Nothing listens there: the one case FailOpen is for.
    let gone = SocketAddr::from(([127, 0, 0, 1], crate::common::free_port()));
    let app = serve_fail_open(gone).await;
    let r = http_request(app, "GET", "/", &auth, None)
        .await
        .expect("answer");
    assert_eq!((r.status, r.body.as_str()), (200, "through"));

    let sidecar = TestApp::spawn(Backend::Sqlite).await;
    let protected = serve_axum(sidecar.addr).await;
    let token = sidecar.issue("alice").await.token;
    crate::common::assert_two_authorizations_are_malformed(protected, "/whoami", &token).await;
}

/// SPEC §15 through the layer: the `DPoP` header, the method and the URI (the service's origin
/// as clients call it, and the path) go to Verify; a bound token passes only with its proof.
#[tokio::test]
async fn the_layer_passes_a_dpop_proof_through() {
    use crate::common::dpop::{ProofMaker, Target, real_now_ms};
    crate::require!(DpopClient);
    let sidecar = crate::common::Settings::new(Backend::Sqlite)
        .clock(token_sidecar::clock::ManualClock::new(
            real_now_ms() + 1_000,
        ))
        .spawn()
        .await;
    let client = SidecarClient::connect_lazy(&format!("http://{}", sidecar.addr)).expect("uri");
    let app = serve_router(
        Router::new()
            .route("/whoami", get(whoami))
            .layer(VerifyLayer::new(client).origin("https://api.example.com")),
    )
    .await;
    let mut maker = ProofMaker::start();
    let key = maker.key("ES256");
    let token = sidecar
        .issue_with(token_sidecar::api::pb::IssueRequest {
            user_id: "alice".into(),
            dpop_jkt: key.jkt.clone(),
            ..Default::default()
        })
        .await
        .expect("issue")
        .token;
    let target = Target {
        htm: "GET",
        htu: "https://api.example.com/whoami",
        token: Some(&token),
        nonce: None,
    };
    let auth = format!("DPoP {token}");
    sidecar.clock.set_ms(real_now_ms() + 1_000);
    let proof = maker.proof(&key, target);
    let r = http_request(
        app,
        "GET",
        "/whoami",
        &[("Authorization", &auth), ("DPoP", &proof)],
        None,
    )
    .await
    .expect("answer");
    assert_eq!((r.status, r.body.as_str()), (200, "hello alice"), "{r:?}");
    let r = http_request(app, "GET", "/whoami", &[("Authorization", &auth)], None)
        .await
        .expect("answer");
    assert_eq!(r.status, 401);
    let challenge = r.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with("DPoP error=\"invalid_token\"")
            && challenge.contains("REASON_PROOF_REQUIRED"),
        "{challenge}"
    );
    let elsewhere = maker.proof(
        &key,
        Target {
            htu: "https://other.example.com/whoami",
            ..target
        },
    );
    let r = http_request(
        app,
        "GET",
        "/whoami",
        &[("Authorization", &auth), ("DPoP", &elsewhere)],
        None,
    )
    .await
    .expect("answer");
    assert_eq!(r.status, 401);
    assert!(
        r.header("www-authenticate")
            .unwrap_or_default()
            .starts_with("DPoP error=\"invalid_dpop_proof\"")
    );
}
