//! A tonic service protected by token-sidecar with one `.layer(...)` line (here the standard
//! health service stands in for your own): every call needs `authorization: Bearer <token>`
//! metadata, and handlers find the verified claims in `request.extensions()` as `TokenClaims`.
//!
//!   cargo run --example protected_tonic -- 127.0.0.1:8001 http://127.0.0.1:50051
//!   grpcurl -plaintext -H "authorization: Bearer $TOKEN" 127.0.0.1:8001 grpc.health.v1.Health/Check
//!
//! It serves reflection too (behind the same layer: grpcurl's `-H` goes with its reflection
//! requests), so grpcurl needs no proto file.
use token_sidecar_api::client::{SidecarClient, VerifyLayer};
use tonic::transport::Server;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:8001".into());
    let sidecar = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let client = SidecarClient::connect_lazy(&sidecar)?;
    let (_reporter, health) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    Server::builder()
        .layer(VerifyLayer::new(client))
        .add_service(health)
        .add_service(reflection)
        .serve(listen.parse()?)
        .await?;
    Ok(())
}
