//! CORS (the Fetch standard's CORS protocol): which browser origins may
//! call a route. An allowed preflight is told apart here and answered by
//! the pipeline (a 204), never by the upstream; an allowed origin gets its `Access-Control-*` lines on the
//! response (the gateway's own errors included, so a page can read why it
//! was refused); an origin not allowed gets none. `Vary: Origin` is sent
//! whenever the answer depends on the origin.

use crate::{
    config::{CorsSettings, OriginRule},
    http::request::RequestHead,
    respond::Failure,
};

/// What the CORS stage let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowed {
    /// Not a preflight: the request goes on, with its CORS lines.
    Request,
    /// An allowed preflight: answered by the gateway (204 and the CORS
    /// lines), never proxied.
    Preflight,
}

/// The access log's reason code for an answered preflight.
pub const PREFLIGHT: &str = "cors.preflight";
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
/// lines to `lines`. A preflight always ends here: [`Allowed::Preflight`]
/// when allowed, a 403 naming what was not.
pub fn judge(
    policy: &CorsSettings,
    head: &RequestHead<'_, '_>,
    lines: &mut Vec<u8>,
) -> Result<Allowed, Failure> {
    lines.clear();
    // The answer depends on the origin, also when there is none: a cache
    // must not serve a response without CORS lines to a page.
    lines.extend_from_slice(b"vary: origin\r\n");
    let Some(origin) = header(head, "origin") else {
        return Ok(Allowed::Request);
    };
    let allowed = allows(policy, origin);
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
        return Ok(Allowed::Preflight);
    }
    if allowed {
        allow_origin(policy, origin, lines);
        if !policy.expose.is_empty() {
            lines.extend_from_slice(b"access-control-expose-headers: ");
            lines.extend_from_slice(policy.expose.join(", ").as_bytes());
            lines.extend_from_slice(b"\r\n");
        }
    }
    Ok(Allowed::Request)
}

/// Whether `policy` allows pages of `origin`.
pub fn allows(policy: &CorsSettings, origin: &str) -> bool {
    policy.origins.iter().any(|r| r.allows(origin))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{MAX_HEADERS, request::HeadLimits};

    fn policy() -> CorsSettings {
        CorsSettings {
            origins: vec![OriginRule::Exact("https://app.example".into())],
            methods: vec!["GET".into(), "PUT".into()],
            headers: vec!["x-api-key".into()],
            expose: vec!["x-request-id".into()],
            credentials: false,
            max_age_secs: 600,
        }
    }

    /// Judges the request `raw` under `policy()`: the outcome, the lines
    /// written and the method a preflight asked about.
    fn judged(raw: &str) -> (Result<Allowed, Failure>, String, Option<String>) {
        let mut hdrs = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let limits = HeadLimits {
            max_request_line: 8192,
            max_head: 8192,
        };
        let head = crate::http::request::parse(raw.as_bytes(), &mut hdrs, &limits)
            .expect("a valid head")
            .expect("a complete head");
        let asked = preflight_method(&head).map(str::to_owned);
        let mut lines = Vec::new();
        let r = judge(&policy(), &head, &mut lines);
        (r, String::from_utf8(lines).expect("ascii"), asked)
    }

    #[test]
    fn an_allowed_preflight_is_answered_with_what_it_may_send() {
        let (r, lines, asked) = judged(
            "OPTIONS /x HTTP/1.1\r\nhost: a\r\norigin: https://app.example\r\n\
             access-control-request-method: PUT\r\naccess-control-request-headers: X-Api-Key\r\n\r\n",
        );
        assert_eq!(r, Ok(Allowed::Preflight));
        assert_eq!(asked.as_deref(), Some("PUT"));
        assert!(
            lines.contains("access-control-allow-origin: https://app.example\r\n"),
            "{lines}"
        );
        assert!(
            lines.contains("access-control-allow-methods: GET, PUT\r\n"),
            "{lines}"
        );
        assert!(lines.contains("access-control-max-age: 600\r\n"), "{lines}");
        assert!(
            lines.contains("access-control-allow-headers: x-api-key\r\n"),
            "{lines}"
        );
    }

    #[test]
    fn any_origin_is_a_star_and_credentials_name_the_origin() {
        let mut hdrs = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let limits = HeadLimits {
            max_request_line: 8192,
            max_head: 8192,
        };
        let raw = b"GET /x HTTP/1.1\r\nhost: a\r\norigin: https://app.example\r\n\r\n";
        let head = crate::http::request::parse(raw, &mut hdrs, &limits)
            .expect("a valid head")
            .expect("a complete head");
        let mut lines = Vec::new();
        let any = CorsSettings {
            origins: vec![OriginRule::Any],
            ..policy()
        };
        assert_eq!(judge(&any, &head, &mut lines), Ok(Allowed::Request));
        let text = String::from_utf8_lossy(&lines).into_owned();
        assert!(
            text.contains("access-control-allow-origin: *\r\n"),
            "{text}"
        );
        assert!(!text.contains("allow-credentials"), "{text}");
        let with_cookies = CorsSettings {
            credentials: true,
            ..policy()
        };
        assert_eq!(
            judge(&with_cookies, &head, &mut lines),
            Ok(Allowed::Request)
        );
        let text = String::from_utf8_lossy(&lines).into_owned();
        assert!(
            text.contains("access-control-allow-origin: https://app.example\r\n"),
            "{text}"
        );
        assert!(
            text.contains("access-control-allow-credentials: true\r\n"),
            "{text}"
        );
    }

    #[test]
    fn a_preflight_is_refused_for_what_the_route_does_not_allow() {
        let pre = |origin: &str, method: &str, headers: &str| {
            judged(&format!(
                "OPTIONS /x HTTP/1.1\r\nhost: a\r\norigin: {origin}\r\n\
                 access-control-request-method: {method}\r\naccess-control-request-headers: {headers}\r\n\r\n"
            ))
        };
        assert_eq!(
            pre("https://evil.example", "GET", "x-api-key").0,
            Err(ORIGIN)
        );
        assert_eq!(
            pre("https://app.example", "DELETE", "x-api-key").0,
            Err(METHOD)
        );
        assert_eq!(
            pre("https://app.example", "GET", "x-api-key, cookie").0,
            Err(HEADERS)
        );
        let (_, lines, _) = pre("https://evil.example", "GET", "");
        assert!(!lines.contains("access-control-allow-origin"), "{lines}");
    }

    #[test]
    fn only_an_options_with_origin_and_a_method_is_a_preflight() {
        // No Origin: a plain OPTIONS, routed as itself.
        let (r, lines, asked) =
            judged("OPTIONS /x HTTP/1.1\r\nhost: a\r\naccess-control-request-method: PUT\r\n\r\n");
        assert_eq!((r, asked), (Ok(Allowed::Request), None));
        assert_eq!(lines, "vary: origin\r\n");
        // An empty method asks about nothing.
        let (_, _, asked) = judged(
            "OPTIONS /x HTTP/1.1\r\nhost: a\r\norigin: https://app.example\r\naccess-control-request-method: \r\n\r\n",
        );
        assert_eq!(asked, None);
        // A GET with the same fields is no preflight.
        let (r, _, asked) = judged(
            "GET /x HTTP/1.1\r\nhost: a\r\norigin: https://app.example\r\naccess-control-request-method: PUT\r\n\r\n",
        );
        assert_eq!((r, asked), (Ok(Allowed::Request), None));
    }

    #[test]
    fn an_allowed_origin_gets_its_lines_and_two_origins_get_none() {
        let (r, lines, _) =
            judged("GET /x HTTP/1.1\r\nhost: a\r\norigin: https://app.example\r\n\r\n");
        assert_eq!(r, Ok(Allowed::Request));
        assert!(
            lines.contains("access-control-allow-origin: https://app.example\r\n"),
            "{lines}"
        );
        assert!(
            lines.contains("access-control-expose-headers: x-request-id\r\n"),
            "{lines}"
        );
        // Two Origin fields are ambiguous: treated as none.
        let (r, lines, _) = judged(
            "GET /x HTTP/1.1\r\nhost: a\r\norigin: https://app.example\r\norigin: https://app.example\r\n\r\n",
        );
        assert_eq!(
            (r, lines.as_str()),
            (Ok(Allowed::Request), "vary: origin\r\n")
        );
    }
}
