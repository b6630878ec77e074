//! Proxying an admitted request: pick a server, connect or reuse a pooled
//! connection, send the request (`request`), relay the response
//! (`response`), and retry within the upstream's budget when that is safe.

pub mod connect;
pub mod pool;
pub mod request;
pub mod response;

use std::{cell::RefCell, net::SocketAddr, sync::atomic::AtomicBool, time::Instant};

use connect::ConnectError;
use pool::{Pool, UpstreamConn};
use response::Relay;

use crate::{
    config::UpstreamSettings,
    conn::{Conn, ms},
    http::Framing,
    respond::{Abort, Failure, Fault},
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

    /// Bytes of the request head.
    pub fn head_len(&self) -> usize {
        self.head_len
    }
}

impl std::ops::Deref for Admitted {
    type Target = Plan;
    fn deref(&self) -> &Plan {
        &self.plan
    }
}

/// One worker's upstreams: a pool per upstream, by index.
pub struct Upstreams {
    pools: RefCell<Vec<Pool>>,
}

impl Upstreams {
    /// Empty pools for `settings`.
    pub fn new(settings: &[UpstreamSettings]) -> Self {
        Self {
            pools: RefCell::new(settings.iter().map(Pool::new).collect()),
        }
    }

    /// Every server's pool and health figures, into `out`.
    pub fn figures(&self, out: &mut Vec<crate::observe::metrics::ServerFigures>) {
        let now = Instant::now();
        for (u, pool) in self.pools.borrow().iter().enumerate() {
            pool.figures(u as u32, now, out);
        }
    }
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

/// Proxies an admitted request, retrying within the upstream's budget.
pub async fn forward(
    w: &Upstreams,
    stopping: &AtomicBool,
    c: &mut Conn,
    a: &Admitted,
) -> Result<Done, Abort> {
    let budget = {
        let pools = w.pools.borrow();
        let u = &pools[a.upstream].settings;
        Budget {
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
        let picked = w.pools.borrow_mut()[a.upstream].pick(Instant::now(), exclude);
        let Some(server) = picked else {
            // After a failed attempt, that failure is the answer (502/504);
            // with every server already marked down, 503.
            return Err(match last_failure {
                Some((f, addr)) => Abort::Respond(f, Some(addr)),
                None => Abort::Respond(Failure::UPSTREAM_DOWN, None),
            });
        };
        let addr = w.pools.borrow()[a.upstream].addr(server);
        let mut conn = match checkout_or_connect(w, a, server, addr, fresh_only, budget).await {
            Ok(conn) => conn,
            Err(Attempt::Retry(f)) if attempts <= budget.retries => {
                // Nothing was sent: trying another server is safe for any request.
                exclude = Some(server);
                last_failure = Some((f, addr));
                continue;
            }
            Err(Attempt::Retry(f)) => return Err(Abort::Respond(f, Some(addr))),
            Err(Attempt::Abort(abort)) => return Err(abort),
        };
        let reused = conn.reused;
        w.pools.borrow_mut()[a.upstream].begin(server);
        let result = exchange(stopping, c, &mut conn, a, budget.response_ms, addr).await;
        w.pools.borrow_mut()[a.upstream].end(server);
        match result {
            Ok((done, upstream_reusable)) => {
                let mut pools = w.pools.borrow_mut();
                pools[a.upstream].mark_up(server);
                if upstream_reusable {
                    pools[a.upstream].checkin(conn);
                }
                return Ok(done);
            }
            Err(Attempt::Retry(f)) if a.retryable && attempts <= budget.retries => {
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
            Err(Attempt::Abort(abort)) => return Err(abort),
        }
    }
}

/// A pooled connection to `server`, or a new one. A refused or timed-out
/// connect marks the server down and may be retried elsewhere; running out
/// of local resources blames no server and is not retried.
async fn checkout_or_connect(
    w: &Upstreams,
    a: &Admitted,
    server: usize,
    addr: SocketAddr,
    fresh_only: bool,
    budget: Budget,
) -> Result<UpstreamConn, Attempt> {
    if !fresh_only && let Some(pooled) = w.pools.borrow_mut()[a.upstream].checkout(server) {
        return Ok(pooled);
    }
    let err = match connect::connect(addr, server, ms(budget.connect_ms)).await {
        Ok(conn) => {
            w.pools.borrow_mut()[a.upstream].opened(server);
            return Ok(conn);
        }
        Err(e) => e,
    };
    let name = |w: &Upstreams| w.pools.borrow()[a.upstream].settings.name.clone();
    tracing::warn!("upstream {} server {addr}: connect {err}", name(w));
    match err {
        ConnectError::Local(_) => Err(Attempt::Abort(Abort::Respond(
            Failure::LOCAL_RESOURCES,
            Some(addr),
        ))),
        ConnectError::TimedOut | ConnectError::Refused => {
            w.pools.borrow_mut()[a.upstream].mark_down(server, Instant::now());
            Err(Attempt::Retry(if err == ConnectError::TimedOut {
                Failure::UPSTREAM_TIMEOUT
            } else {
                Failure::UPSTREAM_CONNECT
            }))
        }
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
    let bytes = match response::relay(c, conn, a, head.framing, response_ms).await {
        Ok(bytes) => bytes,
        Err(Relay::Unsent(f)) => return Err(Attempt::Abort(Abort::Respond(f, Some(addr)))),
        Err(Relay::Upstream(f)) => return Err(Attempt::Abort(Abort::Close(f, Some(addr)))),
        Err(Relay::Client) => {
            return Err(Attempt::Abort(Abort::Close(
                Failure {
                    status: head.status,
                    reason: "client.gone",
                    fault: Fault::Client,
                },
                Some(addr),
            )));
        }
    };
    let until_close = head.framing == Framing::UntilClose;
    let upstream_reusable = head.upstream_keep && conn.pending().is_empty() && !until_close;
    // An HTTP/1.0 client reads a chunked or close-delimited body to the end
    // of the connection.
    let client_reusable =
        !(a.http10 && matches!(head.framing, Framing::Chunked | Framing::UntilClose));
    Ok((
        Done {
            status: head.status,
            upstream: Some(addr),
            upstream_time: Some(upstream_time),
            bytes,
            client_reusable,
        },
        upstream_reusable,
    ))
}
