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
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, Socket, Type};
use tokio_uring::net::{TcpListener, TcpStream};

use crate::{
    clock::{Clock, Monotonic},
    config::Config,
    filters::ResponseFilters,
    pipeline::{self, Worker},
    policy::{CidrSet, SourcePolicy},
    route::RouteTable,
};

/// Server-wide state, immutable once built (but for the stop flag).
pub struct Shared {
    /// The configuration.
    pub cfg: Config,
    /// Compiled routes.
    pub routes: RouteTable,
    /// TLS configuration (certificates, resumption).
    pub tls: Arc<rustls::ServerConfig>,
    /// Peers whose forwarding headers are kept.
    pub trusted_proxies: CidrSet,
    /// Headers added to every response.
    pub filters: ResponseFilters,
    /// The source policy when XDP does not enforce it.
    pub source_policy: Option<Arc<Mutex<SourcePolicy>>>,
    /// Whether each request gets an access-log line.
    pub access_log: bool,
    /// Set once on SIGTERM/SIGINT.
    pub stopping: AtomicBool,
}

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
        let cfg = &shared.cfg;
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
        for (i, (https, plain)) in sockets.into_iter().enumerate() {
            let shared = shared.clone();
            let pin = cfg.runtime.pin_cpus;
            let handle = std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || {
                    if pin {
                        pin_to_cpu(i);
                    }
                    run_worker(shared, i, https, plain);
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

fn run_worker(shared: Arc<Shared>, index: usize, https: StdListener, plain: Option<StdListener>) {
    // COOP_TASKRUN: measured 0.86x HAProxy without it, 1.07x with it
    // (../shared/io-uring-tls.md). DEFER_TASKRUN hangs tokio-uring.
    let mut ring = tokio_uring::uring_builder();
    ring.setup_coop_taskrun();
    tokio_uring::builder()
        .entries(1024)
        .uring_builder(&ring)
        .start(async move {
            let worker = Rc::new(Worker::new(shared.clone(), index));
            let grace = Duration::from_millis(shared.cfg.limits.shutdown_grace_ms);
            if let Some(plain) = plain {
                let w = worker.clone();
                tokio_uring::spawn(redirect_loop(w, TcpListener::from_std(plain)));
            }
            accept_loop(worker.clone(), TcpListener::from_std(https)).await;
            // Stopping: wake idle keep-alive connections so they close, then
            // give in-flight requests until the grace deadline.
            let until = Instant::now() + grace;
            loop {
                for fd in worker.idle.borrow().iter() {
                    crate::tls::shutdown_fd(*fd);
                }
                if worker.active.get() == 0 || Instant::now() >= until {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
}

async fn accept_loop(w: Rc<Worker>, listener: TcpListener) {
    let max = w.shared.cfg.runtime.max_connections_per_worker;
    let mut last_warning: Option<Instant> = None;
    let mut failures = 0u64;
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
        if w.active.get() >= max {
            tracing::debug!("{peer}: worker at max_connections_per_worker ({max}), closing");
            drop(stream);
            continue;
        }
        if let Some(policy) = &w.shared.source_policy {
            let refused = match policy.lock() {
                Ok(mut p) => p.admit_connection(peer.ip(), Monotonic.now_ns()).err(),
                Err(_) => None,
            };
            if let Some(r) = refused {
                tracing::debug!("{peer}: refused in userspace: {}", r.code());
                let _ = stream.shutdown(std::net::Shutdown::Both);
                continue;
            }
        }
        let w2 = w.clone();
        w.active.set(w.active.get() + 1);
        tokio_uring::spawn(async move {
            pipeline::serve(w2.clone(), stream, peer).await;
            w2.active.set(w2.active.get() - 1);
        });
    }
}

async fn redirect_loop(w: Rc<Worker>, listener: TcpListener) {
    let max = w.shared.cfg.runtime.max_connections_per_worker;
    loop {
        let accepted = listener.accept().await;
        if w.shared.stopping.load(Ordering::Relaxed) {
            return;
        }
        let Ok((stream, peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        // Redirects share the worker's connection cap and its shutdown
        // accounting with HTTPS connections.
        if w.active.get() >= max {
            tracing::debug!("{peer}: worker at max_connections_per_worker ({max}), closing");
            drop(stream);
            continue;
        }
        let w2 = w.clone();
        w.active.set(w.active.get() + 1);
        tokio_uring::spawn(async move {
            redirect(&w2, stream).await;
            w2.active.set(w2.active.get() - 1);
        });
    }
}

/// Answers one plain-HTTP request with 308 to the same URL over HTTPS.
async fn redirect(w: &Worker, stream: TcpStream) {
    let cfg = &w.shared.cfg;
    let limits = cfg.limits;
    let fd = stream.as_raw_fd();
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let deadline = Instant::now() + Duration::from_millis(limits.header_timeout_ms);
    loop {
        if crate::http::head_end(&buf).is_some() || buf.len() > limits.max_header_bytes {
            break;
        }
        use tokio_uring::buf::BoundedBuf as _;
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        let len = buf.len();
        let left = deadline.saturating_duration_since(Instant::now());
        // Until its first byte the connection is idle: stopping may cut it.
        let idle = buf.is_empty();
        if idle {
            if w.stopping() {
                return;
            }
            w.idle.borrow_mut().insert(fd);
        }
        let read =
            crate::tls::deadline(fd, left, stream.read(std::mem::take(&mut buf).slice(len..)))
                .await;
        if idle {
            w.idle.borrow_mut().remove(&fd);
        }
        let Some((res, slice)) = read else { return };
        buf = slice.into_inner();
        match res {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
    let mut hdrs = [httparse::EMPTY_HEADER; pipeline::MAX_HEADERS];
    let head_limits = crate::http::request::HeadLimits {
        max_request_line: limits.max_request_line_bytes,
        max_head: limits.max_header_bytes,
    };
    let max = limits.max_headers.min(pipeline::MAX_HEADERS);
    let response = match crate::http::request::parse(&buf, &mut hdrs[..max], &head_limits) {
        Ok(Some(head)) => {
            let host = if head.host.is_empty() {
                // An HTTP/1.0 request without Host: the listen address,
                // bracketed if IPv6 (RFC 3986 §3.2.2).
                match cfg.https.ip() {
                    std::net::IpAddr::V4(ip) => ip.to_string(),
                    std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                }
            } else {
                crate::route::host_without_port(head.host).to_owned()
            };
            let port = cfg.https.port();
            let authority = if port == 443 {
                host
            } else {
                format!("{host}:{port}")
            };
            // `OPTIONS *` names the server, not a resource: its root.
            let target = if head.target == "*" { "/" } else { head.target };
            let location = format!("https://{authority}{target}");
            format!(
                "HTTP/1.1 308 Permanent Redirect\r\nlocation: {location}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            )
            .into_bytes()
        }
        Ok(None) | Err(_) => {
            let mut out = Vec::new();
            crate::respond::write_failure(
                &mut out,
                crate::respond::Failure::http(crate::http::HttpError::Malformed),
                true,
                b"",
            );
            out
        }
    };
    let (_, _) = stream.write_all(response).await;
    let _ = stream.shutdown(std::net::Shutdown::Both);
}
