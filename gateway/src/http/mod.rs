//! HTTP/1.1, strictly: request and response heads parsed with httparse, the
//! framing rules (RFC 9112 §6) enforced on top, and chunked bodies decoded
//! and re-encoded as they stream.
//!
//! Anything a downstream or upstream parser could read differently from us
//! is refused here, before a byte is forwarded: that is what request
//! smuggling needs, and what this module exists to deny.

pub mod chunked;
pub mod fuzz;
pub mod query;
pub mod request;
pub mod response;

/// Most header fields any message may carry (`limits.max_headers` is capped to it).
pub const MAX_HEADERS: usize = 128;

/// Why a message was refused. Every variant has a stable reason code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// httparse refused the head (bad token, bad version, NUL/CTL, obs-fold,
    /// whitespace before a colon, ...).
    #[error("malformed message head")]
    Malformed,
    /// A CR not followed by LF, or an LF not preceded by CR.
    #[error("bare CR or LF in the message head")]
    BareLineEnding,
    /// The request line is longer than allowed.
    #[error("request line too long")]
    RequestLineTooLong,
    /// The head is longer than allowed, or has too many fields.
    #[error("header section too large")]
    HeadersTooLarge,
    /// No Host, or more than one.
    #[error("missing or repeated Host")]
    Host,
    /// Content-Length repeated, conflicting or not a number.
    #[error("invalid or repeated Content-Length")]
    ContentLength,
    /// Both Content-Length and Transfer-Encoding.
    #[error("both Content-Length and Transfer-Encoding")]
    ClAndTe,
    /// Transfer-Encoding other than a single final `chunked`, or on HTTP/1.0.
    #[error("unsupported Transfer-Encoding")]
    TransferEncoding,
    /// A request target that is not origin-form (or `*` for OPTIONS).
    #[error("unsupported request target")]
    Target,
    /// An Expect other than 100-continue.
    #[error("unsupported expectation")]
    Expectation,
    /// Bad chunk size, extension or chunk terminator.
    #[error("invalid chunked framing")]
    Chunked,
}

impl HttpError {
    /// Stable reason code for logs and error bodies.
    pub fn code(self) -> &'static str {
        match self {
            Self::Malformed => "http.malformed",
            Self::BareLineEnding => "http.bare_line_ending",
            Self::RequestLineTooLong => "http.request_line_too_long",
            Self::HeadersTooLarge => "http.headers_too_large",
            Self::Host => "http.host",
            Self::ContentLength => "http.content_length",
            Self::ClAndTe => "http.cl_and_te",
            Self::TransferEncoding => "http.transfer_encoding",
            Self::Target => "http.target",
            Self::Expectation => "http.expectation",
            Self::Chunked => "http.chunked",
        }
    }

    /// The status a client gets for this error.
    pub fn status(self) -> u16 {
        match self {
            Self::RequestLineTooLong => 414,
            Self::HeadersTooLarge => 431,
            Self::Expectation => 417,
            _ => 400,
        }
    }
}

/// How a message body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes (responses only).
    UntilClose,
}

impl Framing {
    /// Whether a body follows (a `Content-Length: 0` is framing, not a body).
    pub fn has_body(self) -> bool {
        !matches!(self, Self::None | Self::Length(0))
    }
}

/// Hop-by-hop fields (RFC 9110 §7.6.1), never forwarded.
pub fn is_hop_by_hop(name: &str) -> bool {
    const HOP: [&str; 8] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authorization",
    ];
    HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// Whether a comma-separated field value lists `token` (case-insensitive).
pub fn lists_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Checks CRLF discipline over a head: every LF preceded by CR, every CR
/// followed by LF. httparse tolerates bare LF; RFC 9112 §2.2 lets us refuse it.
pub fn check_line_endings(head: &[u8]) -> Result<(), HttpError> {
    let mut prev = 0u8;
    for &b in head {
        if b == b'\n' && prev != b'\r' {
            return Err(HttpError::BareLineEnding);
        }
        if prev == b'\r' && b != b'\n' {
            return Err(HttpError::BareLineEnding);
        }
        prev = b;
    }
    if prev == b'\r' {
        return Err(HttpError::BareLineEnding);
    }
    Ok(())
}

/// Parses a Content-Length value: 1*DIGIT, no sign, no whitespace inside.
pub fn parse_content_length(value: &[u8]) -> Result<u64, HttpError> {
    let v = value.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(HttpError::ContentLength);
    }
    v.iter()
        .try_fold(0u64, |acc, d| {
            acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
        .ok_or(HttpError::ContentLength)
}

/// Index of the end of the head (just past the blank line), if complete.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// `application/json` or any `+json` type (case-insensitive).
pub fn is_json(media: &str) -> bool {
    media.eq_ignore_ascii_case("application/json")
        || media
            .len()
            .checked_sub(5)
            .and_then(|i| media.get(i..))
            .is_some_and(|tail| tail.eq_ignore_ascii_case("+json"))
}

/// Whether any Connection field (RFC 9110 §7.6.1) names `name` as
/// hop-by-hop. Host and the framing fields are never dropped this way: a
/// `Connection: host` must not make an HTTP/1.1 request lose its Host.
pub fn named_by_connection(headers: &[httparse::Header<'_>], name: &str) -> bool {
    if name.eq_ignore_ascii_case("host")
        || name.eq_ignore_ascii_case("content-length")
        || name.eq_ignore_ascii_case("transfer-encoding")
    {
        return false;
    }
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .any(|h| lists_token(h.value, name))
}
