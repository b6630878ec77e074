//! One worker thread's state: its pools, its connections, and the
//! server-wide state it shares with the other workers. Never shared across
//! threads itself; `RefCell` borrows never live across an `.await`.

use std::{
    cell::{Cell, RefCell},
    collections::HashSet,
    os::fd::RawFd,
    rc::Rc,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use crate::{
    control::Events,
    observe::{
        access_log::{AccessLog, Lines},
        anomaly::Traffic,
        metrics::{Board, Tally},
    },
    proxy::Upstreams,
    snapshot::Published,
    stages::{
        auth::{
            introspect::{AnswerCache, Introspector},
            jwt::TokenCache,
        },
        rate_limit::{Leases, Limiter},
        validation,
    },
    xdp::policy::SourcePolicy,
};

/// Server-wide state shared by all workers.
pub struct Shared {
    /// The configuration snapshot in force.
    pub published: Arc<Published>,
    /// The source policy when XDP does not enforce it.
    pub source_policy: Option<Arc<Mutex<SourcePolicy>>>,
    /// Set once on SIGTERM/SIGINT.
    pub stopping: Arc<AtomicBool>,
    /// Events for the control side (auth failures).
    pub events: Events,
    /// The pool that asks introspection endpoints, if any is configured.
    pub introspector: Option<Introspector>,
    /// Rate-limit buckets and the cluster link.
    pub limits: Arc<Limiter>,
    /// The access log's writer, when it is on.
    pub access_log: Option<AccessLog>,
    /// The workers' published metrics.
    pub metrics: Board,
    /// Each upstream's health and circuit-breaker gauges.
    pub health: Arc<crate::proxy::health::Registry>,
    /// Verdicts enforced request by request (placed by the control side).
    pub request_verdicts: Arc<crate::control::verdicts::RequestVerdicts>,
    /// Open WebSocket tunnels, against their caps, and their figures.
    pub tunnels: Arc<crate::proxy::tunnel::Tunnels>,
}

/// One worker's state.
pub struct Worker {
    /// Server-wide state.
    pub shared: Arc<Shared>,
    /// This worker's index (in logs).
    pub index: usize,
    /// Its pools, one per upstream.
    pub upstreams: Upstreams,
    /// Bearer tokens it verified lately.
    pub tokens: RefCell<TokenCache>,
    /// Introspection answers it got lately.
    pub answers: RefCell<AnswerCache>,
    /// Rate-limit requests it took ahead for its hottest keys.
    pub leases: RefCell<Leases>,
    /// Parse buffers for the bodies it validates.
    pub json: RefCell<validation::Scratch>,
    /// Access-log lines not yet handed to the writer.
    pub lines: RefCell<Lines>,
    /// Metrics counted since the last publish.
    pub tally: RefCell<Tally>,
    /// Per-source and per-consumer counts for anomaly detection.
    pub traffic: RefCell<Traffic>,
    /// The next request id's sequence number (after this worker's seed).
    pub request_seq: Cell<u64>,
    /// This worker's random request id prefix.
    pub request_seed: u64,
    /// Open client connections (HTTPS and redirects).
    pub active: Cell<usize>,
    /// Connections waiting for their next request (shut down on stop).
    pub idle: RefCell<HashSet<RawFd>>,
    /// `runtime.max_connections_per_worker` (a listener setting: fixed at start).
    max_connections: usize,
    /// The snapshot generation the tick last looked at.
    seen_generation: Cell<u64>,
    /// Its copy of the request verdicts.
    pub verdicts: RefCell<crate::control::verdicts::View>,
}

/// 64 random bits (ring's system random), distinct per worker and start;
/// should the system random fail, the clock and the worker tell them apart.
fn random_seed(index: usize) -> u64 {
    let mut b = [0u8; 8];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).is_ok() {
        return u64::from_le_bytes(b);
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (std::process::id() as u64).rotate_left(32) ^ (index as u64).rotate_left(48)
}

impl Worker {
    /// A worker with empty pools for the current snapshot's upstreams.
    pub fn new(shared: Arc<Shared>, index: usize) -> Self {
        let snap = shared.published.current();
        Self {
            max_connections: snap.cfg.runtime.max_connections_per_worker,
            upstreams: Upstreams::new(&snap, shared.health.clone()),
            tokens: RefCell::new(TokenCache::default()),
            answers: RefCell::new(AnswerCache::default()),
            leases: RefCell::new(Leases::default()),
            json: RefCell::new(validation::Scratch::new(snap.cfg.limits.json_max_depth)),
            lines: RefCell::new(Lines::default()),
            tally: RefCell::new(Tally::default()),
            traffic: RefCell::new(Traffic::default()),
            request_seq: Cell::new(0),
            request_seed: random_seed(index),
            shared,
            index,
            active: Cell::new(0),
            idle: RefCell::new(HashSet::new()),
            seen_generation: Cell::new(0),
            verdicts: RefCell::default(),
        }
    }

    /// Whether a new connection from `peer` would exceed the worker's cap
    /// (HTTPS and redirect connections count alike); says so at debug level.
    pub fn full(&self, peer: std::net::SocketAddr) -> bool {
        let max = self.max_connections;
        let full = self.active.get() >= max;
        if full {
            tracing::debug!("{peer}: worker at max_connections_per_worker ({max}), closing");
        }
        full
    }

    /// Runs a connection's task, counted in `active` (the cap, and what
    /// shutdown waits for) until it ends.
    pub fn spawn_connection<F>(self: &Rc<Self>, task: impl FnOnce(Rc<Self>) -> F)
    where
        F: std::future::Future<Output = ()> + 'static,
    {
        self.active.set(self.active.get() + 1);
        // Counted down when the task's future is dropped: also when a
        // panic unwinds it, so no slot is lost for good.
        let slot = Slot(self.clone());
        // Boxed: awaited inline, the connection's future would be stored
        // twice in the task (once captured, once awaited).
        let fut = Box::pin(task(self.clone()));
        tokio_uring::spawn(async move {
            let _slot = slot;
            fut.await;
        });
    }

    /// Counts `fd` among the idle connections, which stopping may cut
    /// (shut down) instead of waiting for, until the mark is dropped. A
    /// guard rather than a wrapping future: that would hold the wrapped
    /// future twice in an idle connection's task.
    pub fn mark_idle(&self, fd: RawFd) -> IdleMark<'_> {
        self.idle.borrow_mut().insert(fd);
        IdleMark { w: self, fd }
    }

    /// Writes the next request id (32 hex digits: this worker's random
    /// seed and a 64-bit sequence) into `out`.
    pub fn next_request_id(&self, out: &mut String) {
        use std::fmt::Write as _;
        let n = self.request_seq.get();
        self.request_seq.set(n.wrapping_add(1));
        out.clear();
        let _ = write!(out, "{:016x}{n:016x}", self.request_seed);
    }

    /// Hands buffered access-log lines to the writer (every 100 ms, and on stop).
    pub fn flush_log(&self) {
        if let Some(log) = &self.shared.access_log {
            self.lines.borrow_mut().flush(log);
        }
    }

    /// Adds this worker's metrics to its slot of the board (after taking
    /// up a reloaded upstream list, so figures are labelled by it).
    pub fn publish_metrics(&self) {
        let generation = self.shared.published.generation();
        if generation != self.seen_generation.get() {
            self.seen_generation.set(generation);
            self.upstreams.follow(&self.shared.published.current());
        }
        self.upstreams.reap(std::time::Instant::now());
        let open = self.active.get() as u64;
        let mut tally = self.tally.borrow_mut();
        self.upstreams.figures(&mut tally.upstreams);
        let body = crate::buffers::body_held() as u64;
        self.shared
            .metrics
            .publish(self.index, &mut tally, open, body);
    }

    /// Hands the last second's per-source counts to the control thread.
    pub fn ship_traffic(&self) {
        if let Some(batch) = self.traffic.borrow_mut().take() {
            self.shared
                .events
                .report(crate::control::Event::Traffic(Box::new(batch)));
        }
    }

    /// Whether SIGTERM/SIGINT came.
    pub fn stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::Relaxed)
    }
}

/// One connection's place in [`Worker::active`], given back on drop.
struct Slot(Rc<Worker>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.active.set(self.0.active.get() - 1);
    }
}

/// A connection counted idle; see [`Worker::mark_idle`].
pub struct IdleMark<'a> {
    w: &'a Worker,
    fd: RawFd,
}

impl Drop for IdleMark<'_> {
    fn drop(&mut self) {
        self.w.idle.borrow_mut().remove(&self.fd);
    }
}
