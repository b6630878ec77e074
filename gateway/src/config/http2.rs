//! `[http2]`: whether clients may speak HTTP/2, and the limits each
//! connection lives under. The defaults are Envoy's edge recommendations
//! (its own built-in defaults, and h2's, are far looser): README's
//! *HTTP/2* table puts them side by side.

use super::*;

/// `[http2]` as written and validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http2Settings {
    /// Offer `h2` in ALPN (ahead of `http/1.1`).
    pub enabled: bool,
    /// Streams a client may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS);
    /// a stream beyond is refused with RST_STREAM REFUSED_STREAM.
    pub max_concurrent_streams: u32,
    /// Request body bytes a stream may send before the gateway reads them.
    pub stream_window_bytes: u32,
    /// Request body bytes all of a connection's streams may send before the
    /// gateway reads them.
    pub connection_window_bytes: u32,
    /// Largest decoded header list of a request (SETTINGS_MAX_HEADER_LIST_SIZE,
    /// each field counted with 32 bytes of overhead as RFC 9113 says); it
    /// also caps how many CONTINUATION frames one head may take.
    pub max_header_list_bytes: u32,
    /// Streams the client may reset before the gateway accepted them, at
    /// once, before the connection is closed with ENHANCE_YOUR_CALM (Rapid
    /// Reset, CVE-2023-44487).
    pub max_pending_reset_streams: usize,
    /// Envoy's premature-reset rule: once a connection has opened this many
    /// streams, it is closed with ENHANCE_YOUR_CALM when more than half of
    /// them were reset by the client within `premature_reset_ms` of opening.
    pub premature_reset_streams: u64,
    /// How young a stream the client resets counts as premature.
    pub premature_reset_ms: u64,
    /// Streams the gateway itself reset for a protocol error before the
    /// connection is closed with ENHANCE_YOUR_CALM.
    pub max_local_error_resets: usize,
    /// A connection with no open stream for this long gets a PING; one
    /// that does not answer it within `keepalive_timeout_ms` is closed.
    /// 0: no PING.
    pub keepalive_interval_ms: u64,
    /// How long a PING waits for its answer.
    pub keepalive_timeout_ms: u64,
}

impl Default for Http2Settings {
    fn default() -> Self {
        Self {
            enabled: true,
            max_concurrent_streams: 100,
            stream_window_bytes: 64 * 1024,
            connection_window_bytes: 1024 * 1024,
            max_header_list_bytes: 16 * 1024,
            max_pending_reset_streams: 20,
            premature_reset_streams: 500,
            premature_reset_ms: 1000,
            max_local_error_resets: 1024,
            keepalive_interval_ms: 30_000,
            keepalive_timeout_ms: 10_000,
        }
    }
}

/// Largest flow-control window HTTP/2 allows (RFC 9113 §6.9.1).
const MAX_WINDOW: u32 = (1 << 31) - 1;

/// Validates `[http2]`.
pub(super) fn http2_settings(
    s: Http2Settings,
    invalid: &Invalid<'_>,
) -> Result<Http2Settings, ConfigError> {
    let bad = |key: &str, what: &str| Err(invalid(None, format!("http2.{key}"), what.into()));
    if !(1..=10_000).contains(&s.max_concurrent_streams) {
        return bad("max_concurrent_streams", "between 1 and 10000");
    }
    // 65,535 is the window every HTTP/2 connection starts with.
    if !(65_535..=MAX_WINDOW).contains(&s.stream_window_bytes) {
        return bad("stream_window_bytes", "between 65535 and 2147483647");
    }
    if !(65_535..=MAX_WINDOW).contains(&s.connection_window_bytes)
        || s.connection_window_bytes < s.stream_window_bytes
    {
        return bad(
            "connection_window_bytes",
            "between 65535 and 2147483647, and at least stream_window_bytes",
        );
    }
    if !(1024..=1024 * 1024).contains(&s.max_header_list_bytes) {
        return bad("max_header_list_bytes", "between 1024 and 1048576");
    }
    if s.max_pending_reset_streams == 0 || s.max_local_error_resets == 0 {
        return bad(
            "max_pending_reset_streams",
            "it and max_local_error_resets must be at least 1",
        );
    }
    if s.premature_reset_streams == 0 || s.premature_reset_ms == 0 {
        return bad(
            "premature_reset_streams",
            "it and premature_reset_ms must be at least 1",
        );
    }
    if s.keepalive_interval_ms > 0 && s.keepalive_timeout_ms == 0 {
        return bad(
            "keepalive_timeout_ms",
            "at least 1 while keepalive_interval_ms is set",
        );
    }
    Ok(s)
}
