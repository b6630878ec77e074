//! The upstream's response: its head read (interim 1xx skipped) and handed
//! to the client's session to rewrite, then its body read as the upstream
//! frames it and relayed as it arrives (the session frames it for the
//! client: `session::h1`).

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

use super::{Admitted, Attempt, upstream_conn::UpstreamConn};
use crate::{
    http::{self, Framing, MAX_HEADERS, chunked},
    respond::Abort,
    respond::Failure,
    session::conn::{Conn, ms},
    session::h1::{self, BodyOut},
    stages::auth::Identity,
    tls::{StreamError, deadline},
};

/// What the response head said, and the client's body on its way.
pub(super) struct Head {
    pub status: u16,
    pub framing: Framing,
    pub upstream_keep: bool,
    pub body: BodyOut,
}

/// Reads the response head within `response_ms` (skipping interim 1xx, as
/// the gateway answered 100-continue itself) and has the session write
/// the client's head (sent with the body's first bytes).
pub(super) async fn read_head(
    c: &mut Conn,
    conn: &mut UpstreamConn,
    a: &Admitted,
    stopping: &AtomicBool,
    response_ms: u64,
    addr: SocketAddr,
) -> Result<Head, Attempt> {
    let limits = c.snap().cfg.limits;
    let give_up = |f| Attempt::Abort(Abort::Respond(f, Some(addr)));
    let response_deadline = Instant::now() + ms(response_ms);
    let started_reading = conn.pending().is_empty();
    loop {
        if http::head_end(conn.pending()).is_some() {
            match peek_status(conn.pending()) {
                Some((code, len)) if (100..200).contains(&code) && code != 101 => {
                    conn.consume(len);
                    continue;
                }
                _ => break,
            }
        }
        if conn.pending().len() > limits.max_header_bytes * 4 {
            return Err(give_up(Failure::UPSTREAM_PROTOCOL));
        }
        let left = response_deadline.saturating_duration_since(Instant::now());
        let ended = match deadline(conn.fd(), left, conn.read_more()).await {
            None => return Err(give_up(Failure::UPSTREAM_TIMEOUT)),
            Some(Ok(0)) => Failure::UPSTREAM_CLOSED,
            Some(Err(e)) => super::upstream_conn::read_failure(&e),
            Some(Ok(_)) => continue,
        };
        // Closed before a byte of response: safe to try again.
        if started_reading && conn.pending().is_empty() {
            return Err(Attempt::Retry(ended));
        }
        return Err(give_up(ended));
    }
    let mut hdrs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let parsed = http::response::parse(
        conn.pending(),
        &mut hdrs,
        limits.max_header_bytes * 4,
        a.head_request,
    );
    let resp = match parsed {
        Ok(Some(r)) if r.code != 101 => r,
        // A switch only to what was asked, answering this handshake.
        Ok(Some(r))
            if a.websocket
                .is_some_and(|ws| switched_to_websocket(&r, &ws.accept)) =>
        {
            r
        }
        _ => return Err(give_up(Failure::UPSTREAM_PROTOCOL)),
    };
    // SIGTERM may have come while the upstream worked: say close now.
    let client_keep = a.keep_alive && !stopping.load(Ordering::Relaxed);
    let mut out = std::mem::take(&mut c.req.wire.out);
    let headers = &c.snap().routes[a.route].headers;
    let authenticated = a.identity() != Identity::Anonymous;
    let [ours, private] = headers.lines(authenticated);
    let client = h1::Client {
        head_request: a.head_request,
        http10: a.http10,
        keep: client_keep,
        framed: c.io.frames_bodies(),
    };
    let body = h1::write_response_head(
        &mut out,
        &resp,
        client,
        [
            ours,
            private,
            &c.req.extras.limit_lines,
            &c.req.extras.cors_lines,
        ],
        |n| headers.drops(n, authenticated),
    );
    c.req.wire.out = out;
    let head = Head {
        status: resp.code,
        framing: resp.framing,
        upstream_keep: resp.keep_alive,
        body,
    };
    let len = resp.len;
    conn.consume(len);
    Ok(head)
}

/// Whether a 101 switches to WebSocket and answers the handshake with
/// `accept` (RFC 6455 §4.2.2: `Upgrade: websocket`, `Connection: upgrade`,
/// that `Sec-WebSocket-Accept`). Anything else would leave the client
/// talking to a protocol it did not ask for.
fn switched_to_websocket(resp: &http::response::ResponseHead<'_, '_>, accept: &[u8]) -> bool {
    let (mut upgrade, mut connection, mut accepted) = (0, false, 0);
    for h in resp.headers {
        if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade += if h.value.trim_ascii().eq_ignore_ascii_case(b"websocket") {
                1
            } else {
                2
            };
        } else if h.name.eq_ignore_ascii_case("connection") {
            connection |= http::lists_token(h.value, "upgrade");
        } else if h.name.eq_ignore_ascii_case("sec-websocket-accept") {
            accepted += if h.value.trim_ascii() == accept { 1 } else { 2 };
        }
    }
    upgrade == 1 && connection && accepted == 1
}

/// Status code and head length of a complete response head, for 1xx skipping.
fn peek_status(buf: &[u8]) -> Option<(u16, usize)> {
    let end = http::head_end(buf)?;
    let line = buf.get(9..12)?;
    let code = std::str::from_utf8(line).ok()?.parse().ok()?;
    Some((code, end))
}

/// How a relay ended: body bytes sent, or why it stopped.
pub(super) type Relayed = Result<u64, Relay>;

/// Why a relay stopped early.
pub(super) enum Relay {
    /// The upstream's body was broken before anything was sent: the client
    /// can still get an error response.
    Unsent(Failure),
    /// The client could not be written to.
    Client,
    /// The upstream failed mid-body (the client already has the head).
    Upstream(Failure),
}

/// Relays the body as the upstream frames it, through the client's
/// `body` (which sends the head with the first bytes).
pub(super) async fn relay(
    c: &mut Conn,
    conn: &mut UpstreamConn,
    framing: Framing,
    mut body: BodyOut,
    response_ms: u64,
) -> Relayed {
    let sent = match framing {
        Framing::None => Ok(0),
        Framing::Length(total) => relay_length(c, conn, &mut body, total, response_ms).await,
        Framing::Chunked => relay_chunked(c, conn, &mut body, response_ms).await,
        Framing::UntilClose => relay_until_close(c, conn, &mut body, response_ms).await,
    }?;
    body.finish(c).await.map_err(client)?;
    Ok(sent)
}

fn client(_: StreamError) -> Relay {
    Relay::Client
}

/// Reads more of the response body within the gap timeout.
async fn more(conn: &mut UpstreamConn, response_ms: u64) -> Result<usize, Relay> {
    match deadline(conn.fd(), ms(response_ms), conn.read_more()).await {
        None => Err(Relay::Upstream(Failure::UPSTREAM_TIMEOUT)),
        Some(Ok(n)) => Ok(n),
        Some(Err(e)) => Err(Relay::Upstream(super::upstream_conn::read_failure(&e))),
    }
}

async fn relay_length(
    c: &mut Conn,
    conn: &mut UpstreamConn,
    body: &mut BodyOut,
    total: u64,
    response_ms: u64,
) -> Relayed {
    let mut sent = 0u64;
    loop {
        let take = (conn.pending().len() as u64).min(total - sent) as usize;
        body.send(c, &conn.pending()[..take])
            .await
            .map_err(client)?;
        conn.consume(take);
        sent += take as u64;
        if sent == total {
            return Ok(sent);
        }
        if more(conn, response_ms).await? == 0 {
            return Err(Relay::Upstream(Failure::UPSTREAM_CLOSED));
        }
    }
}

async fn relay_chunked(
    c: &mut Conn,
    conn: &mut UpstreamConn,
    body: &mut BodyOut,
    response_ms: u64,
) -> Relayed {
    let mut dec = chunked::Decoder::dechunking();
    let mut data = std::mem::take(&mut c.req.wire.chunks);
    let r = async {
        let mut first = true;
        loop {
            data.clear();
            let p = dec.feed(conn.pending(), Some(&mut data)).map_err(|_| {
                if first {
                    Relay::Unsent(Failure::UPSTREAM_PROTOCOL)
                } else {
                    Relay::Upstream(Failure::UPSTREAM_PROTOCOL)
                }
            })?;
            conn.consume(p.consumed);
            body.send(c, &data).await.map_err(client)?;
            first = false;
            if dec.is_done() {
                return Ok(dec.body_bytes);
            }
            if more(conn, response_ms).await? == 0 {
                return Err(Relay::Upstream(Failure::UPSTREAM_CLOSED));
            }
        }
    }
    .await;
    c.req.wire.chunks = data;
    r
}

async fn relay_until_close(
    c: &mut Conn,
    conn: &mut UpstreamConn,
    body: &mut BodyOut,
    response_ms: u64,
) -> Relayed {
    let mut bytes = 0u64;
    loop {
        let n = conn.pending().len();
        bytes += n as u64;
        body.send(c, conn.pending()).await.map_err(client)?;
        conn.consume(n);
        if more(conn, response_ms).await? == 0 {
            return Ok(bytes);
        }
    }
}
