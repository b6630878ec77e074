//! `bench flood`: what a banned source's flood costs the legitimate
//! clients. In a namespace pair, a legitimate host runs a fixed wrk load
//! against the gateway while another host, which holds a verdict (placed
//! through the admin API, as an operator or the escalation would), floods
//! with raw SYNs and with full TLS connections and requests. Three
//! scenarios alternate within each round: no flood; the flood with XDP
//! dropping the banned source in the kernel; the flood with XDP off, the
//! same verdict enforced by the gateway at accept. Reported: the legitimate
//! req/s and p99 (medians over the rounds), the gateway's CPU time per
//! legitimate request, and what the flood managed to send.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use std::fmt::Write as _;

use anyhow::{Context as _, Result, bail};
use gateway_tests::{Running, Testbed, connect_from, syn_flood};

use crate::cpu::{cpu_count, halves, hz, median, pin, process_ticks};

/// Options of `bench flood`.
#[derive(clap::Args, Debug)]
pub struct Opts {
    /// Seconds of wrk load per trial.
    #[arg(long, default_value_t = 8)]
    pub duration: u64,
    /// wrk connections of the legitimate client.
    #[arg(long, default_value_t = 32)]
    pub connections: u32,
    /// Rounds; the scenarios alternate within each; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// CPU list for the gateway (taskset syntax). Default: the first half.
    #[arg(long)]
    pub proxy_cpus: Option<String>,
    /// CPU list for wrk, the demo backend's clients and the flood. Default:
    /// the second half.
    #[arg(long)]
    pub load_cpus: Option<String>,
    /// Raw SYNs per second the banned source sends (at most).
    #[arg(long, default_value_t = 50_000)]
    pub syn_rate: u32,
    /// Threads of the banned source opening TLS connections and sending
    /// requests in a loop.
    #[arg(long, default_value_t = 4)]
    pub tls_flooders: usize,
    /// Where the results go (CSV).
    #[arg(long, default_value = "target/bench/flood.csv")]
    pub out: PathBuf,
    /// The gateway binary (release).
    #[arg(long, default_value = "target/release/gateway")]
    pub gateway: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    NoFlood,
    FloodXdp,
    FloodNoXdp,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Self::NoFlood => "no flood",
            Self::FloodXdp => "flood, XDP on",
            Self::FloodNoXdp => "flood, XDP off",
        }
    }
}

struct Trial {
    rps: f64,
    p99_ms: f64,
    cpu_us_per_req: f64,
    syns: u64,
    tls_attempts: u64,
    tls_served: u64,
    xdp_dropped: u64,
}

fn config(bed: &Testbed, xdp: bool, workers: usize) -> String {
    format!(
        r#"
[listen]
https = "{server}:8443"
plain_http_port = 8080

[runtime]
workers = {workers}

[demo]
listen = "127.0.0.1:8081"

[log]
access = false

[[upstreams]]
name = "demo"
servers = ["127.0.0.1:8081"]

[[routes]]
path_prefix = "/"
upstream = "demo"
auth = "none"

[rate_limit.escalation]
rejections = 0
auth_failures = 0

[xdp]
enabled = {xdp}
interface = "{iface}"
"#,
        server = bed.server_ip(false),
        iface = bed.server_if,
    )
}

/// The banned source's TLS flood: connect, handshake, one request, again,
/// until `until`. Counts attempts and answered requests.
fn tls_flood(
    src: IpAddr,
    dst: SocketAddr,
    until: Instant,
    attempts: &AtomicU64,
    served: &AtomicU64,
    stop: &AtomicBool,
) {
    use std::io::{Read, Write};
    let Ok(cfg) = crate::client::any_cert_config() else {
        return;
    };
    let cfg = Arc::new(cfg);
    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
        attempts.fetch_add(1, Ordering::Relaxed);
        let Ok(tcp) = connect_from(src, dst, Duration::from_millis(300)) else {
            continue;
        };
        let _ = tcp.set_read_timeout(Some(Duration::from_millis(500)));
        let Ok(name) = rustls::pki_types::ServerName::try_from("localhost") else {
            return;
        };
        let Ok(conn) = rustls::ClientConnection::new(cfg.clone(), name) else {
            return;
        };
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        if tls
            .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .is_err()
        {
            continue;
        }
        let mut buf = [0u8; 512];
        if matches!(tls.read(&mut buf), Ok(n) if n > 0) {
            served.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn trial(s: Scenario, opts: &Opts, proxy: &str, load: &str, dir: &Path) -> Result<Trial> {
    let bed = Testbed::new("fl")?;
    let workers = cpu_count(proxy).max(1);
    let cfg_path = dir.join("flood.toml");
    std::fs::write(&cfg_path, config(&bed, s != Scenario::FloodNoXdp, workers))?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", bed.server.name(), "taskset", "-c", proxy])
        .arg(&opts.gateway)
        .arg("run")
        .arg("--config")
        .arg(&cfg_path)
        .env("GATEWAY_STATE_DIR", dir.join("state"));
    let mut gw = Running::spawn(cmd);
    if gw
        .wait_for_line("running;", Duration::from_secs(15))
        .is_none()
    {
        bail!("the gateway did not start: {:?}", gw.seen);
    }
    let server = SocketAddr::new(bed.server_ip(false), 8443);
    let banned = bed.host_ip(false, 3);
    if s != Scenario::NoFlood {
        let out = bed.server.exec(&[
            opts.gateway.to_str().context("gateway path")?,
            "verdicts",
            "add",
            &banned.to_string(),
            "--secs",
            "600",
            "--why",
            "bench flood",
            "--config",
            cfg_path.to_str().context("config path")?,
        ])?;
        if !out.contains("placed") {
            bail!("placing the verdict: {out}");
        }
    }
    let stop = AtomicBool::new(false);
    let (syns, attempts, served) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(opts.duration + 1);
    let (rps, p99_ms, cpu_us_per_req) = std::thread::scope(|sc| -> Result<(f64, f64, f64)> {
        if s != Scenario::NoFlood {
            let (bed, syns, stop, attempts, served) = (&bed, &syns, &stop, &attempts, &served);
            sc.spawn(move || {
                bed.client.run(|| {
                    let _ = pin(load);
                    // Bounded by count and time; paced to --syn-rate.
                    let rate = opts.syn_rate.max(1);
                    let pace = Duration::from_nanos(1_000_000_000 / u64::from(rate));
                    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                        let left = until.saturating_duration_since(Instant::now());
                        let max = left.min(Duration::from_secs(1));
                        if let Ok((n, _)) = syn_flood(banned, server, rate, pace, max) {
                            syns.fetch_add(u64::from(n), Ordering::Relaxed);
                        }
                    }
                })
            });
            for _ in 0..opts.tls_flooders {
                sc.spawn(move || {
                    bed.client.run(|| {
                        let _ = pin(load);
                        tls_flood(banned, server, until, attempts, served, stop);
                    })
                });
            }
            // Let the flood reach full strength before measuring.
            std::thread::sleep(Duration::from_millis(500));
        }
        let before = process_ticks(gw.pid());
        let out = bed.client.exec(&[
            "taskset",
            "-c",
            load,
            "wrk",
            "-t1",
            "-c",
            &opts.connections.to_string(),
            "-d",
            &format!("{}s", opts.duration),
            "--latency",
            &format!("https://{server}/public"),
        ]);
        let after = process_ticks(gw.pid());
        stop.store(true, Ordering::Relaxed);
        let out = out.context("running wrk (apt-get install wrk)")?;
        let rps: f64 = out
            .lines()
            .find_map(|l| l.strip_prefix("Requests/sec:"))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no Requests/sec in wrk's output: {out}"))?;
        let p99_ms = out
            .lines()
            .find_map(|l| l.trim().strip_prefix("99%"))
            .map(|v| wrk_ms(v.trim()))
            .unwrap_or(f64::NAN);
        let requests = rps * opts.duration as f64;
        let cpu = (after - before) as f64 / hz() as f64 * 1e6 / requests.max(1.0);
        Ok((rps, p99_ms, cpu))
    })?;
    gw.stop(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(10));
    let xdp_dropped = gw
        .seen
        .iter()
        .rev()
        .find(|l| l.contains("xdp counters:"))
        .and_then(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("dropped_verdict="))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0);
    Ok(Trial {
        rps,
        p99_ms,
        cpu_us_per_req,
        syns: syns.load(Ordering::Relaxed),
        tls_attempts: attempts.load(Ordering::Relaxed),
        tls_served: served.load(Ordering::Relaxed),
        xdp_dropped,
    })
}

/// wrk's latency text (`1.23ms`, `850.00us`, `1.02s`) in milliseconds.
fn wrk_ms(v: &str) -> f64 {
    let num = |s: &str| s.parse::<f64>().unwrap_or(f64::NAN);
    if let Some(x) = v.strip_suffix("us") {
        num(x) / 1000.0
    } else if let Some(x) = v.strip_suffix("ms") {
        num(x)
    } else if let Some(x) = v.strip_suffix('s') {
        num(x) * 1000.0
    } else {
        num(v)
    }
}

/// Runs the benchmark.
pub fn run(opts: Opts) -> Result<String> {
    gateway_tests::require_root();
    let (p, l) = halves();
    let proxy = opts.proxy_cpus.clone().unwrap_or(p);
    let load = opts.load_cpus.clone().unwrap_or(l);
    let dir = std::env::temp_dir().join(format!("gw-bench-flood-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let scenarios = [Scenario::NoFlood, Scenario::FloodXdp, Scenario::FloodNoXdp];
    let mut results: Vec<(Scenario, Trial)> = Vec::new();
    let mut csv = String::from(
        "round,scenario,rps,p99_ms,cpu_us_per_req,syns,tls_attempts,tls_served,xdp_dropped\n",
    );
    for round in 0..opts.rounds {
        for s in scenarios {
            let t = trial(s, &opts, &proxy, &load, &dir)?;
            eprintln!(
                "round {round} {:<15} {:>9.0} req/s  p99 {:>7.2} ms  gateway {:>6.1} us CPU/req  flood: {} SYNs, {} TLS tries ({} answered), {} dropped in XDP",
                s.name(),
                t.rps,
                t.p99_ms,
                t.cpu_us_per_req,
                t.syns,
                t.tls_attempts,
                t.tls_served,
                t.xdp_dropped
            );
            csv.push_str(&format!(
                "{round},{},{:.0},{:.3},{:.2},{},{},{},{}\n",
                s.name(),
                t.rps,
                t.p99_ms,
                t.cpu_us_per_req,
                t.syns,
                t.tls_attempts,
                t.tls_served,
                t.xdp_dropped
            ));
            results.push((s, t));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(parent) = opts.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&opts.out, csv)?;
    let med = |s: Scenario, f: fn(&Trial) -> f64| {
        median(
            results
                .iter()
                .filter(|(x, _)| *x == s)
                .map(|(_, t)| f(t))
                .collect(),
        )
    };
    let base = med(Scenario::NoFlood, |t| t.rps);
    let mut md = format!(
        "Gateway on CPUs {proxy}, wrk and the flood on {load}; {} rounds, medians; wrk -t1 -c{} for {} s; the flood: {} SYN/s raw and {} TLS clients from a banned source.\n\n",
        opts.rounds, opts.connections, opts.duration, opts.syn_rate, opts.tls_flooders
    );
    md.push_str("| scenario | legitimate req/s | vs no flood | p99 | gateway CPU per request |\n|---|---|---|---|---|\n");
    for s in scenarios {
        let rps = med(s, |t| t.rps);
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.2}× | {:.2} ms | {:.1} µs |",
            s.name(),
            rps,
            rps / base,
            med(s, |t| t.p99_ms),
            med(s, |t| t.cpu_us_per_req)
        );
    }
    Ok(md)
}
