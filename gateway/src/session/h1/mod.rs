//! HTTP/1.1 on the client's side: a request head read within the header
//! timeout and parsed strictly (`http::request`), the gateway's own
//! answers written as HTTP/1.1 responses, a request body read as the
//! client frames it (`body`), and a proxied response's head and body
//! framed for the client (`response`).

mod body;
mod response;

pub use body::{Judge, Rechunk, Whole, buffer, read_whole};
pub use response::{BodyOut, Client, write_response_head};

use std::{io::Write as _, time::Instant};

use super::Answer;
use crate::{
    config::Limits,
    http::{
        self, HttpError, MAX_HEADERS,
        request::{HeadLimits, RequestHead},
    },
    respond::{self, Failure, Hint, reason_phrase},
    session::conn::{ClientIo, Conn, ms},
    snapshot::Snapshot,
    tls::StreamError,
};

/// Sends one of the gateway's own answers, with the header lines the
/// request's stages added (CORS, and rate limits where the failure's hint
/// or a document asks). A failure or an empty answer also carries the
/// snapshot's response headers and what the failure's hint asks for (a
/// challenge, the rate-limit lines); a document carries `route_lines` (its
/// route's headers) instead.
pub async fn answer(
    c: &mut Conn,
    answer: Answer<'_>,
    keep: bool,
    route_lines: &[&[u8]],
) -> Result<(), StreamError> {
    c.unpark();
    let mut out = std::mem::take(&mut c.req.wire.out);
    out.clear();
    let snap = c.snap();
    let extras = &c.req.extras;
    let own = snap.filters.lines();
    let body: &[u8] = match answer {
        // A gRPC call's refusal is a gRPC status: HTTP 200 and
        // `grpc-status` in a trailers-only response (the HTTP/2 stream
        // sends this head with END_STREAM, as its length is 0).
        Answer::Failure(f) if matches!(&c.io, ClientIo::H2(s) if s.is_grpc()) => {
            let _ = write!(
                out,
                "HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ngrpc-status: {}\r\ngrpc-message: {}\r\n",
                crate::session::h2::grpc_status(f.status),
                f.reason
            );
            for lines in [own, &extras.cors_lines] {
                out.extend_from_slice(lines);
            }
            out.extend_from_slice(b"content-length: 0\r\n\r\n");
            b""
        }
        Answer::Failure(f) => {
            let hint = respond::hint_lines(f, &snap.challenge, &extras.limit_lines);
            let lines = [own, hint, &extras.cors_lines];
            write_failure_with(&mut out, f, !keep, &lines, &extras.problem);
            b""
        }
        Answer::Empty(status) => {
            write_empty(&mut out, status, !keep, &[own, &extras.cors_lines]);
            b""
        }
        Answer::Document {
            content_type,
            body,
            head_request,
        } => {
            let _ = write!(
                out,
                "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n",
                body.len()
            );
            for lines in route_lines
                .iter()
                .chain([&&extras.limit_lines[..], &&extras.cors_lines[..]])
            {
                out.extend_from_slice(lines);
            }
            if !keep {
                out.extend_from_slice(b"connection: close\r\n");
            }
            out.extend_from_slice(b"\r\n");
            if head_request { b"" } else { body }
        }
        Answer::Continue => {
            out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            b""
        }
    };
    let sent = if body.is_empty() {
        c.io.send(&[&out]).await
    } else {
        c.io.send(&[&out, body]).await
    };
    c.req.wire.out = out;
    // Members a validation failure left are sent once.
    c.req.extras.problem.clear();
    sent
}

/// Parses the head at the start of `pending` within the limits.
pub fn parse_head<'b, 'h>(
    snap: &Snapshot,
    pending: &'b [u8],
    hdrs: &'h mut [httparse::Header<'b>; MAX_HEADERS],
) -> Result<RequestHead<'b, 'h>, HttpError> {
    let limits = &snap.cfg.limits;
    let head_limits = HeadLimits {
        max_request_line: limits.max_request_line_bytes,
        max_head: limits.max_header_bytes,
    };
    let max_headers = limits.max_headers.min(MAX_HEADERS);
    match http::request::parse(pending, &mut hdrs[..max_headers], &head_limits) {
        Ok(Some(head)) => Ok(head),
        parsed => Err(parsed.err().unwrap_or(HttpError::Malformed)),
    }
}

/// Whether a request head is in.
pub enum Head {
    /// The pending bytes hold a whole head (or enough to refuse one).
    Ready,
    /// The client closed (or the connection broke) first.
    Closed,
    /// `limits.header_timeout_ms` passed first.
    TimedOut,
}

/// Reads until the pending bytes hold a complete head (or enough to refuse
/// it), within the header timeout counted from the first bytes.
pub async fn read_head(c: &mut Conn) -> Head {
    let limits = c.snap().cfg.limits;
    let whole = ms(limits.header_timeout_ms);
    // Fixed at the first read: one clock read for a head that comes whole.
    let mut header_deadline = None;
    loop {
        if head_decidable(c.pending(), &limits) {
            return Head::Ready;
        }
        let limit = match header_deadline {
            None => {
                header_deadline = Some(Instant::now() + whole);
                whole
            }
            Some(at) => at.saturating_duration_since(Instant::now()),
        };
        match c.read_within(limit).await {
            None => return Head::TimedOut,
            Some(Ok(0)) | Some(Err(_)) => return Head::Closed,
            Some(Ok(_)) => {}
        }
    }
}

/// Whether `buf` holds a whole head, or enough to refuse one.
fn head_decidable(buf: &[u8], limits: &Limits) -> bool {
    if buf.is_empty() {
        return false;
    }
    let line_too_long = !buf[..buf.len().min(limits.max_request_line_bytes + 1)].contains(&b'\n')
        && buf.len() > limits.max_request_line_bytes;
    let bad_endings = http::check_line_endings(buf.strip_suffix(b"\r").unwrap_or(buf)).is_err();
    http::head_end(buf).is_some()
        || buf.len() > limits.max_header_bytes
        || line_too_long
        || bad_endings
}

/// Writes a complete response without content (`status` 204, a CORS
/// preflight's answer) into `out`.
pub fn write_empty(out: &mut Vec<u8>, status: u16, close: bool, extra_headers: &[&[u8]]) {
    let _ = write!(out, "HTTP/1.1 {status} {}\r\n", reason_phrase(status));
    for lines in extra_headers {
        out.extend_from_slice(lines);
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes a complete error response into `out`.
/// `extra_headers` are complete header lines (the route's response headers,
/// a 401's challenge).
pub fn write_failure(out: &mut Vec<u8>, f: Failure, close: bool, extra_headers: &[&[u8]]) {
    write_failure_with(out, f, close, extra_headers, "");
}

/// [`write_failure`] with more members for the JSON body: `members` is
/// empty or `,"name":value...`, already JSON (a validation error's field
/// and rule).
pub fn write_failure_with(
    out: &mut Vec<u8>,
    f: Failure,
    close: bool,
    extra_headers: &[&[u8]],
    members: &str,
) {
    let detail = match f.hint {
        Hint::Detail(d) => Some(d),
        _ => None,
    };
    // {"error":"<word>","reason":"<reason>"[,"detail":"<detail>"]}\n
    let body_len =
        25 + f.word().len() + f.reason.len() + detail.map_or(0, |d| 12 + d.len()) + members.len();
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {body_len}\r\n",
        f.status,
        reason_phrase(f.status)
    );
    for lines in extra_headers {
        out.extend_from_slice(lines);
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    let _ = write!(
        out,
        "\r\n{{\"error\":\"{}\",\"reason\":\"{}\"",
        f.word(),
        f.reason
    );
    if let Some(d) = detail {
        let _ = write!(out, ",\"detail\":\"{d}\"");
    }
    out.extend_from_slice(members.as_bytes());
    out.extend_from_slice(b"}\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_body_is_json_with_exact_length() {
        let mut out = Vec::new();
        write_failure(&mut out, Failure::UPSTREAM_TIMEOUT, true, &[b"x-a: b\r\n"]);
        let text = String::from_utf8(out).expect("utf8");
        let (head, body) = text.split_once("\r\n\r\n").expect("head");
        assert!(head.starts_with("HTTP/1.1 504 Gateway Timeout\r\n"));
        assert!(head.contains("connection: close"));
        assert!(head.contains("x-a: b"));
        assert_eq!(
            body,
            "{\"error\":\"gateway_timeout\",\"reason\":\"upstream.timeout\"}\n"
        );
        assert!(head.contains(&format!("content-length: {}", body.len())));
    }

    #[test]
    fn a_detail_is_counted_in_the_length() {
        let mut out = Vec::new();
        let f = Failure::client(400, "auth.key_in_query")
            .with_hint(Hint::Detail("send the API key in its header"));
        write_failure(&mut out, f, false, &[]);
        let text = String::from_utf8(out).expect("utf8");
        let (head, body) = text.split_once("\r\n\r\n").expect("head");
        assert!(body.contains("\"detail\":\"send the API key"), "{body}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{text}"
        );
    }
}
