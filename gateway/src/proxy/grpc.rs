//! gRPC: a `grpc = true` route's calls go to an upstream that speaks
//! HTTP/2 (`http2 = true`: h2c, prior knowledge), stream for stream over
//! one multiplexed connection per server and worker. The upstream request
//! is the HTTP/1.1 head `proxy::request` built (so the forwarding and
//! identity headers, and what is stripped, are the same as for any route),
//! turned into HTTP/2 with `te: trailers`; the call is relayed both ways by
//! the client's stream (`session::h2::StreamIo::relay_grpc`), trailers
//! included, with `grpc-timeout` as its deadline.

use std::{
    cell::RefCell,
    net::SocketAddr,
    rc::{Rc, Weak},
    time::{Duration, Instant},
};

use bytes::Bytes;
use h2::client::SendRequest;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{
    Admitted, Budget, Done, Tries, Upstream, Upstreams, breaker,
    checkout::{Busy, failed, refused},
};
use crate::{
    respond::{Abort, Failure, Fault},
    session::{
        conn::{ClientIo, Conn, ms},
        h2::grpc_timeout,
    },
};

/// A gRPC route reached over HTTP/1.1.
pub const NEEDS_H2: Failure = Failure::client(400, "grpc.needs_http2");

/// A worker's HTTP/2 connections to one upstream's servers, by server
/// index: one each, multiplexed. They live in the worker's `Upstream`, so
/// a reload that drops or changes the upstream drops them (h2 closes a
/// client connection once every handle is gone and its streams ended).
#[derive(Default)]
pub struct Channels(RefCell<Vec<Option<Channel>>>);

/// A connection's number (a connection that ended forgets itself only if
/// not yet replaced) and its handle.
type Channel = (u64, SendRequest<Bytes>);

impl Channels {
    fn get(&self, server: usize) -> Option<SendRequest<Bytes>> {
        self.0
            .borrow()
            .get(server)?
            .as_ref()
            .map(|(_, s)| s.clone())
    }

    fn put(&self, server: usize, id: u64, send: SendRequest<Bytes>) {
        let mut v = self.0.borrow_mut();
        if v.len() <= server {
            v.resize_with(server + 1, || None);
        }
        v[server] = Some((id, send));
    }

    /// Forgets `server`'s connection (only `id`, when given: a newer one
    /// stays).
    fn forget(&self, server: usize, id: Option<u64>) {
        if let Some(slot) = self.0.borrow_mut().get_mut(server)
            && slot
                .as_ref()
                .is_some_and(|(i, _)| id.is_none_or(|id| id == *i))
        {
            *slot = None;
        }
    }
}

thread_local! {
    static NEXT_ID: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Server `server`'s connection: the worker's, or a new one (over TLS on
/// a TLS hop, which must agree on `h2` in ALPN; a TLS upstream whose
/// client could not be built is never spoken to in plain text).
async fn connection(
    up: &Rc<Upstream>,
    server: usize,
    addr: SocketAddr,
    connect: Duration,
) -> Result<SendRequest<Bytes>, Failure> {
    if let Some(s) = up.channels.get(server) {
        return Ok(s);
    }
    let tls = match up.pool.borrow().settings.tls.is_some() {
        true => Some(up.health.tls_for(addr).ok_or(Failure::UPSTREAM_TLS)?),
        false => None,
    };
    let tcp = match tokio::time::timeout(connect, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(t)) => t,
        Ok(Err(_)) => return Err(Failure::UPSTREAM_CONNECT),
        Err(_) => return Err(Failure::UPSTREAM_TIMEOUT),
    };
    let _ = tcp.set_nodelay(true);
    let Some((config, name)) = tls else {
        return handshake(up, server, addr, connect, tcp).await;
    };
    let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
    let tls = match tokio::time::timeout(connect, tls).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            tracing::warn!(
                "upstream {} server {addr}: TLS handshake failed: {e}",
                up.health.name
            );
            return Err(Failure::UPSTREAM_TLS);
        }
        Err(_) => return Err(Failure::UPSTREAM_TIMEOUT),
    };
    if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
        tracing::warn!(
            "upstream {} server {addr}: TLS handshake did not agree on h2 in ALPN",
            up.health.name
        );
        return Err(Failure::UPSTREAM_PROTOCOL);
    }
    handshake(up, server, addr, connect, tls).await
}

/// The HTTP/2 handshake on `io`; the connection is driven by a task of
/// its own and forgotten when it ends.
async fn handshake<T>(
    up: &Rc<Upstream>,
    server: usize,
    addr: SocketAddr,
    connect: Duration,
    io: T,
) -> Result<SendRequest<Bytes>, Failure>
where
    T: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let (send, conn) = match tokio::time::timeout(connect, h2::client::handshake(io)).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(_)) => return Err(Failure::UPSTREAM_PROTOCOL),
        Err(_) => return Err(Failure::UPSTREAM_TIMEOUT),
    };
    let id = NEXT_ID.replace(NEXT_ID.get() + 1);
    up.channels.put(server, id, send.clone());
    up.pool.borrow_mut().opened(server);
    let owner: Weak<Upstream> = Rc::downgrade(up);
    tokio_uring::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("gRPC upstream {addr}: connection ended: {e}");
        }
        if let Some(up) = owner.upgrade() {
            up.channels.forget(server, Some(id));
        }
    });
    Ok(send)
}

/// The HTTP/2 request for the HTTP/1.1 upstream head `head`, and its
/// `grpc-timeout`.
fn request_of(head: &[u8]) -> Option<(::http::Request<()>, Option<Duration>)> {
    let mut fields = [httparse::EMPTY_HEADER; 256];
    let mut parsed = httparse::Request::new(&mut fields);
    parsed.parse(head).ok()?;
    let host = parsed
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("host"))
        .map(|h| h.value)?;
    let uri = format!("http://{}{}", std::str::from_utf8(host).ok()?, parsed.path?);
    let mut req = ::http::Request::new(());
    *req.method_mut() = ::http::Method::from_bytes(parsed.method?.as_bytes()).ok()?;
    *req.uri_mut() = uri.parse().ok()?;
    let mut timeout = None;
    let map = req.headers_mut();
    for h in parsed.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        match name.as_str() {
            "host" | "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding"
            | "upgrade" | "te" | "content-length" => continue,
            "grpc-timeout" => timeout = grpc_timeout(h.value),
            _ => {}
        }
        let (Ok(n), Ok(v)) = (
            ::http::HeaderName::from_bytes(name.as_bytes()),
            ::http::HeaderValue::from_bytes(h.value),
        ) else {
            continue;
        };
        map.append(n, v);
    }
    map.insert(
        ::http::header::TE,
        ::http::HeaderValue::from_static("trailers"),
    );
    Some((req, timeout))
}

/// Relays an admitted gRPC call to one of its upstream's servers, picked
/// as for any route (balance, health checks, ejections, the breaker's
/// `max_requests`). A server that cannot be reached or handshaken is
/// marked down and the call goes to another within `retries`: nothing was
/// sent yet. Once the request went, the call is the server's: a stream it
/// breaks ends with UNAVAILABLE and counts toward its ejection.
pub async fn forward(w: &Upstreams, c: &mut Conn, a: &Admitted) -> Result<Done, Abort> {
    let up = w.pool(c.snap(), a.upstream);
    let _in_flight = breaker(&up.health, a)?;
    let budget = Budget::of(&up.pool.borrow().settings);
    let Some((req, timeout)) = request_of(&c.req.wire.up_head) else {
        return Err(Abort::Respond(Failure::UPSTREAM_PROTOCOL, None));
    };
    let ClientIo::H2(io) = &mut c.io else {
        return Err(Abort::Respond(NEEDS_H2, None));
    };
    let started = Instant::now();
    let deadline = timeout.map(|t| started + t);
    let mut tries = Tries::default();
    let (server, addr, busy, (response, body)) = loop {
        tries.attempts += 1;
        let picked = up.pool.borrow_mut().pick(Instant::now(), tries.exclude);
        let Some(server) = picked else {
            return Err(tries.exhausted());
        };
        let addr = up.pool.borrow().addr(server);
        let busy = Busy::begin(&up.pool, server);
        match open(&up, server, addr, ms(budget.connect_ms), &req).await {
            Ok(sent) => break (server, addr, busy, sent),
            // Nothing went: another server may take the call.
            Err(f) if f.fault == Fault::Upstream => {
                refused(&up, server, addr);
                tries.connect_failed(f, (server, addr), budget)?;
            }
            Err(f) => return Err(Abort::Respond(f, Some(addr))),
        }
    };
    let relayed = io.relay_grpc(response, body, deadline).await;
    drop(busy);
    match relayed.ended_by_gateway {
        Some((code, why)) => {
            tracing::debug!("gRPC call to {addr} ended by the gateway: status {code} ({why})");
            if why.starts_with("upstream.") {
                failed(&up, server, addr);
            }
        }
        None => up.health.answered(server),
    }
    Ok(Done {
        status: 200,
        upstream: Some(addr),
        upstream_time: relayed
            .head_at
            .map(|t| t.saturating_duration_since(started)),
        bytes: relayed.bytes,
        client_reusable: true,
        switched: None,
    })
}

/// Sends `req`'s head on `server`'s connection. A pooled connection the
/// server closed meanwhile gets one fresh try (it says nothing about the
/// server).
async fn open(
    up: &Rc<Upstream>,
    server: usize,
    addr: SocketAddr,
    connect: Duration,
    req: &::http::Request<()>,
) -> Result<(h2::client::ResponseFuture, h2::SendStream<Bytes>), Failure> {
    for _ in 0..2 {
        let send = connection(up, server, addr, connect).await?;
        match send.ready().await {
            Ok(mut ready) => {
                return ready
                    .send_request(req.clone(), false)
                    .map_err(|_| Failure::UPSTREAM_CLOSED);
            }
            Err(_) => up.channels.forget(server, None),
        }
    }
    Err(Failure::UPSTREAM_CLOSED)
}
