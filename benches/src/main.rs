//! `gateway-bench`: benchmarks that need root, namespaces and peers, driven
//! by `cargo xtask bench`. Speed targets live here, never in tests.

mod cpu;
mod flood;
mod jwt_fixture;
mod proxy;
mod xdp;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "gateway-bench",
    about = "Measure the gateway against its peers"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// XDP drop path (driver, skb) against an nftables drop rule.
    Xdp(xdp::Opts),
    /// The TLS proxy against HAProxy and nginx (and the backend directly).
    Proxy(proxy::Opts),
    /// Legitimate load while a banned source floods, with XDP on and off.
    Flood(flood::Opts),
}

fn main() -> ExitCode {
    let result = match Cli::parse().cmd {
        Cmd::Xdp(opts) => xdp::run(opts),
        Cmd::Proxy(opts) => proxy::run(opts),
        Cmd::Flood(opts) => flood::run(opts),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gateway-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
