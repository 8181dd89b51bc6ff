//! Compiles Envoy's external-authorization API (`proto/third_party`, the files it imports
//! included) with a pure-Rust protobuf compiler (no `protoc` needed) and keeps its encoded
//! descriptor set for server reflection. Our own `tokensidecar.v1` is compiled by the
//! `token-sidecar-api` crate.
use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(env::var("OUT_DIR")?);

    let ext_authz = "envoy/service/auth/v3/external_auth.proto";
    println!("cargo:rerun-if-changed=proto/third_party");
    let fds = protox::compile([ext_authz], ["proto/third_party"])?;
    fs::write(out.join("ext_authz_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .codec_path("token_sidecar_api::codec::ProtoCodec")
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
