//! The response as the client gets it: the upstream's head read (interim
//! 1xx skipped) and rewritten, then the body relayed as it arrives, re-framed
//! where the client needs another framing (chunked for HTTP/1.1 when the
//! upstream delimits by close; raw for HTTP/1.0).

use std::{
    io::Write as _,
    net::SocketAddr,
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

use super::{Admitted, Attempt, upstream_conn::UpstreamConn};
use crate::{
    conn::{Conn, ms},
    http::{self, Framing, MAX_HEADERS, chunked, is_hop_by_hop},
    respond::Abort,
    respond::Failure,
    stages::auth::Identity,
    tls::{StreamError, deadline},
};

/// What the response head said, once it was sent on.
pub(super) struct Head {
    pub status: u16,
    pub framing: Framing,
    pub upstream_keep: bool,
}

/// Reads the response head within `response_ms` (skipping interim 1xx, as
/// the gateway answered 100-continue itself) and writes the client's head
/// into the request's response-head scratch.
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
        _ => return Err(give_up(Failure::UPSTREAM_PROTOCOL)),
    };
    // SIGTERM may have come while the upstream worked: say close now.
    let client_keep = a.keep_alive && !stopping.load(Ordering::Relaxed);
    let mut out = std::mem::take(&mut c.req.wire.out);
    let headers = &c.snap().routes[a.route].headers;
    let authenticated = a.identity() != Identity::Anonymous;
    let [ours, private] = headers.lines(authenticated);
    write_client_head(
        &mut out,
        &resp,
        a,
        client_keep,
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
    };
    let len = resp.len;
    conn.consume(len);
    Ok(head)
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
    a: &Admitted,
    client_keep: bool,
    added: [&[u8]; 4],
    overridden: impl Fn(&str) -> bool,
) {
    out.clear();
    let _ = write!(out, "HTTP/1.1 {} {}\r\n", resp.code, resp.reason);
    let has_connection = resp
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("connection"));
    // HEAD and 304 keep the upstream's Content-Length: it describes the
    // representation, not this (empty) body.
    let keep_length = a.head_request || resp.code == 304;
    for h in resp.headers {
        let name = h.name;
        let is_length = name.eq_ignore_ascii_case("content-length");
        if is_hop_by_hop(name)
            || (is_length && !keep_length)
            || (has_connection && super::request::named_by_connection(resp.headers, name))
            || overridden(name)
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
        Framing::Chunked | Framing::UntilClose if !a.http10 => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n")
        }
        Framing::Chunked | Framing::UntilClose | Framing::None => {}
    }
    for lines in added {
        out.extend_from_slice(lines);
    }
    let close = !client_keep
        || (a.http10 && matches!(resp.framing, Framing::Chunked | Framing::UntilClose));
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if a.http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
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

/// Sends the head written by [`read_head`] and relays the body.
pub(super) async fn relay(
    c: &mut Conn,
    conn: &mut UpstreamConn,
    a: &Admitted,
    framing: Framing,
    response_ms: u64,
) -> Relayed {
    let out = std::mem::take(&mut c.req.wire.out);
    let r = match framing {
        Framing::None => c.tls.send(&[&out]).await.map(|()| 0).map_err(client),
        Framing::Length(total) => relay_length(c, conn, &out, total, response_ms).await,
        Framing::Chunked => relay_chunked(c, conn, &out, a.http10, response_ms).await,
        Framing::UntilClose => relay_until_close(c, conn, &out, !a.http10, response_ms).await,
    };
    c.req.wire.out = out;
    r
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
    head: &[u8],
    total: u64,
    response_ms: u64,
) -> Relayed {
    let first = (conn.pending().len() as u64).min(total) as usize;
    c.tls
        .send(&[head, &conn.pending()[..first]])
        .await
        .map_err(client)?;
    conn.consume(first);
    let mut sent = first as u64;
    while sent < total {
        if more(conn, response_ms).await? == 0 {
            return Err(Relay::Upstream(Failure::UPSTREAM_CLOSED));
        }
        let take = (conn.pending().len() as u64).min(total - sent) as usize;
        c.tls
            .send(&[&conn.pending()[..take]])
            .await
            .map_err(client)?;
        conn.consume(take);
        sent += take as u64;
    }
    Ok(sent)
}

async fn relay_chunked(
    c: &mut Conn,
    conn: &mut UpstreamConn,
    head: &[u8],
    http10: bool,
    response_ms: u64,
) -> Relayed {
    // An HTTP/1.0 client cannot read chunked: it gets the data raw.
    let mut dec = if http10 {
        chunked::Decoder::dechunking()
    } else {
        chunked::Decoder::new()
    };
    let mut chunks = std::mem::take(&mut c.req.wire.chunks);
    let r = async {
        let mut first = true;
        loop {
            chunks.clear();
            let p = dec.feed(conn.pending(), Some(&mut chunks)).map_err(|_| {
                if first {
                    Relay::Unsent(Failure::UPSTREAM_PROTOCOL)
                } else {
                    Relay::Upstream(Failure::UPSTREAM_PROTOCOL)
                }
            })?;
            conn.consume(p.consumed);
            let sent = if first {
                c.tls.send(&[head, &chunks]).await
            } else {
                c.tls.send(&[&chunks]).await
            };
            sent.map_err(client)?;
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
    c.req.wire.chunks = chunks;
    r
}

async fn relay_until_close(
    c: &mut Conn,
    conn: &mut UpstreamConn,
    head: &[u8],
    rechunk: bool,
    response_ms: u64,
) -> Relayed {
    c.tls.send(&[head]).await.map_err(client)?;
    let mut bytes = 0u64;
    loop {
        let pending = conn.pending();
        if !pending.is_empty() {
            bytes += pending.len() as u64;
            let sent = if rechunk {
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
            sent.map_err(client)?;
            let n = conn.pending().len();
            conn.consume(n);
            continue;
        }
        if more(conn, response_ms).await? == 0 {
            break;
        }
    }
    if rechunk {
        c.tls.send(&[b"0\r\n\r\n"]).await.map_err(client)?;
    }
    Ok(bytes)
}
