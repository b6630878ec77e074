//! `bench h2`: HTTP/2 over TLS, h2load against the gateway, HAProxy and
//! nginx with h2 frontends in front of the same backend (which they reach
//! over HTTP/1.1 keep-alive, as for `bench proxy`), in two shapes: many
//! streams on few connections (`-c64 -m10`) and one stream on many
//! (`-c256 -m1`). The systems alternate within each round; medians of
//! req/s, latency percentiles (every request's time, from h2load's log)
//! and each proxy's own CPU per request, split into user and kernel; and
//! the memory one idle h2 connection costs each proxy.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::TcpStream,
    path::Path,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use hdrhistogram::Histogram;

use super::{Opts, Row, Sample, charged, prepare, rows, systems};
use crate::cpu::group_rss_kib;

/// Options of `bench h2`.
#[derive(clap::Args, Clone, Debug)]
pub struct H2Opts {
    /// What `bench proxy` takes (CPU sets, rounds, duration, peers).
    #[command(flatten)]
    pub base: Opts,
    /// h2load shapes, `connections:streams` each (h2load's -c and -m).
    #[arg(long, value_delimiter = ',', default_value = "64:10,256:1")]
    pub shapes: Vec<String>,
    /// Idle h2 connections opened to each proxy to weigh the memory one
    /// costs (0: leave it out).
    #[arg(long, default_value_t = 1000)]
    pub idle_h2: usize,
    /// Leave out the gRPC unary rows (they need python3 with grpcio).
    #[arg(long)]
    pub no_grpc: bool,
}

/// One h2load shape.
#[derive(Clone, Copy, Debug)]
struct Shape {
    connections: u32,
    streams: u32,
}

fn shapes(list: &[String]) -> Result<Vec<Shape>> {
    list.iter()
        .map(|s| {
            let (c, m) = s
                .split_once(':')
                .with_context(|| format!("--shapes {s}: connections:streams"))?;
            Ok(Shape {
                connections: c.parse().with_context(|| format!("--shapes {s}"))?,
                streams: m.parse().with_context(|| format!("--shapes {s}"))?,
            })
        })
        .collect()
}

/// The systems measured: the three proxies' plain GET scenarios, and
/// `--baseline`'s build of the gateway beside this one (an A/B).
const MEASURED: [&str; 4] = ["gateway", "gw-base", "haproxy", "nginx"];

/// What `bench h2` measured: a table per shape, and idle memory.
pub struct Measured {
    /// Each shape's rows (medians, with every round's latencies).
    pub tables: Vec<(String, Vec<Row>)>,
    /// The report's text (without a title).
    pub md: String,
}

/// Runs the benchmark and writes its report; returns the report's path.
pub fn run(o: H2Opts) -> Result<std::path::PathBuf> {
    let out = o.base.out.clone();
    let m = measure(o)?;
    let report = format!("# HTTP/2 benchmark (`cargo xtask bench h2`)\n\n{}", m.md);
    let path = out.join("h2.md");
    std::fs::write(&path, &report).with_context(|| format!("writing {}", path.display()))?;
    print!("{report}");
    Ok(path)
}

/// Runs the benchmark.
pub fn measure(mut o: H2Opts) -> Result<Measured> {
    if !crate::peers::installed("h2load") {
        bail!("h2load is not installed (apt-get install nghttp2-client)");
    }
    let shapes = shapes(&o.shapes)?;
    if o.base.only.is_empty() {
        o.base.only = MEASURED
            .iter()
            .filter(|s| **s != "gw-base" || o.base.baseline.is_some())
            .map(|s| s.to_string())
            .collect();
    }
    // No idle HTTP/1.1 weighing here: the h2 one follows.
    o.base.idle_conns = 0;
    let prepared = prepare(&mut o.base)?;
    let systems: Vec<&systems::System> = prepared
        .started
        .systems
        .iter()
        .filter(|s| MEASURED.contains(&s.name.as_str()))
        .collect();
    let opts = &o.base;
    let work = std::fs::canonicalize(&opts.out)?.join("work");
    let mut idle = Vec::new();
    if o.idle_h2 > 0 {
        for s in &systems {
            let (Some(pgid), Some(t)) = (s.pgid, &s.open) else {
                continue;
            };
            let kib = idle_kib(pgid, t.port, o.idle_h2)
                .with_context(|| format!("{}: idle h2 connections", s.name))?;
            eprintln!("idle h2 {:<8} {kib:.1} KiB per connection", s.name);
            idle.push((s.name.clone(), kib));
        }
    }
    let mut tables = Vec::new();
    for shape in &shapes {
        for s in &systems {
            let r = h2load(shape, opts.warmup.max(1), &s.closed.url, &[], opts, &work)?;
            if r.requests == 0 || r.errors > 0 {
                bail!(
                    "{}: h2 warm-up failed ({} errors, {} answered)",
                    s.name,
                    r.errors,
                    r.requests
                );
            }
        }
        let mut samples: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
        for round in 0..opts.rounds {
            let mut order = systems.clone();
            let n = order.len().max(1);
            order.rotate_left(round % n);
            for s in order {
                let (r, split) = charged(
                    s.pgid,
                    |r: &Run| r.requests,
                    || h2load(shape, opts.duration, &s.closed.url, &[], opts, &work),
                )?;
                let sample = Sample::of_every_request(r.rps, r.hist, r.errors, split, s);
                super::log_sample(
                    &format!("h2 -c{} -m{}", shape.connections, shape.streams),
                    round + 1,
                    &s.name,
                    &sample,
                );
                samples.entry(s.name.clone()).or_default().push(sample);
            }
        }
        let names: Vec<&str> = systems.iter().map(|s| s.name.as_str()).collect();
        tables.push((*shape, rows(&names, &samples)?));
    }
    let grpc = match o.no_grpc {
        true => None,
        false => Some(grpc_rows(&systems, opts, &work)?),
    };
    drop(prepared);
    let mut md = render(&o, &shapes, &tables, &idle);
    if let Some(g) = grpc {
        md.push_str(&g);
    }
    Ok(Measured {
        tables: tables
            .into_iter()
            .map(|(s, rows)| (format!("-c{} -m{}", s.connections, s.streams), rows))
            .collect(),
        md,
    })
}

/// gRPC unary calls (h2load posting one gRPC message, `-c16 -m1`) to the
/// grpcio server directly and through the gateway, alternating: the
/// gateway's added latency and its CPU per call.
fn grpc_rows(systems: &[&systems::System], opts: &Opts, work: &Path) -> Result<String> {
    let Some(gw) = systems.iter().find(|s| s.name == "gateway") else {
        return Ok(String::new());
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/grpc/server.py");
    let mut child = crate::cpu::pinned(opts.load_cpus.as_deref(), "python3")
        .arg(&script)
        .arg(super::GRPC_PORT.to_string())
        .arg("/dev/null")
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("starting the gRPC server (python3 with grpcio)")?;
    let until = std::time::Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(("127.0.0.1", super::GRPC_PORT)).is_err() {
        if std::time::Instant::now() > until {
            let _ = child.kill();
            bail!("the gRPC server (tests/grpc/server.py) did not start: is grpcio installed?");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // One gRPC message: flag, length, payload.
    let msg = work.join("grpc-msg.bin");
    std::fs::write(&msg, b"\x00\x00\x00\x00\x02hi")?;
    let msg = msg.display().to_string();
    let extra = [
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        "-d",
        msg.as_str(),
    ];
    let shape = Shape {
        connections: 16,
        streams: 1,
    };
    let direct = format!("http://127.0.0.1:{}/test.Echo/Unary", super::GRPC_PORT);
    let via = gw.closed.url.trim_end_matches('/').to_owned() + "/test.Echo/Unary";
    let outcome = (|| -> Result<String> {
        h2load(&shape, opts.warmup.max(1), &via, &extra, opts, work)?;
        let mut runs: BTreeMap<&str, Vec<Charged>> = BTreeMap::new();
        for round in 0..opts.rounds {
            let mut order = [
                ("direct", direct.as_str(), None),
                ("gateway", via.as_str(), gw.pgid),
            ];
            if round % 2 == 1 {
                order.reverse();
            }
            for (name, url, pgid) in order {
                let r = charged(
                    pgid,
                    |r: &Run| r.requests,
                    || h2load(&shape, opts.duration, url, &extra, opts, work),
                )?;
                runs.entry(name).or_default().push(r);
            }
        }
        let med = |name: &str, f: &dyn Fn(&Charged) -> f64| {
            crate::cpu::median(
                runs.get(name)
                    .map_or(Vec::new(), |v| v.iter().map(f).collect()),
            )
        };
        let q = |q: f64| move |r: &Charged| r.0.hist.value_at_quantile(q) as f64;
        let rps = |r: &Charged| r.0.rps;
        let cpu = |r: &Charged| r.1.map_or(f64::NAN, |s| s.user + s.system);
        let errors: u64 = runs.values().flatten().map(|r| r.0.errors).sum();
        Ok(format!(
            "\n### gRPC unary calls (h2load -c16 -m1, one message each, to a grpcio server)\n\n| path | calls/s | p50 µs | p99 µs | gateway CPU µs/call |\n|---|---|---|---|---|\n| direct (h2c) | {:.0} | {:.0} | {:.0} | - |\n| through the gateway (TLS, every head stage) | {:.0} | {:.0} | {:.0} | {:.1} |\n\nThe gateway adds {:.0} µs at p50 and {:.0} µs at p99; errors: {errors}.\n",
            med("direct", &rps),
            med("direct", &q(0.5)),
            med("direct", &q(0.99)),
            med("gateway", &rps),
            med("gateway", &q(0.5)),
            med("gateway", &q(0.99)),
            med("gateway", &cpu),
            med("gateway", &q(0.5)) - med("direct", &q(0.5)),
            med("gateway", &q(0.99)) - med("direct", &q(0.99)),
        ))
    })();
    let _ = child.kill();
    let _ = child.wait();
    outcome
}

/// An h2load run and the CPU charged to it.
type Charged = (Run, Option<super::Split>);

/// One h2load run's figures.
struct Run {
    rps: f64,
    requests: u64,
    errors: u64,
    hist: Histogram<u64>,
}

/// Runs h2load for `secs` on `url`; every request's time from its log.
fn h2load(
    shape: &Shape,
    secs: u64,
    url: &str,
    extra: &[&str],
    opts: &Opts,
    work: &Path,
) -> Result<Run> {
    let log = work.join("h2load.log");
    let _ = std::fs::remove_file(&log);
    let mut cmd = crate::cpu::pinned(opts.load_cpus.as_deref(), "h2load");
    cmd.args(["-t", &opts.threads.to_string()])
        .args(["-c", &shape.connections.to_string()])
        .args(["-m", &shape.streams.to_string()])
        .args(["-D", &secs.to_string()])
        .arg("--log-file")
        .arg(&log)
        .args(extra)
        .arg(url);
    let out = cmd.output().context("running h2load")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "h2load failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // "finished in 5.00s, 41234.60 req/s, 1.23MB/s"
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|v| v.strip_suffix(" req/s"))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("h2load's rate in: {text}"))?;
    // "requests: 10 total, 10 started, 10 done, 10 succeeded, 0 failed, 0 errored, 0 timeout"
    let counts = text
        .lines()
        .find_map(|l| l.strip_prefix("requests: "))
        .with_context(|| format!("h2load's counts in: {text}"))?;
    let count = |what: &str| -> u64 {
        counts
            .split(", ")
            .find_map(|p| p.strip_suffix(what))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    let mut hist = crate::openloop::histogram()?;
    // "<start µs since the epoch>\t<status>\t<duration µs>"
    let mut bad_status = 0;
    for line in std::fs::read_to_string(&log)
        .with_context(|| format!("reading {}", log.display()))?
        .lines()
    {
        let mut f = line.split('\t');
        let (_, status, took) = (f.next(), f.next(), f.next());
        if status.and_then(|s| s.parse::<u16>().ok()) != Some(200) {
            bad_status += 1;
        }
        if let Some(us) = took.and_then(|t| t.parse::<u64>().ok()) {
            hist.record(us.max(1)).context("recording a latency")?;
        }
    }
    Ok(Run {
        rps,
        requests: count(" succeeded"),
        errors: count(" failed") + count(" errored") + count(" timeout") + bad_status,
        hist,
    })
}

/// Opens `n` h2 connections to 127.0.0.1:`port`, one request on each, and
/// returns the KiB of RSS the process group grew by per connection while
/// they are all open and idle.
fn idle_kib(pgid: u32, port: u16, n: usize) -> Result<f64> {
    use gateway_tests::h2::{END_HEADERS, END_STREAM, HEADERS, SETTINGS, block, frame, request};
    let mut cfg = crate::client::any_cert_config()?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let cfg = Arc::new(cfg);
    std::thread::sleep(Duration::from_millis(300));
    let before = group_rss_kib(pgid);
    let mut open = Vec::with_capacity(n);
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    hello.extend(frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &block(&request("GET", "/", &[])),
    ));
    for i in 0..n {
        let tcp = TcpStream::connect(("127.0.0.1", port))?;
        tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
        let name = rustls::pki_types::ServerName::try_from("localhost")?.to_owned();
        let conn = rustls::ClientConnection::new(cfg.clone(), name)?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        tls.write_all(&hello)?;
        tls.flush()?;
        // Read frames until stream 1 ends (acknowledging the SETTINGS).
        let mut buf = Vec::new();
        let mut tmp = [0u8; 16384];
        let mut acked = false;
        'frames: loop {
            while buf.len() >= 9 {
                let len =
                    (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
                if buf.len() < 9 + len {
                    break;
                }
                let (kind, flags) = (buf[3], buf[4]);
                let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
                buf.drain(..9 + len);
                if kind == SETTINGS && flags & 1 == 0 && !acked {
                    tls.write_all(&frame(SETTINGS, 1, 0, &[]))?;
                    acked = true;
                }
                if stream == 1 && flags & END_STREAM != 0 {
                    break 'frames;
                }
            }
            let got = tls
                .read(&mut tmp)
                .with_context(|| format!("idle h2 connection {i} of {n}"))?;
            if got == 0 {
                bail!("idle h2 connection {i} of {n}: closed before its answer");
            }
            buf.extend_from_slice(&tmp[..got]);
        }
        open.push(tls);
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = group_rss_kib(pgid);
    drop(open);
    Ok(after.saturating_sub(before) as f64 / n as f64)
}

/// The report: a table per shape with ratios to HAProxy, and idle memory.
fn render(
    o: &H2Opts,
    shapes: &[Shape],
    tables: &[(Shape, Vec<Row>)],
    idle: &[(String, f64)],
) -> String {
    let opts = &o.base;
    let mut md = String::new();
    md.push_str(&format!(
        "h2load over TLS (ALPN h2) against each proxy's h2 frontend, the same nginx backend behind all three over HTTP/1.1 keep-alive; {} workers each; proxies on CPUs {}, h2load and the backend on {}; {} s runs, {} rounds alternating the systems (medians); shapes {}.\n\n",
        opts.workers.unwrap_or(1),
        opts.proxy_cpus.as_deref().unwrap_or("any"),
        opts.load_cpus.as_deref().unwrap_or("any"),
        opts.duration,
        opts.rounds,
        shapes
            .iter()
            .map(|s| format!("-c{} -m{}", s.connections, s.streams))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    for (shape, rows) in tables {
        let ha = rows.iter().find(|r| r.name == "haproxy");
        md.push_str(&format!(
            "### h2load -c{} -m{}\n\n| system | req/s | × HAProxy | p50 µs | p99 µs | p99 × HAProxy | CPU µs/req (user + kernel) | CPU × HAProxy | errors |\n|---|---|---|---|---|---|---|---|---|\n",
            shape.connections, shape.streams
        ));
        for r in rows {
            let ratio = |a: f64, b: Option<f64>| b.map_or("-".into(), |b| format!("{:.2}", a / b));
            md.push_str(&format!(
                "| {} | {:.0} | {} | {:.0} | {:.0} | {} | {:.1} ({:.1} + {:.1}) | {} | {} |\n",
                r.name,
                r.rps,
                ratio(r.rps, ha.map(|h| h.rps)),
                r.p50,
                r.p99,
                ratio(r.p99, ha.map(|h| h.p99)),
                r.cpu_us_per_req,
                r.split.user,
                r.split.system,
                ratio(r.cpu_us_per_req, ha.map(|h| h.cpu_us_per_req)),
                r.errors
            ));
        }
        md.push('\n');
    }
    if !idle.is_empty() {
        md.push_str(&format!(
            "### Memory per idle h2 connection ({} connections, one request each)\n\n| system | KiB |\n|---|---|\n",
            o.idle_h2
        ));
        for (name, kib) in idle {
            md.push_str(&format!("| {name} | {kib:.1} |\n"));
        }
    }
    md
}
