//! The `gateway` command line.

use std::{
    path::PathBuf,
    process::ExitCode,
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use clap::{Parser, Subcommand};
use gateway::{
    clock::{Clock, Monotonic},
    config::Config,
    enforce::Enforcement,
    server::Server,
    snapshot::{Published, Snapshot},
    tls,
    worker::Shared,
};
use nix::sys::signal::{SigSet, Signal};

#[derive(Parser)]
#[command(name = "gateway", version, about = "Kernel-accelerated API gateway")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Attach the XDP data plane, serve HTTPS, and run until SIGINT or SIGTERM.
    Run {
        /// Configuration file (TOML). Without it the embedded default is used:
        /// HTTPS on 127.0.0.1:8443, XDP on lo.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration and print what it enforces; exit 1 on error.
    Check {
        /// Configuration file (TOML). Without it the embedded default is checked.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print the embedded default configuration.
    DefaultConfig,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Run { config } => load(config.as_ref()).and_then(run),
        Cmd::Check { config } => load(config.as_ref()).and_then(|cfg| check(&cfg)),
        Cmd::DefaultConfig => {
            print!("{}", gateway::config::EMBEDDED_DEFAULT);
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(line) => {
            eprintln!("gateway: error: {line}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: Option<&PathBuf>) -> Result<Config, String> {
    match path {
        Some(p) => Config::load(p),
        None => Config::embedded(),
    }
    .map_err(|e| e.to_string())
}

fn check(cfg: &Config) -> Result<(), String> {
    let certs = certificates(cfg, false)?;
    if !certs.is_empty() {
        tls::server_config(&cfg.tls, &certs).map_err(|e| e.to_string())?;
    }
    println!("{}: ok", cfg.source);
    println!(
        "HTTPS listener: {} ({} workers)",
        cfg.https, cfg.runtime.workers
    );
    if cfg.tls.certificates.is_empty() {
        let cert = tls::state_dir().join("self-signed-cert.pem");
        if cert.is_file() {
            println!("certificate: self-signed, {}", cert.display());
        } else {
            println!(
                "certificate: self-signed, generated on first run as {}",
                cert.display()
            );
        }
    }
    for c in &cfg.tls.certificates {
        let names = if c.names.is_empty() {
            "(default)".to_owned()
        } else {
            c.names.join(", ")
        };
        println!("certificate {} for {names}", c.cert.display());
    }
    println!("routes (first match wins):");
    for r in &cfg.routes {
        let path = match &r.path {
            gateway::config::PathMatch::Exact(p) => format!("path = {p}"),
            gateway::config::PathMatch::Prefix(p) => format!("prefix {p}"),
        };
        let methods = if r.methods.is_empty() {
            "any method".to_owned()
        } else {
            r.methods.join(",")
        };
        let u = &cfg.upstreams[r.upstream];
        println!(
            "  host {} {path} {methods} -> {} [{}] max body {} B",
            r.host.as_deref().unwrap_or("*"),
            u.name,
            u.servers
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            r.max_body_bytes
        );
    }
    if cfg.routes.is_empty() {
        println!("  (none: every request gets 404)");
    }
    println!(
        "XDP: {} on {} (mode {})",
        if cfg.xdp.enabled {
            "enabled"
        } else {
            "disabled"
        },
        cfg.xdp.interface,
        cfg.xdp.mode
    );
    println!(
        "TLS port {}, plain HTTP port {} ({})",
        cfg.https.port(),
        cfg.plain_http_port,
        if cfg.redirect_plain_http {
            "308 to HTTPS"
        } else if cfg.https_only {
            "dropped"
        } else {
            "open"
        }
    );
    println!(
        "SYN rate per source: {}/s, burst {}",
        cfg.xdp.syn_rate, cfg.xdp.syn_burst
    );
    println!(
        "allow: {:?}",
        cfg.policy
            .allow
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    );
    println!(
        "deny: {:?}",
        cfg.policy
            .deny
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    );
    Ok(())
}

/// The certificates to serve: the configured ones, or the self-signed one
/// (generated on first run when `generate`).
fn certificates(
    cfg: &Config,
    generate: bool,
) -> Result<Vec<(PathBuf, PathBuf, Vec<String>)>, String> {
    if !cfg.tls.certificates.is_empty() {
        return Ok(cfg
            .tls
            .certificates
            .iter()
            .map(|c| (c.cert.clone(), c.key.clone(), c.names.clone()))
            .collect());
    }
    if !generate {
        return Ok(Vec::new());
    }
    let dir = tls::state_dir();
    let (cert, key, fresh) =
        tls::self_signed(&dir, &cfg.https.ip().to_string()).map_err(|e| e.to_string())?;
    if fresh {
        tracing::info!("generated a self-signed certificate: {}", cert.display());
    } else {
        tracing::info!("using the self-signed certificate {}", cert.display());
    }
    Ok(vec![(cert, key, Vec::new())])
}

/// Raises the descriptor limit and fits the connection cap to it: the
/// default cap shrinks to what fits, an explicit one that does not fit is
/// kept with a warning (the operator may know better, e.g. few upstream hops).
fn fit_connections(cfg: &mut Config) {
    let budget = match gateway::fdlimit::raise() {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!("{e}");
            return;
        }
    };
    if budget.was != budget.limit {
        tracing::info!(
            "file descriptor limit raised from {} to {}",
            budget.was,
            budget.limit
        );
    }
    let rt = &mut cfg.runtime;
    let pooled: u64 = cfg
        .upstreams
        .iter()
        .map(|u| (u.idle_per_server * u.servers.len() * rt.workers) as u64)
        .sum();
    let fit = gateway::fdlimit::connections_that_fit(budget.limit, rt.workers, pooled);
    if rt.max_connections_per_worker <= fit {
        return;
    }
    if rt.max_connections_set {
        tracing::warn!(
            "runtime.max_connections_per_worker = {} with {} workers needs about {} file descriptors \
             (a client and an upstream socket each), but the limit is {}: raise it \
             (ulimit -n, systemd LimitNOFILE=) or lower the cap to {fit}",
            rt.max_connections_per_worker,
            rt.workers,
            2 * rt.max_connections_per_worker * rt.workers,
            budget.limit
        );
    } else {
        tracing::info!(
            "max_connections_per_worker lowered from {} to {fit} to fit the file descriptor limit {}",
            rt.max_connections_per_worker,
            budget.limit
        );
        rt.max_connections_per_worker = fit;
    }
}

fn run(mut cfg: Config) -> Result<(), String> {
    fit_connections(&mut cfg);
    // Block the stop signals before anything else so they are only ever
    // taken by the wait below, never by default handlers mid-attach.
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGINT);
    stop.add(Signal::SIGTERM);
    stop.thread_block()
        .map_err(|e| format!("blocking signals: {e}"))?;

    let certs = certificates(&cfg, true)?;
    let tls_config = tls::server_config(&cfg.tls, &certs).map_err(|e| e.to_string())?;
    let mut enforcement = Enforcement::start(&cfg).map_err(|e| e.to_string())?;
    tracing::info!("config: {}", cfg.source);
    for line in enforcement.describe(&cfg) {
        tracing::info!("{line}");
    }
    if let Some(addr) = cfg.demo {
        let local =
            gateway::demo::start(addr).map_err(|e| format!("demo backend on {addr}: {e}"))?;
        tracing::info!("demo backend on http://{local}");
    }
    let shared = Arc::new(Shared {
        published: Published::new(Snapshot::new(cfg.clone(), tls_config)),
        source_policy: enforcement.userspace_policy(),
        stopping: AtomicBool::new(false),
    });
    let server = Server::start(shared).map_err(|e| e.to_string())?;
    tracing::info!(
        "serving https://{} with {} workers",
        cfg.https,
        cfg.runtime.workers
    );
    if cfg.tls.certificates.is_empty()
        && let Some((cert, _, _)) = certs.first()
    {
        tracing::info!(
            "try: curl --cacert {} https://{}/",
            cert.display(),
            cfg.https
        );
    }
    if cfg.redirect_plain_http {
        tracing::info!(
            "plain HTTP on port {} answers 308 to HTTPS",
            cfg.plain_http_port
        );
    }
    tracing::info!("running; Ctrl-C or SIGTERM stops and detaches");

    let tick = Duration::from_millis(cfg.xdp.sweep_interval_ms);
    let stats_every = Duration::from_secs(cfg.xdp.stats_interval_secs);
    let mut since_stats = Duration::ZERO;
    let mut last = None;
    let clock = Monotonic;
    loop {
        if let Some(sig) = wait_for(&stop, tick) {
            tracing::info!("{sig} received: stopping");
            break;
        }
        match enforcement.sweep(clock.now_ns()) {
            Ok(0) => {}
            Ok(n) => tracing::info!("removed {n} expired verdicts"),
            Err(e) => tracing::warn!("sweeping verdicts: {e}"),
        }
        since_stats += tick;
        if !stats_every.is_zero() && since_stats >= stats_every {
            since_stats = Duration::ZERO;
            if let Some(Ok(c)) = enforcement.counters()
                && last != Some(c)
            {
                tracing::info!("xdp counters: {c}");
                last = Some(c);
            }
        }
    }
    let grace = Duration::from_millis(cfg.limits.shutdown_grace_ms);
    tracing::info!("stopping: no new connections, in-flight requests get {grace:?}");
    server.stop(grace);
    if let Some(Ok(c)) = enforcement.counters() {
        tracing::info!("xdp counters: {c}");
    }
    let iface = match &enforcement {
        Enforcement::Kernel(dp) => dp.attached_to().map(str::to_owned),
        Enforcement::Userspace(_) => None,
    };
    drop(enforcement);
    if let Some(iface) = iface {
        tracing::info!("XDP detached from {iface}");
    }
    Ok(())
}

/// Waits up to `timeout` for one of `set`; returns the signal taken.
fn wait_for(set: &SigSet, timeout: Duration) -> Option<Signal> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: `set` is a valid sigset, `ts` a valid timespec, and a null
    // siginfo pointer is allowed.
    let r = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &ts) };
    if r > 0 {
        Signal::try_from(r).ok()
    } else {
        None
    }
}
