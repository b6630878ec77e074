//! The life of a request, in the order it meets the stages:
//!
//! accept (`server`) → TLS (`tls`) → parse (`http::request`) → route
//! (`route`) → [auth, limits, validation: later stages] → upstream
//! (`upstream`) → response filters (`filters`) → log (`log`).
//!
//! This module only calls the stages in order and moves bytes between the
//! client and the upstream; every failure becomes a response in `respond`.

use std::{
    cell::{Cell, RefCell},
    collections::HashSet,
    io::Write as _,
    net::SocketAddr,
    os::fd::RawFd,
    rc::Rc,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use tokio_uring::{buf::BoundedBuf as _, net::TcpStream};

use crate::{
    config::Underscores,
    http::{self, Framing, HttpError, chunked, is_hop_by_hop, lists_token, request::HeadLimits},
    log::{self, AccessRecord},
    respond::{self, Failure},
    server::Shared,
    tls::{StreamError, TlsStream, deadline, write_deadline},
    upstream::{self, ConnectError, Pool, UpstreamConn},
};

/// Most header fields any request may carry (`limits.max_headers` is capped to it).
pub const MAX_HEADERS: usize = 128;
/// Bodies up to this size travel in the same write as the request head.
const COALESCE_BODY: usize = 16 * 1024;

/// One worker's state: its pools and its connections. Never shared across
/// threads; `RefCell` borrows never live across an `.await`.
pub struct Worker {
    /// Server-wide, immutable state.
    pub shared: Arc<Shared>,
    /// This worker's index (in logs).
    pub index: usize,
    /// One pool per upstream, by index.
    pub pools: RefCell<Vec<Pool>>,
    /// Open client connections.
    pub active: Cell<usize>,
    /// Connections waiting for their next request (shut down on stop).
    pub idle: RefCell<HashSet<RawFd>>,
}

impl Worker {
    /// A worker with empty pools.
    pub fn new(shared: Arc<Shared>, index: usize) -> Self {
        let pools = shared.cfg.upstreams.iter().map(Pool::new).collect();
        Self {
            shared,
            index,
            pools: RefCell::new(pools),
            active: Cell::new(0),
            idle: RefCell::new(HashSet::new()),
        }
    }

    /// Whether SIGTERM/SIGINT came.
    pub fn stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::Relaxed)
    }
}

/// A client connection's buffers, reused by every request on it.
struct Client {
    tls: TlsStream,
    peer: SocketAddr,
    /// Plaintext from the client; `inbuf[start..]` is not yet consumed.
    inbuf: Vec<u8>,
    start: usize,
    /// Scratch: the upstream request head, the client response head.
    up_head: Vec<u8>,
    out: Vec<u8>,
    /// Scratch: re-encoded chunked bytes.
    chunks: Vec<u8>,
    /// Copies of method and target for the log line.
    method: String,
    target: String,
    /// The current request body's deadline.
    body: BodyClock,
}

/// A request body's deadline: `limits.body_timeout_ms` from the end of the
/// head, plus one second for every `limits.body_min_rate` bytes received
/// (Apache's `mod_reqtimeout` MinRate). The gap timeout alone lets one byte
/// every few seconds hold a connection for as long as Content-Length allows.
#[derive(Clone, Copy)]
struct BodyClock {
    started: Instant,
    received: u64,
    timeout: Duration,
    min_rate: u64,
}

impl BodyClock {
    fn start(limits: &crate::config::Limits, already: usize) -> Self {
        Self {
            started: Instant::now(),
            received: already as u64,
            timeout: ms(limits.body_timeout_ms),
            min_rate: limits.body_min_rate,
        }
    }

    /// When the body must have arrived by, at the rate so far; `None` when
    /// no minimum rate is set.
    fn deadline(&self) -> Option<Instant> {
        if self.min_rate == 0 {
            return None;
        }
        let earned = Duration::from_millis(self.received.saturating_mul(1000) / self.min_rate);
        Some(self.started + self.timeout + earned)
    }
}

impl Client {
    fn pending(&self) -> &[u8] {
        &self.inbuf[self.start..]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.inbuf.len() {
            self.inbuf.clear();
            self.start = 0;
        }
    }

    /// Reads more plaintext (appending); `None` when the deadline passed.
    async fn read_within(&mut self, limit: Duration) -> Option<Result<usize, StreamError>> {
        // Drop consumed bytes before growing: with pipelined requests the
        // buffer may never be fully consumed.
        if self.start > 0 {
            self.inbuf.drain(..self.start);
            self.start = 0;
        }
        let fd = self.tls.fd();
        deadline(fd, limit, self.tls.read_plain(&mut self.inbuf)).await
    }
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// Serves one accepted connection until it closes.
pub async fn serve(w: Rc<Worker>, tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let limits = w.shared.cfg.limits;
    let mut tls = match TlsStream::new(tcp, w.shared.tls.clone(), ms(limits.body_timeout_ms)) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!("{peer}: cannot start TLS: {e}");
            return;
        }
    };
    // A connection still in its handshake is not in flight: stopping may cut it.
    let fd = tls.fd();
    w.idle.borrow_mut().insert(fd);
    let handshake = tls.handshake(ms(limits.header_timeout_ms)).await;
    w.idle.borrow_mut().remove(&fd);
    if let Err(e) = handshake {
        tracing::debug!("{peer}: TLS handshake failed: {e}");
        return;
    }
    let mut c = Client {
        tls,
        peer,
        inbuf: Vec::with_capacity(4096),
        start: 0,
        up_head: Vec::with_capacity(1024),
        out: Vec::with_capacity(1024),
        chunks: Vec::new(),
        method: String::new(),
        target: String::new(),
        body: BodyClock::start(&limits, 0),
    };
    loop {
        match next_head(&w, &mut c).await {
            Head::Ready => {}
            Head::Closed => break,
            Head::TimedOut => {
                let mut out = std::mem::take(&mut c.out);
                out.clear();
                respond::write_failure(
                    &mut out,
                    Failure::HEADER_TIMEOUT,
                    true,
                    w.shared.filters.lines(),
                );
                let _ = c.tls.send(&[&out]).await;
                break;
            }
        }
        if !handle_request(&w, &mut c).await || w.stopping() {
            break;
        }
    }
    c.tls.close().await;
}

enum Head {
    Ready,
    Closed,
    TimedOut,
}

/// Reads until `inbuf` holds a complete head (or enough to refuse it).
async fn next_head(w: &Worker, c: &mut Client) -> Head {
    let limits = w.shared.cfg.limits;
    let mut header_deadline: Option<Instant> = None;
    loop {
        let buf = c.pending();
        if !buf.is_empty() {
            let line_too_long = !buf[..buf.len().min(limits.max_request_line_bytes + 1)]
                .contains(&b'\n')
                && buf.len() > limits.max_request_line_bytes;
            let bad_endings =
                http::check_line_endings(buf.strip_suffix(b"\r").unwrap_or(buf)).is_err();
            if http::head_end(buf).is_some()
                || buf.len() > limits.max_header_bytes
                || line_too_long
                || bad_endings
            {
                return Head::Ready;
            }
        }
        let limit = match header_deadline {
            // Waiting for the first byte of a request: the idle timeout.
            None if c.pending().is_empty() => {
                if w.stopping() {
                    return Head::Closed;
                }
                ms(limits.idle_timeout_ms)
            }
            None => {
                let d = Instant::now() + ms(limits.header_timeout_ms);
                header_deadline = Some(d);
                ms(limits.header_timeout_ms)
            }
            Some(d) => d.saturating_duration_since(Instant::now()),
        };
        let idle = c.pending().is_empty();
        if idle {
            w.idle.borrow_mut().insert(c.tls.fd());
        }
        let r = c.read_within(limit).await;
        if idle {
            w.idle.borrow_mut().remove(&c.tls.fd());
        }
        match r {
            None if idle => return Head::Closed,
            None => return Head::TimedOut,
            Some(Ok(0)) | Some(Err(_)) => return Head::Closed,
            Some(Ok(_)) => {
                if header_deadline.is_none() {
                    header_deadline = Some(Instant::now() + ms(limits.header_timeout_ms));
                }
            }
        }
    }
}

/// What parsing and routing decided about a request.
struct Plan {
    framing: Framing,
    keep_alive: bool,
    expect_continue: bool,
    upstream: usize,
    max_body: u64,
    head_request: bool,
    retryable: bool,
    http10: bool,
}

/// Handles the request whose head is at the start of `c.pending()`.
/// Returns whether the connection stays open.
async fn handle_request(w: &Worker, c: &mut Client) -> bool {
    let started = Instant::now();
    let shared = &*w.shared;
    let limits = shared.cfg.limits;
    let head_limits = HeadLimits {
        max_request_line: limits.max_request_line_bytes,
        max_head: limits.max_header_bytes,
    };
    let mut hdrs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let max_headers = limits.max_headers.min(MAX_HEADERS);

    // Parse and route while the head is borrowed from the read buffer.
    let (head_len, decided) = {
        let buf = &c.inbuf[c.start..];
        match http::request::parse(buf, &mut hdrs[..max_headers], &head_limits) {
            Err(e) => (0, Err((Failure::http(e), false))),
            Ok(None) => (0, Err((Failure::http(HttpError::Malformed), false))),
            Ok(Some(head)) => {
                c.method.clear();
                c.method.push_str(head.method);
                c.target.clear();
                c.target.push_str(head.target);
                let routed = shared.routes.find(head.host, head.path(), head.method);
                let underscore_refused = shared.cfg.proxy.underscores_in_headers
                    == Underscores::Reject
                    && head.headers.iter().any(|h| h.name.contains('_'));
                let decided = match routed {
                    _ if underscore_refused => Err((Failure::HEADER_NAME, head.keep_alive)),
                    Err(crate::route::Miss::NotFound) => Err((Failure::NOT_FOUND, head.keep_alive)),
                    Err(crate::route::Miss::MethodNotAllowed) => {
                        Err((Failure::METHOD, head.keep_alive))
                    }
                    Ok(route) => {
                        let too_big =
                            matches!(head.framing, Framing::Length(n) if n > route.max_body_bytes);
                        if too_big {
                            Err((Failure::BODY_TOO_LARGE, false))
                        } else {
                            write_upstream_head(&mut c.up_head, &head, c.peer, shared);
                            Ok(Plan {
                                framing: head.framing,
                                keep_alive: head.keep_alive,
                                expect_continue: head.expect_continue,
                                upstream: route.upstream,
                                max_body: route.max_body_bytes,
                                head_request: head.method == "HEAD",
                                retryable: head.is_idempotent() && !head.framing.has_body(),
                                http10: head.minor == 0,
                            })
                        }
                    }
                };
                // A refused request with a body leaves the body unread: close.
                let decided = match decided {
                    Err((f, keep)) => Err((f, keep && !head.framing.has_body())),
                    ok => ok,
                };
                (head.len, decided)
            }
        }
    };

    let plan = match decided {
        Ok(plan) => plan,
        Err((failure, keep)) => {
            if head_len > 0 {
                c.consume(head_len);
            } else {
                // Refused before it parsed: log what the request line says.
                let (method, target) = request_line_words(&c.inbuf[c.start..]);
                c.method.clear();
                c.method.push_str(method);
                c.target.clear();
                c.target.push_str(target);
            }
            let keep = keep && !w.stopping();
            send_failure(w, c, failure, keep, started).await;
            return keep;
        }
    };
    c.consume(head_len);
    c.body = BodyClock::start(&limits, c.pending().len());

    // Judge the chunked framing already buffered before anything goes
    // upstream: a bad chunk in the first bytes never reaches the backend.
    if plan.framing == Framing::Chunked {
        let mut check = chunked::Decoder::new();
        let verdict = match check.feed(c.pending(), None) {
            Err(e) => Some(Failure::http(e)),
            Ok(_) if check.body_bytes > plan.max_body => Some(Failure::BODY_TOO_LARGE),
            Ok(_) => None,
        };
        if let Some(f) = verdict {
            send_failure(w, c, f, false, started).await;
            return false;
        }
    }

    // RFC 9110 §10.1.1: ignore Expect from an HTTP/1.0 client.
    if plan.expect_continue && plan.framing.has_body() && !plan.http10 {
        // RFC 9110 §10.1.1: the gateway answers 100 itself once it will read the body.
        if c.tls
            .send(&[b"HTTP/1.1 100 Continue\r\n\r\n"])
            .await
            .is_err()
        {
            return false;
        }
    }

    let client_keep = plan.keep_alive && !w.stopping();
    let outcome = match buffer_small_body(w, c, &plan).await {
        Ok(()) => proxy(w, c, &plan, client_keep).await,
        Err(a) => Err(a),
    };
    let (status, reason, upstream_addr, bytes, keep) = match outcome {
        Ok(done) => (
            done.status,
            "-",
            Some(done.upstream),
            done.bytes,
            client_keep && done.client_reusable,
        ),
        Err(Abort::Respond(f, addr)) => {
            let keep = client_keep && !plan.framing.has_body();
            send_failure_bytes(w, c, f, keep).await;
            (f.status, f.reason, addr, 0, keep)
        }
        Err(Abort::Close(f, addr)) => (f.status, f.reason, addr, 0, false),
    };
    if shared.access_log {
        log::access(&AccessRecord {
            peer: c.peer,
            method: &c.method,
            target: &c.target,
            status,
            reason,
            upstream: upstream_addr,
            elapsed: started.elapsed(),
            bytes,
            worker: w.index,
        });
    }
    keep
}

async fn send_failure_bytes(w: &Worker, c: &mut Client, f: Failure, keep: bool) {
    let mut out = std::mem::take(&mut c.out);
    out.clear();
    respond::write_failure(&mut out, f, !keep, w.shared.filters.lines());
    let _ = c.tls.send(&[&out]).await;
    c.out = out;
}

async fn send_failure(w: &Worker, c: &mut Client, f: Failure, keep: bool, started: Instant) {
    send_failure_bytes(w, c, f, keep).await;
    if w.shared.access_log {
        log::access(&AccessRecord {
            peer: c.peer,
            method: if c.method.is_empty() { "-" } else { &c.method },
            target: if c.target.is_empty() { "-" } else { &c.target },
            status: f.status,
            reason: f.reason,
            upstream: None,
            elapsed: started.elapsed(),
            bytes: 0,
            worker: w.index,
        });
    }
}

/// Method and target of a request line that did not parse, for the log:
/// printable ASCII only, cut short, `-` when absent.
fn request_line_words(buf: &[u8]) -> (&str, &str) {
    let line = buf
        .split(|&b| b == b'\n' || b == b'\r')
        .next()
        .unwrap_or_default();
    let mut words = line.split(|&b| b == b' ').map(|w| {
        let w = &w[..w.len().min(128)];
        match std::str::from_utf8(w) {
            Ok(t) if !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()) => t,
            _ => "-",
        }
    });
    (words.next().unwrap_or("-"), words.next().unwrap_or("-"))
}

/// Fields that carry a client address or a rewritten URL. A client can
/// send any of them, and backends believe them (`X-Real-IP` for rate
/// limits, `X-Original-URL` for routing), so they pass only from a
/// trusted proxy; the gateway's own forwarding fields are written anew.
const ADDRESS_FIELDS: [&str; 12] = [
    "x-real-ip",
    "true-client-ip",
    "x-client-ip",
    "client-ip",
    "x-cluster-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-originating-ip",
    "x-remote-ip",
    "x-remote-addr",
    "x-original-forwarded-for",
    "x-forwarded",
];

/// Fields that override the URL in some frameworks (IIS, Symfony):
/// never forwarded, whoever sends them, since routing already decided.
const URL_OVERRIDE_FIELDS: [&str; 3] = ["x-original-url", "x-rewrite-url", "x-override-url"];

fn is_one_of(name: &str, list: &[&str]) -> bool {
    list.iter().any(|f| f.eq_ignore_ascii_case(name))
}

/// What happens to a forwarded field: written as is, or left out.
fn keeps_field(name: &str, trusted: bool, underscores: Underscores) -> bool {
    // CGI/WSGI backends fold `X_Forwarded_For` onto the same variable as
    // `X-Forwarded-For` (nginx drops such names for the same reason).
    if name.contains('_') && underscores != Underscores::Allow {
        return false;
    }
    if is_one_of(name, &URL_OVERRIDE_FIELDS)
        || name.eq_ignore_ascii_case("x-forwarded-proto")
        || name.eq_ignore_ascii_case("x-forwarded-host")
        || name.eq_ignore_ascii_case("x-forwarded-port")
    {
        return false;
    }
    trusted || !is_one_of(name, &ADDRESS_FIELDS)
}

/// Appends every `name` field's value, comma-joined (RFC 9110 §5.3: repeated
/// fields are one list), for a trusted proxy's forwarding chain.
fn append_all(out: &mut Vec<u8>, headers: &[httparse::Header<'_>], name: &str) -> bool {
    let mut any = false;
    for h in headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name)) {
        let v = h.value.trim_ascii();
        if v.is_empty() {
            continue;
        }
        if any {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(v);
        any = true;
    }
    any
}

/// The upstream request head: the client's fields minus hop-by-hop ones and
/// forwarding fields we do not trust, plus our own forwarding fields and
/// the framing we will send.
fn write_upstream_head(
    out: &mut Vec<u8>,
    head: &http::request::RequestHead<'_, '_>,
    peer: SocketAddr,
    shared: &Shared,
) {
    out.clear();
    let trusted = shared
        .trusted_proxies
        .contains(&crate::policy::source_addr(peer.ip()));
    let underscores = shared.cfg.proxy.underscores_in_headers;
    let has_connection = head
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("connection"));
    let _ = write!(out, "{} {} HTTP/1.1\r\n", head.method, head.target);
    for h in head.headers {
        let name = h.name;
        if is_hop_by_hop(name)
            || name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("expect")
            || name.eq_ignore_ascii_case("x-forwarded-for")
            || name.eq_ignore_ascii_case("forwarded")
            || (has_connection && named_by_connection(head.headers, name))
            || !keeps_field(name, trusted, underscores)
        {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    if head.host.is_empty() {
        // HTTP/1.0 without Host: HTTP/1.1 upstream needs one.
        let _ = write!(out, "host: {}\r\n", shared.cfg.https);
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    if trusted && append_all(out, head.headers, "x-forwarded-for") {
        out.extend_from_slice(b", ");
    }
    let _ = write!(
        out,
        "{}\r\nx-forwarded-proto: https\r\nforwarded: ",
        peer.ip()
    );
    if trusted && append_all(out, head.headers, "forwarded") {
        out.extend_from_slice(b", ");
    }
    match peer.ip() {
        std::net::IpAddr::V4(ip) => {
            let _ = write!(out, "for={ip}");
        }
        std::net::IpAddr::V6(ip) => {
            let _ = write!(out, "for=\"[{ip}]\"");
        }
    }
    out.extend_from_slice(b";proto=https");
    if !head.host.is_empty() {
        let _ = write!(out, ";host=\"{}\"", head.host);
    }
    out.extend_from_slice(b"\r\n");
    match head.framing {
        Framing::Length(n) => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::None | Framing::UntilClose => {}
    }
    out.extend_from_slice(b"\r\n");
}

/// Whether any Connection field (RFC 9110 §7.6.1) names `name` as
/// hop-by-hop. Host and the framing fields are never dropped this way: a
/// `Connection: host` must not make an HTTP/1.1 request lose its Host.
fn named_by_connection(headers: &[httparse::Header<'_>], name: &str) -> bool {
    if name.eq_ignore_ascii_case("host")
        || name.eq_ignore_ascii_case("content-length")
        || name.eq_ignore_ascii_case("transfer-encoding")
    {
        return false;
    }
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .any(|h| lists_token(h.value, name))
}

/// An upstream's timeouts and retry budget, as one request needs them.
#[derive(Clone, Copy)]
struct Timeouts {
    connect_ms: u64,
    response_ms: u64,
    /// Further attempts after the first (`upstreams[].retries`).
    retries: u32,
}

/// A finished exchange.
struct Done {
    status: u16,
    upstream: SocketAddr,
    bytes: u64,
    client_reusable: bool,
}

/// Why an exchange ended early.
enum Abort {
    /// Nothing was sent to the client yet: answer with this failure.
    Respond(Failure, Option<SocketAddr>),
    /// The client already got part of a response (or vanished): close.
    Close(Failure, Option<SocketAddr>),
}

/// How an attempt on one upstream connection failed.
enum Attempt {
    /// Failed before any response byte and before any body byte was
    /// consumed from the client: another attempt is safe.
    Retry(Failure),
    /// Failed for good.
    Abort(Abort),
}

async fn proxy(w: &Worker, c: &mut Client, plan: &Plan, client_keep: bool) -> Result<Done, Abort> {
    // Copied out, not cloned: no allocation per request.
    let timeouts = {
        let pools = w.pools.borrow();
        let u = &pools[plan.upstream].settings;
        Timeouts {
            connect_ms: u.connect_timeout_ms,
            response_ms: u.response_timeout_ms,
            retries: u.retries,
        }
    };
    let mut exclude = None;
    let mut attempts = 0;
    let mut last_failure: Option<(Failure, SocketAddr)> = None;
    // After a pooled connection failed, the retry gets a fresh one.
    let mut fresh_only = false;
    loop {
        attempts += 1;
        let now = Instant::now();
        let picked = w.pools.borrow_mut()[plan.upstream].pick(now, exclude);
        let Some(server) = picked else {
            // After a failed attempt, that failure is the answer (502/504);
            // with every server already marked down, 503.
            return Err(match last_failure {
                Some((f, addr)) => Abort::Respond(f, Some(addr)),
                None => Abort::Respond(Failure::UPSTREAM_DOWN, None),
            });
        };
        let addr = w.pools.borrow()[plan.upstream].addr(server);
        let pooled = if fresh_only {
            None
        } else {
            w.pools.borrow_mut()[plan.upstream].checkout(server)
        };
        let mut conn = match pooled {
            Some(p) => p,
            None => match upstream::connect(addr, server, ms(timeouts.connect_ms)).await {
                Ok(conn) => conn,
                Err(e @ ConnectError::Local(_)) => {
                    // Our own exhaustion: the server is fine, and another
                    // server would fail the same way.
                    tracing::warn!(
                        "upstream {} server {addr}: connect {e}",
                        w.pools.borrow()[plan.upstream].settings.name,
                    );
                    return Err(Abort::Respond(Failure::LOCAL_RESOURCES, Some(addr)));
                }
                Err(e) => {
                    w.pools.borrow_mut()[plan.upstream].mark_down(server, Instant::now());
                    tracing::warn!(
                        "upstream {} server {addr}: connect {e}",
                        w.pools.borrow()[plan.upstream].settings.name,
                    );
                    let f = if e == ConnectError::TimedOut {
                        Failure::UPSTREAM_TIMEOUT
                    } else {
                        Failure::UPSTREAM_CONNECT
                    };
                    // Nothing was sent: trying another server is safe for any request.
                    if attempts <= timeouts.retries {
                        exclude = Some(server);
                        last_failure = Some((f, addr));
                        continue;
                    }
                    return Err(Abort::Respond(f, Some(addr)));
                }
            },
        };
        let reused = conn.reused;
        w.pools.borrow_mut()[plan.upstream].begin(server);
        let result = exchange(w, c, &mut conn, plan, client_keep, timeouts, addr).await;
        w.pools.borrow_mut()[plan.upstream].end(server);
        match result {
            Ok((done, upstream_reusable)) => {
                let mut pools = w.pools.borrow_mut();
                pools[plan.upstream].mark_up(server);
                if upstream_reusable {
                    pools[plan.upstream].checkin(conn);
                }
                return Ok(done);
            }
            Err(Attempt::Retry(f)) if plan.retryable && attempts <= timeouts.retries => {
                // A stale pooled connection is tried again fresh; a fresh
                // connection that failed sends the retry to another server.
                if reused {
                    fresh_only = true;
                } else {
                    exclude = Some(server);
                }
                last_failure = Some((f, addr));
                tracing::debug!(
                    "upstream {addr}: {} on attempt {attempts}, retrying",
                    f.reason
                );
            }
            Err(Attempt::Retry(f)) => return Err(Abort::Respond(f, Some(addr))),
            Err(Attempt::Abort(a)) => return Err(a),
        }
    }
}

/// Writes `buf[..len]` to the upstream within `limit`; returns the buffer.
async fn write_upstream(
    conn: &UpstreamConn,
    buf: Vec<u8>,
    len: usize,
    limit: Duration,
) -> (std::io::Result<()>, Vec<u8>) {
    match write_deadline(conn.fd(), limit, conn.tcp.write_all(buf.slice(0..len))).await {
        Some((res, slice)) => (res, slice.into_inner()),
        // The buffer went with the cancelled write; the connection is dead.
        None => (Err(std::io::ErrorKind::TimedOut.into()), Vec::new()),
    }
}

/// One request/response exchange on one upstream connection.
/// Returns the result and whether the upstream connection may be pooled.
#[allow(clippy::too_many_arguments)]
async fn exchange(
    w: &Worker,
    c: &mut Client,
    conn: &mut UpstreamConn,
    plan: &Plan,
    client_keep: bool,
    timeouts: Timeouts,
    addr: SocketAddr,
) -> Result<(Done, bool), Attempt> {
    let limits = w.shared.cfg.limits;
    let upstream_gone = |_| Attempt::Retry(Failure::UPSTREAM_CLOSED);

    // 1. Request head and body.
    let mut head = std::mem::take(&mut c.up_head);
    match plan.framing {
        Framing::None | Framing::UntilClose => {
            let len = head.len();
            let (res, buf) = write_upstream(conn, head, len, ms(timeouts.response_ms)).await;
            c.up_head = buf;
            res.map_err(upstream_gone)?;
        }
        Framing::Length(total) => {
            let avail = (c.pending().len() as u64).min(total) as usize;
            let coalesce = total as usize == avail && avail <= COALESCE_BODY;
            if coalesce {
                head.extend_from_slice(&c.inbuf[c.start..c.start + avail]);
            }
            let len = head.len();
            let (res, buf) = write_upstream(conn, head, len, ms(timeouts.response_ms)).await;
            c.up_head = buf;
            res.map_err(upstream_gone)?;
            let mut remaining = total;
            if coalesce {
                c.consume(avail);
                remaining = 0;
            }
            stream_length_body(c, conn, remaining, limits.body_timeout_ms, addr).await?;
        }
        Framing::Chunked => {
            let len = head.len();
            let (res, buf) = write_upstream(conn, head, len, ms(timeouts.response_ms)).await;
            c.up_head = buf;
            res.map_err(upstream_gone)?;
            stream_chunked_body(c, conn, plan.max_body, limits.body_timeout_ms, addr).await?;
        }
    }

    // 2. Response head (skipping 1xx), within the response timeout.
    let response_deadline = Instant::now() + ms(timeouts.response_ms);
    let mut hdrs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let started_reading = conn.pending().is_empty();
    loop {
        if http::head_end(conn.pending()).is_some() {
            // Skip interim 1xx responses (we answered 100-continue ourselves).
            let code = peek_status(conn.pending());
            if let Some((code, len)) = code
                && (100..200).contains(&code)
                && code != 101
            {
                conn.consume(len);
                continue;
            }
            break;
        }
        if conn.pending().len() > limits.max_header_bytes * 4 {
            return Err(Attempt::Abort(Abort::Respond(
                Failure::UPSTREAM_PROTOCOL,
                Some(addr),
            )));
        }
        let left = response_deadline.saturating_duration_since(Instant::now());
        match deadline(conn.fd(), left, conn.read_more()).await {
            None => {
                return Err(Attempt::Abort(Abort::Respond(
                    Failure::UPSTREAM_TIMEOUT,
                    Some(addr),
                )));
            }
            Some(Ok(0)) | Some(Err(_)) if started_reading && conn.pending().is_empty() => {
                return Err(Attempt::Retry(Failure::UPSTREAM_CLOSED));
            }
            Some(Ok(0)) | Some(Err(_)) => {
                return Err(Attempt::Abort(Abort::Respond(
                    Failure::UPSTREAM_CLOSED,
                    Some(addr),
                )));
            }
            Some(Ok(_)) => {}
        }
    }
    let (status, framing, head_len, upstream_keep) = {
        let parsed = http::response::parse(
            conn.pending(),
            &mut hdrs,
            limits.max_header_bytes * 4,
            plan.head_request,
        );
        let resp = match parsed {
            Ok(Some(r)) if r.code != 101 => r,
            _ => {
                return Err(Attempt::Abort(Abort::Respond(
                    Failure::UPSTREAM_PROTOCOL,
                    Some(addr),
                )));
            }
        };
        // SIGTERM may have come while the upstream worked: say close now.
        write_client_head(
            &mut c.out,
            &resp,
            plan,
            client_keep && !w.stopping(),
            &w.shared,
        );
        (resp.code, resp.framing, resp.len, resp.keep_alive)
    };
    conn.consume(head_len);

    // 3. Response body, streamed.
    // An HTTP/1.0 client cannot read chunked: it gets the data raw and the
    // end of the body is the end of the connection.
    let client_chunked = framing == Framing::UntilClose && !plan.http10;
    let client_close_delimited =
        plan.http10 && matches!(framing, Framing::Chunked | Framing::UntilClose);
    let mut bytes = 0u64;
    let body_limit = ms(timeouts.response_ms);
    let closing = |f| Attempt::Abort(Abort::Close(f, Some(addr)));
    let out = std::mem::take(&mut c.out);
    let sent = match framing {
        Framing::None => c.tls.send(&[&out]).await,
        Framing::Length(total) => {
            let first = (conn.pending().len() as u64).min(total) as usize;
            let r = c.tls.send(&[&out, &conn.pending()[..first]]).await;
            conn.consume(first);
            bytes += first as u64;
            let mut remaining = total - first as u64;
            let mut r = r;
            while r.is_ok() && remaining > 0 {
                match deadline(conn.fd(), body_limit, conn.read_more()).await {
                    None => {
                        c.out = out;
                        return Err(closing(Failure::UPSTREAM_TIMEOUT));
                    }
                    Some(Ok(0)) | Some(Err(_)) => {
                        c.out = out;
                        return Err(closing(Failure::UPSTREAM_CLOSED));
                    }
                    Some(Ok(_)) => {}
                }
                let take = (conn.pending().len() as u64).min(remaining) as usize;
                r = c.tls.send(&[&conn.pending()[..take]]).await;
                conn.consume(take);
                remaining -= take as u64;
                bytes += take as u64;
            }
            r
        }
        Framing::Chunked => {
            let mut dec = if plan.http10 {
                chunked::Decoder::dechunking()
            } else {
                chunked::Decoder::new()
            };
            let mut chunks = std::mem::take(&mut c.chunks);
            chunks.clear();
            let mut r = match dec.feed(conn.pending(), Some(&mut chunks)) {
                Ok(p) => {
                    conn.consume(p.consumed);
                    c.tls.send(&[&out, &chunks]).await
                }
                Err(_) => {
                    c.out = out;
                    c.chunks = chunks;
                    return Err(Attempt::Abort(Abort::Respond(
                        Failure::UPSTREAM_PROTOCOL,
                        Some(addr),
                    )));
                }
            };
            while r.is_ok() && !dec.is_done() {
                match deadline(conn.fd(), body_limit, conn.read_more()).await {
                    None => {
                        c.out = out;
                        c.chunks = chunks;
                        return Err(closing(Failure::UPSTREAM_TIMEOUT));
                    }
                    Some(Ok(0)) | Some(Err(_)) => {
                        c.out = out;
                        c.chunks = chunks;
                        return Err(closing(Failure::UPSTREAM_CLOSED));
                    }
                    Some(Ok(_)) => {}
                }
                chunks.clear();
                match dec.feed(conn.pending(), Some(&mut chunks)) {
                    Ok(p) => conn.consume(p.consumed),
                    Err(_) => {
                        c.out = out;
                        c.chunks = chunks;
                        return Err(closing(Failure::UPSTREAM_PROTOCOL));
                    }
                }
                r = c.tls.send(&[&chunks]).await;
            }
            bytes = dec.body_bytes;
            c.chunks = chunks;
            r
        }
        Framing::UntilClose => {
            let mut r = c.tls.send(&[&out]).await;
            loop {
                if r.is_err() {
                    break;
                }
                let pending = conn.pending();
                if !pending.is_empty() {
                    bytes += pending.len() as u64;
                    r = if client_chunked {
                        let mut size = [0u8; 20];
                        let n = {
                            let mut cur = std::io::Cursor::new(&mut size[..]);
                            let _ = write!(cur, "{:x}\r\n", pending.len());
                            cur.position() as usize
                        };
                        c.tls.send(&[&size[..n], pending, b"\r\n"]).await
                    } else {
                        c.tls.send(&[pending]).await
                    };
                    let n = conn.pending().len();
                    conn.consume(n);
                    continue;
                }
                match deadline(conn.fd(), body_limit, conn.read_more()).await {
                    None => {
                        c.out = out;
                        return Err(closing(Failure::UPSTREAM_TIMEOUT));
                    }
                    Some(Ok(0)) => break,
                    Some(Err(_)) => {
                        c.out = out;
                        return Err(closing(Failure::UPSTREAM_CLOSED));
                    }
                    Some(Ok(_)) => {}
                }
            }
            if r.is_ok() && client_chunked {
                r = c.tls.send(&[b"0\r\n\r\n"]).await;
            }
            r
        }
    };
    c.out = out;
    if sent.is_err() {
        return Err(Attempt::Abort(Abort::Close(
            Failure {
                status,
                reason: "client.gone",
                fault: crate::respond::Fault::Client,
            },
            Some(addr),
        )));
    }
    let upstream_reusable =
        upstream_keep && conn.pending().is_empty() && framing != Framing::UntilClose;
    let client_reusable =
        (framing != Framing::UntilClose || client_chunked) && !client_close_delimited;
    Ok((
        Done {
            status,
            upstream: addr,
            bytes,
            client_reusable,
        },
        upstream_reusable,
    ))
}

/// Status code and head length of a complete response head, for 1xx skipping.
fn peek_status(buf: &[u8]) -> Option<(u16, usize)> {
    let end = http::head_end(buf)?;
    let line = buf.get(9..12)?;
    let code = std::str::from_utf8(line).ok()?.parse().ok()?;
    Some((code, end))
}

/// The response head the client gets.
fn write_client_head(
    out: &mut Vec<u8>,
    resp: &http::response::ResponseHead<'_, '_>,
    plan: &Plan,
    client_keep: bool,
    shared: &Shared,
) {
    out.clear();
    let reason = resp.reason;
    let _ = write!(out, "HTTP/1.1 {} {}\r\n", resp.code, reason);
    let has_connection = resp
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("connection"));
    // HEAD and 304 keep the upstream's Content-Length: it describes the
    // representation, not this (empty) body.
    let keep_length = plan.head_request || resp.code == 304;
    for h in resp.headers {
        let name = h.name;
        let is_length = name.eq_ignore_ascii_case("content-length");
        if is_hop_by_hop(name)
            || (is_length && !keep_length)
            || (has_connection && named_by_connection(resp.headers, name))
            || shared.filters.overrides(name)
        {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    match resp.framing {
        Framing::Length(n) => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        Framing::Chunked | Framing::UntilClose if !plan.http10 => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n")
        }
        Framing::Chunked | Framing::UntilClose | Framing::None => {}
    }
    out.extend_from_slice(shared.filters.lines());
    let close = !client_keep
        || (plan.http10 && matches!(resp.framing, Framing::Chunked | Framing::UntilClose));
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if plan.http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Reads more of a request body within the gap timeout and the body's
/// deadline (see [`BodyClock`]).
async fn read_body(
    c: &mut Client,
    body_timeout_ms: u64,
    addr: Option<SocketAddr>,
) -> Result<(), Abort> {
    let gap = ms(body_timeout_ms);
    let limit = match c.body.deadline() {
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Abort::Respond(Failure::BODY_RATE, addr));
            }
            gap.min(left)
        }
        None => gap,
    };
    match c.read_within(limit).await {
        None => {
            let too_slow = c.body.deadline().is_some_and(|d| d <= Instant::now());
            let f = if too_slow {
                Failure::BODY_RATE
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

/// Reads a body of up to `limits.buffer_body_bytes` whole before an upstream
/// connection is taken, so a slow client ties up only its own connection
/// (nginx's `client_body_buffer_size`). Larger bodies stream.
async fn buffer_small_body(w: &Worker, c: &mut Client, plan: &Plan) -> Result<(), Abort> {
    let limits = &w.shared.cfg.limits;
    let max = limits.buffer_body_bytes as u64;
    loop {
        let complete = match plan.framing {
            Framing::None | Framing::UntilClose => return Ok(()),
            Framing::Length(n) if n > max => return Ok(()),
            Framing::Length(n) => c.pending().len() as u64 >= n,
            Framing::Chunked => {
                let mut check = chunked::Decoder::new();
                let p = check
                    .feed(c.pending(), None)
                    .map_err(|e| Abort::Respond(Failure::http(e), None))?;
                if check.body_bytes > plan.max_body {
                    return Err(Abort::Respond(Failure::BODY_TOO_LARGE, None));
                }
                p.done || c.pending().len() as u64 >= max
            }
        };
        if complete {
            return Ok(());
        }
        read_body(c, limits.body_timeout_ms, None).await?;
    }
}

/// Streams `remaining` Content-Length body bytes from the client.
async fn stream_length_body(
    c: &mut Client,
    conn: &UpstreamConn,
    mut remaining: u64,
    body_timeout_ms: u64,
    addr: SocketAddr,
) -> Result<(), Attempt> {
    while remaining > 0 {
        if c.pending().is_empty() {
            read_body(c, body_timeout_ms, Some(addr))
                .await
                .map_err(Attempt::Abort)?;
        }
        let take = (c.pending().len() as u64).min(remaining) as usize;
        let buf = std::mem::take(&mut c.inbuf);
        let start = c.start;
        let write = conn.tcp.write_all(buf.slice(start..start + take));
        let Some((res, slice)) = write_deadline(conn.fd(), ms(body_timeout_ms), write).await else {
            // The upstream stopped reading; the buffer went with the write.
            return Err(Attempt::Abort(Abort::Close(
                Failure::UPSTREAM_TIMEOUT,
                Some(addr),
            )));
        };
        c.inbuf = slice.into_inner();
        res.map_err(|_| Attempt::Abort(Abort::Respond(Failure::UPSTREAM_CLOSED, Some(addr))))?;
        c.consume(take);
        remaining -= take as u64;
    }
    Ok(())
}

/// Streams a chunked body from the client, re-encoded, within `max_body`.
async fn stream_chunked_body(
    c: &mut Client,
    conn: &UpstreamConn,
    max_body: u64,
    body_timeout_ms: u64,
    addr: SocketAddr,
) -> Result<(), Attempt> {
    let mut dec = chunked::Decoder::new();
    let mut out = std::mem::take(&mut c.chunks);
    let result = async {
        loop {
            out.clear();
            let p = dec
                .feed(c.pending(), Some(&mut out))
                .map_err(|e| Attempt::Abort(Abort::Respond(Failure::http(e), Some(addr))))?;
            c.consume(p.consumed);
            if dec.body_bytes > max_body {
                return Err(Attempt::Abort(Abort::Respond(
                    Failure::BODY_TOO_LARGE,
                    Some(addr),
                )));
            }
            if !out.is_empty() {
                let len = out.len();
                let (res, buf) =
                    write_upstream(conn, std::mem::take(&mut out), len, ms(body_timeout_ms)).await;
                out = buf;
                res.map_err(|_| {
                    Attempt::Abort(Abort::Respond(Failure::UPSTREAM_CLOSED, Some(addr)))
                })?;
            }
            if p.done {
                return Ok(());
            }
            read_body(c, body_timeout_ms, Some(addr))
                .await
                .map_err(Attempt::Abort)?;
        }
    }
    .await;
    c.chunks = out;
    result
}
