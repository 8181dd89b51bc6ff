//! Compiles the gRPC contracts with a pure-Rust protobuf compiler (no `protoc` needed) and keeps
//! the encoded descriptor sets for server reflection: our own `tokensidecar.v1`, and Envoy's
//! external-authorization API (`proto/third_party`, the files it imports included).
use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(env::var("OUT_DIR")?);

    let proto = "proto/tokensidecar/v1/token_sidecar.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    fs::write(
        out.join("token_sidecar_descriptor.bin"),
        fds.encode_to_vec(),
    )?;
    tonic_prost_build::configure().compile_fds(fds)?;

    let ext_authz = "envoy/service/auth/v3/external_auth.proto";
    println!("cargo:rerun-if-changed=proto/third_party");
    let fds = protox::compile([ext_authz], ["proto/third_party"])?;
    fs::write(out.join("ext_authz_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
