//! Escalation from both sides: a web page cannot get its visitors banned
//! (requests a browser sends for another site, and missing credentials,
//! never count), and a source that attacks by itself is first refused
//! request by request, with an answer that says why, and only then
//! refused below HTTP (at accept here; in XDP in `xdp_netns`).

use std::time::Duration;

use gateway_tests::harness::{Client, Setup, client_config, reason_of, setup_keyed};

const ROUTES: &str = r#"
[[routes]]
path_prefix = "/shop"
upstream = "backend"
auth = "none"
waf = "block"

[[routes]]
path_prefix = "/api"
upstream = "backend"
auth = "api_key"
"#;

const ESCALATION: &str = "[rate_limit.escalation]\nrejections = 0\nauth_failures = 5\nattacks = 5\nwindow_secs = 60\nban_secs = 2\nmax_ban_secs = 60\nkernel_after = 2\n";

const SQLI: &str = "%27%20OR%20%271%27%3D%271";

/// What an `<img src="https://gateway/...">` on another site's page makes
/// a visitor's browser send.
const IMAGE: &str =
    "Sec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: no-cors\r\nSec-Fetch-Dest: image\r\n";

fn connects(s: &Setup) -> bool {
    let cfg = client_config(&s.certs.ca, &[&rustls::version::TLS13]);
    Client::connect(s.gw.port, "localhost", cfg).is_ok()
}

#[test]
fn a_page_cannot_get_its_visitors_banned() {
    let k = setup_keyed("esc-page", ROUTES, ESCALATION);
    let s = &k.s;
    // Five images with SQL injection in their URLs: refused, not counted.
    for i in 0..5 {
        let r = s.get(&format!("/shop/img{i}.png?q={SQLI}"), IMAGE);
        assert_eq!((r.status, reason_of(&r).as_str()), (403, "waf.sqli"));
    }
    // Thirty images pointing at a protected URL: 401 each, no guess.
    for i in 0..30 {
        let r = s.get(&format!("/api/img{i}.png"), IMAGE);
        assert_eq!((r.status, reason_of(&r).as_str()), (401, "auth.missing"));
    }
    // Nor a sibling subdomain's script, nor a simple cors-mode fetch
    // (sent without a preflight).
    for (site, mode) in [
        ("same-site", "cors"),
        ("cross-site", "cors"),
        ("cross-site", "navigate"),
    ] {
        let r = s.get(
            &format!("/shop/x?q={SQLI}"),
            &format!("Sec-Fetch-Site: {site}\r\nSec-Fetch-Mode: {mode}\r\n"),
        );
        assert_eq!(r.status, 403);
    }
    // Missing credentials from the client itself are no guesses either.
    for _ in 0..10 {
        assert_eq!(s.get("/api/x", "").status, 401);
    }
    std::thread::sleep(Duration::from_millis(1500));
    // The visitor is still served, and no verdict was placed.
    let r = s.get("/shop/ok", "");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(connects(s));
    let key = format!("x-api-key: {}\r\n", k.key);
    assert_eq!(s.get("/api/ok", &key).status, 200);
    assert_eq!(s.backend.hits("/shop/img"), 0);
    assert_eq!(s.backend.hits("/api/img"), 0);
}

#[test]
fn a_source_is_refused_request_by_request_before_it_is_refused_below_http() {
    let mut k = setup_keyed("esc-ladder", ROUTES, ESCALATION);
    // First offence: five attacks, each refused by the WAF.
    for i in 0..5 {
        let r = k.s.get(&format!("/shop/a{i}?q={SQLI}"), "");
        assert_eq!(r.status, 403);
    }
    let line =
        k.s.gw
            .proc
            .wait_for_line("verdict: 127.0.0.1", Duration::from_secs(3))
            .unwrap_or_else(|| panic!("no verdict in {:?}", k.s.gw.proc.seen));
    assert!(line.contains("refused request by request for 2s"), "{line}");
    assert!(line.contains("offence 1"), "{line}");
    // Every request now gets an answer that says why, until when, and the
    // backend sees none of them; the connection still opens.
    assert!(connects(&k.s));
    let r = k.s.get("/shop/innocent", "");
    assert_eq!(
        (r.status, reason_of(&r).as_str()),
        (403, "verdict.abuse"),
        "{r:?}"
    );
    let retry: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("retry-after");
    assert!((1..=2).contains(&retry), "{retry}");
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    assert_eq!(k.s.backend.hits("/shop/innocent"), 0);
    // It ends by itself.
    std::thread::sleep(Duration::from_millis(2200));
    assert_eq!(k.s.get("/shop/after", "").status, 200);
    // Second offence, by guessed keys this time, sent with a browser's
    // cross-site headers that no page could attach a key to: counted all
    // the same, and refused below HTTP.
    for _ in 0..5 {
        let r = k.s.get(
            "/api/x",
            "x-api-key: gwk_guessed\r\nSec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: cors\r\n",
        );
        assert_eq!(
            (r.status, reason_of(&r).as_str()),
            (401, "auth.invalid_key")
        );
    }
    let line =
        k.s.gw
            .proc
            .wait_for_line("verdict: 127.0.0.1", Duration::from_secs(3))
            .unwrap_or_else(|| panic!("no second verdict in {:?}", k.s.gw.proc.seen));
    assert!(line.contains("refused at accept"), "{line}");
    assert!(line.contains("offence 2"), "{line}");
    assert!(!connects(&k.s), "still served after the second offence");
}
