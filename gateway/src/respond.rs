//! The one place that decides what a failure says: a status, a short
//! JSON body with a stable reason code, whose fault it was, and the header
//! lines its hint asks for (`session` writes it in the client's protocol).
//! No internal detail (addresses, errors) ever reaches the client; the log
//! gets it.
use crate::http::HttpError;

/// Who caused a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The client sent something wrong.
    Client,
    /// The upstream failed or misbehaved.
    Upstream,
    /// The gateway itself.
    Internal,
}

/// What a failure's response carries beyond its status and reason code,
/// decided where the failure is made (never by reading its reason text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hint {
    /// Nothing more.
    None,
    /// A sentence for the client in the JSON body, where the reason code
    /// alone would not tell it what to do (never internal detail).
    Detail(&'static str),
    /// A 401: the `WWW-Authenticate` challenge naming the schemes the
    /// gateway takes (RFC 9110 requires one on every 401).
    Challenge,
    /// A 401 for a bearer token the gateway refused: this complete
    /// `WWW-Authenticate` line (RFC 6750's `invalid_token`).
    InvalidToken(&'static [u8]),
    /// Refused by a limit or a verdict: the request's rate-limit lines
    /// (`retry-after`, `ratelimit-*`).
    LimitLines,
    /// This complete header line (a 426's `sec-websocket-version: 13`).
    Line(&'static [u8]),
}

/// A failure to proxy, as the client will see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// HTTP status.
    pub status: u16,
    /// Stable reason code (`http.cl_and_te`, `upstream.timeout`, ...).
    pub reason: &'static str,
    /// Whose fault.
    pub fault: Fault,
    /// What the response carries besides.
    pub hint: Hint,
}

impl Failure {
    const fn new(status: u16, reason: &'static str, fault: Fault) -> Self {
        Self {
            status,
            reason,
            fault,
            hint: if status == 401 {
                Hint::Challenge
            } else {
                Hint::None
            },
        }
    }

    /// A failure that is the client's fault, for a stage's own constants.
    pub const fn client(status: u16, reason: &'static str) -> Self {
        Self::new(status, reason, Fault::Client)
    }

    /// A failure that is the gateway's own, for a stage's constants.
    pub const fn internal(status: u16, reason: &'static str) -> Self {
        Self::new(status, reason, Fault::Internal)
    }

    /// A failure that is the upstream's.
    pub const fn upstream(status: u16, reason: &'static str) -> Self {
        Self::new(status, reason, Fault::Upstream)
    }

    /// The same failure with `hint`.
    pub const fn with_hint(self, hint: Hint) -> Self {
        Self { hint, ..self }
    }

    /// The client went away while the upstream's answer (`status`, as the
    /// log records it) was being relayed.
    pub const fn client_gone(status: u16) -> Self {
        Self {
            status,
            ..Self::CLIENT_GONE
        }
    }

    /// A client protocol error.
    pub fn http(e: HttpError) -> Self {
        Self::client(e.status(), e.code())
    }
    /// A header name with `_` while `proxy.underscores_in_headers = "reject"`.
    pub const HEADER_NAME: Self = Self::client(400, "http.header_name");
    /// No route for the request.
    pub const NOT_FOUND: Self = Self::client(404, "route.not_found");
    /// A route exists but not for this method.
    pub const METHOD: Self = Self::client(405, "route.method");
    /// A body whose media type the route does not take.
    pub const CONTENT_TYPE: Self = Self::client(415, "validation.content_type");
    /// The body exceeds the route's limit.
    pub const BODY_TOO_LARGE: Self = Self::client(413, "limit.body_size");
    /// A body larger than a blocking WAF reads to scan (`[waf]
    /// max_body_bytes`), though within the route's limit.
    pub const WAF_BODY_TOO_LARGE: Self = Self::client(413, "waf.body_size");
    /// The request head took too long.
    pub const HEADER_TIMEOUT: Self = Self::client(408, "limit.header_timeout");
    /// The request body stalled.
    pub const BODY_TIMEOUT: Self = Self::client(408, "limit.body_timeout");
    /// The request body came slower than `limits.body_min_rate`.
    pub const BODY_RATE: Self = Self::client(408, "limit.body_rate");
    /// The request body took longer than `limits.body_total_timeout_ms`.
    pub const BODY_TIME: Self = Self::client(408, "limit.body_time");
    /// A chunked body read whole has more than `limits.max_body_chunks`.
    pub const BODY_CHUNKS: Self = Self::client(413, "limit.body_chunks");
    /// The upstream refused or reset the connection.
    pub const UPSTREAM_CONNECT: Self = Self::upstream(502, "upstream.connect");
    /// The upstream broke HTTP framing.
    pub const UPSTREAM_PROTOCOL: Self = Self::upstream(502, "upstream.protocol");
    /// The upstream closed before answering.
    pub const UPSTREAM_CLOSED: Self = Self::upstream(502, "upstream.closed");
    /// Every server of the upstream is marked down.
    pub const UPSTREAM_DOWN: Self = Self::upstream(503, "upstream.unavailable");
    /// The upstream did not answer in time.
    pub const UPSTREAM_TIMEOUT: Self = Self::upstream(504, "upstream.timeout");
    /// The TLS handshake with the upstream failed (certificate not
    /// trusted, wrong name, client certificate refused), or its TLS client
    /// could not be built.
    pub const UPSTREAM_TLS: Self = Self::upstream(502, "upstream.tls");
    /// The upstream's `max_requests` are in flight (circuit breaker).
    pub const UPSTREAM_MAX_REQUESTS: Self = Self::upstream(503, "upstream.max_requests");
    /// The upstream's `max_uploads` are streaming (circuit breaker).
    pub const UPSTREAM_MAX_UPLOADS: Self = Self::upstream(503, "upstream.max_uploads");
    /// The upstream's `max_connects` are in progress (circuit breaker).
    pub const UPSTREAM_MAX_CONNECTS: Self = Self::upstream(503, "upstream.max_connects");
    /// The gateway ran out of file descriptors, memory or local ports
    /// while connecting upstream; the upstream is not marked down.
    pub const LOCAL_RESOURCES: Self = Self::internal(503, "gateway.resources");
    /// The client went away mid-request.
    pub const CLIENT_GONE: Self = Self::client(400, "client.gone");
    /// The gateway is shutting down.
    pub const SHUTTING_DOWN: Self = Self::internal(503, "gateway.shutting_down");

    /// The error word in the JSON body.
    pub fn word(self) -> &'static str {
        match self.status {
            400 => "bad_request",
            401 => "unauthorized",
            403 => "forbidden",
            404 => "not_found",
            405 => "method_not_allowed",
            408 => "request_timeout",
            413 => "payload_too_large",
            415 => "unsupported_media_type",
            414 => "uri_too_long",
            417 => "expectation_failed",
            429 => "too_many_requests",
            431 => "request_header_fields_too_large",
            502 => "bad_gateway",
            503 => "service_unavailable",
            504 => "gateway_timeout",
            _ => "internal_error",
        }
    }
}

/// The worker's body memory (`limits.body_memory_per_worker`) is taken
/// by other requests' bodies: this one is refused before it is read.
pub const BODY_MEMORY: Failure = Failure::internal(503, "gateway.body_memory");

/// Why a request ended early.
#[derive(Debug)]
pub enum Abort {
    /// Nothing was sent to the client yet: answer with this failure.
    Respond(Failure, Option<std::net::SocketAddr>),
    /// The client already got part of a response (or vanished): close.
    Close(Failure, Option<std::net::SocketAddr>),
}

/// Canonical reason phrase for a status.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Internal Server Error",
    }
}

/// What the stages add to a request's answer, whatever it is (per-request
/// scratch).
#[derive(Debug, Default)]
pub struct Extras {
    /// The rate-limit header lines (empty: none).
    pub limit_lines: Vec<u8>,
    /// The CORS header lines (empty: none).
    pub cors_lines: Vec<u8>,
    /// More members for the next failure's JSON body (a validation
    /// error's field and rule); sent once, then cleared.
    pub problem: String,
}

impl Extras {
    /// Forgets what an earlier request added (its buffers kept).
    pub fn clear(&mut self) {
        self.limit_lines.clear();
        self.cors_lines.clear();
        self.problem.clear();
    }
}

/// The header lines `f`'s hint adds to its response: `challenge` is the
/// snapshot's `WWW-Authenticate` line, `limit_lines` the request's
/// rate-limit lines. The one place that decides which go with an error.
pub fn hint_lines<'a>(f: Failure, challenge: &'a [u8], limit_lines: &'a [u8]) -> &'a [u8] {
    match f.hint {
        Hint::Challenge => challenge,
        Hint::InvalidToken(line) | Hint::Line(line) => line,
        Hint::LimitLines => limit_lines,
        // Every 401 carries a challenge (RFC 9110), whatever else it says.
        Hint::None | Hint::Detail(_) if f.status == 401 => challenge,
        Hint::None | Hint::Detail(_) => b"",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_401_carries_the_challenge_and_only_limits_carry_their_lines() {
        let (ch, lim) = (
            &b"www-authenticate: ApiKey\r\n"[..],
            &b"retry-after: 3\r\n"[..],
        );
        let detailed = Failure::client(401, "x.y").with_hint(Hint::Detail("send a key"));
        assert_eq!(hint_lines(detailed, ch, lim), ch);
        assert_eq!(hint_lines(Failure::client(401, "x.y"), ch, lim), ch);
        let token = Failure::client(401, "jwt.expired").with_hint(Hint::InvalidToken(b"line\r\n"));
        assert_eq!(hint_lines(token, ch, lim), b"line\r\n");
        let limited = Failure::client(429, "rate_limit.exceeded").with_hint(Hint::LimitLines);
        assert_eq!(hint_lines(limited, ch, lim), lim);
        assert_eq!(hint_lines(Failure::client(429, "other"), ch, lim), b"");
        assert_eq!(hint_lines(Failure::UPSTREAM_TIMEOUT, ch, lim), b"");
    }
}
