//! The one place that turns any failure into a response: a status, a short
//! JSON body with a stable reason code, and whose fault it was. No internal
//! detail (addresses, errors) ever reaches the client; the log gets it.

use std::io::Write as _;

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

/// A failure to proxy, as the client will see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// HTTP status.
    pub status: u16,
    /// Stable reason code (`http.cl_and_te`, `upstream.timeout`, ...).
    pub reason: &'static str,
    /// Whose fault.
    pub fault: Fault,
}

impl Failure {
    /// A failure that is the client's fault, for a stage's own constants.
    pub const fn client(status: u16, reason: &'static str) -> Self {
        Self {
            status,
            reason,
            fault: Fault::Client,
        }
    }

    /// A failure that is the gateway's own, for a stage's constants.
    pub const fn internal(status: u16, reason: &'static str) -> Self {
        Self {
            status,
            reason,
            fault: Fault::Internal,
        }
    }

    /// A client protocol error.
    pub fn http(e: HttpError) -> Self {
        Self {
            status: e.status(),
            reason: e.code(),
            fault: Fault::Client,
        }
    }
    /// A header name with `_` while `proxy.underscores_in_headers = "reject"`.
    pub const HEADER_NAME: Self = Self {
        status: 400,
        reason: "http.header_name",
        fault: Fault::Client,
    };
    /// A path refused by normalization.
    pub fn path(e: crate::route::normalize::PathError) -> Self {
        Self {
            status: 400,
            reason: e.code(),
            fault: Fault::Client,
        }
    }
    /// No route for the request.
    pub const NOT_FOUND: Self = Self {
        status: 404,
        reason: "route.not_found",
        fault: Fault::Client,
    };
    /// A route exists but not for this method.
    pub const METHOD: Self = Self {
        status: 405,
        reason: "route.method",
        fault: Fault::Client,
    };
    /// A body whose media type the route does not take.
    pub const CONTENT_TYPE: Self = Self {
        status: 415,
        reason: "validation.content_type",
        fault: Fault::Client,
    };
    /// The body exceeds the route's limit.
    pub const BODY_TOO_LARGE: Self = Self {
        status: 413,
        reason: "limit.body_size",
        fault: Fault::Client,
    };
    /// A body larger than a blocking WAF reads to scan (`[waf]
    /// max_body_bytes`), though within the route's limit.
    pub const WAF_BODY_TOO_LARGE: Self = Self {
        status: 413,
        reason: "waf.body_size",
        fault: Fault::Client,
    };
    /// The request head took too long.
    pub const HEADER_TIMEOUT: Self = Self {
        status: 408,
        reason: "limit.header_timeout",
        fault: Fault::Client,
    };
    /// The request body stalled.
    pub const BODY_TIMEOUT: Self = Self {
        status: 408,
        reason: "limit.body_timeout",
        fault: Fault::Client,
    };
    /// The request body came slower than `limits.body_min_rate`.
    pub const BODY_RATE: Self = Self {
        status: 408,
        reason: "limit.body_rate",
        fault: Fault::Client,
    };
    /// The request body took longer than `limits.body_total_timeout_ms`.
    pub const BODY_TIME: Self = Self {
        status: 408,
        reason: "limit.body_time",
        fault: Fault::Client,
    };
    /// A chunked body read whole has more than `limits.max_body_chunks`.
    pub const BODY_CHUNKS: Self = Self {
        status: 413,
        reason: "limit.body_chunks",
        fault: Fault::Client,
    };
    /// The upstream refused or reset the connection.
    pub const UPSTREAM_CONNECT: Self = Self {
        status: 502,
        reason: "upstream.connect",
        fault: Fault::Upstream,
    };
    /// The upstream broke HTTP framing.
    pub const UPSTREAM_PROTOCOL: Self = Self {
        status: 502,
        reason: "upstream.protocol",
        fault: Fault::Upstream,
    };
    /// The upstream closed before answering.
    pub const UPSTREAM_CLOSED: Self = Self {
        status: 502,
        reason: "upstream.closed",
        fault: Fault::Upstream,
    };
    /// Every server of the upstream is marked down.
    pub const UPSTREAM_DOWN: Self = Self {
        status: 503,
        reason: "upstream.unavailable",
        fault: Fault::Upstream,
    };
    /// The upstream did not answer in time.
    pub const UPSTREAM_TIMEOUT: Self = Self {
        status: 504,
        reason: "upstream.timeout",
        fault: Fault::Upstream,
    };
    /// The TLS handshake with the upstream failed (certificate not
    /// trusted, wrong name, client certificate refused), or its TLS client
    /// could not be built.
    pub const UPSTREAM_TLS: Self = Self {
        status: 502,
        reason: "upstream.tls",
        fault: Fault::Upstream,
    };
    /// The upstream's `max_requests` are in flight (circuit breaker).
    pub const UPSTREAM_MAX_REQUESTS: Self = Self {
        status: 503,
        reason: "upstream.max_requests",
        fault: Fault::Upstream,
    };
    /// The upstream's `max_uploads` are streaming (circuit breaker).
    pub const UPSTREAM_MAX_UPLOADS: Self = Self {
        status: 503,
        reason: "upstream.max_uploads",
        fault: Fault::Upstream,
    };
    /// The upstream's `max_connects` are in progress (circuit breaker).
    pub const UPSTREAM_MAX_CONNECTS: Self = Self {
        status: 503,
        reason: "upstream.max_connects",
        fault: Fault::Upstream,
    };
    /// The gateway ran out of file descriptors, memory or local ports
    /// while connecting upstream; the upstream is not marked down.
    pub const LOCAL_RESOURCES: Self = Self {
        status: 503,
        reason: "gateway.resources",
        fault: Fault::Internal,
    };
    /// The client went away mid-request.
    pub const CLIENT_GONE: Self = Self {
        status: 400,
        reason: "client.gone",
        fault: Fault::Client,
    };
    /// The gateway is shutting down.
    pub const SHUTTING_DOWN: Self = Self {
        status: 503,
        reason: "gateway.shutting_down",
        fault: Fault::Internal,
    };

    /// The error word in the JSON body.
    fn word(self) -> &'static str {
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

/// A sentence for the client where the reason code alone would not tell
/// it what to do (never internal detail).
fn detail(reason: &str) -> Option<&'static str> {
    match reason {
        "auth.key_in_query" => Some(
            "send the API key in its header, not in the URL: URLs end up in logs, proxies and browser history",
        ),
        "auth.ambiguous" => Some("send one credential header, not several"),
        _ => None,
    }
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
    if f.status == 204 {
        // An answer without content (a CORS preflight).
        let _ = write!(out, "HTTP/1.1 204 No Content\r\n");
        for lines in extra_headers {
            out.extend_from_slice(lines);
        }
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        return;
    }
    let detail = detail(f.reason);
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
        write_failure(
            &mut out,
            Failure::client(400, "auth.key_in_query"),
            false,
            &[],
        );
        let text = String::from_utf8(out).expect("utf8");
        let (head, body) = text.split_once("\r\n\r\n").expect("head");
        assert!(body.contains("\"detail\":\"send the API key"), "{body}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{text}"
        );
    }
}
