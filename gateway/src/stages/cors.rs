//! CORS (the Fetch standard's CORS protocol): which browser origins may
//! call a route. Preflights are answered here and never reach the
//! upstream; an allowed origin gets its `Access-Control-*` lines on the
//! response (the gateway's own errors included, so a page can read why it
//! was refused); an origin not allowed gets none. `Vary: Origin` is sent
//! whenever the answer depends on the origin.

use crate::{
    config::{CorsSettings, OriginRule},
    http::request::RequestHead,
    respond::Failure,
};

/// A preflight answered by the gateway (204, no body).
pub const PREFLIGHT: Failure = Failure::client(204, "cors.preflight");
/// A preflight from an origin the route does not allow.
pub const ORIGIN: Failure = Failure::client(403, "cors.origin");
/// A preflight for a method the route does not allow.
pub const METHOD: Failure = Failure::client(403, "cors.method");
/// A preflight for request headers the route does not allow.
pub const HEADERS: Failure = Failure::client(403, "cors.headers");

/// A field's value; two copies are ambiguous, so none.
fn header<'b>(head: &RequestHead<'b, '_>, name: &str) -> Option<&'b str> {
    let value = head.single(name).ok()??;
    std::str::from_utf8(value).ok()
}

/// The method a preflight asks about, when `head` is one (OPTIONS with
/// `Origin` and `Access-Control-Request-Method`): routing uses it.
pub fn preflight_method<'b>(head: &RequestHead<'b, '_>) -> Option<&'b str> {
    if head.method != "OPTIONS" || header(head, "origin").is_none() {
        return None;
    }
    header(head, "access-control-request-method").filter(|m| !m.is_empty())
}

/// Judges a request on a route with `policy`, writing the response's CORS
/// lines to `lines`. A preflight always ends here: [`PREFLIGHT`] when
/// allowed, a 403 naming what was not.
pub fn judge(
    policy: &CorsSettings,
    head: &RequestHead<'_, '_>,
    lines: &mut Vec<u8>,
) -> Result<(), Failure> {
    lines.clear();
    // The answer depends on the origin, also when there is none: a cache
    // must not serve a response without CORS lines to a page.
    lines.extend_from_slice(b"vary: origin\r\n");
    let Some(origin) = header(head, "origin") else {
        return Ok(());
    };
    let allowed = policy.origins.iter().any(|r| r.allows(origin));
    if let Some(method) = preflight_method(head) {
        lines.extend_from_slice(
            b"vary: access-control-request-method, access-control-request-headers\r\n",
        );
        if !allowed {
            return Err(ORIGIN);
        }
        if !policy.methods.iter().any(|m| m == method) {
            return Err(METHOD);
        }
        let asked = header(head, "access-control-request-headers").unwrap_or("");
        let all_allowed = asked
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .all(|h| policy.headers.iter().any(|a| a.eq_ignore_ascii_case(h)));
        if !all_allowed {
            return Err(HEADERS);
        }
        allow_origin(policy, origin, lines);
        lines.extend_from_slice(b"access-control-allow-methods: ");
        lines.extend_from_slice(policy.methods.join(", ").as_bytes());
        lines.extend_from_slice(b"\r\n");
        if !policy.headers.is_empty() {
            lines.extend_from_slice(b"access-control-allow-headers: ");
            lines.extend_from_slice(policy.headers.join(", ").as_bytes());
            lines.extend_from_slice(b"\r\n");
        }
        lines.extend_from_slice(
            format!("access-control-max-age: {}\r\n", policy.max_age_secs).as_bytes(),
        );
        return Err(PREFLIGHT);
    }
    if allowed {
        allow_origin(policy, origin, lines);
        if !policy.expose.is_empty() {
            lines.extend_from_slice(b"access-control-expose-headers: ");
            lines.extend_from_slice(policy.expose.join(", ").as_bytes());
            lines.extend_from_slice(b"\r\n");
        }
    }
    Ok(())
}

fn allow_origin(policy: &CorsSettings, origin: &str, lines: &mut Vec<u8>) {
    lines.extend_from_slice(b"access-control-allow-origin: ");
    if policy.origins.contains(&OriginRule::Any) && !policy.credentials {
        lines.extend_from_slice(b"*");
    } else {
        // Allowed, so it is a checked scheme://host[:port].
        lines.extend_from_slice(origin.as_bytes());
    }
    lines.extend_from_slice(b"\r\n");
    if policy.credentials {
        lines.extend_from_slice(b"access-control-allow-credentials: true\r\n");
    }
}
