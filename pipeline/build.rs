//! Generates the `jetline.v1.Envelope` type from `schemas/jetline/v1/envelope.proto`
//! with protox (pure Rust, no protoc), and keeps its descriptor set so the
//! JSON envelope can be read through prost-reflect.

use std::{env, error::Error, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn Error>> {
    let schemas = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../schemas");
    println!("cargo:rerun-if-changed=../schemas/jetline/v1/envelope.proto");
    let descriptors = protox::compile(["jetline/v1/envelope.proto"], [&schemas])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("envelope_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    // The payload is a slice of the received message, not a copy of it.
    prost_build::Config::new()
        .bytes([".jetline.v1.Envelope.payload"])
        .compile_fds(descriptors)?;
    Ok(())
}
