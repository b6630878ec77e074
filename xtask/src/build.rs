//! Building the XDP object and the gateway.
//!
//! xtask (not a `build.rs`) builds the eBPF object: it needs nightly,
//! build-std and a linker that xtask installs, and a build script running
//! cargo inside cargo would fight over the one target directory we keep.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::toolchain;

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The target directory everything shares.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// `cargo +nightly <verb>` for the eBPF crate on its target, with build-std.
/// Build and clippy get the same flags, so neither invalidates the other.
pub fn nightly_ebpf_cargo(verb: &str, tc: &toolchain::Toolchain) -> Command {
    // v3: atomic fetch-add and compare-exchange (the SYN budget).
    let rustflags = format!(
        "-C debuginfo=2 -C link-arg=--btf -C target-cpu=v3 -C linker={}",
        tc.bpf_linker.display()
    );
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", verb, "--quiet"])
        .args(["--package", "gateway-ebpf", "--release"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .current_dir(workspace_root())
        .env("CARGO_TARGET_DIR", target_dir())
        // The outer (stable) cargo's settings must not leak into nightly's.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_RUSTFLAGS", rustflags);
    cmd
}

/// Builds the eBPF object with nightly and returns its path.
pub fn ebpf() -> Result<PathBuf> {
    let tc = toolchain::ensure()?;
    let status = nightly_ebpf_cargo("build", &tc)
        .status()
        .context("running cargo +nightly")?;
    if !status.success() {
        bail!("building gateway-ebpf failed (see the compiler output above)");
    }
    let obj = target_dir().join("bpfel-unknown-none/release/gateway-ebpf");
    if !obj.is_file() {
        bail!("cargo built gateway-ebpf but {} is missing", obj.display());
    }
    Ok(obj)
}

/// A stable cargo command in the workspace, told where the eBPF object is.
pub fn cargo(obj: &Path) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root())
        .env("GATEWAY_EBPF_OBJECT", obj)
        .env("CARGO_TARGET_DIR", target_dir());
    cmd
}

/// Builds the gateway (release), and any extra `--package P --bin B`
/// pairs in the same cargo run; returns the gateway binary's path.
pub fn release(obj: &Path, extra: &[(&str, &str)]) -> Result<PathBuf> {
    let mut cmd = cargo(obj);
    cmd.args([
        "build",
        "--release",
        "--package",
        "gateway",
        "--bin",
        "gateway",
    ]);
    for (package, bin) in extra {
        cmd.args(["--package", package, "--bin", bin]);
    }
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("the release build failed (see the compiler output above)");
    }
    Ok(target_dir().join("release/gateway"))
}
