//! `gateway-bench`: benchmarks that need root, namespaces and peers, driven
//! by `cargo xtask bench`. Speed targets live here, never in tests.

mod client;
mod cpu;
mod flood;
mod jwt_fixture;
mod machine;
mod openloop;
mod peers;
mod plot;
mod proxy;
mod report;
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
    /// Every scenario (proxy with auth, JWT and validation, both loops;
    /// flood; XDP) against the peers, into one report folder.
    All(report::Opts),
    /// XDP drop path (driver, skb) against an nftables drop rule.
    Xdp(xdp::Opts),
    /// The TLS proxy against HAProxy and nginx (and the backend directly).
    Proxy(proxy::Opts),
    /// HTTP/2 (h2load) against HAProxy's and nginx's h2 frontends.
    H2(proxy::h2::H2Opts),
    /// Legitimate load while a banned source floods, with XDP on and off.
    Flood(flood::Opts),
}

fn main() -> ExitCode {
    let result = match Cli::parse().cmd {
        Cmd::All(opts) => report::all(opts),
        Cmd::Xdp(opts) => xdp::run(opts).map(|m| match m {
            xdp::Measured::Table(md) => print!("{md}"),
            xdp::Measured::LeftOut(why) => println!("left out: {why}"),
        }),
        Cmd::Proxy(opts) => proxy_alone(opts),
        Cmd::H2(opts) => proxy::h2::run(opts).map(|path| println!("report: {}", path.display())),
        Cmd::Flood(opts) => flood::run(opts).map(|md| print!("{md}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gateway-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `bench proxy`: its report alone.
fn proxy_alone(opts: proxy::Opts) -> anyhow::Result<()> {
    let (out, gateway) = (opts.out.clone(), opts.gateway.clone());
    let outcome = proxy::run(opts)?;
    let path = report::write(&out, &gateway, &outcome, &[], false)?;
    print!("{}", std::fs::read_to_string(&path)?);
    println!("report: {}", path.display());
    Ok(())
}
