//! The admin API and the commands that talk to it, end to end: a token it
//! insists on, verdicts placed, listed, explained and lifted, live limits,
//! bad requests, and the public port never answering for it.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::Command,
    time::Duration,
};

use gateway_tests::{
    gateway_bin,
    harness::{Setup, TempDir, reason_of, setup_with},
};

const TOKEN: &str = "test-admin-token-0123456789";

const ROUTES: &str = r#"
[[routes]]
path_prefix = "/limited"
upstream = "backend"
auth = "none"
rate_limits = ["ip"]
"#;

fn start(dir: &TempDir) -> Setup {
    let token = dir.0.join("admin.token");
    std::fs::write(&token, format!("{TOKEN}\n")).expect("token file");
    setup_with(
        "admin",
        "",
        "workers = 2",
        ROUTES,
        &format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n\
             [rate_limit.escalation]\nrejections = 50\nauth_failures = 0\n\
             [[rate_limit.limits]]\nname = \"ip\"\nkey = \"source\"\nrate = \"3/min\"\n",
            token.display()
        ),
        &[],
    )
}

/// Runs `gateway ARGS --config <the running config> --admin <its API>`.
fn cli(s: &Setup, args: &[&str]) -> (i32, String, String) {
    let admin = s.gw.admin_addr().expect("admin address in the log");
    let out = Command::new(gateway_bin())
        .args(args)
        .arg("--config")
        .arg(s.gw.dir.0.join("gateway.toml"))
        .arg("--admin")
        .arg(admin.to_string())
        .output()
        .expect("run gateway");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One raw request to the admin API; the status line and the body.
fn raw(addr: SocketAddr, request: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).expect("connect admin");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(request.as_bytes()).expect("send");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

#[test]
fn verdicts_are_placed_listed_explained_and_lifted_through_the_api_and_the_cli() {
    let dir = TempDir::new("admin-token");
    let s = start(&dir);
    let admin = s.gw.admin_addr().expect("admin address");
    assert!(admin.ip().is_loopback());

    // Without the token, or with a wrong one: 401, nothing listed.
    let (status, body) = raw(admin, "GET /verdicts HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    assert!(status.contains(" 401 "), "{status} {body}");
    assert!(body.contains("admin.token"), "{body}");
    let (status, _) = raw(
        admin,
        "GET /verdicts HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer test-admin-token-0123456788\r\n\r\n",
    );
    assert!(status.contains(" 401 "), "{status}");
    // Nor may anyone without it reload the configuration.
    let (status, body) = raw(
        admin,
        "POST /reload HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
    );
    assert!(status.contains(" 401 "), "{status} {body}");
    // With it, `gateway reload` (which reads the token through --config) works.
    let (code, out, err) = cli(&s, &["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("reloaded "), "{out}");

    // Place one through the CLI; it is listed and explained.
    let (code, out, err) = cli(
        &s,
        &[
            "verdicts",
            "add",
            "198.18.7.7",
            "--secs",
            "60",
            "--why",
            "scanner",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "verdict on 198.18.7.7 for 60s placed");
    let (code, out, _) = cli(&s, &["verdicts", "list"]);
    assert_eq!(code, 0);
    let line = out
        .lines()
        .find(|l| l.starts_with("198.18.7.7"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains("policy") && line.contains("scanner"),
        "{line}"
    );
    let (_, out, _) = cli(&s, &["why", "198.18.7.7"]);
    assert!(
        out.starts_with("198.18.7.7: DROPPED by a verdict (in userspace)"),
        "{out}"
    );
    let verdict = out.lines().nth(1).unwrap_or_default();
    assert!(
        verdict.starts_with("  verdict: policy, 6") && verdict.ends_with("s ago: scanner"),
        "{out}"
    );
    let (_, out, _) = cli(&s, &["why", "198.18.7.7", "--json"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(v["by"], "verdict");

    // 429s count towards escalation, and the live limit shows it.
    for _ in 0..5 {
        s.get("/limited/x", "");
    }
    // The control loop counts them at its next tick (every second).
    let mut out = String::new();
    for _ in 0..30 {
        out = cli(&s, &["why", "127.0.0.1"]).1;
        if out.contains("escalation: 2/") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(out.starts_with("127.0.0.1: not dropped"), "{out}");
    assert!(out.contains("escalation: 2/50 rejections"), "{out}");
    let (code, out, err) = cli(&s, &["limits", "--source", "127.0.0.1", "--route", "0"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("route 0 ip (by source) 3/60s burst 3: 0 left"),
        "{out}"
    );
    assert!(out.contains("refused for "), "{out}");

    // Lift it; lifting again says there is none.
    let (code, out, _) = cli(&s, &["verdicts", "remove", "198.18.7.7"]);
    assert_eq!((code, out.trim()), (0, "verdict on 198.18.7.7 lifted"));
    let (code, _, err) = cli(&s, &["verdicts", "remove", "198.18.7.7"]);
    assert_eq!(code, 1);
    assert!(err.contains("198.18.7.7 holds no verdict"), "{err}");
    let (_, out, _) = cli(&s, &["verdicts", "list"]);
    assert_eq!(out.trim(), "no verdicts");

    // Bad requests get a reason, and change nothing.
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    for (body, want) in [
        ("{\"source\":", "admin.json"),
        ("{\"source\":\"nope\",\"secs\":5}", "admin.address"),
        ("{\"source\":\"198.18.7.8\",\"secs\":0}", "admin.verdict"),
        ("{\"source\":\"198.18.7.8\"}", "admin.json"),
        // A key twice: which `secs` did the operator mean?
        (
            "{\"source\":\"198.18.7.8\",\"secs\":5,\"secs\":31536000}",
            "appears twice",
        ),
        (
            "{\"source\":\"198.18.7.8\",\"source\":\"198.18.7.9\",\"secs\":5}",
            "appears twice",
        ),
        // A misspelt key is pointed out, not ignored.
        (
            "{\"source\":\"198.18.7.8\",\"secs\":5,\"reason\":\"x\"}",
            "unknown key `reason`",
        ),
        ("[\"198.18.7.8\", 5]", "admin.json"),
    ] {
        let (status, answer) = raw(
            admin,
            &format!(
                "POST /verdicts HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        );
        assert!(status.contains(" 400 "), "{body}: {status} {answer}");
        assert!(answer.contains(want), "{body}: {answer}");
    }
    // A web page open on the host can reach loopback: a cross-site POST
    // (text/plain, no preflight) or a DNS-rebinding page must get nothing.
    let body = r#"{"source":"198.18.7.9","secs":60}"#;
    for (extra, want) in [
        (
            "Origin: https://evil.test\r\nContent-Type: text/plain\r\n",
            " 403 ",
        ),
        (
            "Sec-Fetch-Site: cross-site\r\nContent-Type: application/json\r\n",
            " 403 ",
        ),
        ("Content-Type: text/plain\r\n", " 415 "),
    ] {
        let (status, answer) = raw(
            admin,
            &format!(
                "POST /verdicts HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}{extra}Content-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        );
        assert!(status.contains(want), "{extra:?}: {status} {answer}");
    }
    let (status, answer) = raw(
        admin,
        &format!("GET /verdicts HTTP/1.1\r\nHost: rebind.evil.test:9901\r\n{auth}\r\n"),
    );
    assert!(
        status.contains(" 403 ") && answer.contains("admin.browser"),
        "{status} {answer}"
    );
    let (status, _) = raw(
        admin,
        &format!("PUT /verdicts HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\n"),
    );
    assert!(status.contains(" 405 "), "{status}");
    let (_, out, _) = cli(&s, &["verdicts", "list"]);
    assert_eq!(out.trim(), "no verdicts");

    // The public port never serves the admin API: its paths are routed
    // like any other (here to the backend, which is not the API).
    let r = s.get("/verdicts", &auth);
    assert!(
        !String::from_utf8_lossy(&r.body).contains("\"verdicts\""),
        "{r:?}"
    );
    assert_ne!(reason_of(&r), "admin.token");
}

/// Behind a trusted proxy, a verdict on a client it forwards cannot work
/// below HTTP (the client's packets come from the proxy): it is enforced
/// request by request too, on the client the proxy names, and listed once.
#[test]
fn a_verdict_on_a_client_behind_a_trusted_proxy_refuses_its_requests() {
    let dir = TempDir::new("admin-proxied");
    let token = dir.0.join("admin.token");
    std::fs::write(&token, format!("{TOKEN}\n")).expect("token file");
    let s = setup_with(
        "admin-proxied",
        "",
        "workers = 2",
        ROUTES,
        &format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n\
             [proxy]\ntrusted_proxies = [\"127.0.0.1/32\"]\n\
             [[rate_limit.limits]]\nname = \"ip\"\nkey = \"source\"\nrate = \"100/min\"\n",
            token.display()
        ),
        &[],
    );
    let (code, _, err) = cli(&s, &["verdicts", "add", "198.18.9.9", "--secs", "60"]);
    assert_eq!(code, 0, "{err}");
    let r = s.get("/limited/a", "X-Forwarded-For: 198.18.9.9\r\n");
    assert_eq!(
        (r.status, reason_of(&r).as_str()),
        (403, "verdict.policy"),
        "{r:?}"
    );
    assert!(r.header("retry-after").is_some());
    // Spelt another way, still the same client.
    let r = s.get("/limited/a", "X-Forwarded-For: 203.0.113.1, 198.18.9.9\r\n");
    assert_eq!(r.status, 403);
    assert_eq!(s.backend.hits("/limited/a"), 0);
    // The proxy itself, and its other clients, are served.
    let r = s.get("/limited/b", "X-Forwarded-For: 198.18.9.10\r\n");
    assert_eq!(r.status, 200, "{r:?}");
    let (_, out, _) = cli(&s, &["verdicts", "list"]);
    assert_eq!(
        out.lines().filter(|l| l.starts_with("198.18.9.9")).count(),
        1,
        "{out}"
    );
    // Lifted, it is gone from every place at once.
    let (code, _, _) = cli(&s, &["verdicts", "remove", "198.18.9.9"]);
    assert_eq!(code, 0);
    let r = s.get("/limited/c", "X-Forwarded-For: 198.18.9.9\r\n");
    assert_eq!(r.status, 200, "{r:?}");
}

/// Prometheus scrapes the admin API by the name it knows it by: names in
/// `admin.hosts` are accepted in `Host` (with the token); other names
/// still get 403, as a rebinding page's would.
#[test]
fn monitoring_scrapes_by_a_configured_name_and_other_names_are_refused() {
    let dir = TempDir::new("admin-hosts");
    let token = dir.0.join("admin.token");
    std::fs::write(&token, format!("{TOKEN}\n")).expect("token file");
    let s = setup_with(
        "admin-hosts",
        "",
        "workers = 1",
        "",
        &format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{}\"\nhosts = [\"gw1.internal\"]\n",
            token.display()
        ),
        &[],
    );
    let admin = s.gw.admin_addr().expect("admin address");
    let scrape = |host: &str| {
        raw(
            admin,
            &format!(
                "GET /metrics HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
            ),
        )
    };
    let (status, body) = scrape(&format!("GW1.internal:{}", admin.port()));
    assert!(status.contains(" 200 "), "{status} {body}");
    assert!(body.contains("gateway_requests_total"), "{body}");
    let (status, body) = scrape("rebind.evil.test");
    assert!(status.contains(" 403 "), "{status} {body}");
    assert!(body.contains("admin.browser"), "{body}");
}

#[test]
fn the_cli_says_plainly_when_no_gateway_answers() {
    let out = Command::new(gateway_bin())
        .args(["verdicts", "list", "--admin", "127.0.0.1:9"])
        .output()
        .expect("run gateway");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("gateway: error: cannot reach the admin API at 127.0.0.1:9:"),
        "{err}"
    );
    assert!(err.contains("is `gateway run` running?"), "{err}");
}
