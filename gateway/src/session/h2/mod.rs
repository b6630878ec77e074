//! One HTTP/2 stream as the pipeline sees it: its request becomes an
//! HTTP/1.1 head in the stream's read buffer (then parsed by the same
//! strict parser and judged by the same stages as any HTTP/1.1 request),
//! its DATA frames the body after it, and the HTTP/1.1 response the
//! session writes becomes HEADERS and DATA frames. Apache's mod_http2
//! serves h2 the same way: one request path, whatever the client spoke.
//!
//! The translation refuses what downgrade smuggling uses; `h2` itself has
//! already refused connection-specific fields, `te` other than
//! `trailers`, misplaced pseudo-headers, uppercase names and CR, LF or NUL
//! in values, and it checks `content-length` against the DATA received.

mod grpc;

pub use grpc::{Relayed, grpc_status, grpc_timeout};

use std::{future::poll_fn, io, rc::Rc, time::Duration};

use bytes::Bytes;
use h2::{RecvStream, SendStream, server::SendResponse};
use std::cell::RefCell;

use crate::{
    http::{self, chunked::push_size_line},
    respond::Failure,
    tls::StreamError,
};

/// What every stream of a connection shares.
pub struct ConnInfo {
    /// The TLS version, for the access log.
    pub tls_version: &'static str,
    /// The SNI name, for the access log.
    pub sni: Box<str>,
    /// Longest a response waits for the client to open its window.
    pub write_timeout: Duration,
}

/// A stream's response side: its head, then its body. Shared between the
/// [`StreamIo`] that answers and the stream's task, which watches it for
/// the client's RST_STREAM (the work is dropped then: Rapid Reset).
pub struct Responder {
    respond: SendResponse<Bytes>,
    /// The response's body, once its head went.
    send: Option<SendStream<Bytes>>,
}

impl Responder {
    /// A responder for a stream.
    pub fn new(respond: SendResponse<Bytes>) -> Self {
        Self {
            respond,
            send: None,
        }
    }

    /// Ready with the reason once the client reset the stream; pending
    /// otherwise (also once the stream ended or the connection failed:
    /// the work finds that out by itself).
    pub fn poll_reset(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<h2::Reason> {
        let r = match self.send.as_mut() {
            Some(s) => s.poll_reset(cx),
            None => self.respond.poll_reset(cx),
        };
        match r {
            std::task::Poll::Ready(Ok(reason)) => std::task::Poll::Ready(reason),
            _ => std::task::Poll::Pending,
        }
    }
}

/// A stream's two directions, for the pipeline: see the module's text.
pub struct StreamIo {
    respond: Rc<RefCell<Responder>>,
    body: RecvStream,
    /// The request body has no length: it is handed on chunked.
    chunked: bool,
    /// The body's end was handed on.
    body_done: bool,
    /// The response head went.
    responded: bool,
    /// The response head while it is incomplete.
    head: Vec<u8>,
    /// Body bytes the response head announced and not yet sent (`None`:
    /// no length; the body ends with [`StreamIo::end`]).
    remaining: Option<u64>,
    head_request: bool,
    /// END_STREAM (or RST_STREAM) went.
    ended: bool,
    /// A gRPC call (`content-type: application/grpc...`): the gateway's
    /// own refusals are gRPC statuses.
    grpc: bool,
    conn: Rc<ConnInfo>,
}

/// Fields HTTP/2 forbids in a response, which an HTTP/1.1 head may carry.
fn connection_specific(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "te",
    ]
    .iter()
    .any(|n| name.eq_ignore_ascii_case(n))
}

/// Why a stream's request cannot become an HTTP/1.1 request (logged with
/// its reason code; the stream is reset with PROTOCOL_ERROR).
pub const MALFORMED: Failure = Failure::client(400, "h2.malformed");
/// `:authority` and `Host` name different hosts (RFC 9113 §8.3.1); reset
/// like a malformed request.
pub const HOST_MISMATCH: Failure = Failure::client(400, "h2.host_mismatch");
/// CONNECT (a tunnel, not a request the stages can judge): answered 405.
pub const CONNECT: Failure = Failure::client(405, "h2.connect");

/// Writes `req`'s HTTP/1.1 head into `out`: the request line, `Host` from
/// `:authority`, the fields (cookies joined with `; ` as RFC 9113 §8.2.3
/// says, `expect` dropped: flow control does its work), and
/// `transfer-encoding: chunked` when a body comes without a length.
/// Returns whether the body is chunked.
pub fn write_request_head(
    req: &::http::request::Parts,
    has_body: bool,
    out: &mut Vec<u8>,
) -> Result<bool, Failure> {
    if req.method == ::http::Method::CONNECT {
        return Err(match req.uri.authority() {
            Some(_) => CONNECT,
            None => MALFORMED,
        });
    }
    let target = req
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| !p.is_empty())
        .ok_or(MALFORMED)?;
    let host_field = req.headers.get(::http::header::HOST);
    let host = match (req.uri.authority(), host_field) {
        (Some(a), Some(h)) if !a.as_str().as_bytes().eq_ignore_ascii_case(h.as_bytes()) => {
            return Err(HOST_MISMATCH);
        }
        (Some(a), _) => a.as_str().as_bytes(),
        (None, Some(h)) => h.as_bytes(),
        (None, None) => return Err(MALFORMED),
    };
    // No CR, LF or NUL, and no whitespace around a value (RFC 9113 §8.2.1).
    let clean = |v: &[u8]| {
        !v.iter().any(|b| matches!(b, b'\r' | b'\n' | 0))
            && !v.first().is_some_and(|b| matches!(b, b' ' | b'\t'))
            && !v.last().is_some_and(|b| matches!(b, b' ' | b'\t'))
    };
    if !clean(host) {
        return Err(MALFORMED);
    }
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(host);
    out.extend_from_slice(b"\r\n");
    let mut length = false;
    let mut cookies = 0;
    for (name, value) in &req.headers {
        let v = value.as_bytes();
        if !clean(v) || name.as_str().bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(MALFORMED);
        }
        match name.as_str() {
            "host" | "expect" => continue,
            "cookie" => {
                cookies += 1;
                continue;
            }
            "content-length" => length = true,
            n if connection_specific(n) && n != "te" => return Err(MALFORMED),
            _ => {}
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    if cookies > 0 {
        out.extend_from_slice(b"cookie: ");
        for (i, c) in req
            .headers
            .get_all(::http::header::COOKIE)
            .iter()
            .enumerate()
        {
            if i > 0 {
                out.extend_from_slice(b"; ");
            }
            if !clean(c.as_bytes()) {
                return Err(MALFORMED);
            }
            out.extend_from_slice(c.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    let chunked = has_body && !length;
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(chunked)
}

/// A stream failure as the session reports it.
fn h2_error(e: h2::Error) -> StreamError {
    let said = e.to_string();
    StreamError::Io(e.into_io().unwrap_or_else(|| io::Error::other(said)))
}

impl StreamIo {
    /// The stream's directions; `chunked`: the body is handed on chunked.
    pub fn new(
        respond: Rc<RefCell<Responder>>,
        body: RecvStream,
        chunked: bool,
        head_request: bool,
        grpc: bool,
        conn: Rc<ConnInfo>,
    ) -> Self {
        let body_done = body.is_end_stream();
        Self {
            respond,
            body,
            chunked,
            body_done,
            responded: false,
            grpc,
            head: Vec::new(),
            remaining: None,
            head_request,
            ended: false,
            conn,
        }
    }

    /// Whether the request is a gRPC call.
    pub fn is_grpc(&self) -> bool {
        self.grpc
    }

    /// The connection's TLS version.
    pub fn tls_version(&self) -> &'static str {
        self.conn.tls_version
    }

    /// The connection's SNI name.
    pub fn sni(&self) -> &str {
        &self.conn.sni
    }

    /// Appends the request body's next DATA to `dst` (as a chunk when the
    /// body is chunked; its end as the last chunk), opening the client's
    /// window by as much. 0: the body ended (or never was).
    pub async fn read_plain(&mut self, dst: &mut Vec<u8>) -> Result<usize, StreamError> {
        loop {
            if self.body_done {
                return Ok(0);
            }
            match self.body.data().await {
                Some(Ok(data)) => {
                    let n = data.len();
                    let _ = self.body.flow_control().release_capacity(n);
                    if n == 0 {
                        continue;
                    }
                    let before = dst.len();
                    if self.chunked {
                        push_size_line(dst, n as u64);
                        dst.extend_from_slice(&data);
                        dst.extend_from_slice(b"\r\n");
                    } else {
                        dst.extend_from_slice(&data);
                    }
                    return Ok(dst.len() - before);
                }
                Some(Err(e)) => return Err(h2_error(e)),
                None => {
                    self.body_done = true;
                    if self.chunked {
                        // Trailers are not handed on: the upstream is HTTP/1.1.
                        dst.extend_from_slice(b"0\r\n\r\n");
                        return Ok(5);
                    }
                    return Ok(0);
                }
            }
        }
    }

    /// Takes HTTP/1.1 response bytes: the head becomes HEADERS (with
    /// END_STREAM when no body follows), the rest DATA as the client's
    /// window allows.
    pub async fn send(&mut self, parts: &[&[u8]]) -> Result<(), StreamError> {
        for part in parts {
            let mut data: &[u8] = part;
            // A 1xx head is followed by the real one.
            while !self.responded && !self.ended && !data.is_empty() {
                if self.head.is_empty()
                    && let Some(end) = http::head_end(data)
                {
                    // The usual case: the whole head in one part.
                    self.respond_with(&data[..end])?;
                    data = &data[end..];
                    continue;
                }
                let before = self.head.len();
                self.head.extend_from_slice(data);
                let Some(end) = http::head_end(&self.head) else {
                    data = &[];
                    break;
                };
                let head = std::mem::take(&mut self.head);
                self.respond_with(&head[..end])?;
                data = &data[end - before..];
            }
            self.put_body(data).await?;
        }
        Ok(())
    }

    /// Sends the response head `raw` (an HTTP/1.1 head the session wrote).
    fn respond_with(&mut self, raw: &[u8]) -> Result<(), StreamError> {
        let (resp, length) = response_of(raw)?;
        let status = resp.status().as_u16();
        if (100..200).contains(&status) {
            // `100 Continue`: flow control does its work over HTTP/2.
            return Ok(());
        }
        self.remaining = if self.head_request || status == 204 || status == 304 {
            Some(0)
        } else {
            length
        };
        let end = self.remaining == Some(0);
        let mut r = self.respond.borrow_mut();
        let send = r.respond.send_response(resp, end).map_err(h2_error)?;
        r.send = Some(send);
        self.ended = end;
        self.responded = true;
        Ok(())
    }

    /// Sends body bytes as the client's window opens, within the write
    /// timeout (a client that never opens it does not hold the stream).
    async fn put_body(&mut self, mut data: &[u8]) -> Result<(), StreamError> {
        let limit = self.conn.write_timeout;
        if !self.responded {
            return Ok(());
        }
        let respond = self.respond.clone();
        // Borrowed only inside each poll: the task's reset watch borrows too.
        let with_send = |f: &mut dyn FnMut(&mut SendStream<Bytes>)| {
            if let Some(s) = respond.borrow_mut().send.as_mut() {
                f(s);
            }
        };
        while !data.is_empty() && !self.ended {
            with_send(&mut |s| s.reserve_capacity(data.len()));
            // The window is usually open: no timer for what needs no wait.
            let mut ready = 0;
            with_send(&mut |s| ready = s.capacity());
            let granted = if ready > 0 {
                Ok(Some(Ok(ready)))
            } else {
                tokio::time::timeout(
                    limit,
                    poll_fn(|cx| {
                        let mut r = respond.borrow_mut();
                        match r.send.as_mut() {
                            Some(s) => s.poll_capacity(cx),
                            None => std::task::Poll::Ready(None),
                        }
                    }),
                )
                .await
            };
            let n = match granted {
                Err(_) => return Err(StreamError::TimedOut),
                Ok(None) => return Err(StreamError::Io(io::ErrorKind::BrokenPipe.into())),
                Ok(Some(Err(e))) => return Err(h2_error(e)),
                Ok(Some(Ok(n))) => n.min(data.len()),
            };
            if n == 0 {
                continue;
            }
            let end = match &mut self.remaining {
                Some(left) => {
                    *left = left.saturating_sub(n as u64);
                    *left == 0
                }
                None => false,
            };
            let mut sent = Ok(());
            with_send(&mut |s| sent = s.send_data(Bytes::copy_from_slice(&data[..n]), end));
            sent.map_err(h2_error)?;
            self.ended = end;
            data = &data[n..];
        }
        Ok(())
    }

    /// Ends a response body that had no length.
    pub async fn end(&mut self) -> Result<(), StreamError> {
        if !self.responded || self.ended {
            return Ok(());
        }
        self.ended = true;
        match self.respond.borrow_mut().send.as_mut() {
            Some(s) => s.send_data(Bytes::new(), true).map_err(h2_error),
            None => Ok(()),
        }
    }

    /// After the pipeline: a response that did not end is cut with
    /// RST_STREAM and `reason` (INTERNAL_ERROR: the upstream failed
    /// mid-body, the client went; PROTOCOL_ERROR: a malformed request).
    pub fn finish(&mut self, reason: h2::Reason) {
        if self.ended {
            return;
        }
        self.ended = true;
        let mut r = self.respond.borrow_mut();
        match r.send.as_mut() {
            Some(send) => send.send_reset(reason),
            None => r.respond.send_reset(reason),
        }
    }
}

/// Most fields a response head the session wrote may carry.
const MAX_RESPONSE_FIELDS: usize = 256;

/// The HTTP/2 response for an HTTP/1.1 head the session wrote, and the
/// body length it announced. Fields HTTP/2 forbids are left out.
fn response_of(raw: &[u8]) -> Result<(::http::Response<()>, Option<u64>), StreamError> {
    let bad = || StreamError::Io(io::Error::new(io::ErrorKind::InvalidData, "response head"));
    // One copy of the head: every value is a slice of it, not a copy each.
    let shared = Bytes::copy_from_slice(raw);
    let mut fields = [httparse::EMPTY_HEADER; MAX_RESPONSE_FIELDS];
    let mut parsed = httparse::Response::new(&mut fields);
    match parsed.parse(&shared) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(bad()),
    }
    let status = parsed.code.ok_or_else(bad)?;
    let mut resp = ::http::Response::new(());
    *resp.status_mut() = ::http::StatusCode::from_u16(status).map_err(|_| bad())?;
    let mut length = None;
    let map = resp.headers_mut();
    map.reserve(parsed.headers.len());
    for f in parsed.headers.iter() {
        if connection_specific(f.name) {
            continue;
        }
        if f.name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(f.value)
                .ok()
                .and_then(|v| v.trim().parse().ok());
        }
        // A field HTTP/2 cannot carry (a byte a header value may not
        // hold) is left out rather than failing the response.
        let value = shared.slice_ref(f.value);
        if let (Ok(n), Ok(v)) = (
            ::http::HeaderName::from_bytes(f.name.as_bytes()),
            ::http::HeaderValue::from_maybe_shared(value),
        ) {
            map.append(n, v);
        }
    }
    Ok((resp, length))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head_of(req: ::http::Request<()>, has_body: bool) -> Result<(String, bool), Failure> {
        let (parts, ()) = req.into_parts();
        let mut out = Vec::new();
        let chunked = write_request_head(&parts, has_body, &mut out)?;
        Ok((String::from_utf8(out).expect("utf8"), chunked))
    }

    #[test]
    fn a_stream_becomes_an_http11_head_with_host_from_authority() {
        let req = ::http::Request::post("https://api.test/v1/items?x=1")
            .header("content-type", "application/json")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .header("expect", "100-continue")
            .body(())
            .expect("request");
        let (head, chunked) = head_of(req, true).expect("head");
        assert!(chunked);
        assert_eq!(
            head,
            "POST /v1/items?x=1 HTTP/1.1\r\nhost: api.test\r\ncontent-type: application/json\r\ncookie: a=1; b=2\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        let req = ::http::Request::put("https://api.test/a")
            .header("content-length", "3")
            .body(())
            .expect("request");
        let (head, chunked) = head_of(req, true).expect("head");
        assert!(!chunked, "{head}");
        assert!(head.contains("content-length: 3\r\n"), "{head}");
    }

    #[test]
    fn what_downgrade_smuggling_needs_is_refused() {
        let mismatch = ::http::Request::get("https://api.test/a")
            .header("host", "evil.test")
            .body(())
            .expect("request");
        assert_eq!(head_of(mismatch, false).err(), Some(HOST_MISMATCH));
        let te = ::http::Request::post("https://api.test/a")
            .header("transfer-encoding", "chunked")
            .body(())
            .expect("request");
        assert_eq!(head_of(te, true).err(), Some(MALFORMED));
        let connect = ::http::Request::connect("https://api.test:443")
            .body(())
            .expect("request");
        assert_eq!(head_of(connect, false).err(), Some(CONNECT));
        for padded in [" x", "x\t"] {
            let req = ::http::Request::get("https://api.test/a")
                .header("x-a", padded)
                .body(())
                .expect("request");
            assert_eq!(head_of(req, false).err(), Some(MALFORMED), "{padded:?}");
        }
        let tunnel = ::http::Request::connect("https://api.test:443")
            .body(())
            .expect("request");
        let (mut parts, ()) = tunnel.into_parts();
        parts.uri = ::http::Uri::from_static("/");
        assert_eq!(
            write_request_head(&parts, false, &mut Vec::new()).err(),
            Some(MALFORMED),
            "CONNECT without an authority"
        );
        // The same host in another case is the same host.
        let same = ::http::Request::get("https://API.test/a")
            .header("host", "api.TEST")
            .body(())
            .expect("request");
        assert!(head_of(same, false).is_ok());
    }

    #[test]
    fn a_response_head_loses_what_http2_forbids_and_keeps_its_length() {
        let (resp, len) = response_of(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: chunked\r\nX-Kept: y\r\ncontent-length: 12\r\n\r\n",
        )
        .expect("parses");
        assert_eq!(resp.status(), 200);
        assert_eq!(len, Some(12));
        assert!(resp.headers().get("connection").is_none());
        assert!(resp.headers().get("transfer-encoding").is_none());
        assert_eq!(resp.headers()["x-kept"], "y");
    }
}
