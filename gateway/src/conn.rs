//! One client connection's state: TLS, the snapshot it judges by, the
//! buffers every request on it reuses, and reading request bodies within
//! their deadlines. The loop over its requests is `server::connection`'s;
//! the requests themselves are `pipeline`'s.

use std::{
    cell::RefCell,
    mem::swap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    buffers::{BODY_FREE, BodyHold},
    config::Limits,
    respond::{self, Abort, Failure},
    snapshot::{Published, Snapshot},
    tls::{StreamError, TlsStream, deadline},
};

/// A client connection's state, reused by every request on it.
pub struct Conn {
    /// The TLS stream.
    pub tls: TlsStream,
    /// The client's address (the TCP peer).
    pub peer: SocketAddr,
    /// The snapshot this connection judges requests by, and its generation.
    snap: Arc<Snapshot>,
    generation: u64,
    /// Plaintext from the client; `inbuf[start..]` is not yet consumed.
    pub inbuf: Vec<u8>,
    start: usize,
    /// Scratch: the upstream request head.
    pub up_head: Vec<u8>,
    /// Scratch: the client response head.
    pub out: Vec<u8>,
    /// Scratch: re-encoded chunked bytes.
    pub chunks: Vec<u8>,
    /// Scratch: the normalized path.
    pub path: String,
    /// Copies of method and target for the log line.
    pub method: String,
    /// See `method`.
    pub target: String,
    /// The current request body's deadline.
    pub body: BodyClock,
    /// Scratch: a verified token's subject.
    pub subject: String,
    /// Scratch: a bearer token waiting for introspection.
    pub token: String,
    /// Scratch: the path routes match on (without `;` parameters).
    pub route_path: String,
    /// The rate-limit header lines of the current request (empty: none).
    pub limit_lines: Vec<u8>,
    /// The CORS header lines of the current request (empty: none).
    pub cors_lines: Vec<u8>,
    /// More members for the next failure's JSON body (a validation
    /// error's field and rule); sent once, then cleared.
    pub problem: String,
    /// The current request's id (sent upstream as `x-request-id`).
    pub request_id: String,
    /// The peer is a trusted proxy (as of the snapshot): its own address
    /// is never counted, escalated or sentenced, and its request ids are kept.
    pub trusted: bool,
    /// Idle: the scratch buffers above are back in the worker's pool.
    parked: bool,
    /// What `inbuf` holds of the worker's body memory.
    body_hold: BodyHold,
}

/// The per-request scratch buffers of a [`Conn`], kept in the worker's pool
/// while the connection is idle, so an idle keep-alive connection holds
/// none of them.
#[derive(Default)]
struct Scratch {
    inbuf: Vec<u8>,
    up_head: Vec<u8>,
    out: Vec<u8>,
    chunks: Vec<u8>,
    limit_lines: Vec<u8>,
    cors_lines: Vec<u8>,
    path: String,
    method: String,
    target: String,
    subject: String,
    token: String,
    route_path: String,
    problem: String,
    request_id: String,
}

impl Scratch {
    fn fresh() -> Self {
        Self {
            inbuf: Vec::with_capacity(4096),
            up_head: Vec::with_capacity(1024),
            out: Vec::with_capacity(1024),
            path: String::with_capacity(256),
            request_id: String::with_capacity(32),
            ..Self::default()
        }
    }

    /// Empties it for the pool; a buffer a big request grew is cut back,
    /// so the pool holds about 7 KiB a set whatever came before.
    fn clear(&mut self) {
        for v in [
            &mut self.inbuf,
            &mut self.up_head,
            &mut self.out,
            &mut self.chunks,
            &mut self.limit_lines,
            &mut self.cors_lines,
        ] {
            v.clear();
            if v.capacity() > KEPT_CAPACITY {
                v.shrink_to(4096);
            }
        }
        for s in [
            &mut self.path,
            &mut self.method,
            &mut self.target,
            &mut self.subject,
            &mut self.token,
            &mut self.route_path,
            &mut self.problem,
            &mut self.request_id,
        ] {
            s.clear();
            if s.capacity() > KEPT_CAPACITY {
                s.shrink_to(256);
            }
        }
    }
}

/// Scratch sets kept per worker at most.
const KEEP_SCRATCH: usize = 256;

/// Free room in the read buffer before a body read: what one read's
/// plaintext usually takes (8 KiB read, and a record begun before it). A
/// read that takes more grows the buffer, and the growth is counted
/// before the next one.
const BODY_READ_ROOM: usize = 16 * 1024;
/// The least a body buffer grows to: small bodies in one step.
const BODY_FIRST_ROOM: usize = 64 * 1024;

/// A pooled scratch buffer larger than this is cut back.
const KEPT_CAPACITY: usize = 16 * 1024;

thread_local! {
    static SCRATCH: RefCell<Vec<Scratch>> = const { RefCell::new(Vec::new()) };
}

pub(crate) fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

impl Conn {
    /// The snapshot requests on this connection are judged by.
    pub fn snap(&self) -> &Snapshot {
        &self.snap
    }

    /// A connection's state around an accepted, handshaken TLS stream.
    pub fn new(tls: TlsStream, peer: SocketAddr, published: &Published) -> Self {
        let (generation, snap) = published.load();
        let body = BodyClock::start(&snap.cfg.limits, 0);
        let trusted = snap.is_trusted_proxy(peer.ip());
        Self {
            tls,
            peer,
            snap,
            generation,
            // Parked: the first request's bytes bring the buffers.
            inbuf: Vec::new(),
            start: 0,
            up_head: Vec::new(),
            out: Vec::new(),
            chunks: Vec::new(),
            path: String::new(),
            method: String::new(),
            target: String::new(),
            body,
            subject: String::new(),
            token: String::new(),
            route_path: String::new(),
            limit_lines: Vec::new(),
            cors_lines: Vec::new(),
            problem: String::new(),
            request_id: String::new(),
            trusted,
            parked: true,
            body_hold: BodyHold::default(),
        }
    }

    fn swap_scratch(&mut self, s: &mut Scratch) {
        swap(&mut self.inbuf, &mut s.inbuf);
        swap(&mut self.up_head, &mut s.up_head);
        swap(&mut self.out, &mut s.out);
        swap(&mut self.chunks, &mut s.chunks);
        swap(&mut self.limit_lines, &mut s.limit_lines);
        swap(&mut self.cors_lines, &mut s.cors_lines);
        swap(&mut self.path, &mut s.path);
        swap(&mut self.method, &mut s.method);
        swap(&mut self.target, &mut s.target);
        swap(&mut self.subject, &mut s.subject);
        swap(&mut self.token, &mut s.token);
        swap(&mut self.route_path, &mut s.route_path);
        swap(&mut self.problem, &mut s.problem);
        swap(&mut self.request_id, &mut s.request_id);
    }

    /// Between requests, with nothing pending: the scratch buffers go back
    /// to the worker's pool until the next request's first bytes arrive.
    pub fn park(&mut self) {
        if self.parked || !self.pending().is_empty() {
            return;
        }
        self.start = 0;
        let mut s = Scratch::default();
        self.swap_scratch(&mut s);
        s.clear();
        self.body_hold.fit(0, usize::MAX);
        self.parked = true;
        SCRATCH.with_borrow_mut(|pool| {
            if pool.len() < KEEP_SCRATCH {
                pool.push(s);
            }
        });
    }

    /// Takes the scratch buffers back from the worker's pool (at once when
    /// not parked).
    pub(crate) fn unpark(&mut self) {
        if !self.parked {
            return;
        }
        let mut s = SCRATCH
            .with_borrow_mut(Vec::pop)
            .unwrap_or_else(Scratch::fresh);
        self.swap_scratch(&mut s);
        self.parked = false;
    }

    /// The connection is closing: unread bytes are dropped and the scratch
    /// buffers go back to the pool.
    pub fn release(&mut self) {
        self.start = self.inbuf.len();
        self.park();
    }

    /// The snapshot, held (for use across an `.await` that needs `&mut self`).
    pub fn snap_arc(&self) -> Arc<Snapshot> {
        self.snap.clone()
    }

    /// Takes up a newer snapshot between requests (one atomic load when
    /// nothing changed).
    pub fn refresh(&mut self, published: &Published) {
        if published.generation() != self.generation {
            (self.generation, self.snap) = published.load();
            self.trusted = self.snap.is_trusted_proxy(self.peer.ip());
        }
    }

    /// Unconsumed plaintext.
    pub fn pending(&self) -> &[u8] {
        &self.inbuf[self.start..]
    }

    /// Marks `n` pending bytes consumed.
    pub fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.inbuf.len() {
            self.inbuf.clear();
            // A body read whole is not kept for the connection's life.
            if self.inbuf.capacity() > BODY_FREE {
                self.inbuf.shrink_to(4096);
                self.body_hold.fit(self.inbuf.capacity(), usize::MAX);
            }
            self.start = 0;
        }
    }

    /// Makes room in the read buffer for the body bytes to come, growing
    /// with what has arrived (doubling, at least 64 KiB, never past
    /// `total` when the length is known): a client that declares a large
    /// body and trickles it books only what it sent. The room is taken from
    /// the worker's body memory first: 503 `gateway.body_memory` when it
    /// has none left, before a byte more is read.
    pub fn room_for_body(&mut self, total: Option<usize>) -> Result<(), Failure> {
        if self.start > 0 {
            self.inbuf.drain(..self.start);
            self.start = 0;
        }
        // What the last read grew the buffer to counts first.
        self.body_hold.fit(self.inbuf.capacity(), usize::MAX);
        let (len, cap) = (self.inbuf.len(), self.inbuf.capacity());
        if cap - len >= BODY_READ_ROOM {
            return Ok(());
        }
        let grown = (2 * len).max(BODY_FIRST_ROOM);
        let target = match total {
            Some(t) => grown.min(t.max(len)) + BODY_READ_ROOM,
            None => grown.max(len + BODY_READ_ROOM),
        };
        let budget = self.snap.cfg.limits.body_memory_per_worker;
        if !self.body_hold.fit(target, budget) {
            return Err(respond::BODY_MEMORY);
        }
        self.inbuf.reserve_exact(target - len);
        // What the allocator gave, which may be a little more.
        self.body_hold.fit(self.inbuf.capacity(), usize::MAX);
        Ok(())
    }

    /// Replaces `range` of the pending bytes with `with` (no longer than
    /// it): a chunked body decoded in place.
    pub fn splice_pending(&mut self, range: std::ops::Range<usize>, with: &[u8]) {
        let at = self.start + range.start;
        self.inbuf[at..at + with.len()].copy_from_slice(with);
        self.inbuf.drain(at + with.len()..self.start + range.end);
    }

    /// After a request: a read buffer grown for its body goes back to its
    /// usual size (with whatever was pipelined after it).
    pub fn settle_body(&mut self) {
        if self.inbuf.capacity() > BODY_FREE {
            if self.start > 0 {
                self.inbuf.drain(..self.start);
                self.start = 0;
            }
            self.inbuf.shrink_to(self.inbuf.len().max(4096));
            self.body_hold.fit(self.inbuf.capacity(), usize::MAX);
        }
    }

    /// Lends the read buffer to an io_uring write: the buffer and where its
    /// unconsumed bytes start. Give it back with [`Conn::put_inbuf`].
    pub fn take_inbuf(&mut self) -> (Vec<u8>, usize) {
        let start = std::mem::take(&mut self.start);
        (std::mem::take(&mut self.inbuf), start)
    }

    /// Returns the buffer lent by [`Conn::take_inbuf`].
    pub fn put_inbuf(&mut self, buf: Vec<u8>, start: usize) {
        self.inbuf = buf;
        self.start = start;
    }

    /// Parked: waits up to `limit` for the client's next bytes holding only
    /// the idle wait's read buffer, then takes the scratch buffers back. `None`
    /// when the deadline passed, `Some(Ok(false))` at EOF.
    pub async fn await_bytes(&mut self, limit: Duration) -> Option<Result<bool, StreamError>> {
        let fd = self.tls.fd();
        let r = deadline(fd, limit, self.tls.fill_idle()).await;
        if matches!(r, Some(Ok(true))) {
            self.unpark();
        }
        r
    }

    /// Reads more plaintext (appending); `None` when the deadline passed.
    pub async fn read_within(&mut self, limit: Duration) -> Option<Result<usize, StreamError>> {
        self.unpark();
        let fd = self.tls.fd();
        // Drop consumed bytes before growing: with pipelined requests the
        // buffer may never be fully consumed.
        if self.start > 0 {
            self.inbuf.drain(..self.start);
            self.start = 0;
        }
        deadline(fd, limit, self.tls.read_plain(&mut self.inbuf)).await
    }
}

/// What the head stages borrow from a connection at once.
pub struct HeadParts<'c> {
    /// The snapshot to judge by.
    pub snap: &'c Snapshot,
    /// The unconsumed plaintext (the head is at its start).
    pub pending: &'c [u8],
    /// Scratch for the normalized path.
    pub path: &'c mut String,
    /// Scratch for the upstream head.
    pub up_head: &'c mut Vec<u8>,
    /// The method, for the log.
    pub method: &'c mut String,
    /// The target, for the log.
    pub target: &'c mut String,
    /// Scratch for a token's subject.
    pub subject: &'c mut String,
    /// Scratch for a token to introspect.
    pub token: &'c mut String,
    /// Scratch for the path routes match on.
    pub route_path: &'c mut String,
    /// Rate-limit header lines for the response.
    pub limit_lines: &'c mut Vec<u8>,
    /// CORS header lines for the response.
    pub cors_lines: &'c mut Vec<u8>,
    /// Members for a validation failure's body.
    pub problem: &'c mut String,
    /// The request's id.
    pub request_id: &'c mut String,
    /// The peer is a trusted proxy.
    pub trusted: bool,
    /// The client.
    pub peer: SocketAddr,
}

impl Conn {
    /// Splits the connection into what the head stages need.
    pub fn head_parts(&mut self) -> HeadParts<'_> {
        HeadParts {
            snap: &self.snap,
            pending: &self.inbuf[self.start..],
            path: &mut self.path,
            up_head: &mut self.up_head,
            method: &mut self.method,
            target: &mut self.target,
            subject: &mut self.subject,
            token: &mut self.token,
            route_path: &mut self.route_path,
            limit_lines: &mut self.limit_lines,
            cors_lines: &mut self.cors_lines,
            problem: &mut self.problem,
            request_id: &mut self.request_id,
            trusted: self.trusted,
            peer: self.peer,
        }
    }
}

/// A request body's deadline: `limits.body_timeout_ms` from the end of the
/// head, plus one second for every `limits.body_min_rate` bytes received
/// (Apache's `mod_reqtimeout` MinRate). The gap timeout alone lets one byte
/// every few seconds hold a connection for as long as Content-Length allows.
#[derive(Clone, Copy)]
pub struct BodyClock {
    started: Instant,
    /// Body bytes read so far.
    pub received: u64,
    timeout: Duration,
    min_rate: u64,
    /// `limits.body_total_timeout_ms` (zero: none).
    total: Duration,
}

impl BodyClock {
    /// Starts the clock with `already` body bytes buffered.
    pub fn start(limits: &Limits, already: usize) -> Self {
        Self {
            started: Instant::now(),
            received: already as u64,
            timeout: ms(limits.body_timeout_ms),
            min_rate: limits.body_min_rate,
            total: ms(limits.body_total_timeout_ms),
        }
    }

    /// When the body must have arrived by: at the rate so far, and at the
    /// latest `body_total_timeout_ms` after the head; `None` when neither
    /// is set.
    fn deadline(&self) -> Option<Instant> {
        let by_rate = (self.min_rate > 0).then(|| {
            let earned = Duration::from_millis(self.received.saturating_mul(1000) / self.min_rate);
            self.started + self.timeout + earned
        });
        let by_total = (!self.total.is_zero()).then(|| self.started + self.total);
        match (by_rate, by_total) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether the deadline that passed was the total one.
    fn total_passed(&self, now: Instant) -> bool {
        !self.total.is_zero() && self.started + self.total <= now
    }
}

/// Reads more of a request body within the gap timeout and the body's
/// deadline (see [`BodyClock`]).
pub async fn read_body(c: &mut Conn, addr: Option<SocketAddr>) -> Result<(), Abort> {
    let gap = ms(c.snap.cfg.limits.body_timeout_ms);
    let passed = |c: &Conn| {
        let now = Instant::now();
        if c.body.total_passed(now) {
            Failure::BODY_TIME
        } else {
            Failure::BODY_RATE
        }
    };
    let limit = match c.body.deadline() {
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Abort::Respond(passed(c), addr));
            }
            gap.min(left)
        }
        None => gap,
    };
    match c.read_within(limit).await {
        None => {
            let too_slow = c.body.deadline().is_some_and(|d| d <= Instant::now());
            let f = if too_slow {
                passed(c)
            } else {
                Failure::BODY_TIMEOUT
            };
            Err(Abort::Respond(f, addr))
        }
        Some(Ok(0)) | Some(Err(_)) => Err(Abort::Close(Failure::CLIENT_GONE, addr)),
        Some(Ok(n)) => {
            c.body.received += n as u64;
            Ok(())
        }
    }
}
