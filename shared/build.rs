//! Compiles proto/sweep.proto with tonic-prost-build, using the vendored protoc when none is set.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    println!("cargo:rerun-if-changed=../proto/sweep.proto");
    tonic_prost_build::configure().compile_protos(&["../proto/sweep.proto"], &["../proto"])?;
    Ok(())
}
