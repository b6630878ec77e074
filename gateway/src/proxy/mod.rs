//! Proxying an admitted request: pick a server, connect or reuse a pooled
//! connection, send the request (`request`), relay the response
//! (`response`), and retry within the upstream's budget when that is safe.
//! Each upstream's circuit breaker, ejections (`health`) and active checks
//! (`check`) are shared by every worker.

pub mod check;
mod checkout;
pub mod connect;
pub mod grpc;
pub mod health;
pub mod pool;
pub mod request;
pub mod response;
pub mod tls;
pub mod tunnel;
pub mod upstream_conn;
mod upstream_io;

use std::{
    cell::{Cell, RefCell},
    net::SocketAddr,
    rc::Rc,
    sync::{Arc, atomic::AtomicBool},
    time::Instant,
};

use checkout::{Busy, checkout_or_connect, failed, reuse};
use health::Registry;
use pool::Pool;
use response::Relay;
use upstream_conn::UpstreamConn;

use crate::{
    config::UpstreamSettings,
    http::Framing,
    respond::{Abort, Failure, Fault},
    session::conn::Conn,
    snapshot::Snapshot,
    stages::auth::{Authenticated, Identity},
};

/// What the head stages decided about a request to proxy.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Index of the route (its response headers).
    pub route: usize,
    /// Index of the upstream.
    pub upstream: usize,
    /// Body framing.
    pub framing: Framing,
    /// Whether the client keeps the connection open.
    pub keep_alive: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
    /// The route's body limit.
    pub max_body: u64,
    /// A HEAD request (the response has no body).
    pub head_request: bool,
    /// Idempotent and bodiless: safe to send again.
    pub retryable: bool,
    /// An HTTP/1.0 client.
    pub http10: bool,
    /// What the body is, as far as the WAF reads bodies.
    pub body_kind: BodyKind,
    /// The body is not all in yet: it streams from the client while the
    /// request goes upstream (set by the body stage).
    pub streaming_body: bool,
    /// A browser sent it for another site's page: its WAF hits do not
    /// count against the source.
    pub on_behalf: bool,
    /// A WebSocket handshake (`stages::upgrade`): a tunnel on the
    /// upstream's 101.
    pub websocket: Option<WebSocket>,
}

/// What the head stages decided about a WebSocket handshake.
#[derive(Debug, Clone, Copy)]
pub struct WebSocket {
    /// The `Sec-WebSocket-Accept` the upstream's 101 must carry.
    pub accept: crate::stages::upgrade::Accept,
    /// The source its tunnel counts against (none: not counted).
    pub source: Option<[u8; 16]>,
}

/// A request body the WAF can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// Another media type, or none: not scanned.
    Other,
    /// `application/json` or `+json`.
    Json,
    /// `application/x-www-form-urlencoded`.
    Form,
    /// Two or more `Content-Type` fields.
    Repeated,
}

/// A request every head stage let through: the only thing [`forward`]
/// takes. Made by `pipeline::admit_head` once the last head stage passed;
/// it cannot be made without an [`Authenticated`], which only the auth
/// stage makes.
#[derive(Debug)]
pub struct Admitted {
    plan: Plan,
    head_len: usize,
    caller: Authenticated,
}

impl Admitted {
    /// Admits a request whose head (`head_len` bytes) passed every stage.
    pub(crate) fn new(plan: Plan, head_len: usize, caller: Authenticated) -> Self {
        Self {
            plan,
            head_len,
            caller,
        }
    }

    /// Who is calling.
    pub fn identity(&self) -> Identity {
        self.caller.identity()
    }

    /// When the caller's token expires (Unix seconds), if it does.
    pub fn expires(&self) -> Option<i64> {
        self.caller.expires()
    }

    /// Bytes of the request head.
    pub fn head_len(&self) -> usize {
        self.head_len
    }

    /// The body was read whole and de-chunked: `len` bytes go upstream
    /// with a Content-Length.
    pub(crate) fn body_read_whole(&mut self, len: u64) {
        self.plan.framing = Framing::Length(len);
    }

    /// Whether the body still streams from the client as the request goes.
    pub(crate) fn set_streaming_body(&mut self, streaming: bool) {
        self.plan.streaming_body = streaming;
    }
}

impl std::ops::Deref for Admitted {
    type Target = Plan;
    fn deref(&self) -> &Plan {
        &self.plan
    }
}

/// One worker's upstreams: a pool per upstream, by index, for the newest
/// snapshot a request brought. A request holds its pool's `Rc`, so a
/// reload that replaces the list never pulls a pool from under it.
pub struct Upstreams {
    pools: RefCell<Vec<Rc<Upstream>>>,
    /// The snapshot the list was built for.
    epoch: Cell<u64>,
    /// Where pools find their upstream's shared health.
    registry: Arc<Registry>,
}

impl Upstreams {
    /// Empty pools for `snap`'s upstreams.
    pub fn new(snap: &Snapshot, registry: Arc<Registry>) -> Self {
        let u = Self {
            pools: RefCell::new(Vec::new()),
            // Below every snapshot's (they count from 1).
            epoch: Cell::new(0),
            registry,
        };
        u.follow(snap);
        u
    }

    /// The pool of `snap`'s upstream `i`. A newer snapshot rebuilds the
    /// list, keeping the pools (idle connections, health) of upstreams
    /// whose settings did not change; a request still on an older snapshot
    /// gets the pool with its upstream's settings, or one of its own.
    pub fn pool(&self, snap: &Snapshot, i: usize) -> Rc<Upstream> {
        self.follow(snap);
        if snap.epoch == self.epoch.get()
            && let Some(p) = self.pools.borrow().get(i)
        {
            return p.clone();
        }
        let settings = &snap.cfg.upstreams[i];
        find(&self.pools.borrow(), settings).unwrap_or_else(|| new_pool(settings, &self.registry))
    }

    /// Rebuilds the list for `snap` when it is newer than the list: pools
    /// whose settings did not change are kept (idle connections, backoff).
    /// Requests call it, and the worker's tick, so an idle worker drops
    /// removed upstreams' connections too.
    pub fn follow(&self, snap: &Snapshot) {
        if snap.epoch <= self.epoch.get() {
            return;
        }
        let mut pools = self.pools.borrow_mut();
        let next = snap
            .cfg
            .upstreams
            .iter()
            .map(|s| find(&pools, s).unwrap_or_else(|| new_pool(s, &self.registry)))
            .collect();
        *pools = next;
        self.epoch.set(snap.epoch);
    }

    /// Closes idle connections past their upstream's idle timeout.
    pub fn reap(&self, now: Instant) {
        for pool in self.pools.borrow().iter() {
            pool.pool.borrow_mut().reap(now);
        }
    }

    /// Every server's pool and health figures, into `out`.
    pub fn figures(&self, out: &mut Vec<crate::observe::metrics::ServerFigures>) {
        let now = Instant::now();
        for (u, pool) in self.pools.borrow().iter().enumerate() {
            pool.pool.borrow().figures(u as u32, now, out);
        }
    }
}

/// One upstream as a worker holds it: its pool, and (outside the pool's
/// `RefCell`, to be read across awaits) its shared health.
pub struct Upstream {
    /// The worker's pool.
    pub pool: RefCell<Pool>,
    /// The state every worker shares (also held by the pool).
    pub health: Arc<health::UpstreamHealth>,
    /// Woken when a connection goes back to the pool or a connect of this
    /// worker ends: a request waiting for `max_connects` may go on.
    freed: tokio::sync::Notify,
    /// HTTP/2 connections (an `http2 = true` upstream's gRPC calls).
    channels: grpc::Channels,
}

fn new_pool(s: &UpstreamSettings, registry: &Registry) -> Rc<Upstream> {
    let health = registry.of(s);
    Rc::new(Upstream {
        pool: RefCell::new(Pool::new(s, health.clone())),
        health,
        freed: tokio::sync::Notify::new(),
        channels: grpc::Channels::default(),
    })
}

/// The pool built for exactly `s`.
fn find(pools: &[Rc<Upstream>], s: &UpstreamSettings) -> Option<Rc<Upstream>> {
    pools
        .iter()
        .find(|p| p.pool.borrow().settings == *s)
        .cloned()
}

/// A finished exchange.
pub struct Done {
    /// Status sent to the client.
    pub status: u16,
    /// The server that answered (none: the gateway answered itself).
    pub upstream: Option<SocketAddr>,
    /// From the request's first byte sent upstream to the response head.
    pub upstream_time: Option<std::time::Duration>,
    /// Response body bytes sent.
    pub bytes: u64,
    /// Whether the client connection can carry another request.
    pub client_reusable: bool,
    /// The upstream switched to WebSocket (its 101 went to the client):
    /// the connection, for the tunnel.
    pub switched: Option<Box<UpstreamConn>>,
}

/// How an attempt on one upstream connection failed.
pub(crate) enum Attempt {
    /// Failed before any response byte and before any body byte was
    /// consumed from the client: another attempt is safe.
    Retry(Failure),
    /// Failed for good.
    Abort(Abort),
}

/// An upstream's timeouts and retry budget, copied out per request (no
/// allocation, no borrow of the pools across an await).
#[derive(Clone, Copy)]
struct Budget {
    connect_ms: u64,
    response_ms: u64,
    retries: u32,
}

impl Budget {
    fn of(u: &UpstreamSettings) -> Self {
        Self {
            connect_ms: u.connect_timeout_ms,
            response_ms: u.response_timeout_ms,
            retries: u.retries,
        }
    }
}

/// The circuit breaker: past the limit, 503 at once. A body still
/// streaming from the client takes an upload place instead, so slow
/// uploads never hold the places of requests that could go now.
fn breaker<'h>(
    health: &'h health::UpstreamHealth,
    a: &Admitted,
) -> Result<health::Held<'h>, Abort> {
    let place = if a.streaming_body {
        health.enter_upload().ok_or(Failure::UPSTREAM_MAX_UPLOADS)
    } else {
        health.enter_request().ok_or(Failure::UPSTREAM_MAX_REQUESTS)
    };
    place.map_err(|f| Abort::Respond(f, None))
}

/// What an exchange says about the server: an answer below 500 counts for
/// it; a 5xx or a failure of the upstream's making counts against it.
fn judge_server(
    up: &Upstream,
    (server, addr): (usize, SocketAddr),
    reused: bool,
    result: &Result<(Done, bool), Attempt>,
) {
    match result {
        Ok((done, _)) if done.status < 500 => up.health.answered(server),
        Ok(_) => failed(up, server, addr),
        // A pooled connection the server closed while idle says
        // nothing about the server: the retry gets a fresh one.
        Err(Attempt::Retry(_)) if reused => {}
        Err(Attempt::Retry(f) | Attempt::Abort(Abort::Respond(f, _) | Abort::Close(f, _)))
            if f.fault == Fault::Upstream =>
        {
            failed(up, server, addr)
        }
        Err(_) => {}
    }
}

/// Proxies an admitted request, retrying within the upstream's budget.
pub async fn forward(
    w: &Upstreams,
    stopping: &AtomicBool,
    c: &mut Conn,
    a: &Admitted,
) -> Result<Done, Abort> {
    let up = w.pool(c.snap(), a.upstream);
    let (pool, health) = (&up.pool, &*up.health);
    let budget = Budget::of(&pool.borrow().settings);
    let _in_flight = breaker(health, a)?;
    let mut tries = Tries::default();
    loop {
        tries.attempts += 1;
        let picked = pool.borrow_mut().pick(Instant::now(), tries.exclude);
        let Some(server) = picked else {
            return Err(tries.exhausted());
        };
        let addr = pool.borrow().addr(server);
        // In flight on the server from here (connecting included) until the
        // exchange ends, also if this future is dropped: the pool sizes
        // itself and balances by it.
        let in_flight = Busy::begin(pool, server);
        let how = reuse(tries.fresh_only, a.retryable);
        let mut conn = match checkout_or_connect(&up, server, addr, how, budget).await {
            Ok(conn) => conn,
            Err(Attempt::Retry(f)) => {
                tries.connect_failed(f, (server, addr), budget)?;
                continue;
            }
            Err(Attempt::Abort(abort)) => return Err(abort),
        };
        let reused = conn.reused;
        let result = exchange(stopping, c, &mut conn, a, budget.response_ms, addr).await;
        drop(in_flight);
        judge_server(&up, (server, addr), reused, &result);
        match result {
            Ok((mut done, _)) if done.status == 101 => {
                pool.borrow_mut().mark_up(server);
                // Never pooled again: it carries the tunnel now.
                done.switched = Some(Box::new(conn));
                return Ok(done);
            }
            Ok((done, upstream_reusable)) => {
                let mut p = pool.borrow_mut();
                p.mark_up(server);
                if upstream_reusable && p.checkin(conn, Instant::now()) {
                    // A request waiting for a connection may take it.
                    up.freed.notify_one();
                }
                return Ok(done);
            }
            Err(Attempt::Retry(f)) => {
                tries.exchange_failed(f, (server, addr), reused, a, budget)?
            }
            Err(Attempt::Abort(abort)) => return Err(abort),
        }
    }
}

/// Where a request's attempts stand.
#[derive(Default)]
struct Tries {
    attempts: u32,
    /// The server the next pick avoids.
    exclude: Option<usize>,
    /// The last failure: the answer when no server is left.
    last: Option<(Failure, SocketAddr)>,
    /// After a pooled connection failed, the retry gets a fresh one.
    fresh_only: bool,
}

impl Tries {
    /// No server left to pick: after a failed attempt, that failure is
    /// the answer (502/504); with every server already marked down, 503.
    fn exhausted(&self) -> Abort {
        match self.last {
            Some((f, addr)) => Abort::Respond(f, Some(addr)),
            None => Abort::Respond(Failure::UPSTREAM_DOWN, None),
        }
    }

    /// A connect that failed: nothing was sent, so trying another server
    /// is safe for any request, within the budget.
    fn connect_failed(
        &mut self,
        f: Failure,
        (server, addr): (usize, SocketAddr),
        budget: Budget,
    ) -> Result<(), Abort> {
        if self.attempts > budget.retries {
            return Err(Abort::Respond(f, Some(addr)));
        }
        self.exclude = Some(server);
        self.last = Some((f, addr));
        Ok(())
    }

    /// An exchange that failed before the client got anything: a request
    /// that can be sent again is, within the budget; else its failure is
    /// the answer.
    fn exchange_failed(
        &mut self,
        f: Failure,
        (server, addr): (usize, SocketAddr),
        reused: bool,
        a: &Admitted,
        budget: Budget,
    ) -> Result<(), Abort> {
        if a.retryable && reused && !self.fresh_only {
            // A stale pooled connection (the server closed it while it
            // idled) is tried once more on a fresh one, outside the retry
            // budget: it says nothing about the server.
            self.fresh_only = true;
            self.attempts -= 1;
        } else if a.retryable && self.attempts <= budget.retries {
            // A fresh connection that failed sends the retry to another
            // server.
            if reused {
                self.fresh_only = true;
            } else {
                self.exclude = Some(server);
            }
            tracing::debug!(
                "upstream {addr}: {} on attempt {}, retrying",
                f.reason,
                self.attempts
            );
        } else {
            return Err(Abort::Respond(f, Some(addr)));
        }
        self.last = Some((f, addr));
        Ok(())
    }
}

/// One request/response exchange on one upstream connection.
/// Returns the result and whether the upstream connection may be pooled.
async fn exchange(
    stopping: &AtomicBool,
    c: &mut Conn,
    conn: &mut UpstreamConn,
    a: &Admitted,
    response_ms: u64,
    addr: SocketAddr,
) -> Result<(Done, bool), Attempt> {
    let sent = Instant::now();
    request::send(c, conn, a.framing, a.max_body, response_ms, addr).await?;
    let head = response::read_head(c, conn, a, stopping, response_ms, addr).await?;
    let upstream_time = sent.elapsed();
    let (status, framing, upstream_keep) = (head.status, head.framing, head.upstream_keep);
    let bytes = match response::relay(c, conn, framing, head.body, response_ms).await {
        Ok(bytes) => bytes,
        Err(Relay::Unsent(f)) => return Err(Attempt::Abort(Abort::Respond(f, Some(addr)))),
        Err(Relay::Upstream(f)) => return Err(Attempt::Abort(Abort::Close(f, Some(addr)))),
        Err(Relay::Client) => {
            return Err(Attempt::Abort(Abort::Close(
                Failure::client_gone(status),
                Some(addr),
            )));
        }
    };
    let until_close = framing == Framing::UntilClose;
    let upstream_reusable = upstream_keep && conn.drained() && !until_close;
    // An HTTP/1.0 client reads a chunked or close-delimited body to the end
    // of the connection.
    let client_reusable = !(a.http10 && matches!(framing, Framing::Chunked | Framing::UntilClose));
    Ok((
        Done {
            status,
            upstream: Some(addr),
            upstream_time: Some(upstream_time),
            bytes,
            client_reusable,
            switched: None,
        },
        // An upgrade the upstream declined is not pooled: what it may
        // have made of the handshake is unknown.
        upstream_reusable && a.websocket.is_none(),
    ))
}
