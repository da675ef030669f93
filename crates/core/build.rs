// Touches protoc-bin-vendored so the crate (and its protoc binary) is part of every build;
// see tools/protoc.
fn main() {
    let _ = protoc_bin_vendored::include_path();
    println!("cargo:rerun-if-changed=build.rs");
}
