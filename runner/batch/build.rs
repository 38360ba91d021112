//! Embeds floe's default components (built by `functions/build.sh` into
//! `target/components/`) into the binary. A build without them still compiles, but
//! `builtin` components then fail at start-up with a message saying how to build them.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=FLOE_COMPONENTS_DIR");
    let dir = std::env::var_os("FLOE_COMPONENTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap())
                .join("../../target/components")
        });
    let mut out = String::new();
    for (konst, file) in [
        ("VALIDATOR", "validator.wasm"),
        ("TRANSFORMER", "transformer.wasm"),
        ("MERGE_BUILDER", "merge_builder.wasm"),
    ] {
        let path = dir.join(file);
        println!("cargo:rerun-if-changed={}", path.display());
        if path.exists() {
            let abs = path.canonicalize().unwrap();
            out.push_str(&format!(
                "pub const {konst}: &[u8] = include_bytes!({:?});\n",
                abs.display().to_string()
            ));
        } else {
            println!(
                "cargo:warning=floe: {} is missing; run `make components` (functions/build.sh) before building the runner",
                path.display()
            );
            out.push_str(&format!("pub const {konst}: &[u8] = &[];\n"));
        }
    }
    let dest = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("builtin_components.rs");
    std::fs::write(dest, out).unwrap();
}
