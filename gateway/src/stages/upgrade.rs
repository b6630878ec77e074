//! HTTP Upgrade: the only protocol switch the gateway makes is a WebSocket
//! handshake (RFC 6455 §4.1) on a route with `websocket = true`. Anything
//! else that asks to switch (`h2c`, unknown tokens, a WebSocket upgrade
//! on another route) is refused rather than quietly proxied as a plain
//! request, and a handshake from a browser origin the route's CORS policy
//! does not allow is refused (RFC 6455 §10.2: the server checks `Origin`;
//! a page on another site could otherwise open a socket with its visitor's
//! cookies). Every other head stage judges the upgrade request as any
//! request; the tunnel opens only on the upstream's 101 (`proxy::tunnel`).

use super::cors;
use crate::{
    config::RouteSettings,
    http::{Framing, request::RequestHead},
    respond::{Failure, Hint},
};

/// An upgrade to something other than `websocket` (`h2c` included).
pub const UNSUPPORTED: Failure = Failure::client(400, "upgrade.unsupported");
/// A WebSocket upgrade on a route without `websocket = true`.
pub const NOT_ENABLED: Failure = Failure::client(400, "websocket.not_enabled");
/// A WebSocket upgrade that breaks RFC 6455 §4.1 (not a bodiless
/// HTTP/1.1 GET, no `Connection: upgrade`, no valid `Sec-WebSocket-Key`).
pub const HANDSHAKE: Failure = Failure::client(400, "websocket.handshake");
/// A WebSocket version other than 13: 426 naming the one spoken.
pub const VERSION: Failure = Failure::client(426, "websocket.version")
    .with_hint(Hint::Line(b"sec-websocket-version: 13\r\n"));
/// A browser origin the route's CORS policy does not allow.
pub const ORIGIN: Failure = Failure::client(403, "websocket.origin");

/// The `Sec-WebSocket-Accept` value that answers a handshake's key.
pub type Accept = [u8; 28];

/// What a request asks to switch to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upgrade {
    /// Nothing: a plain request.
    None,
    /// A valid WebSocket handshake on a route that takes it, and what the
    /// upstream's 101 must answer it with.
    WebSocket(Accept),
}

/// Judges `head`'s `Upgrade` on `route`.
pub fn judge(route: &RouteSettings, head: &RequestHead<'_, '_>) -> Result<Upgrade, Failure> {
    if !head.upgrade {
        return Ok(Upgrade::None);
    }
    let token = match head.single("upgrade") {
        Ok(Some(t)) => t,
        _ => return Err(HANDSHAKE),
    };
    if !token.eq_ignore_ascii_case(b"websocket") {
        return Err(UNSUPPORTED);
    }
    if !route.websocket {
        return Err(NOT_ENABLED);
    }
    let bodiless = matches!(head.framing, Framing::None | Framing::Length(0));
    if head.method != "GET" || head.minor != 1 || !head.connection_upgrade || !bodiless {
        return Err(HANDSHAKE);
    }
    match head.single("sec-websocket-version") {
        Ok(Some(b"13")) => {}
        _ => return Err(VERSION),
    }
    let accept = match head.single("sec-websocket-key") {
        Ok(Some(key)) if valid_key(key) => accept_for(key),
        _ => return Err(HANDSHAKE),
    };
    match head.single("origin") {
        Ok(None) => {}
        Ok(Some(origin)) => {
            let allowed = std::str::from_utf8(origin)
                .is_ok_and(|o| route.cors.as_ref().is_some_and(|p| cors::allows(p, o)));
            if !allowed {
                return Err(ORIGIN);
            }
        }
        Err(_) => return Err(ORIGIN),
    }
    Ok(Upgrade::WebSocket(accept))
}

/// A `Sec-WebSocket-Key`: base64 of 16 bytes (RFC 6455 §4.1, item 7).
fn valid_key(key: &[u8]) -> bool {
    use base64::Engine as _;
    key.len() == 24
        && base64::engine::general_purpose::STANDARD
            .decode(key)
            .is_ok_and(|k| k.len() == 16)
}

/// The `Sec-WebSocket-Accept` an upstream must answer `key` with
/// (RFC 6455 §4.2.2): base64 of SHA-1 over the key and the protocol's GUID.
fn accept_for(key: &[u8]) -> Accept {
    use base64::Engine as _;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let mut out = [0u8; 28];
    // 20 bytes of digest are 28 of base64: the buffer always fits.
    let _ = base64::engine::general_purpose::STANDARD.encode_slice(ctx.finish().as_ref(), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_value_is_rfc_6455s_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            &accept_for(b"dGhlIHNhbXBsZSBub25jZQ=="),
            b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert!(valid_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!valid_key(b"dGhlIHNhbXBsZSBub25jZQ"));
        assert!(!valid_key(b"dGhlIHNhbXBsZSBub25jZXg="));
    }
}
