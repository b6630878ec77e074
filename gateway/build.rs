//! Embeds the XDP object that `cargo xtask` built (see xtask/src/build.rs
//! for why xtask, not this script, runs the nightly eBPF build).

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=GATEWAY_EBPF_OBJECT");
    let object = match std::env::var_os("GATEWAY_EBPF_OBJECT") {
        Some(p) => PathBuf::from(p),
        None => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
            target.join("bpfel-unknown-none/release/gateway-ebpf")
        }
    };
    println!("cargo:rerun-if-changed={}", object.display());
    if !object.is_file() {
        eprintln!(
            "error: the XDP object {} is missing; build through `cargo xtask build` (or `cargo xtask test`)",
            object.display()
        );
        std::process::exit(1);
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    if let Err(e) = std::fs::copy(&object, out.join("gateway-ebpf.o")) {
        eprintln!("error: copying {}: {e}", object.display());
        std::process::exit(1);
    }
}
