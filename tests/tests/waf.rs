//! The WAF from the attacker's side: 69 SQL injection and XSS payloads
//! (PayloadsAllTheThings and the OWASP XSS filter evasion cheat sheet) in
//! the query, a JSON body, a form body, a header, a cookie and the path,
//! each refused with 403 in block mode and never reaching the backend,
//! while look-alikes (`O'Brien`, `select` in prose, `<3`) pass; detect mode
//! lets them through and logs them; detections earn a verdict.

use std::time::Duration;

use gateway_tests::harness::{Setup, reason_of, setup_with};

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
name = "watch"
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

/// A blocking route scans every body it can read, whatever its media type
/// says: JSON that a strict parser refuses (a duplicate key, a stray byte,
/// a UTF-8 BOM), JSON sent chunked or without a Content-Type, and plain
/// text, because backends parse what they get.
#[test]
fn unlabelled_and_unparseable_bodies_are_scanned_on_a_blocking_route() {
    let mut s = setup_with("waf-unlabelled", "", "workers = 2", ROUTES, "", &[]);
    let sqli = "' UNION SELECT password FROM users--";
    let json = format!(r#"{{"comment":"{sqli}"}}"#);
    let send = |s: &Setup, head: &str, body: &[u8]| {
        let mut c = s.client();
        let mut raw =
            format!("POST /shop/orders HTTP/1.1\r\nHost: localhost\r\n{head}").into_bytes();
        raw.extend_from_slice(body);
        c.send(&raw).expect("send");
        let r = c.response("POST").expect("response");
        (r.status, reason_of(&r))
    };
    let with_len =
        |ctype: &str, body: &[u8]| format!("{ctype}Content-Length: {}\r\n\r\n", body.len());
    let chunked = |body: &[u8]| {
        let mut out = format!("{:x}\r\n", body.len()).into_bytes();
        out.extend_from_slice(body);
        out.extend_from_slice(b"\r\n0\r\n\r\n");
        out
    };
    let dup = format!(r#"{{"comment":"{sqli}","comment":"fine"}}"#);
    let mut bom = b"\xef\xbb\xbf".to_vec();
    bom.extend_from_slice(json.as_bytes());
    let trailing = format!("{json}x");
    let text = format!("note: {sqli}");
    // A NUL makes a body binary, and binary is scanned run by run.
    let mut nul = b"\0".to_vec();
    nul.extend_from_slice(json.as_bytes());
    let mut png = b"\x89PNG\r\n\x1a\n\0\0\0".to_vec();
    png.extend_from_slice(sqli.as_bytes());
    let cases: Vec<(&str, String, Vec<u8>)> = vec![
        (
            "duplicate key, text/plain",
            with_len("Content-Type: text/plain\r\n", dup.as_bytes()),
            dup.clone().into_bytes(),
        ),
        (
            "BOM, text/plain",
            with_len("Content-Type: text/plain\r\n", &bom),
            bom.clone(),
        ),
        (
            "trailing byte, text/plain",
            with_len("Content-Type: text/plain\r\n", trailing.as_bytes()),
            trailing.clone().into_bytes(),
        ),
        (
            "chunked, text/plain",
            "Content-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n".into(),
            chunked(json.as_bytes()),
        ),
        (
            "no content type",
            with_len("", json.as_bytes()),
            json.clone().into_bytes(),
        ),
        (
            "chunked, no content type",
            "Transfer-Encoding: chunked\r\n\r\n".into(),
            chunked(dup.as_bytes()),
        ),
        (
            "plain text",
            with_len("Content-Type: text/plain\r\n", text.as_bytes()),
            text.clone().into_bytes(),
        ),
        (
            "octet-stream",
            with_len(
                "Content-Type: application/octet-stream\r\n",
                json.as_bytes(),
            ),
            json.clone().into_bytes(),
        ),
        (
            "xss as text",
            with_len("Content-Type: text/plain\r\n", b"javascript:alert(1)"),
            b"javascript:alert(1)".to_vec(),
        ),
        (
            "a NUL in front, application/octet-stream",
            with_len("Content-Type: application/octet-stream\r\n", &nul),
            nul.clone(),
        ),
        (
            "a NUL in front, image/png",
            with_len("Content-Type: image/png\r\n", &png),
            png.clone(),
        ),
    ];
    for (what, head, body) in &cases {
        let (status, reason) = send(&s, head, body);
        assert!(
            status == 403 && (reason == "waf.sqli" || reason == "waf.xss"),
            "{what}: {status} {reason}"
        );
    }
    assert_eq!(s.backend.hits("/shop"), 0, "an attack reached the backend");
    let line =
        s.gw.proc
            .wait_for_line("waf: ", Duration::from_secs(3))
            .unwrap_or_else(|| panic!("no waf line in {:?}", s.gw.proc.seen));
    assert!(line.contains("in body"), "{line}");
    assert!(!line.contains("password"), "the payload was logged: {line}");

    // What is not an attack passes: prose, broken JSON without one, and
    // binary data (random bytes, as compressed images are).
    let prose = b"Dear team, please select a size for Dan O'Neil's order.";
    let broken = br#"{"name":"O'Brien","name":"again"}"#;
    let mut binary = b"\x89PNG\r\n\x1a\n\0\0\0".to_vec();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    binary.extend((0..512 << 10).map(|_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 24) as u8
    }));
    for (what, ctype, body) in [
        ("prose", "Content-Type: text/plain\r\n", &prose[..]),
        ("broken JSON", "Content-Type: text/plain\r\n", &broken[..]),
        ("binary", "Content-Type: image/png\r\n", &binary[..]),
    ] {
        let (status, reason) = send(&s, &with_len(ctype, body), body);
        assert_eq!(status, 200, "{what}: {reason}");
    }
    assert_eq!(s.backend.hits("/shop"), 3);
}

/// Scanning hostile text costs CPU per byte: a body past `[waf]
/// max_body_bytes` is refused by a blocking route before it is read, and
/// streamed unscanned through a detecting one.
#[test]
fn a_body_past_what_the_waf_scans_is_refused_or_streamed() {
    let s = setup_with(
        "waf-size",
        "",
        "workers = 1",
        ROUTES,
        "[waf]\nmax_body_bytes = 65536\n",
        &[],
    );
    let big = format!("{{\"a\":\"{}\"}}", "<a ".repeat(30_000));
    assert_eq!(
        post(&s, "/shop/big", "application/json", &big),
        (413, "waf.body_size".into())
    );
    let mut c = s.client();
    let _ = c.send(
        format!(
            "POST /shop/chunked HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n",
            big.len()
        )
        .as_bytes(),
    );
    let r = c.response("POST").expect("response");
    assert_eq!((r.status, reason_of(&r).as_str()), (413, "waf.body_size"));
    assert_eq!(post(&s, "/watch/big", "application/json", &big).0, 200);
    // Within it, scanned as before.
    let small = serde_json::json!({"a": "' UNION SELECT password FROM users--"}).to_string();
    assert_eq!(
        post(&s, "/shop/small", "application/json", &small),
        (403, "waf.sqli".into())
    );
    assert_eq!(s.backend.hits("/shop"), 0);
    assert_eq!(s.backend.hits("/watch/big"), 1);
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
        line.contains("from 127.0.0.1 on route watch (detect only)"),
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
        line.contains("(abuse: 3 attacks (WAF detections, HTTP/2 abuse) in 60s; offence 1)"),
        "{line}"
    );
    // A first offence is refused request by request, with the reason.
    let r = s.get("/watch/?q=harmless", "");
    assert_eq!(
        (r.status, reason_of(&r).as_str()),
        (403, "verdict.abuse"),
        "{r:?}"
    );
    assert_eq!(s.backend.hits("/watch/?q=harmless"), 0);
}
