//! Upstream response heads: the same strictness as requests, because a
//! backend with broken framing could otherwise desynchronise a pooled
//! connection (the response half of smuggling).

use super::{Framing, HttpError, check_line_endings, lists_token, parse_content_length};

/// A parsed, validated response head borrowing from the read buffer.
#[derive(Debug)]
pub struct ResponseHead<'b, 'h> {
    /// Status code.
    pub code: u16,
    /// Reason phrase.
    pub reason: &'b str,
    /// The header fields, in order.
    pub headers: &'h [httparse::Header<'b>],
    /// Bytes of the head, including the blank line.
    pub len: usize,
    /// Body framing (RFC 9112 §6.3).
    pub framing: Framing,
    /// Whether the upstream lets the connection be reused.
    pub keep_alive: bool,
}

/// Parses one response head from the start of `buf`; `head_request` says
/// whether it answers a HEAD (then it has no body whatever it declares).
pub fn parse<'b, 'h>(
    buf: &'b [u8],
    headers: &'h mut [httparse::Header<'b>],
    max_head: usize,
    head_request: bool,
) -> Result<Option<ResponseHead<'b, 'h>>, HttpError> {
    let Some(end) = super::head_end(buf) else {
        if buf.len() > max_head {
            return Err(HttpError::HeadersTooLarge);
        }
        check_line_endings(buf.strip_suffix(b"\r").unwrap_or(buf))?;
        return Ok(None);
    };
    if end > max_head {
        return Err(HttpError::HeadersTooLarge);
    }
    check_line_endings(&buf[..end])?;
    let mut res = httparse::Response::new(headers);
    match res.parse(&buf[..end]) {
        Ok(httparse::Status::Complete(n)) if n == end => {}
        Ok(_) => return Err(HttpError::Malformed),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadersTooLarge),
        Err(_) => return Err(HttpError::Malformed),
    }
    let (Some(code), Some(minor)) = (res.code, res.version) else {
        return Err(HttpError::Malformed);
    };
    // RFC 9110 §15: three digits, 1xx to 5xx. A code under 100 would be
    // relayed unpadded, which no client parses.
    if !(100..=599).contains(&code) {
        return Err(HttpError::Malformed);
    }
    let reason = res.reason.unwrap_or("");
    let headers: &'h [httparse::Header<'b>] = res.headers;

    let mut content_length = None;
    let mut te = None;
    let mut said_close = false;
    let mut said_keep_alive = false;
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = parse_content_length(h.value)?;
            if content_length.is_some() {
                return Err(HttpError::ContentLength);
            }
            content_length = Some(v);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if te.is_some() {
                return Err(HttpError::TransferEncoding);
            }
            te = Some(h.value);
        } else if h.name.eq_ignore_ascii_case("connection") {
            // RFC 9112 §9.6: `close` in any Connection field wins.
            said_close |= lists_token(h.value, "close");
            said_keep_alive |= lists_token(h.value, "keep-alive");
        }
    }
    if te.is_some() && content_length.is_some() {
        return Err(HttpError::ClAndTe);
    }
    let no_body = head_request || (100..200).contains(&code) || code == 204 || code == 304;
    let framing = match (te, content_length) {
        _ if no_body => Framing::None,
        (Some(v), _) if v.trim_ascii().eq_ignore_ascii_case(b"chunked") => Framing::Chunked,
        (Some(_), _) => return Err(HttpError::TransferEncoding),
        (None, Some(n)) => Framing::Length(n),
        (None, None) => Framing::UntilClose,
    };
    Ok(Some(ResponseHead {
        code,
        reason,
        headers,
        len: end,
        framing,
        // RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 message means
        // the framing cannot be trusted past this response.
        keep_alive: !said_close
            && (minor == 1 || said_keep_alive)
            && framing != Framing::UntilClose
            && !(minor == 0 && te.is_some()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judge(raw: &[u8], head: bool) -> Result<Framing, HttpError> {
        let mut hdrs = [httparse::EMPTY_HEADER; 32];
        parse(raw, &mut hdrs, 4096, head).map(|r| r.map_or(Framing::UntilClose, |h| h.framing))
    }

    #[test]
    fn response_framing_table() {
        use HttpError::*;
        type Row<'a> = (&'a str, &'a [u8], bool, Result<Framing, HttpError>);
        let rows: &[Row<'_>] = &[
            ("cl", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", false, Ok(Framing::Length(3))),
            ("chunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false, Ok(Framing::Chunked)),
            ("close_delimited", b"HTTP/1.1 200 OK\r\n\r\n", false, Ok(Framing::UntilClose)),
            ("head_ignores_cl", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", true, Ok(Framing::None)),
            ("no_content", b"HTTP/1.1 204 No Content\r\n\r\n", false, Ok(Framing::None)),
            ("not_modified", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", false, Ok(Framing::None)),
            ("cl_and_te", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", false, Err(ClAndTe)),
            ("bad_cl", b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n", false, Err(ContentLength)),
            ("repeated_cl", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n", false, Err(ContentLength)),
            ("repeated_chunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", false, Err(TransferEncoding)),
            ("chunked_chunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", false, Err(TransferEncoding)),
            ("gzip_te", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false, Err(TransferEncoding)),
            ("bare_lf", b"HTTP/1.1 200 OK\nContent-Length: 3\n\n", false, Err(BareLineEnding)),
            ("status_under_100", b"HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n", false, Err(Malformed)),
            ("status_over_599", b"HTTP/1.1 600 Odd\r\nContent-Length: 0\r\n\r\n", false, Err(Malformed)),
            ("status_000", b"HTTP/1.1 000 Odd\r\nContent-Length: 0\r\n\r\n", false, Err(Malformed)),
        ];
        let mut failed = Vec::new();
        for (name, raw, head, want) in rows {
            let got = judge(raw, *head);
            if got != *want {
                failed.push(format!("{name}: got {got:?}, want {want:?}"));
            }
        }
        assert!(failed.is_empty(), "{}", failed.join("\n"));
    }

    #[test]
    fn close_in_any_connection_field_wins() {
        let mut hdrs = [httparse::EMPTY_HEADER; 32];
        let raw = b"HTTP/1.1 200 OK\r\nConnection: close\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n";
        let r = parse(raw, &mut hdrs, 4096, false)
            .expect("ok")
            .expect("complete");
        assert!(!r.keep_alive);
        let raw = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n";
        let r = parse(raw, &mut hdrs, 4096, false)
            .expect("ok")
            .expect("complete");
        assert!(r.keep_alive);
    }
}
