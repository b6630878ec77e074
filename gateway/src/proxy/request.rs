//! The request as the upstream gets it: the head rewritten (normalized
//! path, hop-by-hop fields out, forwarding fields ours), then the body,
//! coalesced with the head when small, streamed (and re-chunked) otherwise.

use std::{io::Write as _, net::SocketAddr};

use super::{Attempt, upstream_conn::UpstreamConn};
use crate::{
    config::Underscores,
    http::{self, Framing, is_hop_by_hop},
    respond::{Abort, Failure},
    session::conn::{Conn, ms, read_body},
    session::h1,
    snapshot::Snapshot,
    stages::auth::Identity,
};

/// Bodies up to this size travel in the same write as the request head.
const COALESCE_BODY: usize = 16 * 1024;

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
/// Also the method overrides (Rack, Express, Laravel): a POST routed as
/// POST must not run as DELETE behind the gateway.
const URL_OVERRIDE_FIELDS: [&str; 10] = [
    "x-original-url",
    "x-rewrite-url",
    "x-override-url",
    "x-original-uri",
    "x-forwarded-uri",
    "x-forwarded-prefix",
    "x-envoy-original-path",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

fn is_one_of(name: &str, list: &[&str]) -> bool {
    list.iter().any(|f| header_is(name, f))
}

/// Whether a field name is `want` (lower case), reading `_` as `-`: CGI,
/// WSGI and PHP backends fold both spellings onto one variable, so with
/// `underscores_in_headers = "allow"` `X_Consumer_Id` is `x-consumer-id`.
fn header_is(name: &str, want: &str) -> bool {
    name.len() == want.len()
        && name
            .bytes()
            .zip(want.bytes())
            .all(|(a, b)| a.to_ascii_lowercase() == b || (a == b'_' && b == b'-'))
}

/// What happens to a forwarded field: written as is, or left out.
fn keeps_field(name: &str, trusted: bool, underscores: Underscores) -> bool {
    // CGI/WSGI backends fold `X_Forwarded_For` onto the same variable as
    // `X-Forwarded-For` (nginx drops such names for the same reason).
    if name.contains('_') && underscores != Underscores::Allow {
        return false;
    }
    // Every listed name starts with x, t, c or f: most fields skip the lists.
    if !matches!(
        name.as_bytes().first().map(u8::to_ascii_lowercase),
        Some(b'x' | b't' | b'c' | b'f')
    ) {
        return true;
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
/// Client fields never forwarded as sent: hop-by-hop and framing fields
/// (the gateway writes its own), the forwarding chain (rewritten), the
/// identity headers (a client's copy is a forgery), and credentials the
/// gateway consumed or never checked.
fn ours_or_hop(name: &str, who: Identity, auth: &crate::config::AuthSettings) -> bool {
    is_hop_by_hop(name)
        || name.eq_ignore_ascii_case("content-length")
        || name.eq_ignore_ascii_case("expect")
        || header_is(name, "x-forwarded-for")
        || header_is(name, "forwarded")
        // Ours: kept from a trusted proxy, else made anew.
        || header_is(name, "x-request-id")
        || header_is(name, &auth.consumer_header)
        || header_is(name, &auth.roles_header)
        || header_is(name, &auth.subject_header)
        // A caller proven by its API key: an Authorization it also sent was
        // never checked, and a backend might believe it.
        || (matches!(who, Identity::Consumer(_)) && header_is(name, "authorization"))
        // The key stays at the gateway.
        || (who != Identity::Anonymous && name.eq_ignore_ascii_case(&auth.key_header))
}

/// Who the upstream is told is calling.
#[derive(Clone, Copy)]
pub struct Caller<'a> {
    /// The identity the auth stage proved.
    pub who: Identity,
    /// A token's subject (empty otherwise).
    pub subject: &'a str,
}

pub fn write_upstream_head(
    out: &mut Vec<u8>,
    head: &http::request::RequestHead<'_, '_>,
    path: &str,
    peer: SocketAddr,
    caller: Caller<'_>,
    snap: &Snapshot,
    request_id: &str,
) {
    let who = caller.who;
    let auth = &snap.cfg.auth;
    out.clear();
    let trusted = snap.is_trusted_proxy(peer.ip());
    let underscores = snap.cfg.proxy.underscores_in_headers;
    let has_connection = head
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("connection"));
    // The normalized path, and the query as the client sent it.
    let query = head.target.find('?').map_or("", |i| &head.target[i..]);
    let path = if head.target == "*" { "*" } else { path };
    let _ = write!(out, "{} {path}{query} HTTP/1.1\r\n", head.method);
    for h in head.headers {
        let name = h.name;
        if ours_or_hop(name, who, auth)
            || (has_connection && http::named_by_connection(head.headers, name))
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
        let _ = write!(out, "host: {}\r\n", snap.cfg.https);
    }
    write_identity(out, caller, snap);
    let _ = write!(out, "x-request-id: {request_id}\r\n");
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
    write_framing(out, head.framing);
}

/// Asks the upstream to switch to WebSocket: the hop-by-hop fields the
/// head was written without, before its end (a handshake has no body, so
/// no framing field).
pub fn ask_upgrade(out: &mut Vec<u8>) {
    out.truncate(out.len().saturating_sub(2));
    out.extend_from_slice(b"connection: upgrade\r\nupgrade: websocket\r\n\r\n");
}

/// The framing field and the end of the head: always last, so
/// [`reframe_whole`] can replace it.
fn write_framing(out: &mut Vec<u8>, framing: Framing) {
    match framing {
        Framing::Length(n) => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        Framing::Chunked => out.extend_from_slice(CHUNKED_END),
        Framing::None | Framing::UntilClose => {}
    }
    out.extend_from_slice(b"\r\n");
}

const CHUNKED_END: &[u8] = b"transfer-encoding: chunked\r\n";

/// An upstream head written for a chunked body whose `len` data bytes were
/// read whole: it says Content-Length instead.
pub fn reframe_whole(out: &mut Vec<u8>, len: u64) {
    let end = CHUNKED_END.len() + 2;
    debug_assert!(out.ends_with(b"transfer-encoding: chunked\r\n\r\n"));
    if out.len() >= end && out[out.len() - end..].starts_with(CHUNKED_END) {
        out.truncate(out.len() - end);
        write_framing(out, Framing::Length(len));
    }
}

/// The identity headers: a consumer's id and roles, or a token's subject
/// and the roles routes know of (client copies were dropped above).
fn write_identity(out: &mut Vec<u8>, caller: Caller<'_>, snap: &Snapshot) {
    let auth = &snap.cfg.auth;
    match caller.who {
        Identity::Anonymous => {}
        Identity::Consumer(i) => {
            let c = snap.keys.consumer(i);
            let _ = write!(out, "{}: {}\r\n", auth.consumer_header, c.id);
            if !c.roles_line.is_empty() {
                let _ = write!(out, "{}: {}\r\n", auth.roles_header, c.roles_line);
            }
        }
        Identity::Token(t) => {
            if !caller.subject.is_empty() {
                let _ = write!(out, "{}: {}\r\n", auth.subject_header, caller.subject);
            }
            if t.roles != 0 {
                let _ = write!(out, "{}: ", auth.roles_header);
                let names = snap
                    .vocab
                    .roles
                    .iter()
                    .enumerate()
                    .filter(|(b, _)| t.roles & 1 << b != 0);
                for (n, (_, role)) in names.enumerate() {
                    if n > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(role.as_bytes());
                }
                out.extend_from_slice(b"\r\n");
            }
        }
    }
}

/// Sends the head (already in the request's upstream-head scratch) and the body.
pub(super) async fn send(
    c: &mut Conn,
    conn: &mut UpstreamConn,
    framing: Framing,
    max_body: u64,
    response_ms: u64,
    addr: SocketAddr,
) -> Result<(), Attempt> {
    let upstream_gone = |_| Attempt::Retry(Failure::UPSTREAM_CLOSED);
    let mut head = std::mem::take(&mut c.req.wire.up_head);
    let mut coalesced = 0;
    if let Framing::Length(total) = framing {
        let avail = (c.pending().len() as u64).min(total) as usize;
        if total as usize == avail && avail <= COALESCE_BODY {
            head.extend_from_slice(&c.pending()[..avail]);
            coalesced = avail;
        }
    }
    let len = head.len();
    let (res, buf) = conn.write(head, 0..len, ms(response_ms)).await;
    if let Err(e) = res {
        // A timed-out write took the head with it: no retry can send it.
        if e.kind() == std::io::ErrorKind::TimedOut {
            c.req.wire.up_head = Vec::new();
            return Err(Attempt::Abort(Abort::Respond(
                Failure::UPSTREAM_TIMEOUT,
                Some(addr),
            )));
        }
        c.req.wire.up_head = buf;
        return Err(upstream_gone(e));
    }
    c.req.wire.up_head = buf;
    c.consume(coalesced);
    match framing {
        Framing::None | Framing::UntilClose => Ok(()),
        Framing::Length(total) => stream_length_body(c, conn, total - coalesced as u64, addr).await,
        Framing::Chunked => stream_chunked_body(c, conn, max_body, addr).await,
    }
}

/// Streams `remaining` Content-Length body bytes from the client.
async fn stream_length_body(
    c: &mut Conn,
    conn: &mut UpstreamConn,
    mut remaining: u64,
    addr: SocketAddr,
) -> Result<(), Attempt> {
    let body_timeout_ms = c.snap().cfg.limits.body_timeout_ms;
    while remaining > 0 {
        if c.pending().is_empty() {
            read_body(c, Some(addr)).await.map_err(Attempt::Abort)?;
        }
        let take = (c.pending().len() as u64).min(remaining) as usize;
        let (buf, start) = c.take_inbuf();
        let (res, buf) = conn
            .write(buf, start..start + take, ms(body_timeout_ms))
            .await;
        if res
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::TimedOut)
        {
            // The upstream stopped reading (a plain write took the buffer
            // with it); the connection is dead.
            return Err(Attempt::Abort(Abort::Close(
                Failure::UPSTREAM_TIMEOUT,
                Some(addr),
            )));
        }
        c.put_inbuf(buf, start);
        res.map_err(|_| Attempt::Abort(Abort::Respond(Failure::UPSTREAM_CLOSED, Some(addr))))?;
        c.consume(take);
        remaining -= take as u64;
    }
    Ok(())
}

/// Streams a chunked body from the client, re-encoded, within `max_body`.
async fn stream_chunked_body(
    c: &mut Conn,
    conn: &mut UpstreamConn,
    max_body: u64,
    addr: SocketAddr,
) -> Result<(), Attempt> {
    let limits = &c.snap().cfg.limits;
    let body_timeout_ms = limits.body_timeout_ms;
    let mut body = h1::Rechunk::new(max_body, limits.max_body_chunks);
    let mut out = std::mem::take(&mut c.req.wire.chunks);
    let refuse = |f: Failure| Attempt::Abort(Abort::Respond(f, Some(addr)));
    let result = async {
        loop {
            out.clear();
            let done = body.step(c, &mut out).map_err(refuse)?;
            if !out.is_empty() {
                let len = out.len();
                let (res, buf) = conn
                    .write(std::mem::take(&mut out), 0..len, ms(body_timeout_ms))
                    .await;
                out = buf;
                res.map_err(|_| refuse(Failure::UPSTREAM_CLOSED))?;
            }
            if done {
                return Ok(());
            }
            read_body(c, Some(addr)).await.map_err(Attempt::Abort)?;
        }
    }
    .await;
    c.req.wire.chunks = out;
    result
}
