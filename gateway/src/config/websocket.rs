//! `[websocket]`: how the tunnels of `websocket = true` routes live once
//! the upstream answered 101. README's *WebSocket* table puts the defaults
//! beside HAProxy's, nginx's and Kong's.

use super::*;

/// `[websocket]` as written and validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketSettings {
    /// A tunnel with no byte either way for this long is closed (HAProxy's
    /// `timeout tunnel`, nginx's `proxy_read_timeout`).
    pub idle_timeout_ms: u64,
    /// The longest a tunnel lives; a token that authenticated the upgrade
    /// shortens it to the token's remaining life.
    pub max_lifetime_ms: u64,
    /// Open tunnels per source address (IPv6 per `rate_limit.ipv6_prefix`),
    /// across workers; 0: no cap.
    pub max_per_source: u32,
    /// Open tunnels per authenticated consumer, across workers; 0: no cap.
    pub max_per_consumer: u32,
    /// Bytes a second each way, per tunnel (a second's worth may come at
    /// once); 0: no limit.
    pub bytes_per_second: u64,
    /// Bytes read at a time each way: a side that does not read holds at
    /// most this much (plus the TLS records in flight) in the gateway.
    pub buffer_bytes: usize,
    /// The largest message a client may send (its frames' payloads summed
    /// across fragments), as Kong limits it; a larger one closes the tunnel
    /// with 1009. 0: no limit (frame headers are still read, to know where a
    /// close frame of the gateway's own may go).
    pub max_message_bytes: u64,
}

impl Default for WebSocketSettings {
    fn default() -> Self {
        Self {
            idle_timeout_ms: 300_000,
            max_lifetime_ms: 24 * 3600 * 1000,
            max_per_source: 64,
            max_per_consumer: 256,
            bytes_per_second: 1024 * 1024,
            buffer_bytes: 16 * 1024,
            max_message_bytes: 1024 * 1024,
        }
    }
}

/// Validates `[websocket]`.
pub(super) fn websocket_settings(
    s: WebSocketSettings,
    invalid: &Invalid<'_>,
) -> Result<WebSocketSettings, ConfigError> {
    let bad = |key: &str, what: &str| Err(invalid(None, format!("websocket.{key}"), what.into()));
    if !(1_000..=7 * 24 * 3600 * 1000).contains(&s.idle_timeout_ms) {
        return bad("idle_timeout_ms", "between 1000 (a second) and a week");
    }
    if !(1_000..=30 * 24 * 3600 * 1000).contains(&s.max_lifetime_ms) {
        return bad("max_lifetime_ms", "between 1000 (a second) and 30 days");
    }
    if !(1024..=1024 * 1024).contains(&s.buffer_bytes) {
        return bad("buffer_bytes", "between 1024 and 1048576");
    }
    if s.bytes_per_second != 0 && s.bytes_per_second < s.buffer_bytes as u64 {
        return bad(
            "bytes_per_second",
            "0 (no limit) or at least buffer_bytes (a second's worth must hold one read)",
        );
    }
    if s.max_message_bytes > 1 << 40 {
        return bad("max_message_bytes", "0 (not checked) or at most 2^40");
    }
    Ok(s)
}
