//! The benchmark report: one folder with `report.md` (the tables, ratios to
//! HAProxy, the machine, versions, CPU sets and exact commands), each
//! scenario's latency distribution as `.hgrm`, the percentile curves as
//! PNG, and `summary.csv`. `bench all` fills it with every scenario;
//! `bench proxy` with the proxy's alone.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

use crate::{
    plot,
    proxy::{self, Row, wrk::write_hgrm},
};

/// Options of `bench all`.
#[derive(clap::Args, Debug)]
pub struct Opts {
    /// Where the report goes.
    #[arg(long, default_value = "target/bench/report")]
    out: PathBuf,
    /// A quick pass (1 s runs, 1 round, small floods): checks that every
    /// scenario runs and the report is well formed, not a measurement.
    #[arg(long)]
    reduced: bool,
    /// Install missing peers (apt-get install wrk haproxy nginx-light).
    #[arg(long)]
    install_peers: bool,
    /// CPU list for the proxies (taskset syntax). Default: the first half.
    #[arg(long)]
    proxy_cpus: Option<String>,
    /// CPU list for the load generators and the backend. Default: the second half.
    #[arg(long)]
    load_cpus: Option<String>,
    /// Nothing pinned, 2 workers per proxy: how a user first runs it.
    #[arg(long)]
    unpinned: bool,
    /// wrk connections.
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// Rounds per scenario; medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds per proxy run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Leave out the XDP and flood scenarios (they need root and namespaces).
    #[arg(long)]
    no_kernel: bool,
    /// The gateway binary.
    #[arg(long, default_value = "target/release/gateway")]
    gateway: PathBuf,
}

/// Runs every scenario and writes the report.
pub fn all(opts: Opts) -> Result<()> {
    let r = opts.reduced;
    let proxy_opts = proxy::Opts {
        duration: if r { 1 } else { opts.duration },
        warmup: if r { 1 } else { 2 },
        connections: opts.connections,
        threads: 1,
        rounds: if r { 1 } else { opts.rounds },
        workers: opts.unpinned.then_some(2),
        proxy_cpus: opts.proxy_cpus.clone(),
        load_cpus: opts.load_cpus.clone(),
        unpinned: opts.unpinned,
        pin_workers: false,
        open_rate: r.then_some(1000),
        open_connections: if r { 8 } else { 32 },
        idle_conns: if r { 200 } else { 2000 },
        no_open_loop: false,
        no_jwt: r,
        only: Vec::new(),
        install_peers: opts.install_peers,
        out: opts.out.clone(),
        gateway: opts.gateway.clone(),
        // An A/B of two builds is `bench proxy --baseline`.
        baseline: None,
    };
    let h2_base = proxy_opts.clone();
    let mut outcome = proxy::run(proxy_opts)?;
    let mut sections = Vec::new();
    if crate::peers::installed("h2load") {
        let h2 = proxy::h2::measure(proxy::h2::H2Opts {
            base: proxy::Opts {
                idle_conns: 0,
                only: Vec::new(),
                ..h2_base
            },
            shapes: if r {
                vec!["16:4".into()]
            } else {
                vec!["64:10".into(), "256:1".into()]
            },
            idle_h2: if r { 100 } else { 1000 },
            // Its rows need python3 with grpcio, which the full report does not require.
            no_grpc: true,
        })?;
        std::fs::create_dir_all(opts.out.join("hgrm"))?;
        let mut md = h2.md;
        for (i, (shape, rows)) in h2.tables.iter().enumerate() {
            for row in rows {
                let name = format!(
                    "hgrm/h2-{}-{}.hgrm",
                    shape.replace([' ', '-'], ""),
                    row.name
                );
                write_hgrm(&opts.out.join(name), &row.hist)?;
            }
            let png = format!("h2-{}.png", i + 1);
            let title = format!("HTTP/2, h2load {shape}: latency by percentile");
            if plot_rows(&opts.out, &png, &title, rows, &[])? {
                md.push_str(&format!("\n![{title}]({png})\n"));
            }
        }
        sections.push(("HTTP/2 (h2load)".to_owned(), md));
    }
    if !opts.no_kernel {
        let flood = crate::flood::Opts {
            duration: if r { 1 } else { 8 },
            connections: 32,
            rounds: if r { 1 } else { opts.rounds },
            proxy_cpus: opts.proxy_cpus.clone(),
            load_cpus: opts.load_cpus.clone(),
            syn_rate: if r { 5_000 } else { 50_000 },
            tls_flooders: if r { 1 } else { 4 },
            out: opts.out.join("flood.csv"),
            gateway: opts.gateway.clone(),
        };
        sections.push((
            "Flood: legitimate load while a banned source floods".to_owned(),
            crate::flood::run(flood)?,
        ));
        let xdp = crate::xdp::Opts {
            packets: if r { 200_000 } else { 3_000_000 },
            seconds: if r { 2 } else { 8 },
            rounds: if r { 1 } else { opts.rounds },
            gen_cpus: opts.load_cpus.clone(),
            out: opts.out.join("xdp.csv"),
        };
        match crate::xdp::run(xdp)? {
            crate::xdp::Measured::Table(md) => {
                sections.push(("XDP drop path against nftables".to_owned(), md))
            }
            crate::xdp::Measured::LeftOut(why) => outcome.skipped.push(why),
        }
    }
    let report = write(&opts.out, &opts.gateway, &outcome, &sections, opts.reduced)?;
    println!("report: {}", report.display());
    Ok(())
}

/// A figure to `digits` decimals, `-` when it was not measured.
fn fig(v: f64, digits: usize) -> String {
    if v.is_finite() {
        format!("{v:.digits$}")
    } else {
        "-".into()
    }
}

fn us(v: f64) -> String {
    fig(v, 0)
}

fn ratio(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.2}×")
    } else {
        "-".into()
    }
}

/// The row of scenario `name`, if it was measured.
fn row<'a>(rows: &'a [Row], name: &str) -> Option<&'a Row> {
    rows.iter().find(|r| r.name == name)
}

/// A figure of the HAProxy row, NaN when HAProxy was not measured.
fn haproxy(rows: &[Row]) -> impl Fn(fn(&Row) -> f64) -> f64 + '_ {
    let ha = row(rows, "haproxy");
    move |f| ha.map_or(f64::NAN, f)
}

fn closed_table(rows: &[Row]) -> String {
    let of = haproxy(rows);
    let mut t = String::from(
        "| system | req/s | p50 µs | p99 µs | p99.9 µs | CPU µs/req | RSS MiB | req/s vs HAProxy | p99 vs HAProxy | CPU vs HAProxy | errors |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            t,
            "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            r.rps,
            us(r.p50),
            us(r.p99),
            us(r.p999),
            fig(r.cpu_us_per_req, 1),
            fig(r.rss_kib / 1024.0, 1),
            ratio(r.rps / of(|h| h.rps)),
            ratio(r.p99 / of(|h| h.p99)),
            ratio(r.cpu_us_per_req / of(|h| h.cpu_us_per_req)),
            r.errors
        );
    }
    t
}

fn cpu_table(rows: &[Row]) -> String {
    let mut t = String::from(
        "| system | req/s | proxy user µs/req | proxy kernel µs/req | rest of the machine µs/req | machine busy | stolen by the host | upstream connects/req | upstream reuses/req |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows.iter().filter(|r| r.split.rest.is_finite()) {
        let _ = writeln!(
            t,
            "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            r.rps,
            fig(r.split.user, 1),
            fig(r.split.system, 1),
            fig(r.split.rest, 1),
            fig(r.split.busy * 100.0, 0) + " %",
            fig(r.split.stolen * 100.0, 1) + " %",
            fig(r.connects_per_req, 4),
            fig(1.0 - r.connects_per_req, 4),
        );
    }
    t
}

/// What the machine leaves the gateway per request at `factor` × HAProxy's
/// req/s, when everything shares the same CPUs: the CPU time the machine
/// gave per second in HAProxy's runs, less what the rest of it (load
/// generator, backend, interrupts) spent per request in the gateway's.
fn budget(rows: &[Row], factor: f64) -> Option<String> {
    let (gw, ha) = (row(rows, "gateway")?, row(rows, "haproxy")?);
    let rate = ha.rps * factor;
    let left = ha.split.busy_cpus * 1e6 / rate - gw.split.rest;
    left.is_finite().then(|| {
        let leaves = if left > 0.0 {
            format!("{left:.1} µs")
        } else {
            "nothing".to_owned()
        };
        format!(
            "CPU budget: {factor}× HAProxy's req/s is {rate:.0} req/s. The machine worked {:.2} CPU-seconds per second in HAProxy's runs and the rest of it spent {:.1} µs per request in the gateway's, which leaves the gateway {leaves} per request at that rate; it spent {:.1} µs in userspace and {:.1} µs in the kernel (HAProxy {:.1} and {:.1})",
            ha.split.busy_cpus,
            gw.split.rest,
            gw.split.user,
            gw.split.system,
            ha.split.user,
            ha.split.system,
        )
    })
}

/// What the kernel part of a proxy's CPU time holds, on this kernel.
fn kernel_part(irq_time: Option<bool>) -> &'static str {
    match irq_time {
        Some(false) => {
            "which, on this kernel without IRQ time accounting, includes the softirq work its own sends trigger: on loopback, the receiving side's TCP processing"
        }
        Some(true) => {
            "this kernel accounts IRQ time apart: the softirq work a proxy's sends trigger counts in the rest of the machine"
        }
        None => {
            "whether it includes the softirq work its own sends trigger depends on CONFIG_IRQ_TIME_ACCOUNTING, which this kernel does not publish"
        }
    }
}

fn open_table(rows: &[Row], rate: u64) -> String {
    let of = haproxy(rows);
    let mut t = String::from(
        "| system | asked req/s | answered req/s | p50 µs | p99 µs | p99.9 µs | max µs | CPU µs/req | p99 vs HAProxy | errors |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            t,
            "| {} | {rate} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            r.rps,
            us(r.p50),
            us(r.p99),
            us(r.p999),
            us(r.max),
            fig(r.cpu_us_per_req, 1),
            ratio(r.p99 / of(|h| h.p99)),
            r.errors
        );
    }
    t
}

/// Draws `names`' curves (those measured) into `png`; false when none were.
fn plot_rows(out: &Path, png: &str, title: &str, rows: &[Row], names: &[&str]) -> Result<bool> {
    let series: Vec<plot::Series<'_>> = rows
        .iter()
        .filter(|r| names.is_empty() || names.contains(&r.name.as_str()))
        .map(|r| plot::Series {
            name: &r.name,
            hist: &r.hist,
        })
        .collect();
    if series.iter().all(|s| s.hist.is_empty()) {
        return Ok(false);
    }
    plot::percentile_curves(&out.join(png), title, &series)?;
    Ok(true)
}

/// Writes the report folder; returns the path of `report.md`.
pub fn write(
    out: &Path,
    gateway: &Path,
    p: &proxy::Outcome,
    sections: &[(String, String)],
    reduced: bool,
) -> Result<PathBuf> {
    std::fs::create_dir_all(out.join("hgrm"))?;
    let mut md = String::from("# Gateway benchmark report\n\n");
    let _ = writeln!(
        md,
        "Written {} by `{}`.{}\n",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        std::env::args().collect::<Vec<_>>().join(" "),
        if reduced {
            " **Reduced mode: a check that every scenario runs, not a measurement.**"
        } else {
            ""
        }
    );
    md.push_str("## Machine and versions\n\n");
    let irq_time = crate::machine::irq_time_accounting();
    md.push_str(&crate::machine::facts(gateway, irq_time));
    let _ = writeln!(md, "- **setup:** {}\n", p.setup);
    if !p.skipped.is_empty() {
        md.push_str("## Left out\n\n");
        for s in &p.skipped {
            let _ = writeln!(md, "- {s}");
        }
        md.push('\n');
    }
    md.push_str("## Commands\n\n");
    for c in &p.commands {
        let _ = writeln!(md, "- `{c}`");
    }
    md.push_str("\nThe configurations every system ran with are in `work/`.\n\n");
    let mut csv = String::from(
        "loop,system,rps,p50_us,p99_us,p999_us,max_us,cpu_us_per_req,user_us_per_req,kernel_us_per_req,rest_us_per_req,machine_busy,stolen,rss_kib,errors,upstream_connects_per_req\n",
    );
    for (kind, rows) in [("closed", &p.closed), ("open", &p.open)] {
        for r in rows.iter() {
            write_hgrm(&out.join(format!("hgrm/{}-{kind}.hgrm", r.name)), &r.hist)?;
            let _ = writeln!(
                csv,
                "{kind},{},{:.0},{:.0},{:.0},{:.0},{:.0},{:.2},{:.2},{:.2},{:.2},{:.3},{:.3},{:.0},{},{:.4}",
                r.name,
                r.rps,
                r.p50,
                r.p99,
                r.p999,
                r.max,
                r.cpu_us_per_req,
                r.split.user,
                r.split.system,
                r.split.rest,
                r.split.busy,
                r.split.stolen,
                r.rss_kib,
                r.errors,
                r.connects_per_req
            );
        }
    }
    if !p.closed.is_empty() {
        md.push_str("## Proxy, closed loop (wrk over TLS keep-alive)\n\n");
        md.push_str("Each connection sends its next request when the last is answered; percentiles are wrk's.\n\n");
        md.push_str(&closed_table(&p.closed));
        md.push('\n');
        for n in &p.notes {
            let _ = writeln!(md, "- {n}");
        }
        let get = ["backend", "gateway", "gw+key", "haproxy", "nginx"];
        if plot_rows(
            out,
            "closed-loop.png",
            "Closed loop (wrk): GET latency by percentile",
            &p.closed,
            &get,
        )? {
            md.push_str("\n![closed loop](closed-loop.png)\n");
        }
        let post = ["gw+valid", "gw+post", "ha+post", "ng+post"];
        if plot_rows(
            out,
            "post.png",
            "Closed loop (wrk): 1 KiB JSON POST latency by percentile",
            &p.closed,
            &post,
        )? {
            md.push_str("\n![JSON POST](post.png)\n");
        }
        let _ = writeln!(
            md,
            "\n### Where the CPU goes\n\nMedians per request: each proxy's own time in userspace and in the kernel ({}), and the rest of the machine's busy time (load generator, backend, interrupts). Time stolen by the host (a virtual machine's hypervisor serving other guests) above a few percent means the run measured a busy host. Upstream connects per request are the connections the backend accepted (its `stub_status`) over the requests answered: a pool that closes connections it needs again a moment later shows here, for every proxy alike.\n",
            kernel_part(irq_time)
        );
        md.push_str(&cpu_table(&p.closed));
        if let Some(b) = p.shared.then(|| budget(&p.closed, 1.2)).flatten() {
            let _ = writeln!(md, "\n- {b}");
        }
        md.push('\n');
    }
    if !p.open.is_empty() {
        md.push_str("## Proxy, open loop (constant rate, coordinated omission corrected)\n\n");
        let _ = writeln!(
            md,
            "Every scenario asked for {} req/s; a latency counts from when its request was due, so a stall is charged to every request it delayed.\n",
            p.open_rate
        );
        md.push_str(&open_table(&p.open, p.open_rate));
        if plot_rows(
            out,
            "open-loop.png",
            "Open loop: latency by percentile at a constant rate",
            &p.open,
            &[],
        )? {
            md.push_str("\n![open loop](open-loop.png)\n");
        }
        md.push('\n');
    }
    if !p.idle.0.is_empty() {
        md.push_str("## Memory per idle keep-alive TLS connection\n\n");
        let _ = writeln!(
            md,
            "Growth of each proxy's resident memory while {} TLS connections, each after one request, sit idle, per connection (measured before any load).\n\n| system | KiB per connection | vs HAProxy |\n|---|---|---|",
            p.idle.1
        );
        let ha = p
            .idle
            .0
            .iter()
            .find(|(n, _)| n == "haproxy")
            .map_or(f64::NAN, |x| x.1);
        for (name, kib) in &p.idle.0 {
            let _ = writeln!(md, "| {name} | {kib:.1} | {} |", ratio(kib / ha));
        }
        md.push('\n');
    }
    for (title, body) in sections {
        let _ = writeln!(md, "## {title}\n\n{body}");
    }
    md.push_str("## Files\n\n- `hgrm/<system>-closed.hgrm`, `hgrm/<system>-open.hgrm`: latency distributions in HdrHistogram's percentile format (ms); the closed loop's are rebuilt from 1,000 percentile points wrk reports, the open loop's hold every request.\n- `summary.csv`: the tables above.\n");
    std::fs::write(out.join("summary.csv"), csv)?;
    let path = out.join("report.md");
    std::fs::write(&path, md).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
