//! `[limits]`: the userspace protections, all per connection or request.

use super::*;

/// Largest `limits.buffer_body_bytes`: each connection may hold that much.
const MAX_BUFFER_BODY: usize = 1024 * 1024;

/// Smallest `limits.body_memory_per_worker`.
const MIN_BODY_MEMORY: usize = 1024 * 1024;

/// `[limits]`: the userspace protections, all per connection or request.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Time to receive a whole request head, from its first byte (slowloris).
    pub header_timeout_ms: u64,
    /// Time a keep-alive connection may sit idle between requests.
    pub idle_timeout_ms: u64,
    /// Longest gap between two reads of a request body; also the time a
    /// body has before `body_min_rate` starts to count.
    pub body_timeout_ms: u64,
    /// Bytes per second a request body must average after
    /// `body_timeout_ms` (each such many bytes buy one more second); 0: off.
    pub body_min_rate: u64,
    /// Bodies up to this size are read whole before an upstream connection
    /// is taken; larger ones stream.
    pub buffer_body_bytes: usize,
    /// Longest request line (414 beyond).
    pub max_request_line_bytes: usize,
    /// Longest request head (431 beyond).
    pub max_header_bytes: usize,
    /// Most header fields in a request (431 beyond).
    pub max_headers: usize,
    /// Default largest request body; routes may lower or raise it (413 beyond).
    pub max_body_bytes: u64,
    /// How long SIGTERM waits for in-flight requests.
    pub shutdown_grace_ms: u64,
    /// Deepest nesting of a JSON body on a route with a `body_schema`
    /// (400 `validation.json` beyond).
    pub json_max_depth: usize,
    /// Longest a whole request body may take, however fast it trickles
    /// (408 `limit.body_time` beyond); 0: no cap beyond `body_min_rate`.
    pub body_total_timeout_ms: u64,
    /// Bytes of request bodies each worker holds in memory at most, over
    /// all its connections: bodies read whole (schema and WAF routes) and
    /// those buffered before the upstream is taken. A request that would
    /// go beyond gets 503 `gateway.body_memory` (Envoy's overload manager,
    /// HAProxy's buffer limits).
    pub body_memory_per_worker: usize,
    /// Most chunks in a chunked body read whole (413 `limit.body_chunks`
    /// beyond).
    pub max_body_chunks: u64,
    /// Open connections one source address (IPv6: its `/64`, as
    /// `rate_limit.ipv6_prefix` says) may hold at once, across workers;
    /// further ones are closed at accept. Trusted proxies are exempt, and
    /// loopback unless `policy.exempt_loopback = false`. 0: no cap.
    pub max_connections_per_source: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            body_timeout_ms: 30_000,
            body_min_rate: 1024,
            buffer_body_bytes: 16 * 1024,
            max_request_line_bytes: 8 * 1024,
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            max_body_bytes: 10 * 1024 * 1024,
            shutdown_grace_ms: 10_000,
            json_max_depth: 64,
            body_total_timeout_ms: 600_000,
            body_memory_per_worker: 64 * 1024 * 1024,
            max_body_chunks: 16_384,
            // A NAT in front of a few hundred browsers (six connections
            // each), not a tenth of the workers' default capacity.
            max_connections_per_source: 1024,
        }
    }
}

/// `[limits]`, held to what a request can be parsed and buffered with.
pub(super) fn limit_settings(limits: Limits, invalid: &Invalid<'_>) -> Result<Limits, ConfigError> {
    if limits.buffer_body_bytes > MAX_BUFFER_BODY {
        return Err(invalid(
            None,
            "limits.buffer_body_bytes".into(),
            format!("at most {MAX_BUFFER_BODY} (it is held per connection)"),
        ));
    }
    if !(1..=1024).contains(&limits.json_max_depth) {
        return Err(invalid(
            None,
            "limits.json_max_depth".into(),
            "between 1 and 1024".into(),
        ));
    }
    if limits.body_memory_per_worker < MIN_BODY_MEMORY {
        return Err(invalid(
            None,
            "limits.body_memory_per_worker".into(),
            format!("at least {MIN_BODY_MEMORY} bytes"),
        ));
    }
    if limits.max_body_chunks == 0 {
        return Err(invalid(
            None,
            "limits.max_body_chunks".into(),
            "at least 1".into(),
        ));
    }
    if limits.max_headers == 0 || limits.max_header_bytes < 64 || limits.max_request_line_bytes < 16
    {
        return Err(invalid(
            None,
            "limits".into(),
            "header limits are too small to parse a request".into(),
        ));
    }
    Ok(limits)
}
