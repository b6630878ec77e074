//! The `gateway` command line.

use std::{
    path::PathBuf,
    process::ExitCode,
    sync::{Arc, Mutex, atomic::AtomicBool},
    time::Duration,
};

use clap::{Parser, Subcommand};
use gateway::{
    admin::{
        AdminServer,
        client::{self, AdminClient},
    },
    clock::{Clock, Monotonic},
    cluster::{self, Cluster},
    config::{Authenticator, Config, RouteAuth},
    control::{self, AuthFailures, Events, IssuerFiles, KeyWatch},
    enforce::Enforcement,
    server::Server,
    snapshot::{Published, Snapshot},
    stages::{
        auth::{
            api_key::{self, KeyRing},
            introspect::Introspector,
        },
        rate_limit::Buckets,
    },
    tls,
    verdicts::Book,
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
    /// Make and hash API keys for the key file (`auth.key_file`).
    Keys {
        #[command(subcommand)]
        cmd: KeysCmd,
    },
    /// List, place and lift verdicts through a running gateway's admin API.
    Verdicts {
        #[command(subcommand)]
        cmd: VerdictsCmd,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Say whether a source is dropped, by what, since when, and its counters.
    Why {
        /// The source address.
        address: std::net::IpAddr,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show the live rate limits of a source (and consumer) on each route.
    Limits {
        /// The source address.
        #[arg(long)]
        source: std::net::IpAddr,
        /// The consumer (API-key consumer id or token subject).
        #[arg(long)]
        consumer: Option<String>,
        /// Only this route (its index, as `gateway check` lists them).
        #[arg(long)]
        route: Option<usize>,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// Which gateway's admin API to ask.
#[derive(clap::Args)]
struct AdminArgs {
    /// The running gateway's configuration (for `admin.listen` and
    /// `admin.token_file`); without it, the embedded default's.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// The admin API's address, instead of the configuration's.
    #[arg(long, global = true)]
    admin: Option<std::net::SocketAddr>,
    /// Print the API's JSON answer as is.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum VerdictsCmd {
    /// The live verdicts.
    List,
    /// Drop a source for a while (reason `policy`).
    Add {
        /// The source address.
        address: std::net::IpAddr,
        /// For how long, in seconds.
        #[arg(long)]
        secs: u64,
        /// Why, for the log and the list.
        #[arg(long, default_value = "")]
        why: String,
    },
    /// Lift a source's verdict.
    Remove {
        /// The source address.
        address: std::net::IpAddr,
    },
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Print a fresh key once, and the lines to add to the key file.
    New {
        /// The consumer the key is for.
        #[arg(long)]
        consumer: String,
        /// Roles of a new consumer, comma-separated (for the printed lines).
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        /// When the key stops working, e.g. 2027-01-01T00:00:00Z.
        #[arg(long)]
        expires: Option<String>,
    },
    /// Read a key from standard input and print the line the key file stores.
    Hash,
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
        Cmd::Keys { cmd } => keys(cmd),
        Cmd::Verdicts { cmd, admin } => verdicts(cmd, &admin),
        Cmd::Why { address, admin } => why(address, &admin),
        Cmd::Limits {
            source,
            consumer,
            route,
            admin,
        } => limits(source, consumer.as_deref(), route, &admin),
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
    print_routes(cfg);
    if let Some(path) = &cfg.auth.key_file {
        let keys = KeyRing::load(path).map_err(|e| e.to_string())?;
        println!(
            "key file {}: {} consumers, {} keys",
            path.display(),
            keys.consumers().len(),
            keys.key_count()
        );
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

/// The route table as `check` prints it, public routes called out.
fn print_routes(cfg: &Config) {
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
        let auth = match &r.auth {
            RouteAuth::Public => "PUBLIC".to_owned(),
            RouteAuth::Required(list) => {
                let mut s = list
                    .iter()
                    .map(|a| match a {
                        Authenticator::ApiKey => "api_key".to_owned(),
                        Authenticator::Jwt(i) => format!("jwt:{}", cfg.auth.jwt[*i].name),
                        Authenticator::Introspect(i) => {
                            format!("introspect:{}", cfg.auth.introspection[*i].name)
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("|");
                if !r.roles.is_empty() {
                    s.push_str(&format!(" roles {}", r.roles.join("+")));
                }
                if !r.consumers.is_empty() {
                    s.push_str(&format!(" consumers {}", r.consumers.join(",")));
                }
                s
            }
        };
        let u = &cfg.upstreams[r.upstream];
        let servers: Vec<String> = u.servers.iter().map(ToString::to_string).collect();
        let limits: Vec<String> = r
            .rate_limits
            .iter()
            .map(|&i| {
                let l = &cfg.rate_limit.limits[i];
                format!(
                    "{} {}/{}s burst {} by {}",
                    l.name, l.count, l.window_secs, l.burst, l.key
                )
            })
            .collect();
        let limits = if limits.is_empty() {
            String::new()
        } else {
            format!(" limits [{}]", limits.join("; "))
        };
        println!(
            "  host {} {path} {methods} auth {auth}{limits} -> {} [{}] max body {} B",
            r.host.as_deref().unwrap_or("*"),
            u.name,
            servers.join(", "),
            r.max_body_bytes
        );
    }
    if cfg.routes.is_empty() {
        println!("  (none: every request gets 404)");
    }
    let public: Vec<String> = cfg
        .routes
        .iter()
        .enumerate()
        .filter(|(_, r)| r.auth == RouteAuth::Public)
        .map(|(i, _)| format!("routes[{i}]"))
        .collect();
    if public.is_empty() {
        println!("public routes: none");
    } else {
        println!("public routes (auth = \"none\"): {}", public.join(", "));
    }
}

fn admin_client(a: &AdminArgs) -> Result<AdminClient, String> {
    AdminClient::new(&load(a.config.as_ref())?, a.admin)
}

fn print_lines(
    json: bool,
    v: &serde_json::Value,
    lines: impl FnOnce(&serde_json::Value) -> Vec<String>,
) {
    if json {
        println!("{v}");
    } else {
        for l in lines(v) {
            println!("{l}");
        }
    }
}

/// `gateway verdicts list|add|remove`.
fn verdicts(cmd: VerdictsCmd, a: &AdminArgs) -> Result<(), String> {
    let c = admin_client(a)?;
    match cmd {
        VerdictsCmd::List => {
            let v = c.ok("GET", "/verdicts", None)?;
            print_lines(a.json, &v, client::verdict_lines);
        }
        VerdictsCmd::Add { address, secs, why } => {
            let body = serde_json::json!({"source": address.to_string(), "secs": secs, "why": why});
            let v = c.ok("POST", "/verdicts", Some(&body))?;
            print_lines(a.json, &v, |_| {
                vec![format!("verdict on {address} for {secs}s placed")]
            });
        }
        VerdictsCmd::Remove { address } => {
            let v = c.ok("DELETE", &format!("/verdicts/{address}"), None)?;
            print_lines(a.json, &v, |_| vec![format!("verdict on {address} lifted")]);
        }
    }
    Ok(())
}

/// `gateway why ADDRESS`.
fn why(address: std::net::IpAddr, a: &AdminArgs) -> Result<(), String> {
    let v = admin_client(a)?.ok("GET", &format!("/why/{address}"), None)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    print_lines(a.json, &v, |v| client::why_lines(v, now));
    Ok(())
}

/// `gateway limits --source ADDRESS`.
fn limits(
    source: std::net::IpAddr,
    consumer: Option<&str>,
    route: Option<usize>,
    a: &AdminArgs,
) -> Result<(), String> {
    let mut path = format!("/limits?source={source}");
    if let Some(c) = consumer {
        if !c
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"&=%#?".contains(&b))
        {
            return Err(format!("consumer `{c}`: printable ASCII without & = % # ?"));
        }
        path.push_str(&format!("&consumer={c}"));
    }
    if let Some(r) = route {
        path.push_str(&format!("&route={r}"));
    }
    let v = admin_client(a)?.ok("GET", &path, None)?;
    print_lines(a.json, &v, client::limit_lines);
    Ok(())
}

/// `gateway keys new|hash`.
fn keys(cmd: KeysCmd) -> Result<(), String> {
    match cmd {
        KeysCmd::New {
            consumer,
            roles,
            expires,
        } => {
            // Refuse here what the key file would refuse later.
            api_key::check_id(&consumer).map_err(|m| format!("--consumer: {m}"))?;
            for r in &roles {
                api_key::check_id(r).map_err(|m| format!("--roles: {m}"))?;
            }
            if let Some(e) = &expires {
                api_key::check_datetime(e).map_err(|m| format!("--expires: {m}"))?;
            }
            let key = api_key::generate()?;
            println!("key (shown once; give it to {consumer} and keep no copy):\n{key}\n");
            println!(
                "key file lines (a new consumer; for an existing one add only the [[consumers.keys]] table):"
            );
            println!("[[consumers]]\nid = \"{consumer}\"");
            let roles: Vec<String> = roles.iter().map(|r| format!("\"{r}\"")).collect();
            println!("roles = [{}]", roles.join(", "));
            println!("[[consumers.keys]]");
            println!("hash = \"{}\"", api_key::hash_line(&key));
            println!("prefix = \"{}\"", api_key::shown_prefix(&key));
            if let Some(e) = expires {
                println!("expires = {e}");
            }
            Ok(())
        }
        KeysCmd::Hash => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .map_err(|e| format!("reading the key from standard input: {e}"))?;
            let key = line.trim_end_matches(['\r', '\n']);
            if key.is_empty() {
                return Err("no key on standard input".into());
            }
            println!("hash = \"{}\"", api_key::hash_line(key));
            println!("prefix = \"{}\"", api_key::shown_prefix(key));
            Ok(())
        }
    }
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

fn run(mut cfg: Config) -> Result<(), String> {
    gateway::fdlimit::fit_connections(&mut cfg);
    // Block the signals before anything else so they are only ever taken
    // by the wait below, never by default handlers mid-attach.
    let mut signals = SigSet::empty();
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        signals.add(sig);
    }
    signals
        .thread_block()
        .map_err(|e| format!("blocking signals: {e}"))?;

    let demo_key = gateway::demo::demo_keys(&mut cfg)?;
    // Stamped before the first read: a change made while starting is
    // seen at the first tick (at worst one needless reload).
    let key_watch = cfg.auth.key_file.as_deref().map(KeyWatch::new);
    let keys = match &cfg.auth.key_file {
        Some(path) => KeyRing::load(path).map_err(|e| e.to_string())?,
        None => KeyRing::default(),
    };
    let (jwks, fetchers) = control::first_issuer_keys(&cfg)?;
    let certs = certificates(&cfg, true)?;
    let tls_config = tls::server_config(&cfg.tls, &certs).map_err(|e| e.to_string())?;
    let enforcement = Enforcement::start(&cfg).map_err(|e| e.to_string())?;
    tracing::info!("config: {}", cfg.source);
    for line in enforcement.describe(&cfg) {
        tracing::info!("{line}");
    }
    if let Some(path) = &cfg.auth.key_file {
        tracing::info!(
            "key file {}: {} consumers, {} keys (re-read when it changes and on SIGHUP)",
            path.display(),
            keys.consumers().len(),
            keys.key_count()
        );
    }
    if let Some(addr) = cfg.demo {
        let local =
            gateway::demo::start(addr).map_err(|e| format!("demo backend on {addr}: {e}"))?;
        tracing::info!("demo backend on http://{local}");
    }
    let (events, rx) = Events::new();
    let (link, admitted) = match &cfg.cluster.redis {
        Some(_) => {
            let (l, rx) = cluster::link(&cfg.cluster);
            (Some(l), Some(rx))
        }
        None => (None, None),
    };
    let shared = Arc::new(Shared {
        published: Published::new(Snapshot::new(cfg.clone(), tls_config, Arc::new(keys), jwks)),
        source_policy: enforcement.userspace_policy(),
        stopping: AtomicBool::new(false),
        events,
        introspector: Introspector::start(&cfg.auth.introspection)?,
        buckets: match &cfg.cluster.redis {
            // Every gateway of the cluster names buckets alike.
            Some(url) if cfg.rate_limit.shared => {
                Buckets::with_seed(cfg.rate_limit.table_entries, cluster::seed(url))
            }
            _ => Buckets::new(cfg.rate_limit.table_entries),
        },
        link,
    });
    let server = Server::start(shared.clone()).map_err(|e| e.to_string())?;
    let book = Arc::new(Mutex::new(Book::new(enforcement, &cfg)));
    let admin = AdminServer::start(&cfg.admin, book.clone(), shared.clone())?;
    let cluster = match admitted {
        Some(admitted) => {
            let (tx, shouts) = std::sync::mpsc::sync_channel(4096);
            if let Ok(mut b) = book.lock() {
                b.share(tx);
            }
            let c = Cluster::start(&cfg.cluster, shared.clone(), book.clone(), admitted, shouts)?;
            tracing::info!(
                "cluster: limits {} and verdicts shared through Redis at {} (sync every {} ms)",
                if cfg.rate_limit.shared {
                    "counted across gateways"
                } else {
                    "counted per gateway (rate_limit.backend = local)"
                },
                cluster::shown(cfg.cluster.redis.as_deref().unwrap_or("?")),
                cfg.cluster.sync_ms
            );
            Some(c)
        }
        None => None,
    };
    if let Some(a) = &admin {
        tracing::info!(
            "admin API on http://{} ({})",
            a.addr,
            if cfg.admin.token_file.is_some() {
                "bearer token required"
            } else {
                "no token: loopback only"
            }
        );
    }
    let mut asks = Vec::new();
    for (i, fetcher) in fetchers.into_iter().enumerate() {
        let Some(https) = fetcher else {
            asks.push(None);
            continue;
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        control::spawn_fetcher(i, cfg.auth.jwt[i].clone(), https, shared.clone(), rx)
            .map_err(|e| format!("starting the key fetcher: {e}"))?;
        asks.push(Some(tx));
    }
    announce(&cfg, &certs, demo_key.as_deref());
    let mut control = Control {
        keys: key_watch,
        issuer_files: IssuerFiles::new(&cfg.auth.jwt),
        fetchers: asks,
        failures: AuthFailures::default(),
        rx,
    };
    serve_until_stopped(&cfg, &signals, &shared, &book, &mut control);
    if let Some(a) = admin {
        a.stop();
    }
    if let Some(c) = cluster {
        c.stop();
    }
    let enforcement = match Arc::try_unwrap(book) {
        Ok(book) => {
            book.into_inner()
                .map_err(|_| "the verdict book was poisoned")?
                .enforcement
        }
        Err(_) => return Err("the verdict book is still shared at exit".into()),
    };

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

/// What the start-up log tells a new user to try.
fn announce(cfg: &Config, certs: &[(PathBuf, PathBuf, Vec<String>)], demo_key: Option<&str>) {
    tracing::info!(
        "serving https://{} with {} workers",
        cfg.https,
        cfg.runtime.workers
    );
    if cfg.tls.certificates.is_empty()
        && let Some((cert, _, _)) = certs.first()
    {
        let base = format!("curl --cacert {} https://{}", cert.display(), cfg.https);
        match demo_key {
            Some(key) => {
                tracing::info!("try (public): {base}/public/hello");
                tracing::info!(
                    "try (demo consumer's API key): {base}/api/hello -H 'x-api-key: {key}'"
                );
                tracing::info!("try (no key: 401): {base}/api/hello");
            }
            None => tracing::info!("try: {base}/"),
        }
    }
    if cfg.redirect_plain_http {
        tracing::info!(
            "plain HTTP on port {} answers 308 to HTTPS",
            cfg.plain_http_port
        );
    }
    tracing::info!("running; Ctrl-C or SIGTERM stops and detaches, SIGHUP re-reads the key file");
}

/// The main thread's side: the control work of `gateway::control`.
struct Control {
    keys: Option<KeyWatch>,
    issuer_files: IssuerFiles,
    /// Per issuer: asks its fetcher for fresh keys (URL and discovery issuers).
    fetchers: Vec<Option<std::sync::mpsc::SyncSender<()>>>,
    failures: AuthFailures,
    rx: std::sync::mpsc::Receiver<control::Event>,
}

/// Ticks until SIGINT or SIGTERM: sweeps verdicts, reloads the key file,
/// counts events, logs counters.
fn serve_until_stopped(
    cfg: &Config,
    signals: &SigSet,
    shared: &Shared,
    book: &Mutex<Book>,
    control: &mut Control,
) {
    let tick = Duration::from_millis(cfg.xdp.sweep_interval_ms);
    let stats_every = Duration::from_secs(cfg.xdp.stats_interval_secs);
    let mut since_stats = Duration::ZERO;
    let mut last = None;
    let mut dropped_before = 0;
    let clock = Monotonic;
    loop {
        let sig = wait_for(signals, tick);
        if let Some(sig @ (Signal::SIGINT | Signal::SIGTERM)) = sig {
            tracing::info!("{sig} received: stopping");
            return;
        }
        let hup = sig == Some(Signal::SIGHUP);
        if hup {
            tracing::info!("SIGHUP received: re-reading the key files");
        }
        if let Some(watch) = &mut control.keys {
            watch.poll(&shared.published, hup);
        }
        control
            .issuer_files
            .poll(&cfg.auth.jwt, &shared.published, hup);
        let fetchers = &control.fetchers;
        let now = clock.now_ns();
        let Ok(mut book) = book.lock() else {
            tracing::error!("the verdict book is unusable: stopping");
            return;
        };
        let sentences = control::drain(
            &control.rx,
            &mut control.failures,
            &mut book.escalation,
            now / 1_000_000_000,
            |issuer| {
                if let Some(Some(ask)) = fetchers.get(issuer) {
                    // A full queue means a fetch is already asked for.
                    let _ = ask.try_send(());
                }
            },
        );
        for s in sentences {
            book.place(&s, now);
        }
        match book.sweep(clock.now_ns()) {
            Ok(0) => {}
            Ok(n) => tracing::info!("removed {n} expired verdicts"),
            Err(e) => tracing::warn!("sweeping verdicts: {e}"),
        }
        since_stats += tick;
        if !stats_every.is_zero() && since_stats >= stats_every {
            since_stats = Duration::ZERO;
            if let Some(Ok(c)) = book.enforcement.counters()
                && last != Some(c)
            {
                tracing::info!("xdp counters: {c}");
                last = Some(c);
            }
            log_auth_failures(&mut control.failures, stats_every);
            let dropped = shared.events.dropped();
            if dropped > dropped_before {
                tracing::warn!(
                    "{} events dropped: the control queue was full",
                    dropped - dropped_before
                );
                dropped_before = dropped;
            }
        }
    }
}

/// One line naming the sources that failed authentication lately.
fn log_auth_failures(failures: &mut AuthFailures, window: Duration) {
    let recent = failures.take_recent();
    if recent.is_empty() {
        return;
    }
    let top: Vec<String> = recent
        .iter()
        .take(5)
        .map(|(ip, n)| format!("{ip} x{n} (total {})", failures.count(*ip)))
        .collect();
    let more = recent.len().saturating_sub(5);
    tracing::warn!(
        "auth failures in the last {}s: {}{}",
        window.as_secs(),
        top.join(", "),
        if more > 0 {
            format!(" and {more} more sources")
        } else {
            String::new()
        }
    );
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
