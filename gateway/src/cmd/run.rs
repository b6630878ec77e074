//! `gateway run`: start everything, then the control loop until a stop signal.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, atomic::AtomicBool},
    time::Duration,
};

use gateway::{
    admin::AdminServer,
    clock::{Clock, Monotonic},
    config::Config,
    control::cluster::{self, Cluster},
    control::verdicts::Book,
    control::{self, AuthFailures, Events, IssuerFiles, KeyWatch},
    server::Server,
    snapshot::{Published, Snapshot},
    stages::{
        auth::{api_key::KeyRing, introspect::Introspector},
        rate_limit::{Buckets, Limiter},
    },
    tls,
    worker::Shared,
    xdp::enforce::Enforcement,
};
use nix::sys::signal::{SigSet, Signal};

pub(crate) fn run(mut cfg: Config, path: Option<PathBuf>) -> Result<(), String> {
    gateway::fdlimit::fit_connections(&mut cfg);
    // Block the signals before anything else so they are only ever taken
    // by the wait below, never by default handlers mid-attach.
    let mut signals = SigSet::empty();
    for sig in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ] {
        signals.add(sig);
    }
    signals
        .thread_block()
        .map_err(|e| format!("blocking signals: {e}"))?;

    let demo_key = gateway::demo::demo_keys(&mut cfg)?;
    // Stamped before the first read: a change made while starting is
    // seen at the first tick (at worst one needless reload).
    let key_watch = cfg.auth.key_file.as_deref().map(KeyWatch::new);
    let keys =
        KeyRing::load_configured(cfg.auth.key_file.as_deref(), cfg.auth.allow_empty_key_file)
            .map_err(|e| e.to_string())?;
    // Stamped before the first read too: an issuer file rewritten while
    // the gateway starts is read again at the first tick.
    let issuer_files = IssuerFiles::new(&cfg.auth.jwt);
    let (jwks, fetchers) = control::first_issuer_keys(&cfg)?;
    let certs = tls::certificates(&cfg, true).map_err(|e| e.to_string())?;
    let tls_config =
        tls::server_config(&cfg.tls, &certs, cfg.http2.enabled).map_err(|e| e.to_string())?;
    let upstream_tls = gateway::proxy::tls::client_configs(&cfg.upstreams)?;
    // Before XDP is attached or any port bound.
    gateway::server::probe_io_uring()?;
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
    let health = Arc::new(gateway::proxy::health::Registry::default());
    health.sync(&cfg.upstreams, upstream_tls);
    let shared = Arc::new(Shared {
        health: health.clone(),
        request_verdicts: Arc::default(),
        tunnels: Arc::default(),
        published: Arc::new(Published::new(Snapshot::new(
            cfg.clone(),
            tls_config,
            Arc::new(keys),
            jwks,
        ))),
        source_policy: enforcement.userspace_policy(),
        stopping: Arc::new(AtomicBool::new(false)),
        events,
        introspector: Introspector::start(&cfg.auth.introspection)?,
        limits: Arc::new(Limiter {
            buckets: match &cfg.cluster.redis {
                // Every gateway of the cluster names buckets alike.
                Some(url) if cfg.rate_limit.shared => {
                    Buckets::with_seed(cfg.rate_limit.table_entries, cluster::seed(url))
                }
                _ => Buckets::new(cfg.rate_limit.table_entries),
            },
            link,
        }),
        metrics: gateway::observe::metrics::Board::new(cfg.runtime.workers),
        access_log: match cfg.access_log {
            true => Some(
                gateway::observe::access_log::AccessLog::start(
                    cfg.log.format,
                    cfg.log.output.clone(),
                )
                .map_err(|e| format!("access log {:?}: {e}", cfg.log.output))?,
            ),
            false => None,
        },
    });
    let server = Server::start(shared.clone()).map_err(|e| e.to_string())?;
    let checker = gateway::proxy::check::Checker::start(health)
        .map_err(|e| format!("starting the health checker: {e}"))?;
    let book = Arc::new(Mutex::new(Book::new(
        enforcement,
        shared.request_verdicts.clone(),
        &cfg,
    )));
    let (ask_reload, reloads) = std::sync::mpsc::sync_channel(4);
    let admin = AdminServer::start(&cfg.admin, book.clone(), shared.clone(), ask_reload)?;
    let cluster = match admitted {
        Some(admitted) => {
            let (tx, shouts) = std::sync::mpsc::sync_channel(4096);
            if let Ok(mut b) = book.lock() {
                b.share(tx);
            }
            let c = Cluster::start(
                &cfg.cluster,
                shared.limits.clone(),
                book.clone(),
                admitted,
                shouts,
            )?;
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
        control::spawn_fetcher(
            i,
            cfg.auth.jwt[i].clone(),
            https,
            shared.published.clone(),
            shared.stopping.clone(),
            rx,
        )
        .map_err(|e| format!("starting the key fetcher: {e}"))?;
        asks.push(Some(tx));
    }
    announce(&cfg, &certs, demo_key.as_deref());
    let mut control = Control {
        keys: key_watch,
        issuer_files,
        fetchers: asks,
        failures: AuthFailures::default(),
        rx,
        anomaly: gateway::observe::anomaly::Detector::new(cfg.anomaly),
        path,
        reloads,
    };
    let ended = serve_until_stopped(&mut cfg, &signals, &shared, &book, &mut control, &server);
    if let Some(a) = admin {
        a.stop();
    }
    checker.stop();
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
    if let Some(log) = &shared.access_log {
        // The workers handed over their last lines: let them be written.
        log.settle(Duration::from_secs(2));
    }
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
    ended
}

/// What the start-up log tells a new user to try.
pub(crate) fn announce(
    cfg: &Config,
    certs: &[(PathBuf, PathBuf, Vec<String>)],
    demo_key: Option<&str>,
) {
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
    tracing::info!(
        "running; Ctrl-C or SIGTERM stops and detaches, SIGHUP or `gateway reload` reloads the configuration"
    );
}

/// The main thread's side: the control work of `gateway::control`.
pub(crate) struct Control {
    keys: Option<KeyWatch>,
    issuer_files: IssuerFiles,
    /// Per issuer: asks its fetcher for fresh keys (URL and discovery issuers).
    fetchers: Vec<Option<std::sync::mpsc::SyncSender<()>>>,
    failures: AuthFailures,
    rx: std::sync::mpsc::Receiver<control::Event>,
    anomaly: gateway::observe::anomaly::Detector,
    /// The configuration file reloads read (none: the embedded default).
    path: Option<PathBuf>,
    /// Reloads asked for through the admin API.
    reloads: std::sync::mpsc::Receiver<gateway::reload::Ask>,
}

impl Control {
    /// Reloads the configuration (see `gateway::reload`); on success `cfg`
    /// is the new one and the file watches follow it.
    fn reload(
        &mut self,
        cfg: &mut Config,
        shared: &Shared,
        book: &Mutex<Book>,
    ) -> Result<gateway::reload::Reloaded, String> {
        match gateway::reload::reload(self.path.as_deref(), cfg, shared, book) {
            Ok((next, done)) => {
                // A watch of a file the reload just read keeps the version
                // it saw before: a new one stamped now would count an edit
                // made since that read as seen. At worst the file is read
                // once more.
                if next.auth.key_file != cfg.auth.key_file {
                    self.keys = next.auth.key_file.as_deref().map(KeyWatch::new);
                }
                if !self.issuer_files.watches(&next.auth.jwt) {
                    self.issuer_files = IssuerFiles::new(&next.auth.jwt);
                }
                *cfg = next;
                tracing::info!("reloaded {}: {}", done.source, done.lines.join("; "));
                Ok(done)
            }
            Err(e) => {
                tracing::error!("reload refused: {e}");
                Err(e.to_string())
            }
        }
    }
}

/// Ticks until SIGINT or SIGTERM: reloads (SIGHUP, the admin API's asks),
/// re-reads changed key files, sweeps verdicts, counts events, logs counters.
/// A worker that died ends it with an error: the process then cleans up
/// and exits non-zero, so a supervisor restarts it.
pub(crate) fn serve_until_stopped(
    cfg: &mut Config,
    signals: &SigSet,
    shared: &Shared,
    book: &Mutex<Book>,
    control: &mut Control,
    server: &Server,
) -> Result<(), String> {
    let mut since_stats = Duration::ZERO;
    let mut last = None;
    let mut dropped_before = 0;
    let clock = Monotonic;
    loop {
        // Read each tick: a reload may change them.
        let tick = Duration::from_millis(cfg.xdp.sweep_interval_ms);
        let stats_every = Duration::from_secs(cfg.xdp.stats_interval_secs);
        let sig = wait_for(signals, tick);
        if let Some(sig @ (Signal::SIGINT | Signal::SIGTERM)) = sig {
            tracing::info!("{sig} received: stopping");
            return Ok(());
        }
        if let Some(i) = server.dead_worker() {
            let why = format!(
                "worker-{i} stopped (see its panic above): its connections are lost; stopping with an error so a supervisor restarts the gateway"
            );
            tracing::error!("{why}");
            return Err(why);
        }
        if sig == Some(Signal::SIGUSR1)
            && let Some(log) = &shared.access_log
        {
            log.reopen();
        }
        if sig == Some(Signal::SIGHUP) {
            tracing::info!("SIGHUP received: reloading the configuration");
            let _ = control.reload(cfg, shared, book);
        }
        // The admin thread raises SIGUSR2 after queueing an ask.
        while let Ok(reply) = control.reloads.try_recv() {
            tracing::info!("reload asked for through the admin API");
            let _ = reply.send(control.reload(cfg, shared, book));
        }
        if let Some(watch) = &mut control.keys {
            watch.poll(&shared.published);
        }
        control.issuer_files.poll(&cfg.auth.jwt, &shared.published);
        let fetchers = &control.fetchers;
        let now = clock.now_ns();
        let Ok(mut book) = book.lock() else {
            tracing::error!("the verdict book is unusable: stopping");
            return Err("the verdict book is unusable".into());
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
            |batch| control.anomaly.observe(batch, now / 1_000_000_000),
        );
        for s in sentences {
            book.place(&s, now);
        }
        let findings = control.anomaly.tick(now / 1_000_000_000);
        if findings.len() > 10 {
            tracing::warn!(
                "anomaly: {} findings in this window; the first 10 follow",
                findings.len()
            );
        }
        for (i, f) in findings.iter().enumerate() {
            if i < 10 {
                tracing::warn!("anomaly: {f}");
            }
            if cfg.anomaly.escalate
                && let gateway::observe::anomaly::Subject::Source(ip) = f.subject
                && let Some(s) =
                    book.escalation
                        .anomaly(ip, format!("anomaly: {f}"), now / 1_000_000_000)
            {
                book.place(&s, now);
            }
        }
        match book.sweep(clock.now_ns()) {
            Ok(0) => {}
            Ok(n) => tracing::info!("removed {n} expired verdicts"),
            Err(e) => tracing::warn!("sweeping verdicts: {e}"),
        }
        // What this tick placed, lifted or swept, to the workers at once
        // (and only then said in the log).
        book.publish();
        since_stats += tick;
        if stats_every.is_zero() {
            control.failures.forget_recent();
        } else if since_stats >= stats_every {
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
pub(crate) fn log_auth_failures(failures: &mut AuthFailures, window: Duration) {
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
pub(crate) fn wait_for(set: &SigSet, timeout: Duration) -> Option<Signal> {
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
