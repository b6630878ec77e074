//! The eBPF toolchain: nightly with `rust-src`, and `bpf-linker` built against
//! the nightly toolchain's own LLVM (../shared/ebpf-toolchain.md has why).
//!
//! Every step is idempotent: a second run finds what the first installed and
//! does nothing. A step that cannot be done stops with one line naming what is
//! missing and the command that fixes it.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// bpf-linker release that fits LLVM 21–23 and rustc 1.95.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// cargo-deny release for the dependency check (builds with rustc 1.95).
const CARGO_DENY_VERSION: &str = "0.20.2";

/// What the eBPF build needs, all located.
pub struct Toolchain {
    /// The `bpf-linker` executable.
    pub bpf_linker: PathBuf,
}

/// Where built tools live: `$GATEWAY_TOOLS_DIR`, else `~/.cache/gateway-tools`.
/// Outside the target directory so `cargo clean` and fresh clones reuse it.
pub fn tools_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("GATEWAY_TOOLS_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME").context("HOME is not set; set GATEWAY_TOOLS_DIR")?;
    Ok(PathBuf::from(home).join(".cache/gateway-tools"))
}

/// Makes sure nightly, rust-src and bpf-linker are there, installing what is not.
pub fn ensure() -> Result<Toolchain> {
    let sysroot = nightly_sysroot()?;
    ensure_rust_src(&sysroot)?;
    let bpf_linker = ensure_bpf_linker(&sysroot)?;
    Ok(Toolchain { bpf_linker })
}

fn nightly_sysroot() -> Result<PathBuf> {
    let out = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let s = String::from_utf8_lossy(&o.stdout).trim().to_owned();
            Ok(PathBuf::from(s))
        }
        Ok(_) => bail!(
            "the nightly Rust toolchain is missing; fix: rustup toolchain install nightly --component rust-src"
        ),
        Err(e) => bail!(
            "rustup cannot be run ({e}); fix: install rustup from your distribution or rustup.rs"
        ),
    }
}

fn ensure_rust_src(sysroot: &Path) -> Result<()> {
    if sysroot
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .is_file()
    {
        return Ok(());
    }
    eprintln!("xtask: adding rust-src to nightly (first use)");
    let ok = Command::new("rustup")
        .args(["component", "add", "rust-src", "--toolchain", "nightly"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        bail!(
            "rust-src for nightly could not be installed (is the registry reachable?); fix: rustup component add rust-src --toolchain nightly"
        );
    }
    Ok(())
}

/// `LLVM version: 22.1.4` → 22.
fn nightly_llvm_major() -> Result<u32> {
    let out = Command::new("rustup")
        .args(["run", "nightly", "rustc", "-vV"])
        .output()
        .context("running rustc +nightly -vV")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse().ok())
        .context("rustc +nightly -vV printed no LLVM version")
}

/// The nightly toolchain's own LLVM shared library, e.g. `LLVM-22-rust-1.97.0-nightly`.
fn nightly_llvm_lib(sysroot: &Path) -> Result<String> {
    let lib = sysroot.join("lib");
    let entries = std::fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name
            .strip_prefix("libLLVM")
            .and_then(|s| s.strip_suffix(".so"))
        {
            return Ok(format!("LLVM{stem}"));
        }
    }
    bail!(
        "the nightly toolchain ships no libLLVM*.so in {}; fix: rustup toolchain install nightly --force",
        lib.display()
    )
}

fn ensure_bpf_linker(sysroot: &Path) -> Result<PathBuf> {
    let llvm_lib = nightly_llvm_lib(sysroot)?;
    // Keyed by the exact LLVM library: a new nightly gets its own linker
    // instead of one that links a library that is gone.
    let root = tools_dir()?.join(format!("bpf-linker-{BPF_LINKER_VERSION}-{llvm_lib}"));
    let exe = root.join("bin/bpf-linker");
    if exe.is_file() {
        return Ok(exe);
    }
    let major = nightly_llvm_major()?;
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against nightly's {llvm_lib} into {} (first use, about a minute)",
        root.display()
    );
    let libdir = sysroot.join("lib");
    let rustflags = format!(
        "-C link-arg=-L{d} -C link-arg=-l{llvm_lib} -C link-arg=-Wl,-rpath,{d}",
        d = libdir.display()
    );
    let mut cmd = cargo_install("bpf-linker", BPF_LINKER_VERSION, &root);
    cmd.args(["--no-default-features", "--features"])
        .arg(format!("llvm-{major},no-llvm-linking"))
        .env("RUSTFLAGS", rustflags);
    run_install(cmd, &exe, "bpf-linker", "cargo xtask toolchain")?;
    Ok(exe)
}

/// The `cargo-deny` executable, built on first use (a few minutes) into
/// the tools directory.
pub fn ensure_cargo_deny() -> Result<PathBuf> {
    if let Some(exe) = installed_cargo_deny() {
        return Ok(exe);
    }
    let root = tools_dir()?.join(format!("cargo-deny-{CARGO_DENY_VERSION}"));
    let exe = root.join("bin/cargo-deny");
    eprintln!(
        "xtask: building cargo-deny {CARGO_DENY_VERSION} into {} (first use, a few minutes)",
        root.display()
    );
    let cmd = cargo_install("cargo-deny", CARGO_DENY_VERSION, &root);
    run_install(cmd, &exe, "cargo-deny", "cargo xtask deps")?;
    Ok(exe)
}

/// cargo-deny where [`ensure_cargo_deny`] puts it, if it is there: for
/// the unit test, which never builds it (no registry access from a test;
/// `cargo xtask test` runs the dependency check, which builds it, first).
pub fn installed_cargo_deny() -> Option<PathBuf> {
    let exe = tools_dir()
        .ok()?
        .join(format!("cargo-deny-{CARGO_DENY_VERSION}/bin/cargo-deny"));
    exe.is_file().then_some(exe)
}

/// `cargo install NAME --version VERSION --locked --root ROOT`, outside the
/// workspace's target directory.
fn cargo_install(name: &str, version: &str, root: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.args(["install", name, "--version", version, "--locked", "--root"])
        .arg(root)
        .env_remove("CARGO_TARGET_DIR");
    cmd
}

/// Runs an install; fails with the fix when `exe` did not appear.
fn run_install(mut cmd: Command, exe: &Path, name: &str, rerun: &str) -> Result<()> {
    let status = cmd.status().context("running cargo install")?;
    if !status.success() || !exe.is_file() {
        bail!(
            "{name} could not be built (is crates.io reachable?); fix: rerun `{rerun}` once the registry answers"
        );
    }
    Ok(())
}
