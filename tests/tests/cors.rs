//! CORS end to end: the preflight matrix answered by the gateway (spoofed
//! origins, `null`, methods and headers not allowed), the headers on actual
//! requests and on the gateway's own errors, and the upstream's own CORS
//! headers never passed on where the gateway owns CORS.

use gateway_tests::harness::{Response, Setup, reason_of, setup_keyed};

const ROUTES: &str = r#"
[[routes]]
path_prefix = "/api"
upstream = "backend"
auth = "api_key"
methods = ["GET", "POST", "DELETE", "OPTIONS"]

[[routes]]
path_prefix = "/open"
upstream = "backend"
auth = "none"
cors = { allow_origins = ["*"] }

[[routes]]
path_prefix = "/nocors"
upstream = "backend"
auth = "none"
cors = false
"#;

const CORS: &str = r#"
[cors]
allow_origins = ["https://app.example.com", "https://*.example.com"]
allow_methods = ["GET", "POST"]
allow_headers = ["content-type", "x-api-key"]
expose_headers = ["ratelimit"]
allow_credentials = true
max_age_secs = 600
"#;

fn preflight(s: &Setup, path: &str, origin: &str, method: &str, headers: &str) -> Response {
    let mut c = s.client();
    let asked = if headers.is_empty() {
        String::new()
    } else {
        format!("Access-Control-Request-Headers: {headers}\r\n")
    };
    c.send(
        format!(
            "OPTIONS {path} HTTP/1.1\r\nHost: localhost\r\nOrigin: {origin}\r\nAccess-Control-Request-Method: {method}\r\n{asked}\r\n"
        )
        .as_bytes(),
    )
    .expect("send");
    c.response("OPTIONS").expect("response")
}

#[test]
fn preflights_are_answered_by_the_gateway_and_spoofed_origins_get_nothing() {
    let g = setup_keyed("cors", ROUTES, CORS);
    let s = &g.s;
    let ok = preflight(
        s,
        "/api/orders",
        "https://app.example.com",
        "POST",
        "Content-Type, X-Api-Key",
    );
    assert_eq!(ok.status, 204, "{ok:?}");
    assert_eq!(
        ok.header("access-control-allow-origin").as_deref(),
        Some("https://app.example.com")
    );
    assert_eq!(
        ok.header("access-control-allow-credentials").as_deref(),
        Some("true")
    );
    assert_eq!(
        ok.header("access-control-allow-methods").as_deref(),
        Some("get, post")
    );
    assert_eq!(
        ok.header("access-control-allow-headers").as_deref(),
        Some("content-type, x-api-key")
    );
    assert_eq!(ok.header("access-control-max-age").as_deref(), Some("600"));
    assert!(ok.head.contains("vary: origin\r\n"), "{ok:?}");
    assert!(ok.body.is_empty());
    let sub = preflight(s, "/api/orders", "https://a.b.example.com", "GET", "");
    assert_eq!(sub.status, 204, "{sub:?}");

    for (origin, method, headers, reason) in [
        ("https://example.com.evil.com", "POST", "", "cors.origin"),
        ("https://evilexample.com", "POST", "", "cors.origin"),
        ("https://example.com", "POST", "", "cors.origin"),
        ("http://app.example.com", "POST", "", "cors.origin"),
        ("null", "POST", "", "cors.origin"),
        ("https://app.example.com", "DELETE", "", "cors.method"),
        ("https://app.example.com", "POST", "x-evil", "cors.headers"),
    ] {
        let r = preflight(s, "/api/orders", origin, method, headers);
        assert_eq!(
            (r.status, reason_of(&r).as_str()),
            (403, reason),
            "{origin} {method} {headers}: {r:?}"
        );
        assert_eq!(r.header("access-control-allow-origin"), None, "{r:?}");
        assert!(r.head.contains("vary: origin\r\n"), "{r:?}");
    }
    assert_eq!(s.backend.hits("/api"), 0, "a preflight reached the backend");

    // Without a CORS policy an OPTIONS request is the upstream's business.
    let r = preflight(s, "/nocors/x", "https://app.example.com", "GET", "");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(s.backend.hits("/nocors"), 1);
}

#[test]
fn actual_requests_and_errors_carry_cors_only_for_allowed_origins() {
    let g = setup_keyed("cors", ROUTES, CORS);
    let s = &g.s;
    let key = format!("x-api-key: {}\r\n", g.key);
    let ok = s.get(
        "/api/fingerprint",
        &format!("Origin: https://app.example.com\r\n{key}"),
    );
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(
        ok.header("access-control-allow-origin").as_deref(),
        Some("https://app.example.com"),
        "{ok:?}"
    );
    assert_eq!(
        ok.header("access-control-expose-headers").as_deref(),
        Some("ratelimit")
    );
    assert!(ok.head.contains("vary: origin\r\n"), "{ok:?}");
    // Another origin: served (CORS is the browser's check) but told nothing,
    // and the upstream's own `*` is not passed on either.
    let other = s.get(
        "/api/fingerprint",
        &format!("Origin: https://evil.test\r\n{key}"),
    );
    assert_eq!(other.status, 200);
    assert_eq!(
        other.header("access-control-allow-origin"),
        None,
        "{other:?}"
    );
    assert!(other.head.contains("vary: origin\r\n"));
    // The gateway's own error, readable by the allowed page.
    let denied = s.get("/api/x", "Origin: https://app.example.com\r\n");
    assert_eq!(denied.status, 401);
    assert_eq!(
        denied.header("access-control-allow-origin").as_deref(),
        Some("https://app.example.com"),
        "{denied:?}"
    );
    // `*` for a public route without credentials.
    let open = s.get("/open/x", "Origin: https://anyone.test\r\n");
    assert_eq!(
        open.header("access-control-allow-origin").as_deref(),
        Some("*")
    );
    assert_eq!(open.header("access-control-allow-credentials"), None);
    // No policy: the upstream's header passes as it is.
    let plain = s.get("/nocors/fingerprint", "Origin: https://evil.test\r\n");
    assert_eq!(
        plain.header("access-control-allow-origin").as_deref(),
        Some("*")
    );
}

/// A request's CORS lines belong to it alone: a 408 for a head that never
/// completed, pipelined behind an allowed CORS request, carries none.
#[test]
fn a_timed_out_head_gets_no_cors_lines_of_the_request_before_it() {
    let g = setup_keyed("cors-408", ROUTES, CORS);
    let mut c = g.s.client();
    c.send(
        b"GET /open/x HTTP/1.1\r\nHost: localhost\r\nOrigin: https://anyone.test\r\n\r\nGET /open/y HTTP/1.1\r\nHost: loc",
    )
    .expect("send");
    let first = c.response("GET").expect("the first response");
    assert_eq!(first.status, 200);
    assert_eq!(
        first.header("access-control-allow-origin").as_deref(),
        Some("*"),
        "{first:?}"
    );
    let late = c.response("GET").expect("the 408");
    assert_eq!(
        (late.status, reason_of(&late).as_str()),
        (408, "limit.header_timeout")
    );
    assert_eq!(late.header("access-control-allow-origin"), None, "{late:?}");
    assert!(!late.head.contains("access-control-"), "{late:?}");
}
