//! Puts `ld/` on the linker search path for `rwtext_hook.x`.

fn main() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ld");
    println!("cargo:rustc-link-search={}", dir.display());
    println!("cargo:rerun-if-changed=ld/rwtext_hook.x");
    println!("cargo:rerun-if-changed=partitions.csv");
}
