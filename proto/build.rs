//! Compiles `zbase/v1/*.proto` with a vendored `protoc`, so no machine needs one installed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // `set_var` is unsafe only when other threads may read the environment; a build script
    // runs on one thread, and prost-build reads PROTOC from the environment.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("PROTOC", protoc);
    }
    // The contract names the RPC `Connect`, which collides with the generated client's
    // `connect(endpoint)` constructor; clients build a channel and call `StationClient::new`.
    tonic_prost_build::configure()
        .build_transport(false)
        .bytes(".zbase.v1.Frame.payload")
        .bytes(".zbase.v1.Change.snapshot")
        .bytes(".zbase.v1.PutSnapshotRequest.snapshot")
        // Lazily sized buffers: see `codec.rs`. Same wire format as tonic_prost's codec.
        .codec_path("crate::codec::LeanCodec")
        .compile_protos(
            &["zbase/v1/station.proto", "zbase/v1/replication.proto"],
            &["."],
        )?;
    println!("cargo:rerun-if-changed=zbase");
    Ok(())
}
