//! One admin request, read whole: a head of at most 8 KiB within 2 seconds
//! of the connection (the pre-auth deadline: a silent connection is cut
//! before its token could even be checked), a body of at most 4 KiB
//! within 5 seconds, and what the API checks before any answer (a
//! browser's request, a rebinding `Host`).

use std::{
    io::Read,
    net::{IpAddr, TcpStream},
    time::Duration,
};

/// Largest request head and body the admin API reads.
const MAX_HEAD: usize = 8 * 1024;
const MAX_BODY: usize = 4 * 1024;
/// How long one client may take to send its request.
pub(super) const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long it may take to send the head, before anything is checked.
const HEAD_TIMEOUT: Duration = Duration::from_secs(2);

/// A request as the admin API reads it.
pub(super) struct Request {
    pub(super) method: String,
    pub(super) path: String,
    pub(super) query: String,
    pub(super) authorization: Option<String>,
    /// Set by browsers: a page's request, never the CLI's.
    pub(super) from_browser: bool,
    /// The `Host` field's name (lower-case, no port); empty without one.
    pub(super) host: String,
    pub(super) json: bool,
    pub(super) body: Vec<u8>,
}

/// Reads into `buf`, within what is left of the whole request's time (a
/// client sending a byte every few seconds is cut off all the same).
fn read_more(
    stream: &mut &TcpStream,
    buf: &mut Vec<u8>,
    started: std::time::Instant,
    within: Duration,
) -> Result<(), (u16, &'static str)> {
    let left = within
        .checked_sub(started.elapsed())
        .filter(|d| !d.is_zero())
        .ok_or((408, "admin.timeout"))?;
    let _ = stream.set_read_timeout(Some(left));
    let mut chunk = [0u8; 2048];
    match stream.read(&mut chunk) {
        Ok(0) | Err(_) => Err((400, "admin.incomplete")),
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }
    }
}

/// A `Host` naming an address or `localhost` (with any port): a DNS name
/// would be a rebinding page's.
pub(super) fn host_is_local(name: &str) -> bool {
    name == "localhost" || name.parse::<IpAddr>().is_ok()
}

/// A `Host` field's name: the port and an IPv6 literal's brackets cut,
/// lower-cased.
fn host_name(host: &str) -> String {
    let name = match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => host,
    };
    name.trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

/// Reads one request from `stream`, or the status and reason to refuse it with.
pub(super) fn read_request(stream: &mut &TcpStream) -> Result<Request, (u16, &'static str)> {
    let started = std::time::Instant::now();
    let mut buf = Vec::with_capacity(1024);
    let head_len = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err((431, "admin.head_too_large"));
        }
        read_more(stream, &mut buf, started, HEAD_TIMEOUT)?;
    };
    let (mut request, length) = parse_head(&buf[..head_len])?;
    while buf.len() < head_len + length {
        read_more(stream, &mut buf, started, CLIENT_TIMEOUT)?;
    }
    request.body = buf[head_len..head_len + length].to_vec();
    Ok(request)
}

/// The request a head describes (its body still to read), and the body's length.
fn parse_head(head: &[u8]) -> Result<(Request, usize), (u16, &'static str)> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err((400, "admin.malformed")),
    }
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::to_owned)
    };
    if header("transfer-encoding").is_some() {
        return Err((400, "admin.chunked"));
    }
    let length: usize = match header("content-length") {
        None => 0,
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| (400, "admin.content_length"))?,
    };
    if length > MAX_BODY {
        return Err((413, "admin.body_too_large"));
    }
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let request = Request {
        method: req.method.unwrap_or("").to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        authorization: header("authorization"),
        from_browser: header("origin").is_some()
            || header("sec-fetch-site").is_some_and(|s| !s.eq_ignore_ascii_case("none")),
        host: header("host").map_or_else(String::new, |h| host_name(h.trim())),
        json: header("content-type").is_some_and(|t| {
            t.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
        }),
        body: Vec::new(),
    };
    Ok((request, length))
}

/// The body of the `admin_head` fuzz target: an admin request head never
/// panics the parser, and an accepted one promises no more body than the
/// API reads.
pub fn fuzz_head(data: &[u8]) -> bool {
    let Ok((req, length)) = parse_head(data) else {
        return false;
    };
    assert!(length <= MAX_BODY);
    assert!(req.body.is_empty());
    true
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_head_fuzz_body_holds_on_mutated_seeds() {
        let seeds: &[&[u8]] = &[
            b"POST /verdicts HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n",
            b"GET /why/::1 HTTP/1.1\r\nHost: [::1]:9901\r\nOrigin: x\r\nTransfer-Encoding: chunked\r\n\r\n",
        ];
        let accepted = crate::http::fuzz::mutated(seeds)
            .iter()
            .filter(|input| super::fuzz_head(input))
            .count();
        assert!(accepted >= 20, "only {accepted} heads parsed");
        let local = |h: &str| super::host_is_local(&super::host_name(h));
        assert!(local("[::1]:9901") && local("localhost") && local("LocalHost:9901"));
        assert!(!local("rebind.evil.test:9901"));
        assert_eq!(super::host_name("GW1.Internal:9901"), "gw1.internal");
    }
}
