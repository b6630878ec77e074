//! `bench proxy`: the backend directly, our gateway, HAProxy 2.6 and nginx
//! 1.22 doing the same work: TLS termination, proxying to the same nginx
//! backend over pooled keep-alive connections, adding X-Forwarded-For,
//! X-Forwarded-Proto and HSTS, no access log; the gateway again with an API
//! key required (`gw+key`), JWTs (ES256 with and without the verified-token
//! cache, RS256, against HAProxy's `jwt_verify`), and a 1 KiB JSON POST
//! validated against a schema (`gw+valid`) or not (`gw+post`, `ha+post`,
//! `ng+post`).
//!
//! Two loops: wrk's closed loop (each connection waits for its answer), and
//! an open loop at a constant rate whose latencies count from when each
//! request was due, so a stall shows in every request it delayed. The
//! systems alternate within each round; medians of req/s, percentiles and
//! each proxy's own CPU time per request (utime + stime of its processes,
//! from /proc) are reported, with every latency distribution.

mod configs;
pub mod h2;
mod idle;
mod systems;
pub mod wrk;

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result, bail};
use hdrhistogram::Histogram;

use crate::{
    cpu::{MachineCpu, cpu_count, group_rss_kib, group_ticks, halves, hz, median},
    openloop,
};

/// Options of `bench proxy`.
#[derive(clap::Args, Clone, Debug)]
pub struct Opts {
    /// Seconds per run (closed and open loop alike).
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Seconds of closed-loop warm-up per scenario.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// wrk connections.
    #[arg(long, default_value_t = 64)]
    pub connections: u32,
    /// wrk threads.
    #[arg(long, default_value_t = 1)]
    pub threads: u32,
    /// Rounds; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Worker threads/processes for each proxy; default: one per proxy CPU.
    #[arg(long)]
    pub workers: Option<usize>,
    /// CPU list for the proxies (taskset syntax, e.g. "0-1"). Default: the
    /// first half of the machine's CPUs, so proxies never share a core with
    /// the load.
    #[arg(long)]
    pub proxy_cpus: Option<String>,
    /// CPU list for the load generators and the backend. Default: the second half.
    #[arg(long)]
    pub load_cpus: Option<String>,
    /// Do not split the CPUs: proxies, load and backend all float.
    #[arg(long)]
    pub unpinned: bool,
    /// Pin each proxy's workers one per CPU (gateway `pin_cpus`, HAProxy
    /// `cpu-map`, nginx `worker_cpu_affinity`), within `--proxy-cpus`.
    #[arg(long)]
    pub pin_workers: bool,
    /// The open loop's rate in req/s, the same for every scenario. Default:
    /// half the slowest proxy's closed-loop req/s.
    #[arg(long)]
    pub open_rate: Option<u64>,
    /// The open loop's connections (each a fixed-interval stream).
    #[arg(long, default_value_t = 32)]
    pub open_connections: usize,
    /// Leave out the open loop.
    #[arg(long)]
    pub no_open_loop: bool,
    /// Idle keep-alive TLS connections opened to each proxy to weigh the
    /// memory one costs (0: leave it out).
    #[arg(long, default_value_t = 2000)]
    pub idle_conns: usize,
    /// Leave out the JWT scenarios.
    #[arg(long)]
    pub no_jwt: bool,
    /// Only these scenarios (comma-separated names as the report gives
    /// them, e.g. `gateway,haproxy,nginx`); default: all.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Install missing peers (apt-get install wrk haproxy nginx-light);
    /// without it a missing peer's rows are skipped and named.
    #[arg(long)]
    pub install_peers: bool,
    /// Where the report, distributions and plots go.
    #[arg(long, default_value = "target/bench/proxy")]
    pub out: PathBuf,
    /// The gateway binary.
    #[arg(long, default_value = "target/release/gateway")]
    pub gateway: PathBuf,
    /// Another gateway binary (say, main's build beside a change) run on
    /// the same configuration as rows `gw-base` and `gwb+valid`, rounds
    /// alternating with every other row: an A/B of two builds.
    #[arg(long)]
    pub baseline: Option<PathBuf>,
}

const BACKEND_PORT: u16 = 18080;
/// The backend over TLS, for the gateway's upstream-TLS row.
const BACKEND_TLS_PORT: u16 = 18081;
/// The gRPC server (`tests/grpc/server.py`) of `bench h2`'s gRPC rows.
const GRPC_PORT: u16 = 18650;
/// The backend nginx's `stub_status`: connections it accepted.
const BACKEND_STATUS_PORT: u16 = 18082;

/// Connections the backend nginx has accepted (its `stub_status`), or
/// `None` without it (the demo backend). Reading it costs one more.
fn backend_accepts() -> Option<u64> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", BACKEND_STATUS_PORT)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    // "server accepts handled requests\n 12 12 34"
    let numbers = out.split("requests").nth(1)?;
    numbers.split_whitespace().next()?.parse().ok()
}
const PORTS: [(&str, u16); 6] = [
    ("backend", BACKEND_PORT),
    ("gateway", 18443),
    // The same gateway with an API key required on the route (auth stage,
    // key hash and lookup, identity headers): its cost is the ratio to `gateway`.
    ("gw+key", 18446),
    ("haproxy", 18444),
    ("nginx", 18445),
    // `--baseline`: another build of the gateway on `gateway`'s configuration.
    ("gw-base", 18447),
];

/// One run of one scenario.
struct Sample {
    rps: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
    split: Option<Split>,
    rss_kib: Option<f64>,
    errors: u64,
    hist: Histogram<u64>,
    /// Backend connections opened per request during the run.
    connects_per_req: Option<f64>,
}

impl Sample {
    /// The proxy's own CPU time per request, µs (none for the backend alone).
    fn cpu_us_per_req(&self) -> Option<f64> {
        self.split
            .map(|c| c.user + c.system)
            .filter(|c| c.is_finite())
    }
}

/// Where a run's CPU went, per request, µs: the proxy's own time in
/// userspace and in the kernel, and the rest of the machine's busy time
/// (load generator, backend, interrupts); and how busy the machine was.
#[derive(Clone, Copy, Debug)]
pub struct Split {
    /// The proxy's utime per request.
    pub user: f64,
    /// The proxy's stime per request.
    pub system: f64,
    /// The machine's busy time minus the proxy's, per request.
    pub rest: f64,
    /// Busy share of the machine's busy and idle time, 0..=1.
    pub busy: f64,
    /// CPU-seconds the machine worked per second of the run: what it gave
    /// in all (stolen time and CPUs it could not use left out).
    pub busy_cpus: f64,
    /// Share of the machine's time the hypervisor gave other guests, 0..=1:
    /// above a few percent the run measured a busy host.
    pub stolen: f64,
}

/// A scenario's medians over the rounds, and its distribution over all of them.
pub struct Row {
    /// The scenario.
    pub name: String,
    /// Answered req/s.
    pub rps: f64,
    /// Latency percentiles, µs.
    pub p50: f64,
    /// p99, µs.
    pub p99: f64,
    /// p99.9, µs.
    pub p999: f64,
    /// The largest latency, µs.
    pub max: f64,
    /// The proxy's own CPU time per request, µs (NaN for the backend alone).
    pub cpu_us_per_req: f64,
    /// Medians of where the CPU went (the proxy's user and system time NaN
    /// for the backend alone, whose rest is the whole machine's).
    pub split: Split,
    /// The proxy's resident memory after the run, KiB.
    pub rss_kib: f64,
    /// Failed requests, all rounds.
    pub errors: u64,
    /// Every round's latencies together.
    pub hist: Histogram<u64>,
    /// Backend connections opened per request (NaN unknown): a pool that
    /// closes what it will need again shows here.
    pub connects_per_req: f64,
}

/// What `bench proxy` measured.
pub struct Outcome {
    /// How the run was set up, one line.
    pub setup: String,
    /// The exact commands, one per kind of run.
    pub commands: Vec<String>,
    /// Closed loop (wrk) rows; empty without wrk.
    pub closed: Vec<Row>,
    /// Open loop rows.
    pub open: Vec<Row>,
    /// The open loop's rate, req/s.
    pub open_rate: u64,
    /// KiB of resident memory per idle keep-alive TLS connection, by proxy,
    /// and how many connections were weighed.
    pub idle: (Vec<(String, f64)>, usize),
    /// Derived figures (authentication, JWT and validation costs).
    pub notes: Vec<String>,
    /// Whether the proxies, the load and the backend all shared the same
    /// CPUs (no CPU lists): then a proxy's req/s is bounded by what the
    /// others leave it.
    pub shared: bool,
    /// What was left out and why.
    pub skipped: Vec<String>,
}

/// The CPU a process group and the whole machine spent while `f` runs,
/// per request.
fn charged<T>(
    pgid: Option<u32>,
    requests: impl Fn(&T) -> u64,
    f: impl FnOnce() -> Result<T>,
) -> Result<(T, Option<Split>)> {
    let before = pgid.map(group_ticks);
    let (machine, wall) = (MachineCpu::now().ok(), std::time::Instant::now());
    let r = f()?;
    let wall = wall.elapsed().as_secs_f64();
    let machine = MachineCpu::now().ok().zip(machine).map(|(b, a)| b.since(a));
    let after = pgid.map(group_ticks);
    let n = requests(&r);
    if n == 0 {
        return Ok((r, None));
    }
    let hz = hz() as f64;
    let per = |ticks: u64| ticks as f64 / hz * 1e6 / n as f64;
    // Without a proxy (the backend alone) the rest is the whole machine.
    let (user, system) = match (before, after) {
        (Some(b), Some(a)) => {
            let t = a.since(b);
            (per(t.user), per(t.system))
        }
        _ => (f64::NAN, f64::NAN),
    };
    let (busy, idle, steal) = machine.map_or((f64::NAN, f64::NAN, f64::NAN), |m| {
        (
            m.busy().as_secs_f64(),
            m.idle.as_secs_f64(),
            m.steal.as_secs_f64(),
        )
    });
    let own = if user.is_finite() { user + system } else { 0.0 };
    let split = Split {
        user,
        system,
        // NaN stays NaN (f64::max would turn it into 0).
        rest: (busy * 1e6 / n as f64 - own).clamp(0.0, f64::INFINITY),
        busy: busy / (busy + idle),
        busy_cpus: busy / wall,
        stolen: steal / (busy + idle + steal),
    };
    Ok((r, Some(split)))
}

fn closed_sample(shape: &wrk::Shape, s: &systems::System) -> Result<Sample> {
    let accepts = backend_accepts();
    let (r, split) = charged(
        s.pgid,
        |r: &wrk::Run| r.requests,
        || wrk::run(shape, &s.closed),
    )?;
    // The second reading's own connection is not the proxy's.
    let connects_per_req = accepts
        .zip(backend_accepts())
        .filter(|_| r.requests > 0)
        .map(|(a, b)| b.saturating_sub(a + 1) as f64 / r.requests as f64);
    let pct = |k: &str| r.pct.get(k).copied().unwrap_or(f64::NAN);
    Ok(Sample {
        rps: r.rps,
        p50: pct("50"),
        p99: pct("99"),
        p999: pct("99.9"),
        max: r.hist.max() as f64,
        split,
        rss_kib: s.pgid.map(|g| group_rss_kib(g) as f64),
        errors: r.errors,
        hist: r.hist,
        connects_per_req,
    })
}

fn open_sample(
    load: &openloop::Load,
    s: &systems::System,
    target: &openloop::Target,
) -> Result<Sample> {
    let (r, split) = charged(
        s.pgid,
        |r: &openloop::Outcome| r.answered,
        || openloop::run(target, load),
    )?;
    Ok(Sample::of_every_request(
        r.rps(),
        r.hist,
        r.errors,
        split,
        s,
    ))
}

impl Sample {
    /// A run that recorded every request's latency in `hist`.
    fn of_every_request(
        rps: f64,
        hist: Histogram<u64>,
        errors: u64,
        split: Option<Split>,
        s: &systems::System,
    ) -> Self {
        let q = |q: f64| hist.value_at_quantile(q) as f64;
        Sample {
            rps,
            p50: q(0.5),
            p99: q(0.99),
            p999: q(0.999),
            max: hist.max() as f64,
            split,
            rss_kib: s.pgid.map(|g| group_rss_kib(g) as f64),
            errors,
            hist,
            connects_per_req: None,
        }
    }
}

fn rows(names: &[&str], samples: &BTreeMap<String, Vec<Sample>>) -> Result<Vec<Row>> {
    let mut out = Vec::new();
    for &name in names {
        let Some(v) = samples.get(name) else { continue };
        let med = |f: &dyn Fn(&Sample) -> Option<f64>| median(v.iter().filter_map(f).collect());
        let mut hist = openloop::histogram()?;
        for s in v {
            hist.add(&s.hist).context("merging rounds")?;
        }
        out.push(Row {
            name: name.to_owned(),
            rps: med(&|s| Some(s.rps)),
            p50: med(&|s| Some(s.p50)),
            p99: med(&|s| Some(s.p99)),
            p999: med(&|s| Some(s.p999)),
            max: med(&|s| Some(s.max)),
            cpu_us_per_req: med(&Sample::cpu_us_per_req),
            split: Split {
                user: med(&|s| s.split.map(|c| c.user)),
                system: med(&|s| s.split.map(|c| c.system)),
                rest: med(&|s| s.split.map(|c| c.rest)),
                busy: med(&|s| s.split.map(|c| c.busy)),
                busy_cpus: med(&|s| s.split.map(|c| c.busy_cpus)),
                stolen: med(&|s| s.split.map(|c| c.stolen)),
            },
            rss_kib: med(&|s| s.rss_kib),
            errors: v.iter().map(|s| s.errors).sum(),
            hist,
            connects_per_req: med(&|s| s.connects_per_req),
        });
    }
    Ok(out)
}

fn log_sample(kind: &str, round: usize, name: &str, s: &Sample) {
    eprintln!(
        "{kind} round {round} {name:<11} {:>9.0} req/s p50 {:>6.0}us p99 {:>6.0}us p99.9 {:>6.0}us cpu/req {} upstream connects/req {} errors {}",
        s.rps,
        s.p50,
        s.p99,
        s.p999,
        s.cpu_us_per_req()
            .map_or("-".into(), |c| format!("{c:.1}us")),
        s.connects_per_req.map_or("-".into(), |c| format!("{c:.4}")),
        s.errors
    );
}

/// Fills in the defaults that depend on the machine.
fn settle(opts: &mut Opts) {
    // Fair by default: the proxies get one half of the CPUs, the load and
    // the backend the other, and each proxy one worker per proxy CPU.
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    if !opts.unpinned && ncpu >= 2 {
        let (proxy, load) = halves();
        opts.proxy_cpus.get_or_insert(proxy);
        opts.load_cpus.get_or_insert(load);
    }
    if opts.workers.is_none() {
        let n = opts.proxy_cpus.as_deref().map_or(ncpu, cpu_count);
        opts.workers = Some(n.max(1));
    }
}

/// The systems started for a run, what was left out, and which tools are
/// installed.
struct Prepared {
    started: systems::Started,
    skipped: Vec<String>,
    missing: Vec<(&'static str, &'static str)>,
}

impl Prepared {
    fn have(&self, tool: &str) -> bool {
        !self.missing.iter().any(|(t, _)| *t == tool)
    }
}

/// Settles the options, writes the configurations and starts the systems.
fn prepare(opts: &mut Opts) -> Result<Prepared> {
    settle(opts);
    let missing = crate::peers::missing(opts.install_peers)?;
    let mut skipped: Vec<String> = missing
        .iter()
        .map(|(t, p)| format!("{t} is not installed (apt-get install {p}, or --install-peers): its rows are skipped"))
        .collect();
    let have = |tool: &str| !missing.iter().any(|(t, _)| *t == tool);
    let gateway = std::fs::canonicalize(&opts.gateway).with_context(|| {
        format!(
            "{} (build it with cargo xtask build)",
            opts.gateway.display()
        )
    })?;
    if let Some(base) = &opts.baseline {
        let found = std::fs::canonicalize(base)
            .with_context(|| format!("--baseline {}", base.display()))?;
        opts.baseline = Some(found);
    }
    std::fs::create_dir_all(&opts.out)?;
    let work = std::fs::canonicalize(&opts.out)?.join("work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let files = configs::write(&work, opts)?;
    // The idle connections and the proxies started here need more than the
    // usual 1024 descriptors: the gateway's own start-up raise.
    gateway::fdlimit::raise().map_err(anyhow::Error::msg)?;
    let started = systems::start(opts, &gateway, &work, &files, &have)?;
    if started.demo_backend {
        skipped.push("the backend is the gateway's built-in demo backend (one thread per connection) instead of nginx".into());
    }
    Ok(Prepared {
        started,
        skipped,
        missing,
    })
}

/// Runs the benchmark.
pub fn run(mut opts: Opts) -> Result<Outcome> {
    let prepared = prepare(&mut opts)?;
    let have = |tool: &str| prepared.have(tool);
    let skipped = prepared.skipped.clone();
    let started = &prepared.started;
    let systems = &started.systems;
    // Weighed first, before any load leaves freed memory behind to reuse.
    let mut idle = Vec::new();
    if opts.idle_conns > 0 {
        for s in systems
            .iter()
            .filter(|s| ["gateway", "haproxy", "nginx"].contains(&s.name.as_str()))
        {
            let (Some(pgid), Some(t)) = (s.pgid, &s.open) else {
                continue;
            };
            let kib = idle::per_connection_kib(pgid, t.port, opts.idle_conns)
                .with_context(|| format!("{}: idle connections", s.name))?;
            eprintln!(
                "idle {:<8} {kib:.1} KiB per idle keep-alive TLS connection",
                s.name
            );
            idle.push((s.name.clone(), kib));
        }
    }
    let shape = |duration: u64| wrk::Shape {
        threads: opts.threads,
        connections: opts.connections,
        duration,
        cpus: opts.load_cpus.clone(),
    };
    let mut commands = Vec::new();
    let mut closed: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
    if have("wrk") {
        for s in systems {
            let r = wrk::run(&shape(opts.warmup), &s.closed)?;
            if r.rps < 1.0 || r.errors > 0 {
                bail!(
                    "{}: warm-up failed ({} errors, {:.0} req/s)",
                    s.name,
                    r.errors,
                    r.rps
                );
            }
        }
        if let Some(s) = systems.iter().find(|s| s.name == "gateway") {
            commands.push(wrk::shell_line(&wrk::command(
                &shape(opts.duration),
                &s.closed,
            )));
        }
        for round in 0..opts.rounds {
            let mut order: Vec<&systems::System> = systems.iter().collect();
            let n = order.len().max(1);
            order.rotate_left(round % n);
            for s in order {
                let sample = closed_sample(&shape(opts.duration), s)?;
                log_sample("closed", round + 1, &s.name, &sample);
                closed.entry(s.name.clone()).or_default().push(sample);
            }
        }
    }
    let names: Vec<&str> = systems.iter().map(|s| s.name.as_str()).collect();
    let closed = rows(&names, &closed)?;
    let rate = opts.open_rate.unwrap_or_else(|| default_rate(&closed));
    let mut open: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
    if !opts.no_open_loop {
        let load = openloop::Load {
            rate,
            connections: opts.open_connections,
            duration: Duration::from_secs(opts.duration),
            cpus: opts.load_cpus.clone(),
        };
        commands.push(format!(
            "open loop (built in, {}): {rate} req/s on {} keep-alive connections for {} s, CPUs {}",
            "gateway-bench, wrk2's schedule",
            load.connections,
            opts.duration,
            opts.load_cpus.as_deref().unwrap_or("any")
        ));
        for round in 0..opts.rounds {
            let mut order: Vec<&systems::System> =
                systems.iter().filter(|s| s.open.is_some()).collect();
            let n = order.len().max(1);
            order.rotate_left(round % n);
            for s in order {
                let Some(target) = &s.open else { continue };
                let sample = open_sample(&load, s, target)?;
                log_sample("open", round + 1, &s.name, &sample);
                open.entry(s.name.clone()).or_default().push(sample);
            }
        }
    }
    let open = rows(&names, &open)?;
    drop(prepared);
    let setup = format!(
        "{} workers each{}; proxies on CPUs {}, load generators and backend on {}; runs of {} s, {} rounds (medians), wrk -t{} -c{}",
        opts.workers.unwrap_or(1),
        if opts.pin_workers {
            " pinned one per CPU"
        } else {
            ""
        },
        opts.proxy_cpus.as_deref().unwrap_or("any"),
        opts.load_cpus.as_deref().unwrap_or("any"),
        opts.duration,
        opts.rounds,
        opts.threads,
        opts.connections
    );
    Ok(Outcome {
        notes: notes(&closed, opts.no_jwt),
        setup,
        commands,
        closed,
        open,
        open_rate: rate,
        idle: (idle, opts.idle_conns),
        shared: opts.proxy_cpus.is_none() && opts.load_cpus.is_none(),
        skipped,
    })
}

/// Half the slowest proxy's closed-loop rate: every system can carry it,
/// so the open loop compares latency, not saturation.
fn default_rate(closed: &[Row]) -> u64 {
    let slowest = closed
        .iter()
        .filter(|r| ["gateway", "haproxy", "nginx"].contains(&r.name.as_str()))
        .map(|r| r.rps)
        .fold(f64::INFINITY, f64::min);
    if slowest.is_finite() {
        ((slowest / 2.0 / 100.0).round() as u64 * 100).max(100)
    } else {
        2000
    }
}

/// The costs the scenarios were chosen to show; a note whose rows were
/// left out (`--only`, a missing peer) is left out with them.
fn notes(closed: &[Row], no_jwt: bool) -> Vec<String> {
    let get = |n: &str| closed.iter().find(|r| r.name == n);
    let have = |names: &[&str]| names.iter().all(|n| get(n).is_some());
    let rps = |n: &str| get(n).map_or(f64::NAN, |r| r.rps);
    let cpu = |n: &str| get(n).map_or(f64::NAN, |r| r.cpu_us_per_req);
    let mut out = Vec::new();
    if have(&["gw+key", "gateway"]) {
        out.push(format!(
            "API key: {:.3}× the unauthenticated gateway's req/s, {:+.1} µs CPU per request",
            rps("gw+key") / rps("gateway"),
            cpu("gw+key") - cpu("gateway")
        ));
    }
    if !no_jwt
        && have(&[
            "gw+es256",
            "gw+es256-nc",
            "gw+rs256",
            "ha+es256",
            "ha+rs256",
        ])
    {
        out.push(format!(
            "JWT ES256: {:.2}× HAProxy jwt_verify's req/s with the verified-token cache, {:.2}× without; RS256: {:.2}×",
            rps("gw+es256") / rps("ha+es256"),
            rps("gw+es256-nc") / rps("ha+es256"),
            rps("gw+rs256") / rps("ha+rs256"),
        ));
    }
    if have(&["gw+tls-up", "gateway"]) {
        out.push(format!(
            "Upstream TLS (kept-alive TLS to the backend): {:.3}× the plain-upstream gateway's req/s, {:+.1} µs gateway CPU per request",
            rps("gw+tls-up") / rps("gateway"),
            cpu("gw+tls-up") - cpu("gateway")
        ));
    }
    if have(&["gw+valid", "ha+post", "ng+post", "gw+post"]) {
        out.push(format!(
            "JSON POST, validated: {:.2}× HAProxy's unvalidated req/s ({:.2}× nginx's), {:.2}× the gateway's own unvalidated POST, {:+.1} µs CPU per request for the schema",
            rps("gw+valid") / rps("ha+post"),
            rps("gw+valid") / rps("ng+post"),
            rps("gw+valid") / rps("gw+post"),
            cpu("gw+valid") - cpu("gw+post"),
        ));
    }
    for (ours, base, what) in [
        ("gateway", "gw-base", "GET"),
        ("gw+valid", "gwb+valid", "validated JSON POST"),
    ] {
        if have(&[ours, base]) {
            out.push(format!(
                "A/B (`--baseline`), {what}: {:.3}× the baseline's req/s, {:+.1} µs CPU per request",
                rps(ours) / rps(base),
                cpu(ours) - cpu(base)
            ));
        }
    }
    out
}
