//! One client connection's state: TLS, the snapshot it judges by, the
//! buffers every request on it reuses, and reading request bodies within
//! their deadlines. The loop over its requests is `server::connection`'s;
//! the requests themselves are `pipeline`'s. An HTTP/2 stream gets a state
//! of its own, over the stream rather than the TLS connection
//! (`session::h2`, run by `server::h2`).

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
    respond::{self, Abort, Extras, Failure},
    route::Paths,
    session::h2::StreamIo,
    snapshot::{Published, Snapshot},
    stages::auth,
    tls::{StreamError, TlsStream, deadline},
};

/// What a request's bytes travel over on the client's side.
// HTTP/1.1 is the hot path: its TLS state stays inline (boxing it would
// add an indirection to every read); a stream's state lives only while
// its request is served.
#[allow(clippy::large_enum_variant)]
pub enum ClientIo {
    /// A TLS connection carrying HTTP/1.1.
    H1(TlsStream),
    /// One HTTP/2 stream: it takes the request as HTTP/1.1 bytes and hands
    /// the response over as HTTP/2 frames (`session::h2`).
    H2(StreamIo),
}

impl ClientIo {
    /// Sends plaintext: HTTP/1.1 response bytes, which an HTTP/2 stream
    /// turns into HEADERS and DATA.
    pub async fn send(&mut self, parts: &[&[u8]]) -> Result<(), StreamError> {
        match self {
            ClientIo::H1(tls) => tls.send(parts).await,
            ClientIo::H2(s) => s.send(parts).await,
        }
    }

    /// The TLS version, for the access log.
    pub fn version(&self) -> &'static str {
        match self {
            ClientIo::H1(tls) => tls.version(),
            ClientIo::H2(s) => s.tls_version(),
        }
    }

    /// The SNI name, for the access log.
    pub fn sni(&self) -> &str {
        match self {
            ClientIo::H1(tls) => tls.sni(),
            ClientIo::H2(s) => s.sni(),
        }
    }

    /// Whether the transport frames response bodies itself (HTTP/2):
    /// no chunked encoding, no `Connection` field.
    pub fn frames_bodies(&self) -> bool {
        matches!(self, ClientIo::H2(_))
    }

    /// Ends a response body that had no length (HTTP/2: END_STREAM).
    pub async fn end_body(&mut self) -> Result<(), StreamError> {
        match self {
            ClientIo::H1(_) => Ok(()),
            ClientIo::H2(s) => s.end().await,
        }
    }
}

/// A client connection's state, reused by every request on it.
pub struct Conn {
    /// What the request's bytes travel over.
    pub io: ClientIo,
    /// The client's address (the TCP peer).
    pub peer: SocketAddr,
    /// The snapshot this connection judges requests by, and its generation.
    snap: Arc<Snapshot>,
    generation: u64,
    /// Plaintext from the client; `inbuf[start..]` is not yet consumed.
    inbuf: Vec<u8>,
    start: usize,
    /// The current request's scratch, by the stage that fills it.
    pub req: Scratch,
    /// The current request body's deadline.
    pub body: BodyClock,
    /// The peer is a trusted proxy (as of the snapshot): its own address
    /// is never counted, escalated or sentenced, and its request ids are kept.
    pub trusted: bool,
    /// Idle: the read buffer and the scratch are back in the worker's pool.
    parked: bool,
    /// What `inbuf` holds of the worker's body memory.
    body_hold: BodyHold,
}

/// A request's scratch, grouped by the stage that fills it: reused by
/// every request on a connection, and kept in the worker's pool while the
/// connection is idle, so an idle keep-alive connection holds none of it.
#[derive(Default)]
pub struct Scratch {
    /// Routing's: the normalized path and the path routes match on.
    pub paths: Paths,
    /// Authentication's: a token's subject, a token to introspect.
    pub caller: auth::Scratch,
    /// What the stages add to the answer (rate-limit and CORS lines, a
    /// validation failure's members).
    pub extras: Extras,
    /// The log's: the request line as sent, and the request's id.
    pub note: Note,
    /// Bytes on their way: the upstream head, the client's response
    /// head, re-framed chunks.
    pub wire: Wire,
}

/// The access log's copy of a request, kept whatever becomes of it.
#[derive(Default)]
pub struct Note {
    /// The method as sent.
    pub method: String,
    /// The target as sent, credentials in its query redacted.
    pub target: String,
    /// The request's id (sent upstream as `x-request-id`).
    pub request_id: String,
}

/// Bytes a request writes on their way out.
#[derive(Default)]
pub struct Wire {
    /// The upstream request head.
    pub up_head: Vec<u8>,
    /// The client's response head.
    pub out: Vec<u8>,
    /// Re-encoded chunked bytes.
    pub chunks: Vec<u8>,
}

/// A connection's pooled buffers: its read buffer and its scratch.
#[derive(Default)]
struct Parked {
    inbuf: Vec<u8>,
    req: Scratch,
}

impl Parked {
    fn fresh() -> Self {
        let mut p = Self {
            inbuf: Vec::with_capacity(4096),
            req: Scratch::default(),
        };
        p.req.wire.up_head.reserve(1024);
        p.req.wire.out.reserve(1024);
        p.req.paths.normalized.reserve(256);
        p.req.note.request_id.reserve(32);
        p
    }

    /// Empties it for the pool; a buffer a big request grew is cut back,
    /// so the pool holds about 7 KiB a set whatever came before.
    fn clear(&mut self) {
        let r = &mut self.req;
        for v in [
            &mut self.inbuf,
            &mut r.wire.up_head,
            &mut r.wire.out,
            &mut r.wire.chunks,
            &mut r.extras.limit_lines,
            &mut r.extras.cors_lines,
        ] {
            v.clear();
            if v.capacity() > KEPT_CAPACITY {
                v.shrink_to(4096);
            }
        }
        for s in [
            &mut r.paths.normalized,
            &mut r.paths.routed,
            &mut r.note.method,
            &mut r.note.target,
            &mut r.note.request_id,
            &mut r.caller.subject,
            &mut r.caller.token,
            &mut r.extras.problem,
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
    static SCRATCH: RefCell<Vec<Parked>> = const { RefCell::new(Vec::new()) };
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
        Self::over(ClientIo::H1(tls), peer, published)
    }

    /// A request's state over `io`.
    pub fn over(io: ClientIo, peer: SocketAddr, published: &Published) -> Self {
        let (generation, snap) = published.load();
        let body = BodyClock::start(&snap.cfg.limits, 0);
        let trusted = snap.is_trusted_proxy(peer.ip());
        Self {
            io,
            peer,
            snap,
            generation,
            // Parked: the first request's bytes bring the buffers.
            inbuf: Vec::new(),
            start: 0,
            req: Scratch::default(),
            body,
            trusted,
            parked: true,
            body_hold: BodyHold::default(),
        }
    }

    fn swap_parked(&mut self, p: &mut Parked) {
        swap(&mut self.inbuf, &mut p.inbuf);
        swap(&mut self.req, &mut p.req);
    }

    /// Between requests, with nothing pending: the scratch buffers go back
    /// to the worker's pool until the next request's first bytes arrive.
    pub fn park(&mut self) {
        if self.parked || !self.pending().is_empty() {
            return;
        }
        self.start = 0;
        let mut s = Parked::default();
        self.swap_parked(&mut s);
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
            .unwrap_or_else(Parked::fresh);
        self.swap_parked(&mut s);
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

    /// A request's state whose head is `head` (an HTTP/2 stream's, written
    /// as HTTP/1.1 by `session::h2::stream`).
    pub fn with_head(&mut self, head: impl FnOnce(&mut Vec<u8>)) {
        self.unpark();
        self.inbuf.clear();
        self.start = 0;
        head(&mut self.inbuf);
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
        let ClientIo::H1(tls) = &mut self.io else {
            // A stream carries one request.
            return Some(Ok(false));
        };
        let fd = tls.fd();
        let r = deadline(fd, limit, tls.fill_idle()).await;
        if matches!(r, Some(Ok(true))) {
            self.unpark();
        }
        r
    }

    /// Reads more plaintext (appending); `None` when the deadline passed.
    pub async fn read_within(&mut self, limit: Duration) -> Option<Result<usize, StreamError>> {
        self.unpark();
        // Drop consumed bytes before growing: with pipelined requests the
        // buffer may never be fully consumed.
        if self.start > 0 {
            self.inbuf.drain(..self.start);
            self.start = 0;
        }
        match &mut self.io {
            ClientIo::H1(tls) => {
                let fd = tls.fd();
                deadline(fd, limit, tls.read_plain(&mut self.inbuf)).await
            }
            // A stream's read is dropped safely: the connection lives on.
            ClientIo::H2(s) => tokio::time::timeout(limit, s.read_plain(&mut self.inbuf))
                .await
                .ok(),
        }
    }
}

/// What the head stages borrow from a connection at once.
pub struct HeadParts<'c> {
    /// The snapshot to judge by.
    pub snap: &'c Snapshot,
    /// The unconsumed plaintext (the head is at its start).
    pub pending: &'c [u8],
    /// The request's scratch.
    pub req: &'c mut Scratch,
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
            req: &mut self.req,
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
