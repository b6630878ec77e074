//! A connection for a request: a pooled one, or a new one within the
//! circuit breaker's `max_connects` (waiting while connects make
//! progress), handshaken on a TLS hop; and what a failed connect or
//! handshake says about the server.

use std::{cell::RefCell, net::SocketAddr, time::Instant};

use super::{
    Attempt, Budget, Upstream,
    connect::{self, ConnectError},
    health,
    pool::Pool,
    upstream_conn::UpstreamConn,
};
use crate::{
    clock::{Clock, Monotonic},
    respond::{Abort, Failure},
    session::conn::ms,
};

/// A pooled connection to `server`, or a new one. A refused or timed-out
/// connect marks the server down and may be retried elsewhere; running out
/// of local resources blames no server and is not retried.
pub(super) async fn checkout_or_connect(
    up: &Upstream,
    server: usize,
    addr: SocketAddr,
    reuse: Reuse,
    budget: Budget,
) -> Result<UpstreamConn, Attempt> {
    let pool = &up.pool;
    if let Some(pooled) = checkout(up, server, reuse) {
        return Ok(pooled);
    }
    let connecting = match up.health.enter_connect() {
        Some(slot) => slot,
        None => match wait_for_connection(up, server, reuse, budget).await {
            Waited::Pooled(conn) => return Ok(conn),
            Waited::Slot(slot) => slot,
            Waited::TimedOut => {
                up.health.refused_connect();
                return Err(Attempt::Abort(Abort::Respond(
                    Failure::UPSTREAM_MAX_CONNECTS,
                    Some(addr),
                )));
            }
        },
    };
    let connected = connect::connect(addr, server, ms(budget.connect_ms)).await;
    up.health.connect_progressed();
    drop(connecting);
    up.freed.notify_one();
    let err = match connected {
        Ok(conn) => {
            pool.borrow_mut().opened(server);
            return secure(up, conn, server, addr, budget).await;
        }
        Err(e) => e,
    };
    tracing::warn!("upstream {} server {addr}: connect {err}", up.health.name);
    match err {
        ConnectError::Local(_) => Err(Attempt::Abort(Abort::Respond(
            Failure::LOCAL_RESOURCES,
            Some(addr),
        ))),
        ConnectError::TimedOut | ConnectError::Refused => {
            refused(up, server, addr);
            Err(Attempt::Retry(if err == ConnectError::TimedOut {
                Failure::UPSTREAM_TIMEOUT
            } else {
                Failure::UPSTREAM_CONNECT
            }))
        }
    }
}

/// A request in flight on a server, counted until dropped.
pub(super) struct Busy<'a> {
    pool: &'a RefCell<Pool>,
    server: usize,
}

impl<'a> Busy<'a> {
    pub(super) fn begin(pool: &'a RefCell<Pool>, server: usize) -> Self {
        pool.borrow_mut().begin(server);
        Self { pool, server }
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.pool.borrow_mut().end(self.server);
    }
}

/// Which pooled connections a request may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reuse {
    /// Any: one back a moment ago is taken without a check (a request that
    /// finds it dead is retried on a fresh one).
    Any,
    /// Only one checked alive first: the request could not be retried.
    Checked,
    /// None: a retry after a pooled connection failed.
    Fresh,
}

/// How an attempt may reuse: fresh after a stale pooled connection, and
/// checked when the request could not be sent again.
pub(super) fn reuse(fresh_only: bool, retryable: bool) -> Reuse {
    match (fresh_only, retryable) {
        (true, _) => Reuse::Fresh,
        (false, true) => Reuse::Any,
        (false, false) => Reuse::Checked,
    }
}

fn checkout(up: &Upstream, server: usize, reuse: Reuse) -> Option<UpstreamConn> {
    if reuse == Reuse::Fresh {
        return None;
    }
    up.pool
        .borrow_mut()
        .checkout(server, Instant::now(), reuse == Reuse::Checked)
}

/// What waiting at `max_connects` gave.
enum Waited<'a> {
    /// A connection another request gave back.
    Pooled(UpstreamConn),
    /// A place to connect.
    Slot(health::Held<'a>),
    /// Neither within the connect timeout.
    TimedOut,
}

/// How long connects in progress may go without one ending before
/// requests stop waiting for them: a backend that answers connects at all
/// does so well within this.
const CONNECT_STALL: std::time::Duration = std::time::Duration::from_millis(200);

/// At `max_connects`, waits (up to the connect timeout) for a connection
/// another request gives back or a place to connect, as HAProxy queues at a
/// server's `maxconn`: a cold start of many concurrent requests warms the
/// pool instead of answering 503. While the connects in progress are stuck
/// (none ended within [`CONNECT_STALL`]: the backend no longer accepts),
/// the request gets 503 at once, the breaker's purpose. The limit holds
/// either way: never more connects in progress.
async fn wait_for_connection<'a>(
    up: &'a Upstream,
    server: usize,
    reuse: Reuse,
    budget: Budget,
) -> Waited<'a> {
    let until = Instant::now() + ms(budget.connect_ms);
    let stall = CONNECT_STALL.as_nanos() as u64;
    loop {
        // Woken by this worker's check-ins and connects; another worker's
        // freed place is noticed within the poll.
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || up.health.connects_stalled(Monotonic.now_ns(), stall) {
            return Waited::TimedOut;
        }
        let poll = left.min(std::time::Duration::from_millis(5));
        let _ = tokio::time::timeout(poll, up.freed.notified()).await;
        if let Some(conn) = checkout(up, server, reuse) {
            return Waited::Pooled(conn);
        }
        if let Some(slot) = up.health.enter_connect() {
            return Waited::Slot(slot);
        }
    }
}

/// On a TLS hop, handshakes on a new connection (within the connect
/// timeout); a failed handshake is the server's failure, retried elsewhere.
/// A TLS upstream whose client could not be built is never spoken to in
/// plain text.
async fn secure(
    up: &Upstream,
    mut conn: UpstreamConn,
    server: usize,
    addr: SocketAddr,
    budget: Budget,
) -> Result<UpstreamConn, Attempt> {
    if up.pool.borrow().settings.tls.is_none() {
        return Ok(conn);
    }
    // Read at each connect: a reload that rotated the CA or the client
    // certificate takes effect at the next connection.
    let Some((client, name)) = up.health.tls_for(addr) else {
        return Err(Attempt::Abort(Abort::Respond(
            Failure::UPSTREAM_TLS,
            Some(addr),
        )));
    };
    let Err(e) = conn.start_tls(client, name, ms(budget.connect_ms)).await else {
        return Ok(conn);
    };
    let timed_out = e.kind() == std::io::ErrorKind::TimedOut;
    if timed_out {
        tracing::warn!(
            "upstream {} server {addr}: TLS handshake timed out",
            up.health.name
        );
    } else {
        tracing::warn!(
            "upstream {} server {addr}: TLS handshake failed: {e}",
            up.health.name
        );
    }
    refused(up, server, addr);
    Err(Attempt::Retry(if timed_out {
        Failure::UPSTREAM_TIMEOUT
    } else {
        Failure::UPSTREAM_TLS
    }))
}

/// `server` refused a connect or a handshake: this worker backs off from
/// it, and the failure counts toward its ejection.
pub(super) fn refused(up: &Upstream, server: usize, addr: SocketAddr) {
    up.pool.borrow_mut().mark_down(server, Instant::now());
    failed(up, server, addr);
}

/// Counts a 5xx answer or failed connect of `server` toward its ejection,
/// and says so when it ejects it.
pub(super) fn failed(up: &Upstream, server: usize, addr: SocketAddr) {
    let health = &up.health;
    if let Some(len) = health.failed(server, Monotonic.now_ns()) {
        up.pool.borrow_mut().drop_idle(server);
        tracing::warn!(
            "upstream {} server {addr}: ejected for {len:?} after consecutive 5xx answers or failed connects",
            health.name
        );
    }
}
