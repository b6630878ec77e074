//! `bench xdp`: what a drop costs in the kernel. A flood from a source that
//! holds a verdict crosses a veth into the gateway's namespace and is dropped
//! by XDP in driver mode, in skb mode, or by an nftables netdev-ingress rule
//! with XDP detached. The flood is made by the kernel itself: the reflector
//! program run with BPF_PROG_TEST_RUN in live-frames mode on the client veth,
//! so frames reach the gateway's veth as XDP frames, as from a NIC driver
//! (an AF_PACKET sender would hand veth an skb to convert, hiding what native
//! XDP saves). Every one of these drop paths runs in softirq context,
//! which the kernel accounts apart from the generator's own (process) time:
//! softirq CPU per packet is the drop path's cost.

use std::{fmt::Write as _, time::Duration};

use anyhow::{Context as _, Result, bail};
use gateway::{
    clock::{Clock, Monotonic},
    config::{AttachMode, Config},
    xdp::{DataPlane, Reflector, XdpError},
};
use gateway_common::{Outcome, Verdict, VerdictReason};
use gateway_tests::{Testbed, frame};

use crate::cpu::{MachineCpu, median, pin};

/// Options of `bench xdp`.
#[derive(clap::Args, Debug)]
pub struct Opts {
    /// Packets per trial.
    #[arg(long, default_value_t = 3_000_000)]
    pub packets: u64,
    /// Longest a trial may send, in seconds.
    #[arg(long, default_value_t = 8)]
    pub seconds: u64,
    /// Rounds; the systems alternate within each round; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// CPU list the packet generator is pinned to (e.g. "1"); default: unpinned.
    #[arg(long)]
    pub gen_cpus: Option<String>,
    /// Where to write the results (CSV).
    #[arg(long, default_value = "target/bench/xdp.csv")]
    pub out: std::path::PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum System {
    XdpDriver,
    XdpSkb,
    Nftables,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            Self::XdpDriver => "xdp-driver",
            Self::XdpSkb => "xdp-skb",
            Self::Nftables => "nftables",
        }
    }
}

struct Trial {
    system: System,
    sent: u64,
    dropped: u64,
    secs: f64,
    cpu: MachineCpu,
    prog_ns_per_pkt: Option<f64>,
}

fn ifindex_and_mac(ns: &gateway_tests::NetNs, dev: &str) -> Result<(u32, [u8; 6])> {
    let out = ns.exec(&["ip", "-o", "link", "show", "dev", dev])?;
    let idx: u32 = out
        .split(':')
        .next()
        .unwrap_or("")
        .trim()
        .parse()
        .context("ifindex")?;
    let mac = out
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .context("no link/ether")?;
    let mut m = [0u8; 6];
    for (i, part) in mac.split(':').enumerate().take(6) {
        m[i] = u8::from_str_radix(part, 16)?;
    }
    Ok((idx, m))
}

fn trial(system: System, opts: &Opts) -> Result<Trial> {
    let bed = Testbed::new("bx")?;
    let banned = bed.host_ip(false, 3);
    let server = bed.server_ip(false);
    let (client_idx, client_mac) = ifindex_and_mac(&bed.client, &bed.client_if)?;
    let (_, server_mac) = ifindex_and_mac(&bed.server, &bed.server_if)?;
    let mut f = frame::tcp(banned, server, 40000, 8443, frame::SYN, b"", None);
    f[0..6].copy_from_slice(&server_mac);
    f[6..12].copy_from_slice(&client_mac);

    let cfg_text = format!(
        "[listen]\nhttps = \"{server}:8443\"\n[xdp]\ninterface = \"{}\"\nsyn_rate = 0\n",
        bed.server_if
    );
    let cfg = Config::parse(&cfg_text, "bench.toml")?;
    let mut dp = None;
    let mut nft_rule = false;
    match system {
        System::XdpDriver | System::XdpSkb => {
            let mode = if system == System::XdpDriver {
                AttachMode::Driver
            } else {
                AttachMode::Skb
            };
            let mut plane = bed.server.run(|| -> Result<DataPlane> {
                let mut p = DataPlane::load()?;
                p.configure(&cfg)?;
                p.attach(&bed.server_if, mode)?;
                Ok(p)
            })?;
            let forever = Monotonic.now_ns() + 3_600_000_000_000;
            let v = Verdict {
                expires_at_ns: forever,
                reason: VerdictReason::Policy as u32,
                _pad: 0,
            };
            plane.set_verdict(banned, v)?;
            dp = Some(plane);
        }
        System::Nftables => {
            let chain = format!(
                "{{ type filter hook ingress device \"{}\" priority -500; }}",
                bed.server_if
            );
            let saddr = banned.to_string();
            bed.server
                .exec(&["nft", "add", "table", "netdev", "gwbench"])?;
            bed.server.exec(&[
                "nft", "add", "chain", "netdev", "gwbench", "ingress", &chain,
            ])?;
            bed.server.exec(&[
                "nft", "add", "rule", "netdev", "gwbench", "ingress", "ip", "saddr", &saddr,
                "counter", "drop",
            ])?;
            nft_rule = true;
        }
    }
    // XDP frames from the generator are delivered only to a veth with NAPI:
    // native XDP turns it on; for the others GRO does, when switched on while up.
    if system != System::XdpDriver {
        bed.server
            .exec(&["ethtool", "-K", &bed.server_if, "gro", "off"])?;
        bed.server
            .exec(&["ethtool", "-K", &bed.server_if, "gro", "on"])?;
    }
    let c0 = dp.as_ref().map(|p| p.counters()).transpose()?;
    let cpu0 = MachineCpu::now()?;
    let gen_cpus = opts.gen_cpus.clone();
    let (sent, took) = bed.client.run(|| -> Result<(u64, Duration)> {
        if let Some(c) = &gen_cpus {
            pin(c)?;
        }
        let mut generator = Reflector::load()?;
        let start = std::time::Instant::now();
        let mut sent = 0u64;
        let max = Duration::from_secs(opts.seconds);
        while sent < opts.packets && start.elapsed() < max {
            let n = (opts.packets - sent).min(100_000) as u32;
            generator.transmit(client_idx, &f, n)?;
            sent += u64::from(n);
        }
        Ok((sent, start.elapsed()))
    })?;
    // Let softirq work queued behind the sender finish before reading CPU.
    std::thread::sleep(Duration::from_millis(50));
    let cpu = MachineCpu::now()?.since(cpu0);
    let dropped = match system {
        System::XdpDriver | System::XdpSkb => {
            let p = dp.as_ref().context("data plane")?;
            let c1 = p.counters()?;
            c1.get(Outcome::DroppedVerdict) - c0.map_or(0, |c| c.get(Outcome::DroppedVerdict))
        }
        System::Nftables => {
            let out = bed
                .server
                .exec(&["nft", "list", "table", "netdev", "gwbench"])?;
            out.split_whitespace()
                .skip_while(|w| *w != "packets")
                .nth(1)
                .and_then(|n| n.parse().ok())
                .context("nft counter")?
        }
    };
    // The program's own cost, measured apart: run-time stats slow every run.
    let prog_ns_per_pkt = match dp.as_mut() {
        Some(p) => {
            let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
                .map_err(|e| anyhow::anyhow!("enabling BPF run-time stats: {e}"))?;
            let (t0, n0) = p.run_stats()?;
            bed.client.run(|| -> Result<()> {
                let mut generator = Reflector::load()?;
                generator.transmit(client_idx, &f, 200_000)?;
                Ok(())
            })?;
            let (t1, n1) = p.run_stats()?;
            let n = n1.saturating_sub(n0);
            (n > 0).then(|| (t1 - t0).as_nanos() as f64 / n as f64)
        }
        None => None,
    };
    if nft_rule {
        let _ = bed
            .server
            .exec(&["nft", "delete", "table", "netdev", "gwbench"]);
    }
    drop(dp);
    Ok(Trial {
        system,
        sent,
        dropped,
        secs: took.as_secs_f64(),
        cpu,
        prog_ns_per_pkt,
    })
}

/// The program's own time per decision, from BPF_PROG_TEST_RUN with many
/// repetitions (no attach): what each path through it costs.
fn decision_costs() -> Result<String> {
    use std::net::IpAddr;
    let ip = |s: &str| s.parse::<IpAddr>().map_err(anyhow::Error::from);
    let cfg_text = "[listen]\nhttps = \"198.18.0.1:8443\"\n[xdp]\ninterface = \"lo\"\nsyn_rate = 1000\nsyn_burst = 10\n[policy]\ndeny = [\"198.18.9.0/24\"]\nallow = [\"198.18.8.0/24\"]\n";
    let cfg = Config::parse(cfg_text, "bench.toml")?;
    let mut dp = DataPlane::load()?;
    dp.configure(&cfg)?;
    let forever = Monotonic.now_ns() + 3_600_000_000_000;
    dp.set_verdict(
        ip("198.18.0.3")?,
        Verdict {
            expires_at_ns: forever,
            reason: 1,
            _pad: 0,
        },
    )?;
    let gw = ip("198.18.0.1")?;
    let rows = [
        (
            "verdict drop",
            frame::tcp(ip("198.18.0.3")?, gw, 40000, 8443, frame::SYN, b"", None),
        ),
        (
            "deny drop",
            frame::tcp(ip("198.18.9.3")?, gw, 40000, 8443, frame::SYN, b"", None),
        ),
        (
            "pass (not a gateway port)",
            frame::tcp(ip("198.18.0.4")?, gw, 40000, 22, frame::SYN, b"", None),
        ),
        (
            "SYN over budget (shared GCRA)",
            frame::tcp(ip("198.18.0.5")?, gw, 40000, 8443, frame::SYN, b"", None),
        ),
        (
            "TLS data pass",
            frame::tcp(
                ip("198.18.0.4")?,
                gw,
                40000,
                8443,
                frame::ACK_PSH,
                &[0x16, 3, 1, 0, 5],
                None,
            ),
        ),
    ];
    let mut md = String::from(
        "Program time per decision (BPF_PROG_TEST_RUN, 1M repetitions, kernel average):\n\n| decision | ns |\n|---|---|\n",
    );
    let over_budget = rows[3].1.clone();
    for (name, f) in rows {
        let t = dp.time_run(&f, 1_000_000)?;
        let _ = writeln!(md, "| {name} | {} |", t.as_nanos());
    }
    // The alternative the SYN budget was chosen against: per-CPU state.
    let per_cpu = Config::parse(
        &cfg_text.replace("syn_burst = 10", "syn_burst = 10\nsyn_budget = \"per_cpu\""),
        "bench.toml",
    )?;
    let mut dp = DataPlane::load()?;
    dp.configure(&per_cpu)?;
    let t = dp.time_run(&over_budget, 1_000_000)?;
    let _ = writeln!(md, "| SYN over budget (per-CPU GCRA) | {} |", t.as_nanos());
    Ok(md)
}

/// What the benchmark gives the report.
pub enum Measured {
    /// The section's text.
    Table(String),
    /// Why the kernel left it out (for the report's *Left out*).
    LeftOut(String),
}

/// Whether `e` is the kernel refusing a facility the benchmark needs (not
/// a failure of the gateway or of the testbed).
fn refused_facility(e: &anyhow::Error) -> Option<String> {
    e.chain().find_map(|c| match c.downcast_ref::<XdpError>() {
        Some(XdpError::FacilityRefused(what)) => Some(what.clone()),
        _ => None,
    })
}

/// Runs the benchmark and prints the table.
pub fn run(opts: Opts) -> Result<Measured> {
    if !nix::unistd::geteuid().is_root() {
        bail!("bench xdp needs root (namespaces, XDP, nftables)");
    }
    // nftables is the peer: without it, its row is left out and said so.
    let nft = crate::peers::installed("nft");
    let systems: Vec<System> = [System::XdpDriver, System::XdpSkb, System::Nftables]
        .into_iter()
        .filter(|s| nft || *s != System::Nftables)
        .collect();
    let mut trials = Vec::new();
    for round in 0..opts.rounds {
        // Rotate the order each round so drift hits every system alike.
        let mut order = systems.to_vec();
        order.rotate_left(round % systems.len());
        for s in order {
            let t = match trial(s, &opts) {
                Ok(t) => t,
                // Every system's packets come from the same generator: with
                // it refused, nothing here can be measured.
                Err(e) => match refused_facility(&e) {
                    Some(what) => {
                        return Ok(Measured::LeftOut(format!(
                            "XDP drop path against nftables: the kernel refused its packet generator ({what}, EPERM) although XDP programs load; `bench xdp` needs live-frames BPF_PROG_TEST_RUN"
                        )));
                    }
                    None => return Err(e.context(format!("trial {}", s.name()))),
                },
            };
            eprintln!(
                "round {} {:<10} sent {:>9} dropped {:>9} in {:.2}s: {:>9.0} pkt/s, drop path (softirq) {:>6.1} ns/pkt, generator {:>6.1} ns/pkt{}",
                round + 1,
                s.name(),
                t.sent,
                t.dropped,
                t.secs,
                t.dropped as f64 / t.secs,
                t.cpu.irq.as_nanos() as f64 / t.sent as f64,
                t.cpu.task.as_nanos() as f64 / t.sent as f64,
                t.prog_ns_per_pkt
                    .map(|n| format!(", program {n:.1} ns/pkt"))
                    .unwrap_or_default()
            );
            trials.push(t);
        }
    }
    let of = |s: System| trials.iter().filter(move |t| t.system == s);
    let mut csv = String::from(
        "system,rounds,dropped_pps,drop_path_cpu_ns_per_pkt,generator_cpu_ns_per_pkt,program_ns_per_pkt\n",
    );
    let mut md = format!(
        "Medians of {} rounds, {} packets per trial from a generator in a namespace over a veth pair{}.\n\n| system | dropped pkt/s | drop path CPU ns/pkt | generator CPU ns/pkt | program ns/pkt |\n|---|---|---|---|---|\n",
        opts.rounds,
        opts.packets,
        opts.gen_cpus
            .as_deref()
            .map(|c| format!(" (CPUs {c})"))
            .unwrap_or_default()
    );
    let mut drop_cost = std::collections::HashMap::new();
    for &s in &systems {
        let pps = median(of(s).map(|t| t.dropped as f64 / t.secs).collect());
        let irq = median(
            of(s)
                .map(|t| t.cpu.irq.as_nanos() as f64 / t.dropped.max(1) as f64)
                .collect(),
        );
        let task = median(
            of(s)
                .map(|t| t.cpu.task.as_nanos() as f64 / t.sent.max(1) as f64)
                .collect(),
        );
        let prog: Vec<f64> = of(s).filter_map(|t| t.prog_ns_per_pkt).collect();
        let prog_s = if prog.is_empty() {
            String::new()
        } else {
            format!("{:.1}", median(prog))
        };
        drop_cost.insert(s.name(), irq);
        let _ = writeln!(
            md,
            "| {} | {pps:.0} | {irq:.1} | {task:.1} | {} |",
            s.name(),
            if prog_s.is_empty() { "-" } else { &prog_s }
        );
        csv.push_str(&format!(
            "{},{},{pps:.0},{irq:.1},{task:.1},{prog_s}\n",
            s.name(),
            opts.rounds
        ));
    }
    if !nft {
        md.push_str("| nftables | not installed (apt-get install nftables, or --install-peers): left out | | | |\n");
    }
    md.push('\n');
    let nft = drop_cost.get("nftables").copied().unwrap_or(f64::NAN);
    for s in ["xdp-driver", "xdp-skb"] {
        let x = drop_cost.get(s).copied().unwrap_or(f64::NAN);
        let _ = writeln!(
            md,
            "- {s}: drop path CPU per packet = {:.2}× nftables' (target for driver: ≤ 0.33)",
            x / nft
        );
    }
    md.push('\n');
    md.push_str(&decision_costs()?);
    if let Some(dir) = opts.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&opts.out, csv)?;
    Ok(Measured::Table(md))
}
