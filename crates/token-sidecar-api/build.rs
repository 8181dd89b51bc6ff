//! Compiles `tokensidecar.v1` (this crate's `proto/`, so that the packaged crate builds on its
//! own; the repository's `proto/tokensidecar` links to it) with a pure-Rust protobuf compiler
//! (no `protoc` needed) and keeps its encoded descriptor set for server reflection.
use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("proto");
    let proto = root.join("tokensidecar/v1/token_sidecar.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let fds = protox::compile([&proto], [&root])?;
    fs::write(
        out.join("token_sidecar_descriptor.bin"),
        fds.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .codec_path("crate::codec::ProtoCodec")
        .compile_fds(fds)?;
    Ok(())
}
