//! TLS and mutual TLS on the gRPC API (rustls with aws-lc-rs).
use std::path::{Path, PathBuf};

use crate::common::{Backend, Settings};
use token_sidecar::api::pb;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

fn tls(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys/tls")
        .join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(tls(name)).expect("fixture")
}

fn client(identity: Option<&str>) -> ClientTlsConfig {
    let mut config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")))
        .domain_name("localhost");
    if let Some(name) = identity {
        config = config.identity(Identity::from_pem(
            read(&format!("{name}.pem")),
            read(&format!("{name}.key")),
        ));
    }
    config
}

fn server(settings: Settings) -> Settings {
    settings
        .arg("--tls-cert", &tls("server.pem").display().to_string())
        .arg("--tls-key", &tls("server.key").display().to_string())
}

async fn try_verify(port: u16, config: Option<ClientTlsConfig>) -> Result<bool, String> {
    let channel = match config {
        Some(c) => Channel::from_shared(format!("https://localhost:{port}"))
            .map_err(|e| e.to_string())?
            .tls_config(c)
            .map_err(|e| e.to_string())?,
        None => {
            Channel::from_shared(format!("http://127.0.0.1:{port}")).map_err(|e| e.to_string())?
        }
    };
    let channel = channel
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut api = pb::token_service_client::TokenServiceClient::new(channel);
    api.verify(pb::VerifyRequest {
        token: "x".into(),
        ..Default::default()
    })
    .await
    .map(|r| !r.into_inner().valid)
    .map_err(|e| format!("rpc: {e}"))
}

#[tokio::test]
async fn the_api_speaks_tls_and_refuses_plaintext() {
    let app = server(Settings::new(Backend::Sqlite))
        .tls(client(None))
        .spawn()
        .await;
    let issued = app.issue("alice").await;
    assert!(app.verify(&issued.token).await.valid);
    assert!(
        try_verify(app.addr.port(), None).await.is_err(),
        "plaintext must fail"
    );
}

#[tokio::test]
async fn mutual_tls_accepts_only_clients_the_ca_signed() {
    let app = server(Settings::new(Backend::Sqlite))
        .arg("--tls-client-ca", &tls("ca.pem").display().to_string())
        .arg("--admin-identity", "client.example")
        .tls(client(Some("client")))
        .spawn()
        .await;
    // A certificate the CA signed admits its holder to the open RPCs; Issue needs an allowed
    // identity, which this certificate (no subject alternative name) does not name.
    let refused = app.issue_with(pb::IssueRequest {
        user_id: "alice".into(),
        ..Default::default()
    });
    let refused = refused
        .await
        .expect_err("a CA-signed certificate alone is not an admin");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let port = app.addr.port();
    assert_eq!(
        try_verify(port, Some(client(Some("client")))).await,
        Ok(true)
    );
    assert!(
        try_verify(port, Some(client(Some("rogue-client"))))
            .await
            .is_err(),
        "rogue client"
    );
    assert!(
        try_verify(port, Some(client(None))).await.is_err(),
        "no client certificate"
    );
    assert!(try_verify(port, None).await.is_err(), "plaintext");
}

#[tokio::test]
async fn unreadable_tls_files_are_refused_at_start() {
    let err = Settings::new(Backend::Sqlite)
        .arg("--tls-cert", "/no/such/cert.pem")
        .arg("--tls-key", "/no/such/key.pem")
        .no_wait()
        .try_spawn()
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("/no/such/cert.pem"), "{err}");
}

/// A renewed certificate (cert-manager rewrites the mounted Secret) is served to new connections
/// after a reload (SIGHUP or the periodic one); a key that does not match keeps the old pair.
#[tokio::test]
async fn a_renewed_certificate_is_served_after_a_reload() {
    let dir = tempfile::tempdir().expect("dir");
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let put = |c: &str, k: &str| {
        std::fs::write(&cert, read(c)).expect("cert");
        std::fs::write(&key, read(k)).expect("key");
    };
    put("server.pem", "server.key");
    let app = Settings::new(Backend::Sqlite)
        .arg("--tls-cert", &cert.display().to_string())
        .arg("--tls-key", &key.display().to_string())
        .tls(client(None))
        .spawn()
        .await;
    let port = app.addr.port();
    assert_eq!(try_verify(port, Some(client(None))).await, Ok(true));

    // A key that does not belong to the certificate: refused, the old pair keeps serving.
    put("server.pem", "client.key");
    let problems = app.reload_secrets();
    assert!(problems.iter().any(|p| p.contains("TLS")), "{problems:?}");
    assert_eq!(try_verify(port, Some(client(None))).await, Ok(true));

    // Another valid pair (a certificate not issued for "localhost"): new connections get it,
    // which this client refuses — proof that the new certificate is the one served.
    put("client.pem", "client.key");
    assert!(app.reload_secrets().is_empty());
    assert!(try_verify(port, Some(client(None))).await.is_err());

    put("server.pem", "server.key");
    assert!(app.reload_secrets().is_empty());
    assert_eq!(try_verify(port, Some(client(None))).await, Ok(true));
}

/// SPEC §12 in a mesh: the mesh CA signs every workload, so a signed certificate alone admits the
/// open RPCs only; the privileged ones need a SPIFFE ID on `--admin-identity`.
#[tokio::test]
async fn in_a_mesh_only_an_allowed_spiffe_identity_may_issue() {
    let mesh = |workload: &str| {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read("ca.pem")))
            .domain_name("localhost")
            .identity(Identity::from_pem(
                read(&format!("{workload}.pem")),
                read(&format!("{workload}.key")),
            ))
    };
    let app = server(Settings::new(Backend::Sqlite))
        .arg("--tls-client-ca", &tls("mesh-ca.pem").display().to_string())
        .arg("--admin-identity", "spiffe://cluster.local/ns/ops/sa/*")
        .tls(mesh("some-workload"))
        .spawn()
        .await;
    let request = || pb::IssueRequest {
        user_id: "admin".into(),
        ..Default::default()
    };
    let refused = app
        .issue_with(request())
        .await
        .expect_err("another namespace's workload is no admin");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("--admin-identity"),
        "{refused:?}"
    );
    // It may still verify.
    assert!(!app.verify("not-a-token").await.valid);

    let channel = Channel::from_shared(format!("https://localhost:{}", app.addr.port()))
        .expect("uri")
        .tls_config(mesh("token-admin"))
        .expect("tls")
        .connect()
        .await
        .expect("connect");
    let mut admin = pb::token_service_client::TokenServiceClient::new(channel);
    let issued = admin
        .issue(request())
        .await
        .expect("an allowed SPIFFE identity issues")
        .into_inner();
    assert!(app.verify(&issued.token).await.valid);
    // The audit trail names the workload that revoked (issue 30).
    admin
        .revoke(pb::RevokeRequest {
            target: Some(pb::revoke_request::Target::SessionId(
                issued.session_id.clone(),
            )),
            reason: "incident 42".into(),
        })
        .await
        .expect("revoke");
    let trail = admin
        .list_changes(pb::ListChangesRequest::default())
        .await
        .expect("list")
        .into_inner()
        .changes;
    assert_eq!(trail.len(), 1, "{trail:?}");
    assert_eq!(trail[0].who, "spiffe://cluster.local/ns/ops/sa/token-admin");
    assert_eq!(trail[0].why, "incident 42");
    assert_eq!(trail[0].target, issued.session_id);
}

#[tokio::test]
async fn an_admin_identity_without_a_client_ca_is_refused() {
    let config = <token_sidecar::config::Config as clap::Parser>::try_parse_from([
        "token-sidecar",
        "--admin-identity",
        "spiffe://cluster.local/ns/ops/sa/*",
    ]);
    assert!(config.is_err(), "--admin-identity needs --tls-client-ca");
    let config = <token_sidecar::config::Config as clap::Parser>::try_parse_from([
        "token-sidecar",
        "--tls-cert",
        "c.pem",
        "--tls-key",
        "k.pem",
        "--tls-client-ca",
        "ca.pem",
        "--admin-identity",
        "spiffe://cluster.local/*/sa/x",
    ]);
    assert!(config.is_err(), "`*` only as the last segment");
}
