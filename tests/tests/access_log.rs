//! The access log as an operator reads it: one JSON line per request with
//! who, when, from where and what became of it, request ids kept from a
//! trusted proxy and made anew otherwise (and sent upstream), no key, token,
//! cookie, query or body in any line, and the file reopened on SIGUSR1.

use std::time::{Duration, Instant};

use gateway_tests::harness::{Keyed, SHOP_ROUTE, TempDir, setup_keyed};
use nix::sys::signal::{Signal, kill};
use serde_json::Value;

const ROUTES: &str = r#"
[[routes]]
path_prefix = "/keyed"
upstream = "backend"
auth = ["api_key"]
"#;

fn setup(dir: &TempDir, trusted: bool) -> Keyed {
    let proxy = if trusted {
        "[proxy]\ntrusted_proxies = [\"127.0.0.1/32\"]\n"
    } else {
        ""
    };
    let tail = format!(
        "{proxy}[log]\noutput = \"{}\"\n",
        dir.0.join("access.log").display()
    );
    let routes = format!("{SHOP_ROUTE}{ROUTES}");
    setup_keyed(
        if trusted { "alog-trusted" } else { "alog" },
        &routes,
        &tail,
    )
}

/// The line about `path` (workers hand their lines over independently, so
/// lines from two connections may come in either order).
fn about<'a>(lines: &'a [Value], path: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["path"] == path)
        .unwrap_or_else(|| panic!("no line for {path}: {lines:?}"))
}

/// The log's lines once `n` are there (the writer runs behind the requests).
fn lines(dir: &TempDir, file: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(dir.0.join(file)).unwrap_or_default();
        let got: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        if got.len() >= n || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn every_request_gets_a_line_with_its_fields_and_no_secret() {
    let dir = TempDir::new("alog-out");
    let k = setup(&dir, false);
    let s = &k.s;
    let token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2VjcmV0c2lnbmF0dXJl";
    let ok = s.get(
        "/keyed/orders;jsessionid=SESSIONSECRET?card=4111111111111111",
        &format!(
            "x-api-key: {}\r\nCookie: session=cookie-secret-value\r\nX-Request-Id: forged-id\r\n",
            k.key
        ),
    );
    assert_eq!(ok.status, 200);
    let refused = s.get("/keyed/x", &format!("Authorization: Bearer {token}\r\n"));
    assert_eq!(refused.status, 401);
    let waf = s.get("/shop/search?q=1%27%20OR%20%271%27%3D%271", "");
    assert_eq!(waf.status, 403);
    let got = lines(&dir, "access.log", 3);
    assert_eq!(got.len(), 3, "{got:?}");
    let (a, b, c) = (
        about(&got, "/keyed/orders"),
        about(&got, "/keyed/x"),
        about(&got, "/shop/search"),
    );
    assert!(
        a["ts"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z') && t.contains('T')),
        "{a}"
    );
    assert_eq!(a["client"], "127.0.0.1");
    assert_eq!(a["tls"], "TLSv1.3");
    assert_eq!(a["sni"], "localhost");
    assert_eq!(a["consumer"], "alice");
    // By name; one without a name by its position.
    assert_eq!(a["route"], "1");
    assert_eq!(c["route"], "0");
    assert_eq!(
        (a["method"].as_str(), a["path"].as_str()),
        (Some("GET"), Some("/keyed/orders"))
    );
    assert_eq!(
        (a["status"].as_u64(), a["reason"].as_str()),
        (Some(200), Some("-"))
    );
    assert!(a["bytes_in"].as_u64().is_some_and(|n| n > 50), "{a}");
    assert!(a["bytes_out"].as_u64().is_some_and(|n| n > 0), "{a}");
    assert_eq!(
        a["upstream"].as_str(),
        Some(s.backend.addr.to_string().as_str())
    );
    assert!(
        a["upstream_us"].as_u64().is_some() && a["total_us"].as_u64().is_some(),
        "{a}"
    );
    // The id went upstream, and the client's forgery did not.
    let id = a["id"].as_str().expect("id");
    assert!(id.len() == 32 && id != "forged-id", "{a}");
    let head = s
        .backend
        .received()
        .pop()
        .expect("reached")
        .head
        .to_ascii_lowercase();
    assert!(head.contains(&format!("x-request-id: {id}")), "{head}");
    assert_eq!(head.matches("x-request-id").count(), 1, "{head}");
    assert_eq!(b["status"].as_u64(), Some(401));
    assert!(
        b["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("jwt.") || r.starts_with("auth.")),
        "{b}"
    );
    assert_eq!(b["upstream"], Value::Null);
    assert_eq!(
        (c["status"].as_u64(), c["reason"].as_str()),
        (Some(403), Some("waf.sqli"))
    );
    assert_ne!(a["id"], b["id"]);
    let text = std::fs::read_to_string(dir.0.join("access.log")).expect("log");
    for secret in [
        k.key.as_str(),
        token,
        "cookie-secret-value",
        "4111111111111111",
        "%27",
        "SESSIONSECRET",
    ] {
        assert!(!text.contains(secret), "{secret} logged: {text}");
    }
}

/// The text format keeps the same promise: no key, token, cookie, query
/// or path parameter in any line.
#[test]
fn the_text_format_logs_no_secret_either() {
    let dir = TempDir::new("alog-text");
    let tail = format!(
        "[log]\nformat = \"text\"\noutput = \"{}\"\n",
        dir.0.join("access.log").display()
    );
    let k = setup_keyed("alog-text", &format!("{SHOP_ROUTE}{ROUTES}"), &tail);
    let s = &k.s;
    let token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2VjcmV0c2lnbmF0dXJl";
    let ok = s.get(
        "/keyed/orders;jsessionid=SESSIONSECRET?card=4111111111111111",
        &format!(
            "x-api-key: {}\r\nCookie: session=cookie-secret-value\r\n",
            k.key
        ),
    );
    assert_eq!(ok.status, 200);
    assert_eq!(
        s.get("/keyed/x", &format!("Authorization: Bearer {token}\r\n"))
            .status,
        401
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = std::fs::read_to_string(dir.0.join("access.log")).unwrap_or_default();
        if text.lines().count() >= 2 || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(
        text.contains("/keyed/orders") && text.contains(" 200 "),
        "{text}"
    );
    for secret in [
        k.key.as_str(),
        token,
        "cookie-secret-value",
        "4111111111111111",
        "SESSIONSECRET",
    ] {
        assert!(!text.contains(secret), "{secret} logged: {text}");
    }
}

#[test]
fn a_trusted_proxy_keeps_its_request_id_and_sigusr1_reopens_the_file() {
    let dir = TempDir::new("alog-rotate");
    let k = setup(&dir, true);
    let s = &k.s;
    let r = s.get("/shop/a", "X-Request-Id: edge-7f3a:1\r\n");
    assert_eq!(r.status, 200);
    let long = "x".repeat(200);
    assert_eq!(
        s.get("/shop/b", &format!("X-Request-Id: {long}\r\n"))
            .status,
        200
    );
    let got = lines(&dir, "access.log", 2);
    assert_eq!(about(&got, "/shop/a")["id"], "edge-7f3a:1");
    let replaced = about(&got, "/shop/b")["id"].as_str().map(str::len);
    assert_eq!(replaced, Some(32), "an insane id is replaced");
    let heads: Vec<String> = s
        .backend
        .received()
        .iter()
        .map(|r| r.head.to_ascii_lowercase())
        .collect();
    assert!(
        heads
            .iter()
            .any(|h| h.contains("x-request-id: edge-7f3a:1")),
        "{heads:?}"
    );
    // logrotate: move the file away, then SIGUSR1.
    std::fs::rename(dir.0.join("access.log"), dir.0.join("access.log.1")).expect("rotate");
    kill(
        nix::unistd::Pid::from_raw(s.gw.pid() as i32),
        Signal::SIGUSR1,
    )
    .expect("signal");
    // The writer reopens within a second; until then lines go to the old file.
    let deadline = Instant::now() + Duration::from_secs(5);
    let reopened = || {
        std::fs::read_to_string(dir.0.join("access.log")).is_ok_and(|t| t.contains("/shop/after"))
    };
    while !reopened() && Instant::now() < deadline {
        assert_eq!(s.get("/shop/after", "").status, 200);
        std::thread::sleep(Duration::from_millis(300));
    }
    let fresh = lines(&dir, "access.log", 1);
    assert!(
        fresh.iter().any(|l| l["path"] == "/shop/after"),
        "{fresh:?}"
    );
    // The old file kept what came before the reopen (and perhaps a line
    // written while the writer had not reopened yet).
    let old = lines(&dir, "access.log.1", 2);
    about(&old, "/shop/a");
    about(&old, "/shop/b");
}
