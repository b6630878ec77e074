//! The WAF from the attacker's side: 69 SQL injection and XSS payloads
//! (PayloadsAllTheThings and the OWASP XSS filter evasion cheat sheet) in
//! the query, a JSON body, a form body, a header, a cookie and the path,
//! each refused with 403 in block mode and never reaching the backend,
//! while look-alikes (`O'Brien`, `select` in prose, `<3`) pass; detect mode
//! lets them through and logs them; detections earn a verdict.

use std::time::Duration;

use gateway_tests::harness::{Client, Setup, client_config, reason_of, setup_with};

const SQLI: &str = include_str!("../../gateway/src/stages/waf/corpus/sqli.txt");
const XSS: &str = include_str!("../../gateway/src/stages/waf/corpus/xss.txt");
const BENIGN: &str = include_str!("../../gateway/src/stages/waf/corpus/benign.txt");

const ROUTES: &str = r#"
[[routes]]
path_prefix = "/shop"
upstream = "backend"
auth = "none"
waf = "block"

[[routes]]
path_prefix = "/watch"
upstream = "backend"
auth = "none"
waf = "detect"
"#;

fn payloads(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.is_empty()).collect()
}

/// Every byte but unreserved ones percent-encoded.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn post(s: &Setup, path: &str, content_type: &str, body: &str) -> (u16, String) {
    let mut c = s.client();
    c.send(
        format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .expect("send");
    let r = c.response("POST").expect("response");
    (r.status, reason_of(&r))
}

#[test]
fn payloads_are_blocked_wherever_they_hide_and_look_alikes_pass() {
    let s = setup_with("waf-block", "", "workers = 2", ROUTES, "", &[]);
    let attacks: Vec<&str> = payloads(SQLI).into_iter().chain(payloads(XSS)).collect();
    assert!(attacks.len() >= 50);
    for p in &attacks {
        let expect = |(status, reason): (u16, String), place: &str| {
            assert!(
                status == 403 && (reason == "waf.sqli" || reason == "waf.xss"),
                "{p:?} in {place}: {status} {reason}"
            );
        };
        let r = s.get(&format!("/shop/search?q={}", enc(p)), "");
        expect((r.status, reason_of(&r)), "query");
        let json = serde_json::json!({"order": {"comment": p}}).to_string();
        expect(post(&s, "/shop/orders", "application/json", &json), "json");
        expect(
            post(
                &s,
                "/shop/orders",
                "application/x-www-form-urlencoded",
                &format!("comment={}", enc(p)),
            ),
            "form",
        );
        let r = s.get("/shop/x", &format!("Referer: {p}\r\n"));
        expect((r.status, reason_of(&r)), "header");
        let r = s.get(
            "/shop/x",
            &format!("Cookie: theme=dark; pref={}\r\n", enc(p)),
        );
        expect((r.status, reason_of(&r)), "cookie");
        // In the path: refused one way or another (an encoded slash is a 400).
        let r = s.get(&format!("/shop/items/{}", enc(p)), "");
        assert!(r.status == 403 || r.status == 400, "{p:?} in path: {r:?}");
    }
    // Double encoding does not hide a quote, nor do `;` path parameters
    // (which the upstream gets).
    let r = s.get("/shop/search?q=1%2527%2520OR%25201%253D1--", "");
    assert_eq!(r.status, 403);
    let r = s.get("/shop/items/1;%27%20OR%20%271%27=%271", "");
    assert_eq!(reason_of(&r), "waf.sqli");
    // A JSON body under another media type is still read as JSON, and two
    // media types at once are refused.
    let sneaky = serde_json::json!({"comment": "' UNION SELECT password FROM users--"}).to_string();
    assert_eq!(
        post(&s, "/shop/orders", "text/plain", &sneaky),
        (403, "waf.sqli".into())
    );
    let (status, reason) = post(
        &s,
        "/shop/orders",
        "text/plain\r\nContent-Type: application/json",
        "{}",
    );
    assert_eq!((status, reason.as_str()), (415, "validation.content_type"));
    assert_eq!(s.backend.hits("/shop"), 0, "an attack reached the backend");

    for b in payloads(BENIGN) {
        let r = s.get(&format!("/shop/search?q={}", enc(b)), "");
        assert_eq!(r.status, 200, "{b:?} in query: {r:?}");
        let json = serde_json::json!({"comment": b, "name": "O'Brien"}).to_string();
        assert_eq!(
            post(&s, "/shop/orders", "application/json", &json).0,
            200,
            "{b:?} in json"
        );
        let r = s.get(
            "/shop/x",
            &format!("Referer: https://example.com/?q={}\r\n", enc(b)),
        );
        assert_eq!(r.status, 200, "{b:?} in header");
    }
    // Credentials are never judged (nor logged): a key that looks odd passes.
    assert_eq!(
        s.get("/shop/x", "Authorization: Bearer ' OR 1=1--\r\n")
            .status,
        200
    );
}

#[test]
fn detect_mode_logs_and_lets_through() {
    let mut s = setup_with("waf-detect", "", "workers = 2", ROUTES, "", &[]);
    let r = s.get(
        &format!(
            "/watch/search?q={}",
            enc("' UNION SELECT password FROM users--")
        ),
        "",
    );
    assert_eq!(r.status, 200);
    assert_eq!(s.backend.hits("/watch"), 1);
    let line =
        s.gw.proc
            .wait_for_line("waf: ", Duration::from_secs(3))
            .unwrap_or_else(|| panic!("no waf line in {:?}", s.gw.proc.seen));
    assert!(
        line.contains("sql injection in query \"q\" (fingerprint"),
        "{line}"
    );
    assert!(
        line.contains("from 127.0.0.1 on routes[1] (detect only)"),
        "{line}"
    );
    assert!(!line.contains("password"), "the payload was logged: {line}");
}

#[test]
fn detections_earn_a_verdict() {
    let mut s = setup_with(
        "waf-escalate",
        "",
        "workers = 2",
        ROUTES,
        "[rate_limit.escalation]\nrejections = 0\nauth_failures = 0\nattacks = 3\nwindow_secs = 60\nban_secs = 2\nmax_ban_secs = 60\n",
        &[],
    );
    for p in [
        "<script>alert(1)</script>",
        "' OR '1'='1",
        "<svg onload=alert(1)>",
    ] {
        // Detect mode counts as well.
        let r = s.get(&format!("/watch/?q={}", enc(p)), "");
        assert_eq!(r.status, 200);
    }
    let line =
        s.gw.proc
            .wait_for_line("verdict: 127.0.0.1", Duration::from_secs(3))
            .unwrap_or_else(|| panic!("no verdict in {:?}", s.gw.proc.seen));
    assert!(
        line.contains("(abuse: 3 attacks the WAF detected in 60s; offence 1)"),
        "{line}"
    );
    let cfg = client_config(&s.certs.ca, &[&rustls::version::TLS13]);
    assert!(
        Client::connect(s.gw.port, "localhost", cfg).is_err(),
        "still served"
    );
}
