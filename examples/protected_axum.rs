//! An axum service protected by token-sidecar with one `.layer(...)` line: every request needs
//! `Authorization: Bearer <token>`, and the handler reads the verified claims.
//!
//!   cargo run --example protected_axum -- 127.0.0.1:8000 http://127.0.0.1:50051
//!   curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8000/whoami
use axum::routing::get;
use axum::{Extension, Router};
use token_sidecar_api::client::{SidecarClient, VerifyLayer};
use token_sidecar_api::pb::TokenClaims;

async fn whoami(Extension(claims): Extension<TokenClaims>) -> String {
    format!("hello {}", claims.user_id)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:8000".into());
    let sidecar = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let client = SidecarClient::connect_lazy(&sidecar)?;

    let app = Router::new()
        .route("/whoami", get(whoami))
        .layer(VerifyLayer::new(client));

    let listener = tokio::net::TcpListener::bind(&listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
