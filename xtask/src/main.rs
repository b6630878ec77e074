//! `cargo xtask`: what cargo alone cannot do for this workspace — install the
//! eBPF toolchain, build the XDP object, attach and run, run the privileged
//! test suite, and benchmark against peers.

mod build;
mod conformance;
mod deps;
mod layout;
mod toolchain;

use std::process::{Command, ExitCode};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, run, test and benchmark the gateway"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the eBPF toolchain (nightly rust-src, bpf-linker) and
    /// cargo-deny if missing.
    Toolchain,
    /// Build the eBPF object and the gateway (release).
    Build,
    /// Build everything, attach XDP and run the gateway (embedded default
    /// config unless `--config FILE` is given). Extra args go to `gateway run`.
    Run {
        /// Arguments passed to `gateway run`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Check the dependency tree against deny.toml (licenses, bans,
    /// duplicates, sources; advisories when RustSec can be reached).
    Deps,
    /// Check the dependencies, then run every unit and end-to-end test
    /// (the privileged ones need root).
    Test {
        /// Extra arguments passed to `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Lint the host workspace and the eBPF crate.
    Clippy,
    /// Print the import cycles between modules of `gateway/src` (the test
    /// suite refuses any).
    Layout,
    /// Run httpwg-cli's RFC 9113 cases against the release gateway over
    /// TLS (installs httpwg-cli with cargo when missing); with
    /// `--websocket`, the Autobahn fuzzing-client cases (PyPI kosoku)
    /// through the gateway to a WebSocket echo server, beside the same
    /// cases against the echo server directly.
    Conformance {
        /// The Autobahn WebSocket cases instead of the HTTP/2 ones.
        #[arg(long)]
        websocket: bool,
    },
    /// Benchmarks: `all` (the default: every peer scenario into one report
    /// folder), `proxy` (vs HAProxy and nginx, closed and open loop), `h2`
    /// (HTTP/2 with h2load vs HAProxy's and nginx's h2 frontends), `xdp`
    /// (kernel drop path vs nftables), `flood` (legitimate load while a
    /// banned source floods, XDP on and off); criterion: `jwt` (the verify
    /// path against ring's bare check), `limit` (one rate-limit decision),
    /// `validate` (JSON parse + schema against serde_json).
    Bench {
        /// Which benchmark: all (the default), proxy, h2, xdp, flood, jwt, limit, validate.
        which: Option<String>,
        /// Arguments passed to the benchmark (see `cargo xtask bench xdp -- --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Toolchain => {
            let tc = toolchain::ensure()?;
            println!("bpf-linker: {}", tc.bpf_linker.display());
            println!("cargo-deny: {}", toolchain::ensure_cargo_deny()?.display());
            Ok(())
        }
        Cmd::Build => {
            let obj = build::ebpf()?;
            let bin = build::release(&obj, &[])?;
            println!(
                "eBPF object: {}\ngateway:     {}",
                obj.display(),
                bin.display()
            );
            Ok(())
        }
        Cmd::Run { args } => {
            let obj = build::ebpf()?;
            let bin = build::release(&obj, &[])?;
            exec(Command::new(bin).arg("run").args(args))
        }
        Cmd::Deps => deps::check(),
        Cmd::Layout => layout::check(&build::workspace_root().join("gateway/src")),
        Cmd::Conformance { websocket: false } => conformance::run(),
        Cmd::Conformance { websocket: true } => conformance::websocket(),
        Cmd::Test { args } => {
            // The whole suite starts with the dependency check; a filtered
            // run (`cargo xtask test -p ... --test NAME`) skips it.
            if args.is_empty() {
                deps::check()?;
            }
            let obj = build::ebpf()?;
            // The end-to-end tests run the gateway binary: build it first,
            // also when `args` narrow the run to the tests package.
            exec(build::cargo(&obj).args(["build", "--package", "gateway", "--bin", "gateway"]))?;
            exec(build::cargo(&obj).arg("test").args(args))
        }
        Cmd::Clippy => {
            let obj = build::ebpf()?;
            exec(build::cargo(&obj).args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
            // And the kernel crate on its own target.
            let tc = toolchain::ensure()?;
            exec(build::nightly_ebpf_cargo("clippy", &tc).args(["--", "-D", "warnings"]))
        }
        Cmd::Bench { which, mut args } => {
            // `cargo xtask bench -- --unpinned`: options of `all`, no name.
            let which = match which {
                None => "all".to_owned(),
                Some(w) if w.starts_with('-') => {
                    args.insert(0, w);
                    "all".to_owned()
                }
                Some(w) => w,
            };
            bench(&which, args)
        }
    }
}

const BENCHES: [&str; 8] = [
    "all", "proxy", "h2", "xdp", "flood", "jwt", "limit", "validate",
];

/// Runs benchmark `which`: criterion ones through cargo, the rest through
/// the release `gateway-bench`.
fn bench(which: &str, args: Vec<String>) -> Result<()> {
    if !BENCHES.contains(&which) {
        bail!("no benchmark {which:?}: one of {}", BENCHES.join(", "));
    }
    match which {
        "jwt" | "limit" | "validate" => {
            let obj = build::ebpf()?;
            exec(
                build::cargo(&obj)
                    .args(["bench", "-p", "gateway", "--bench", which, "--"])
                    .args(args),
            )
        }
        _ => {
            let obj = build::ebpf()?;
            // The benchmark runs the release gateway: build both at once.
            build::release(&obj, &[("gateway-benches", "gateway-bench")])?;
            let bin = build::target_dir().join("release/gateway-bench");
            exec(Command::new(bin).arg(which).args(args))
        }
    }
}

/// Runs a child to completion and turns its failure into ours.
fn exec(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{:?} exited with {status}", cmd.get_program());
    }
    Ok(())
}
