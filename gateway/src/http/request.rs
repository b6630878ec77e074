//! Request heads: parse, then judge framing, Host and target.

use super::{Framing, HttpError, check_line_endings, lists_token, parse_content_length};

/// Size limits for a request head.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// Longest request line, in bytes (414 beyond).
    pub max_request_line: usize,
    /// Longest head, in bytes (431 beyond).
    pub max_head: usize,
}

/// A parsed, validated request head borrowing from the read buffer.
#[derive(Debug)]
pub struct RequestHead<'b, 'h> {
    /// Method token.
    pub method: &'b str,
    /// Origin-form target (or `*`).
    pub target: &'b str,
    /// Minor version: 0 or 1.
    pub minor: u8,
    /// The header fields, in order.
    pub headers: &'h [httparse::Header<'b>],
    /// Bytes of the head, including the blank line.
    pub len: usize,
    /// Body framing.
    pub framing: Framing,
    /// The Host value (empty for an HTTP/1.0 request without one).
    pub host: &'b str,
    /// Whether the client lets the connection stay open after this request.
    pub keep_alive: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
    /// An `Upgrade` field is present (the upgrade stage judges it); known
    /// from the one pass over the fields, so a plain request costs no scan.
    pub upgrade: bool,
    /// A `Connection` field lists `upgrade`.
    pub connection_upgrade: bool,
}

impl RequestHead<'_, '_> {
    /// Methods RFC 9110 §9.2.2 calls idempotent (safe to retry).
    pub fn is_idempotent(&self) -> bool {
        matches!(
            self.method,
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
        )
    }

    /// The path part of the target (before `?`).
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or(self.target)
    }
}

/// A field that must appear at most once appeared twice or more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repeated;

impl<'b> RequestHead<'b, '_> {
    /// The trimmed value of field `name` (case-insensitive) when it appears
    /// once; [`Repeated`] when more often, since two values would let two
    /// readers see two different requests.
    pub fn single(&self, name: &str) -> Result<Option<&'b [u8]>, Repeated> {
        let mut found = None;
        for h in self
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
        {
            if found.is_some() {
                return Err(Repeated);
            }
            found = Some(h.value.trim_ascii());
        }
        Ok(found)
    }
}

/// Parses one request head from the start of `buf`.
///
/// `Ok(None)` means the head is not complete yet (and still within limits).
pub fn parse<'b, 'h>(
    buf: &'b [u8],
    headers: &'h mut [httparse::Header<'b>],
    limits: &HeadLimits,
) -> Result<Option<RequestHead<'b, 'h>>, HttpError> {
    let line_end = buf.iter().position(|&b| b == b'\n');
    match line_end {
        Some(n) if n > limits.max_request_line => return Err(HttpError::RequestLineTooLong),
        None if buf.len() > limits.max_request_line => return Err(HttpError::RequestLineTooLong),
        _ => {}
    }
    let Some(end) = super::head_end(buf) else {
        if buf.len() > limits.max_head {
            return Err(HttpError::HeadersTooLarge);
        }
        // A bare LF may be what keeps the blank line from being found.
        check_line_endings(buf.strip_suffix(b"\r").unwrap_or(buf))?;
        return Ok(None);
    };
    if end > limits.max_head {
        return Err(HttpError::HeadersTooLarge);
    }
    check_line_endings(&buf[..end])?;

    let mut req = httparse::Request::new(headers);
    match req.parse(&buf[..end]) {
        Ok(httparse::Status::Complete(n)) if n == end => {}
        Ok(_) => return Err(HttpError::Malformed),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadersTooLarge),
        Err(_) => return Err(HttpError::Malformed),
    }
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(HttpError::Malformed);
    };
    let headers: &'h [httparse::Header<'b>] = req.headers;

    let mut host: Option<&'b str> = None;
    let mut hosts = 0;
    let mut content_length: Option<u64> = None;
    let mut te_seen = false;
    let mut te_chunked = false;
    let mut said_close = false;
    let mut said_keep_alive = false;
    let mut expect_continue = false;
    let mut upgrade = false;
    let mut connection_upgrade = false;
    for h in headers {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            host = std::str::from_utf8(h.value).ok();
        } else if name.eq_ignore_ascii_case("content-length") {
            if content_length.is_some() {
                return Err(HttpError::ContentLength);
            }
            content_length = Some(parse_content_length(h.value)?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if te_seen {
                return Err(HttpError::TransferEncoding);
            }
            te_seen = true;
            te_chunked = h.value.trim_ascii().eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            // RFC 9112 §9.6: `close` in any Connection field wins.
            said_close |= lists_token(h.value, "close");
            said_keep_alive |= lists_token(h.value, "keep-alive");
            connection_upgrade |= lists_token(h.value, "upgrade");
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        } else if name.eq_ignore_ascii_case("expect") {
            if h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
                expect_continue = true;
            } else {
                return Err(HttpError::Expectation);
            }
        }
    }
    if te_seen && content_length.is_some() {
        return Err(HttpError::ClAndTe);
    }
    if te_seen && (!te_chunked || minor == 0) {
        return Err(HttpError::TransferEncoding);
    }
    let host = match (hosts, host) {
        (1, Some(h)) if valid_host(h) => h,
        (0, _) if minor == 0 => "",
        _ => return Err(HttpError::Host),
    };
    // A fragment is never part of a request-target (RFC 9112 §3.2), and
    // backends that cut at `#` would serve another path than was routed.
    let origin = target.starts_with('/') && !target.starts_with("//") && !target.contains('#');
    if !(origin || target == "*" && method == "OPTIONS") {
        return Err(HttpError::Target);
    }
    let framing = match (te_chunked, content_length) {
        (true, _) => Framing::Chunked,
        (false, None) => Framing::None,
        (false, Some(n)) => Framing::Length(n),
    };
    Ok(Some(RequestHead {
        method,
        target,
        minor,
        headers,
        len: end,
        framing,
        host,
        keep_alive: !said_close && (minor == 1 || said_keep_alive),
        expect_continue,
        upgrade,
        connection_upgrade,
    }))
}

/// RFC 9110 §7.2 Host: uri-host [":" port], here reg-name or IP literal.
fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~:[]!$&'()*+,;=%".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_request_line: 128,
        max_head: 1024,
    };

    fn judge(raw: &[u8]) -> Result<Framing, HttpError> {
        let mut hdrs = [httparse::EMPTY_HEADER; 32];
        match parse(raw, &mut hdrs, &LIMITS)? {
            Some(h) => Ok(h.framing),
            None => panic!("incomplete: {}", String::from_utf8_lossy(raw)),
        }
    }

    /// HAProxy-style table: one line per case, the raw request and the verdict.
    #[test]
    fn smuggling_table() {
        use HttpError::*;
        let rows: &[(&str, &[u8], Result<Framing, HttpError>)] = &[
            ("plain_get", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", Ok(Framing::None)),
            ("cl_body", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n", Ok(Framing::Length(5))),
            ("chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", Ok(Framing::Chunked)),
            ("chunked_case", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ChUnKeD\r\n\r\n", Ok(Framing::Chunked)),
            ("cl_and_te", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", Err(ClAndTe)),
            ("te_and_cl", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", Err(ClAndTe)),
            ("cl_repeated_same", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", Err(ContentLength)),
            ("cl_conflicting", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", Err(ContentLength)),
            ("cl_list", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n", Err(ContentLength)),
            ("cl_signed", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", Err(ContentLength)),
            ("cl_hex", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n", Err(ContentLength)),
            ("cl_huge", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", Err(ContentLength)),
            ("te_gzip", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", Err(TransferEncoding)),
            ("te_chunked_not_final", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", Err(TransferEncoding)),
            ("te_double_chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", Err(TransferEncoding)),
            ("te_repeated", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", Err(TransferEncoding)),
            ("te_xchunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", Err(TransferEncoding)),
            ("te_on_http10", b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", Err(TransferEncoding)),
            ("obs_fold", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", Err(Malformed)),
            ("space_before_colon", b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\n", Err(Malformed)),
            ("tab_before_colon", b"GET / HTTP/1.1\r\nHost: a\r\nX-A\t: 5\r\n\r\n", Err(Malformed)),
            ("bare_lf", b"GET / HTTP/1.1\nHost: a\n\n", Err(BareLineEnding)),
            ("bare_lf_mid", b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n", Err(BareLineEnding)),
            ("bare_cr", b"GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n", Err(BareLineEnding)),
            ("nul_in_value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\0c\r\n\r\n", Err(Malformed)),
            ("ctl_in_value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x01c\r\n\r\n", Err(Malformed)),
            ("nul_in_name", b"GET / HTTP/1.1\r\nHost: a\r\nX\0A: b\r\n\r\n", Err(Malformed)),
            ("missing_host", b"GET / HTTP/1.1\r\nX: y\r\n\r\n", Err(Host)),
            ("repeated_host", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", Err(Host)),
            ("empty_host", b"GET / HTTP/1.1\r\nHost: \r\n\r\n", Err(Host)),
            ("host_with_space", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", Err(Host)),
            ("http10_without_host", b"GET / HTTP/1.0\r\n\r\n", Ok(Framing::None)),
            ("absolute_form", b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n", Err(Target)),
            ("double_slash_target", b"GET //evil/ HTTP/1.1\r\nHost: a\r\n\r\n", Err(Target)),
            ("options_star", b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", Ok(Framing::None)),
            ("get_star", b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", Err(Target)),
            ("bad_version", b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", Err(Malformed)),
            ("expect_other", b"POST / HTTP/1.1\r\nHost: a\r\nExpect: magic\r\n\r\n", Err(Expectation)),
            ("request_line_too_long", b"GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa HTTP/1.1\r\nHost: a\r\n\r\n", Err(RequestLineTooLong)),
        ];
        let mut failed = Vec::new();
        for (name, raw, want) in rows {
            let got = judge(raw);
            if got != *want {
                failed.push(format!("{name}: got {got:?}, want {want:?}"));
            }
        }
        assert!(failed.is_empty(), "{}", failed.join("\n"));
    }

    #[test]
    fn head_too_large_is_431() {
        let mut raw = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        while raw.len() < 2000 {
            raw.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        let mut hdrs = [httparse::EMPTY_HEADER; 32];
        // Incomplete but already too large.
        let err = parse(&raw, &mut hdrs, &LIMITS).expect_err("too large");
        assert_eq!(err.status(), 431);
    }

    #[test]
    fn too_many_fields_is_431() {
        let mut raw = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        for i in 0..40 {
            raw.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        let mut hdrs = [httparse::EMPTY_HEADER; 32];
        let limits = HeadLimits {
            max_request_line: 128,
            max_head: 4096,
        };
        let err = parse(&raw, &mut hdrs, &limits).expect_err("too many");
        assert_eq!(err, HttpError::HeadersTooLarge);
    }

    #[test]
    fn incomplete_head_waits() {
        let mut hdrs = [httparse::EMPTY_HEADER; 32];
        assert!(
            parse(b"GET / HTTP/1.1\r\nHost: a\r\n", &mut hdrs, &LIMITS)
                .expect("ok")
                .is_none()
        );
        assert!(
            parse(b"GET / HTTP/1.1\r\nHost: a\r\n\r", &mut hdrs, &LIMITS)
                .expect("ok")
                .is_none()
        );
    }

    #[test]
    fn keep_alive_and_expect() {
        let mut hdrs = [httparse::EMPTY_HEADER; 32];
        let raw = b"POST /a?b=c HTTP/1.1\r\nHost: x\r\nConnection: close\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc";
        let h = parse(raw, &mut hdrs, &LIMITS)
            .expect("ok")
            .expect("complete");
        assert!(!h.keep_alive);
        assert!(h.expect_continue);
        assert_eq!(h.path(), "/a");
        assert_eq!(h.len, raw.len() - 3);
        let raw = b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
        let h = parse(raw, &mut hdrs, &LIMITS)
            .expect("ok")
            .expect("complete");
        assert!(h.keep_alive);
    }

    #[test]
    fn close_in_any_connection_field_wins() {
        let mut hdrs = [httparse::EMPTY_HEADER; 32];
        for raw in [
            &b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, close\r\n\r\n",
            b"GET / HTTP/1.0\r\nConnection: close, keep-alive\r\n\r\n",
        ] {
            let h = parse(raw, &mut hdrs, &LIMITS)
                .expect("ok")
                .expect("complete");
            assert!(!h.keep_alive, "{}", String::from_utf8_lossy(raw));
        }
    }
}
