//! The proxy's runtime: one worker thread per core, each a tokio-uring
//! runtime with its own SO_REUSEPORT listener, its own upstream pools and no
//! locks shared on the request path; plus the optional plain-HTTP listener
//! that redirects to HTTPS, and graceful shutdown.

use std::{
    io,
    net::{SocketAddr, TcpListener as StdListener},
    os::fd::AsRawFd,
    rc::Rc,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, Socket, Type};
use tokio_uring::net::TcpListener;

use crate::{
    clock::{Clock, Monotonic},
    worker::{Shared, Worker},
};

mod connection;
mod h2;
mod per_source;
mod redirect;

pub use per_source::SourceConns;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// A worker thread could not start.
    #[error("cannot start worker: {0}")]
    Worker(io::Error),
}

/// A socket bound with SO_REUSEPORT (one per worker) and a real backlog.
fn reuseport_listener(addr: SocketAddr) -> Result<StdListener, StartError> {
    let err = |source| StartError::Listen { addr, source };
    let s =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
    s.set_reuse_address(true).map_err(err)?;
    s.set_reuse_port(true).map_err(err)?;
    if addr.is_ipv6() {
        let _ = s.set_only_v6(true);
    }
    s.bind(&addr.into()).map_err(err)?;
    s.listen(4096).map_err(err)?;
    Ok(s.into())
}

/// The running proxy.
pub struct Server {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    listener_fds: Vec<i32>,
    _balancer: Option<crate::xdp::Balancer>,
}

impl Server {
    /// Opens every listener (so address errors surface before anything
    /// runs) and starts the workers.
    pub fn start(shared: Arc<Shared>) -> Result<Self, StartError> {
        let snap = shared.published.current();
        let cfg = &snap.cfg;
        let n = cfg.runtime.workers.max(1);
        let redirect_addr = cfg
            .redirect_plain_http
            .then(|| SocketAddr::new(cfg.https.ip(), cfg.plain_http_port));
        let mut sockets = Vec::new();
        for _ in 0..n {
            let https = reuseport_listener(cfg.https)?;
            let plain = redirect_addr.map(reuseport_listener).transpose()?;
            sockets.push((https, plain));
        }
        // New connections go to the workers in turn (a SO_REUSEPORT eBPF
        // program); without BPF the kernel's 4-tuple hash decides.
        let https: Vec<std::os::fd::BorrowedFd<'_>> = sockets
            .iter()
            .map(|(h, _)| std::os::fd::AsFd::as_fd(h))
            .collect();
        let balancer = if n > 1 {
            match crate::xdp::Balancer::attach(&https) {
                Ok(b) => Some(b),
                Err(e) => {
                    tracing::debug!("listeners balanced by the kernel's hash: {e}");
                    None
                }
            }
        } else {
            None
        };
        let listener_fds = sockets
            .iter()
            .flat_map(|(h, p)| {
                std::iter::once(h.as_raw_fd()).chain(p.as_ref().map(|p| p.as_raw_fd()))
            })
            .collect();
        let mut workers = Vec::new();
        // Open connections per source, counted across the workers.
        let source_conns = Arc::new(SourceConns::default());
        for (i, (https, plain)) in sockets.into_iter().enumerate() {
            let shared = shared.clone();
            let source_conns = source_conns.clone();
            let pin = cfg.runtime.pin_cpus;
            let handle = std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || {
                    if pin {
                        pin_to_cpu(i);
                    }
                    run_worker(shared, source_conns, i, https, plain);
                })
                .map_err(StartError::Worker)?;
            workers.push(handle);
        }
        Ok(Self {
            shared,
            workers,
            listener_fds,
            _balancer: balancer,
        })
    }

    /// The first worker whose thread ended (a panic: it is printed above)
    /// while the gateway was not stopping: its connections are gone, and
    /// the process should end so a supervisor restarts it.
    pub fn dead_worker(&self) -> Option<usize> {
        if self.shared.stopping.load(Ordering::Relaxed) {
            return None;
        }
        self.workers.iter().position(JoinHandle::is_finished)
    }

    /// Stops accepting, lets in-flight requests finish until `grace`, then
    /// returns (workers still busy are left to die with the process).
    pub fn stop(self, grace: Duration) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Shutting a listening socket down makes its pending io_uring accept
        // fail, which ends the accept loop without an accept in a timeout.
        for fd in &self.listener_fds {
            // SAFETY: shutdown(2) on listeners the workers still own.
            unsafe { libc::shutdown(*fd, libc::SHUT_RDWR) };
        }
        let until = Instant::now() + grace + Duration::from_millis(500);
        for w in self.workers {
            while !w.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
            if w.is_finished() {
                let _ = w.join();
            }
        }
    }
}

/// Pins the calling thread to the `i`-th CPU it may run on (so a `taskset`
/// around the gateway is respected).
fn pin_to_cpu(i: usize) {
    use nix::{sched::CpuSet, unistd::Pid};
    let Ok(allowed) = nix::sched::sched_getaffinity(Pid::from_raw(0)) else {
        return;
    };
    let cpus: Vec<usize> = (0..CpuSet::count())
        .filter(|&c| allowed.is_set(c).unwrap_or(false))
        .collect();
    let Some(&cpu) = cpus.get(i % cpus.len().max(1)) else {
        return;
    };
    let mut set = CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(Pid::from_raw(0), &set);
    }
}

/// Submission queue entries per worker ring.
const RING_ENTRIES: u32 = 1024;

/// The ring every worker makes. COOP_TASKRUN (Linux 5.19): measured 0.86x
/// HAProxy without it, 1.07x with it (../shared/io-uring-tls.md).
/// SINGLE_ISSUER (Linux 6.0), where [`probe_io_uring`] found the kernel
/// takes it: each worker's ring is only ever entered by its own thread,
/// which lets the kernel skip its submission locking (measured at wrk
/// -c256: 1.03x req/s, 0.5 us less CPU per request, in 5 rounds of 5).
/// DEFER_TASKRUN hangs tokio-uring.
fn ring_builder() -> io_uring::Builder {
    let mut ring = tokio_uring::uring_builder();
    ring.setup_coop_taskrun();
    if SINGLE_ISSUER.load(Ordering::Relaxed) {
        ring.setup_single_issuer();
    }
    ring
}

/// Whether the kernel takes IORING_SETUP_SINGLE_ISSUER (set by the probe).
static SINGLE_ISSUER: AtomicBool = AtomicBool::new(true);

/// Makes (and drops) one ring as the workers will, before anything is
/// bound: where io_uring is missing or refused (an old kernel,
/// `kernel.io_uring_disabled`, a container's seccomp profile) the gateway
/// says why and stops, instead of listening with workers that cannot run.
/// A kernel before 6.0 refuses SINGLE_ISSUER: the rings go without it.
pub fn probe_io_uring() -> Result<(), String> {
    // A small ring: the point is the kernel's answer, not the memory (a
    // worker that still cannot make its own ends the process, non-zero).
    let mut made = ring_builder().build(8);
    if matches!(&made, Err(e) if e.raw_os_error() == Some(libc::EINVAL)) {
        SINGLE_ISSUER.store(false, Ordering::Relaxed);
        made = ring_builder().build(8);
        if made.is_ok() {
            tracing::info!(
                "io_uring: this kernel refuses IORING_SETUP_SINGLE_ISSUER (Linux 6.0 or later): the rings run without it"
            );
        }
    }
    match made {
        Ok(_) => Ok(()),
        Err(e) => {
            let why = match e.raw_os_error() {
                Some(libc::EPERM) => {
                    "refused (EPERM): `sysctl kernel.io_uring_disabled` is 2, or 1 and this user is not in kernel.io_uring_group, or a seccomp profile (a container's) denies io_uring_setup: allow it"
                }
                Some(libc::ENOSYS) => {
                    "not available (ENOSYS): the kernel lacks io_uring (Linux 5.19 or later is needed) or a seccomp profile hides it"
                }
                Some(libc::EINVAL) => {
                    "refused the ring's flags (EINVAL): IORING_SETUP_COOP_TASKRUN needs Linux 5.19 or later"
                }
                Some(libc::ENOMEM) => {
                    "out of memory for the ring (ENOMEM): raise the memory limit (memlock on kernels before 5.12)"
                }
                _ => "refused",
            };
            Err(format!(
                "io_uring {why} ({e}); the workers need it, so the gateway does not start"
            ))
        }
    }
}

fn run_worker(
    shared: Arc<Shared>,
    source_conns: Arc<SourceConns>,
    index: usize,
    https: StdListener,
    plain: Option<StdListener>,
) {
    let ring = ring_builder();
    tokio_uring::builder()
        .entries(RING_ENTRIES)
        .uring_builder(&ring)
        .start(async move {
            let worker = Rc::new(Worker::new(shared.clone(), index));
            if let Some(plain) = plain {
                let w = worker.clone();
                tokio_uring::spawn(redirect::accept_loop(w, TcpListener::from_std(plain)));
            }
            // Access-log lines wait at most 100 ms for a full buffer;
            // metrics are published every 500 ms.
            let w = worker.clone();
            tokio_uring::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                for n in 0u64.. {
                    tick.tick().await;
                    w.flush_log();
                    if n % 5 == 0 {
                        w.publish_metrics();
                    }
                    if n % 10 == 0 {
                        w.ship_traffic();
                    }
                }
            });
            accept_loop(worker.clone(), &source_conns, TcpListener::from_std(https)).await;
            // Stopping: wake idle keep-alive connections so they close, then
            // give in-flight requests until the grace deadline (as reloaded last).
            let grace =
                Duration::from_millis(shared.published.current().cfg.limits.shutdown_grace_ms);
            let until = Instant::now() + grace;
            loop {
                for fd in worker.idle.borrow().iter() {
                    crate::tls::shutdown_fd(*fd);
                }
                if worker.active.get() == 0 || Instant::now() >= until {
                    worker.flush_log();
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
}

async fn accept_loop(w: Rc<Worker>, source_conns: &Arc<SourceConns>, listener: TcpListener) {
    let mut last_warning: Option<Instant> = None;
    let mut failures = 0u64;
    let mut last_refusal: Option<Instant> = None;
    let mut refusals = 0u64;
    let mut last_over_cap: Option<Instant> = None;
    let mut over_cap = 0u64;
    loop {
        let accepted = listener.accept().await;
        if w.shared.stopping.load(Ordering::Relaxed) {
            return;
        }
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning, and say
                // so once a second rather than 50 times.
                failures += 1;
                if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    tracing::warn!("accept: {e} ({failures} failed accepts)");
                    last_warning = Some(Instant::now());
                    failures = 0;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        if w.full(peer) {
            drop(stream);
            continue;
        }
        if let Some(policy) = &w.shared.source_policy {
            let refused = match policy.lock() {
                Ok(mut p) => p.admit_connection(peer.ip(), Monotonic.now_ns()).err(),
                Err(_) => None,
            };
            if let Some(r) = refused {
                // Say which limit refused, at most once a second.
                refusals += 1;
                if last_refusal.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    let cfg = &w.shared.published.current().cfg;
                    tracing::warn!(
                        "connection from {} refused at accept by {} ({refusals} refused since the last line)",
                        peer.ip(),
                        r.describe(cfg)
                    );
                    last_refusal = Some(Instant::now());
                    refusals = 0;
                }
                let _ = stream.shutdown(std::net::Shutdown::Both);
                continue;
            }
        }
        let snap = w.shared.published.current();
        let open = match source_conns.admit(peer.ip(), &snap.cfg, &snap.trusted_proxies) {
            Ok(open) => open,
            Err(over) => {
                over_cap += 1;
                if last_over_cap.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    tracing::warn!(
                        "connection from {} refused at accept: it holds {} open connections (limits.max_connections_per_source; {over_cap} refused since the last line)",
                        peer.ip(),
                        over.cap
                    );
                    last_over_cap = Some(Instant::now());
                    over_cap = 0;
                }
                w.tally.borrow_mut().per_source_refusals += 1;
                let _ = stream.shutdown(std::net::Shutdown::Both);
                continue;
            }
        };
        w.spawn_connection(|w| async move {
            let _open = open;
            connection::serve(w, stream, peer).await;
        });
    }
}
