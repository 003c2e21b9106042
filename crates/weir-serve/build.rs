//! Generates the gRPC server of the Open Inference Protocol from
//! `proto/inference.proto`, with the protoc that `protoc-bin-vendored`
//! ships (a fresh machine has none installed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_client(false)
        .compile_with_config(config, &["proto/inference.proto"], &["proto"])?;
    Ok(())
}
