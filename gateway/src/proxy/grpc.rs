//! gRPC: a `grpc = true` route's calls go to an upstream that speaks
//! HTTP/2 (`http2 = true`: h2c, prior knowledge), stream for stream over
//! one multiplexed connection per server and worker. The upstream request
//! is the HTTP/1.1 head `proxy::request` built (so the forwarding and
//! identity headers, and what is stripped, are the same as for any route),
//! turned into HTTP/2 with `te: trailers`; the call is relayed both ways by
//! the client's stream (`session::h2::StreamIo::relay_grpc`), trailers
//! included, with `grpc-timeout` as its deadline.

use std::{
    cell::{Cell, RefCell},
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::Bytes;
use h2::client::SendRequest;

use super::{Admitted, Done};
use crate::{
    respond::{Abort, Failure},
    session::{
        conn::{ClientIo, Conn, ms},
        h2::grpc_timeout,
    },
};

/// A gRPC route reached over HTTP/1.1.
pub const NEEDS_H2: Failure = Failure::client(400, "grpc.needs_http2");

thread_local! {
    /// One HTTP/2 connection per server, per worker, with its number (a
    /// connection that ended removes itself only if not yet replaced).
    static CONNS: RefCell<HashMap<SocketAddr, (u64, SendRequest<Bytes>)>> =
        RefCell::new(HashMap::new());
    static NEXT_ID: Cell<u64> = const { Cell::new(0) };
    static TURN: Cell<usize> = const { Cell::new(0) };
}

/// The server's connection: the worker's, or a new one.
async fn connection(addr: SocketAddr, connect: Duration) -> Result<SendRequest<Bytes>, Failure> {
    if let Some((_, s)) = CONNS.with_borrow(|m| m.get(&addr).cloned()) {
        return Ok(s);
    }
    let tcp = match tokio::time::timeout(connect, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(t)) => t,
        Ok(Err(_)) => return Err(Failure::UPSTREAM_CONNECT),
        Err(_) => return Err(Failure::UPSTREAM_TIMEOUT),
    };
    let _ = tcp.set_nodelay(true);
    let (send, conn) = match tokio::time::timeout(connect, h2::client::handshake(tcp)).await {
        Ok(Ok(pair)) => pair,
        _ => return Err(Failure::UPSTREAM_PROTOCOL),
    };
    let id = NEXT_ID.replace(NEXT_ID.get() + 1);
    CONNS.with_borrow_mut(|m| m.insert(addr, (id, send.clone())));
    tokio_uring::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("gRPC upstream {addr}: connection ended: {e}");
        }
        CONNS.with_borrow_mut(|m| {
            if m.get(&addr).is_some_and(|(i, _)| *i == id) {
                m.remove(&addr);
            }
        });
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

/// Relays an admitted gRPC call to its upstream.
pub async fn forward(c: &mut Conn, a: &Admitted) -> Result<Done, Abort> {
    let snap = c.snap_arc();
    let up = &snap.cfg.upstreams[a.upstream];
    let Some(&addr) = up
        .servers
        .get(TURN.replace(TURN.get().wrapping_add(1)) % up.servers.len().max(1))
    else {
        return Err(Abort::Respond(Failure::UPSTREAM_DOWN, None));
    };
    let Some((req, timeout)) = request_of(&c.req.wire.up_head) else {
        return Err(Abort::Respond(Failure::UPSTREAM_PROTOCOL, Some(addr)));
    };
    let ClientIo::H2(io) = &mut c.io else {
        return Err(Abort::Respond(NEEDS_H2, None));
    };
    let started = Instant::now();
    let deadline = timeout.map(|t| started + t);
    let fail = |f: Failure| Abort::Respond(f, Some(addr));
    // A pooled connection the server closed meanwhile: one new try.
    let mut sent = None;
    for _ in 0..2 {
        let send = connection(addr, ms(up.connect_timeout_ms))
            .await
            .map_err(fail)?;
        match send.ready().await {
            Ok(mut ready) => {
                sent = Some(
                    ready
                        .send_request(req.clone(), false)
                        .map_err(|_| fail(Failure::UPSTREAM_CLOSED))?,
                );
                break;
            }
            Err(_) => {
                CONNS.with_borrow_mut(|m| m.remove(&addr));
            }
        }
    }
    let (response, body) = sent.ok_or(fail(Failure::UPSTREAM_CLOSED))?;
    let relayed = io.relay_grpc(response, body, deadline).await;
    if let Some((code, why)) = relayed.ended_by_gateway {
        tracing::debug!("gRPC call to {addr} ended by the gateway: status {code} ({why})");
    }
    Ok(Done {
        status: 200,
        upstream: Some(addr),
        upstream_time: relayed
            .head_at
            .map(|t| t.saturating_duration_since(started)),
        bytes: relayed.bytes,
        client_reusable: true,
    })
}
