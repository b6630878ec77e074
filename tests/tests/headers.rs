//! Security headers on every response, gateway-made errors included, and
//! the backend's fingerprinting headers removed; per-route changes.

use gateway_tests::harness::{Response, Setup, setup_keyed};

const LIMIT: &str = "[[rate_limit.limits]]\nname = \"one\"\nkey = \"source\"\nrate = \"1/min\"\n";

const ROUTES: &str = r#"
[[routes]]
path_prefix = "/keyed"
upstream = "backend"
auth = "api_key"

[[routes]]
path_prefix = "/admin"
upstream = "backend"
auth = "api_key"
roles = ["admin"]

[[routes]]
path_prefix = "/small"
upstream = "backend"
auth = "none"
max_body_bytes = 10

[[routes]]
path_prefix = "/limited"
upstream = "backend"
auth = "none"
rate_limits = ["one"]

[[routes]]
path_prefix = "/docs"
upstream = "backend"
auth = "none"
response_headers = { "X-Frame-Options" = "", "Content-Security-Policy" = "default-src 'self'", "X-Docs" = "yes" }
"#;

fn raw(s: &Setup, request: &str, method: &str) -> Response {
    let mut c = s.client();
    c.send(request.as_bytes()).expect("send");
    c.response(method).expect("response")
}

fn assert_security_headers(r: &Response, what: &str) {
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        // The harness lowercases what it reads.
        ("x-frame-options", "deny"),
        (
            "content-security-policy",
            "default-src 'none'; frame-ancestors 'none'",
        ),
        ("referrer-policy", "no-referrer"),
    ] {
        assert_eq!(
            r.header(name).as_deref(),
            Some(value),
            "{what}: {name} in {r:?}"
        );
    }
    assert!(
        r.header("strict-transport-security").is_some(),
        "{what}: {r:?}"
    );
}

#[test]
fn every_gateway_made_error_carries_the_security_headers() {
    let g = setup_keyed("headers", ROUTES, LIMIT);
    let s = &g.s;
    let cases = [
        (
            "400",
            raw(s, "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "GET"),
        ),
        ("401", s.get("/keyed/x", "")),
        (
            "403",
            s.get("/admin/x", &format!("x-api-key: {}\r\n", g.key)),
        ),
        (
            "417",
            raw(
                s,
                "GET / HTTP/1.1\r\nHost: localhost\r\nExpect: teapot\r\n\r\n",
                "GET",
            ),
        ),
        (
            "413",
            raw(
                s,
                "POST /small HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n",
                "POST",
            ),
        ),
        ("429", {
            s.get("/limited", "");
            s.get("/limited", "")
        }),
        // `*` is no path any route takes.
        (
            "404",
            raw(
                s,
                "OPTIONS * HTTP/1.1\r\nHost: localhost\r\n\r\n",
                "OPTIONS",
            ),
        ),
        ("502", s.get("/down", "")),
        // Its only server failed: marked down in each worker, then nothing to try.
        ("503", {
            let mut r = s.get("/down", "");
            for _ in 0..20 {
                if r.status == 503 {
                    break;
                }
                r = s.get("/down", "");
            }
            r
        }),
        ("504", s.get("/slow/1500", "")),
    ];
    for (want, r) in &cases {
        assert_eq!(r.status.to_string(), *want, "{r:?}");
        assert_security_headers(r, want);
        assert_eq!(
            r.header("cache-control").as_deref(),
            Some("no-store"),
            "{want}: {r:?}"
        );
    }
}

#[test]
fn the_backends_fingerprints_are_removed_and_its_copies_replaced() {
    let g = setup_keyed("headers", ROUTES, LIMIT);
    let r = g.s.get("/fingerprint", "");
    assert_eq!(r.status, 200, "{r:?}");
    for name in ["server", "x-powered-by", "x-aspnet-version"] {
        assert_eq!(r.header(name), None, "{name} reached the client: {r:?}");
    }
    assert_security_headers(&r, "proxied");
    // A public response keeps the backend's caching; an authenticated one
    // is never stored, whatever the backend said.
    assert_eq!(
        r.header("cache-control").as_deref(),
        Some("public, max-age=3600")
    );
    let r =
        g.s.get("/keyed/fingerprint", &format!("x-api-key: {}\r\n", g.key));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("cache-control").as_deref(),
        Some("no-store"),
        "{r:?}"
    );
    assert_eq!(r.header("server"), None);
}

#[test]
fn a_route_changes_adds_and_removes_headers() {
    let g = setup_keyed("headers", ROUTES, LIMIT);
    let r = g.s.get("/docs/x", "");
    assert_eq!(r.header("x-frame-options"), None, "{r:?}");
    let r = g.s.get("/docs/fingerprint", "");
    assert_eq!(r.status, 200, "{r:?}");
    // An empty value leaves the header to the upstream (here its own).
    assert_eq!(
        r.header("x-frame-options").as_deref(),
        Some("allowall"),
        "{r:?}"
    );
    assert_eq!(
        r.header("content-security-policy").as_deref(),
        Some("default-src 'self'")
    );
    assert_eq!(r.header("x-docs").as_deref(), Some("yes"));
    assert_eq!(
        r.header("x-content-type-options").as_deref(),
        Some("nosniff")
    );
}
