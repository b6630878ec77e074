//! WebSocket through the gateway, with a real echo server and client (PyPI
//! `websockets`, `tests/websocket/`): every message kind echoed through a
//! tunnel; handshakes the gateway must refuse (no key, a forged origin,
//! `h2c`, a wrong version or key, a route that does not opt in, a POST)
//! refused and never reaching the server, the connection closed so bytes
//! smuggled after a refused handshake are never read as a request; an
//! upstream's refusal relayed; a never-answering upstream; the idle
//! timeout, the message limit and the per-source cap closing or refusing
//! tunnels.

use std::{net::TcpListener, path::Path, time::Duration};

use gateway_tests::harness::{
    Keyed, PyServer, Response, TempDir, api_key_json, free_port, reason_of, run_python_json,
    setup_keyed_with, start_python, wait_until,
};

/// The tests' 800 ms header timeout is shorter than a Python client's TLS
/// handshake and first write can take on a loaded machine.
const PYTHON_CLIENT: &str = "header_timeout_ms = 10000";

fn scripts() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/websocket"))
}

fn start_echo(port: u16, log: &Path) -> PyServer {
    let port_arg = port.to_string();
    start_python(
        &scripts().join("echo.py"),
        &[port_arg.as_ref(), log.as_os_str()],
        port,
        "websockets",
    )
}

/// The handshakes that reached the echo server.
fn handshakes(log: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// One client session through the gateway (see client.py).
fn client(
    port: u16,
    ca: &Path,
    path: &str,
    key: Option<&str>,
    scenario: &str,
) -> serde_json::Value {
    let port = port.to_string();
    let headers = api_key_json(key);
    run_python_json(
        &scripts().join("client.py"),
        &[
            port.as_ref(),
            ca.as_os_str(),
            path.as_ref(),
            headers.as_ref(),
            scenario.as_ref(),
        ],
    )
}

fn setup(tag: &str, ws_port: u16, dead_port: u16, websocket: &str) -> Keyed {
    let routes = format!(
        r#"
[[upstreams]]
name = "ws"
servers = ["127.0.0.1:{ws_port}"]

[[upstreams]]
name = "dead"
servers = ["127.0.0.1:{dead_port}"]
response_timeout_ms = 700
retries = 0

[[routes]]
path_prefix = "/ws/"
upstream = "ws"
auth = ["api_key"]
websocket = true
[routes.cors]
allow_origins = ["https://app.example"]

[[routes]]
path_prefix = "/never/"
upstream = "dead"
auth = ["api_key"]
websocket = true
"#
    );
    setup_keyed_with(
        tag,
        PYTHON_CLIENT,
        &routes,
        &format!("[websocket]\n{websocket}\n"),
    )
}

const HANDSHAKE: &str = "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

/// A raw handshake for `path` with `extra` header lines, and after it
/// `then` in the same write; the response, and whether the connection was
/// closed after it.
fn raw(k: &Keyed, path: &str, extra: &str, then: &str) -> (Response, bool) {
    let mut c = k.s.client();
    let head = HANDSHAKE.replace("{path}", path);
    c.send(format!("{head}{extra}\r\n{then}").as_bytes())
        .expect("send");
    let r = c.response("GET").expect("response");
    let closed = c.closed_within(Duration::from_secs(3));
    (r, closed)
}

#[test]
fn messages_of_every_kind_pass_through_a_tunnel_and_it_is_logged_and_counted() {
    let dir = TempDir::new("ws-echo");
    let log = dir.0.join("handshakes.jsonl");
    let port = free_port();
    let _echo = start_echo(port, &log);
    let k = setup("ws-echo", port, free_port(), "");
    let out = client(
        k.s.gw.port,
        &k.s.certs.ca_pem,
        "/ws/echo",
        Some(&k.key),
        "echo",
    );
    assert_eq!(
        out["echoed"],
        serde_json::json!(["hello", "0001ff", "fragmented", "big ok", "pong"]),
        "{out}"
    );
    assert_eq!(out["close_code"], 4000, "{out}");
    // The server saw one handshake, with the gateway's identity headers and
    // without the client's key.
    let seen = handshakes(&log);
    assert_eq!(seen.len(), 1, "{seen:?}");
    let h = &seen[0]["headers"];
    assert!(h.get("x-api-key").is_none(), "{h}");
    assert!(h.get("x-forwarded-for").is_some(), "{h}");
    let metrics = k.s.gw.metrics_text();
    assert!(
        metrics.contains("gateway_websocket_tunnels_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gateway_websocket_tunnels_open 0"),
        "{metrics}"
    );
    let up: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("gateway_websocket_bytes_total{direction=\"up\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(up > 512 * 1024, "{metrics}");
    // SIGTERM: an open tunnel gets 1001 at once, not after the grace
    // period (5 s here; the idle timeout is 300 s).
    let (port, ca, api_key) = (k.s.gw.port, k.s.certs.ca_pem.clone(), k.key.clone());
    let waiting =
        std::thread::spawn(move || client(port, &ca, "/ws/silent", Some(&api_key), "wait"));
    wait_until("the tunnel opens", Duration::from_secs(10), || {
        k.s.gw
            .metrics_text()
            .contains("gateway_websocket_tunnels_open 1")
    });
    let pid = nix::unistd::Pid::from_raw(k.s.gw.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let out = waiting.join().expect("the client");
    assert_eq!(out["close_code"], 1001, "{out}");
    let took = out["seconds"].as_f64().unwrap_or(99.0);
    assert!(took < 3.0, "the tunnel lived {took} s past SIGTERM");
}

#[test]
fn refused_handshakes_never_reach_the_server_and_nothing_after_them_is_read() {
    let dir = TempDir::new("ws-refused");
    let log = dir.0.join("handshakes.jsonl");
    let port = free_port();
    let _echo = start_echo(port, &log);
    let k = setup("ws-refused", port, free_port(), "");
    let key = format!("x-api-key: {}\r\n", k.key);
    // A request hidden after the handshake, in the same write: never
    // served, whatever the handshake's fate.
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let cases: [(&str, &str, u16, &str); 7] = [
        ("/ws/echo", "", 401, "auth.missing"),
        (
            "/ws/echo",
            &format!("{key}Origin: https://evil.example\r\n"),
            403,
            "websocket.origin",
        ),
        (
            "/ws/echo",
            &format!("{key}Sec-WebSocket-Key: c2hvcnQ=\r\n"),
            400,
            "websocket.handshake",
        ),
        ("/public", &key, 400, "websocket.not_enabled"),
        (
            "/ws/echo",
            &format!("{key}Upgrade: h2c\r\n"),
            400,
            "websocket.handshake",
        ),
        (
            "/ws/echo",
            &format!("{key}Content-Length: 5\r\n"),
            400,
            "websocket.handshake",
        ),
        ("/ws/refuse", &key, 403, "-"),
    ];
    for (path, extra, status, reason) in cases {
        let (r, closed) = raw(&k, path, extra, smuggled);
        assert_eq!(r.status, status, "{path} {extra:?}: {}", r.head);
        if reason != "-" {
            assert_eq!(reason_of(&r), reason, "{path} {extra:?}");
        }
        assert!(closed, "{path} {extra:?}: the connection stayed open");
    }
    // Only the handshake the upstream itself refused reached it.
    let seen = handshakes(&log);
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["path"], "/ws/refuse");
    assert_eq!(k.s.backend.hits("/smuggled"), 0);
    // Version 13 only: 426 names it.
    let mut c = k.s.client();
    let head = HANDSHAKE.replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8");
    c.send(format!("{}{key}\r\n", head.replace("{path}", "/ws/echo")).as_bytes())
        .expect("send");
    let r = c.response("GET").expect("response");
    assert_eq!(
        (r.status, reason_of(&r).as_str()),
        (426, "websocket.version")
    );
    assert_eq!(r.header("sec-websocket-version").as_deref(), Some("13"));
    // h2c and unknown tokens, on any route.
    let r =
        k.s.get("/public", "Connection: Upgrade\r\nUpgrade: h2c\r\n");
    assert_eq!(
        (r.status, reason_of(&r).as_str()),
        (400, "upgrade.unsupported")
    );
    // An allowed origin passes; the python client sends none.
    let (r, _) = raw(
        &k,
        "/ws/echo",
        &format!("{key}Origin: https://app.example\r\n"),
        "",
    );
    assert_eq!(r.status, 101, "{}", r.head);
    // (The harness lowercases the head.)
    let accept = r.header("sec-websocket-accept");
    assert_eq!(accept.as_deref(), Some("s3pplmbitxaq9kygzzhzrbk+xoo="));
    assert_eq!(r.header("upgrade").as_deref(), Some("websocket"));
}

#[test]
fn idle_tunnels_end_with_a_close_frame_and_a_silent_upstream_with_504() {
    let dir = TempDir::new("ws-idle");
    let log = dir.0.join("handshakes.jsonl");
    let port = free_port();
    let _echo = start_echo(port, &log);
    // Accepts, reads, never answers.
    let dead = TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_port = dead.local_addr().expect("addr").port();
    let k = setup(
        "ws-idle",
        port,
        dead_port,
        "idle_timeout_ms = 1000\nmax_message_bytes = 1024",
    );
    let ca = &k.s.certs.ca_pem;
    let out = client(k.s.gw.port, ca, "/ws/silent", Some(&k.key), "wait");
    assert_eq!(out["close_code"], 1001, "{out}");
    let took = out["seconds"].as_f64().unwrap_or(99.0);
    assert!((0.9..4.0).contains(&took), "closed after {took} s");
    // A message over max_message_bytes: 1009.
    let out = client(k.s.gw.port, ca, "/ws/echo", Some(&k.key), "big");
    assert_eq!(out["close_code"], 1009, "{out}");
    // An upstream that never answers the handshake.
    let key = format!("x-api-key: {}\r\n", k.key);
    let (r, closed) = raw(&k, "/never/x", &key, "");
    assert_eq!(
        (r.status, reason_of(&r).as_str()),
        (504, "upstream.timeout")
    );
    assert!(closed);
    drop(dead);
}

#[test]
fn a_source_holds_at_most_its_share_of_tunnels() {
    let dir = TempDir::new("ws-cap");
    let log = dir.0.join("handshakes.jsonl");
    let port = free_port();
    let _echo = start_echo(port, &log);
    let routes_tail = "max_per_source = 2";
    let routes = format!(
        r#"
[[upstreams]]
name = "ws"
servers = ["127.0.0.1:{port}"]

[[routes]]
path_prefix = "/ws/"
upstream = "ws"
auth = ["api_key"]
websocket = true
"#
    );
    let k = setup_keyed_with(
        "ws-cap",
        PYTHON_CLIENT,
        &routes,
        &format!("[websocket]\n{routes_tail}\n[policy]\nexempt_loopback = false\n"),
    );
    let key = format!("x-api-key: {}\r\n", k.key);
    let head = HANDSHAKE.replace("{path}", "/ws/echo");
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut c = k.s.client();
        c.send(format!("{head}{key}\r\n").as_bytes()).expect("send");
        assert_eq!(c.response("GET").expect("101").status, 101);
        open.push(c);
    }
    let (r, closed) = raw(&k, "/ws/echo", &key, "");
    assert_eq!(
        (r.status, reason_of(&r).as_str()),
        (429, "websocket.per_source")
    );
    assert!(closed);
    assert_eq!(handshakes(&log).len(), 2);
    // A tunnel that closes gives its place back.
    drop(open.pop());
    wait_until("the place comes back", Duration::from_secs(5), || {
        raw(&k, "/ws/echo", &key, "").0.status == 101
    });
}

#[test]
fn a_client_that_stops_reading_holds_the_gateways_memory_bounded() {
    let dir = TempDir::new("ws-slow");
    let log = dir.0.join("handshakes.jsonl");
    let port = free_port();
    let _echo = start_echo(port, &log);
    // No byte rate: only backpressure stands between the flood and memory.
    let k = setup("ws-slow", port, free_port(), "bytes_per_second = 0");
    let mut c = k.s.client();
    let head = HANDSHAKE.replace("{path}", "/ws/flood/65536");
    c.send(format!("{head}x-api-key: {}\r\n\r\n", k.key).as_bytes())
        .expect("send");
    assert_eq!(c.response("GET").expect("101").status, 101);
    let before = k.s.gw.rss_kib();
    // The server sends 64 MiB; the client reads none of it.
    std::thread::sleep(Duration::from_secs(3));
    let grown = k.s.gw.rss_kib().saturating_sub(before);
    assert!(
        grown < 8 * 1024,
        "the gateway grew by {grown} KiB for a reader that stopped"
    );
    let metrics = k.s.gw.metrics_text();
    assert!(
        metrics.contains("gateway_websocket_tunnels_open 1"),
        "{metrics}"
    );
}

/// A tunnel a token opened ends when the token does; two issuers' `alice`
/// are two consumers under `max_per_consumer`; behind a trusted proxy, the
/// clients it names are counted, not the proxy.
#[test]
fn tokens_bound_tunnels_and_consumers_and_sources_are_counted_apart() {
    use gateway_tests::harness::{hs256_token, setup_with, unix_now};
    let dir = TempDir::new("ws-tokens");
    let log = dir.0.join("handshakes.jsonl");
    let port = free_port();
    let _echo = start_echo(port, &log);
    let (a_secret, b_secret) = (
        b"issuer a's HMAC secret of at least 32 bytes".to_vec(),
        b"issuer b's HMAC secret, also 32 bytes long".to_vec(),
    );
    let (a_path, b_path) = (dir.0.join("a.secret"), dir.0.join("b.secret"));
    std::fs::write(&a_path, &a_secret).expect("secret");
    std::fs::write(&b_path, &b_secret).expect("secret");
    let routes = format!(
        r#"
[[upstreams]]
name = "ws"
servers = ["127.0.0.1:{port}"]

[[routes]]
path_prefix = "/ws/"
upstream = "ws"
auth = ["jwt:a", "jwt:b"]
websocket = true

[[routes]]
path_prefix = "/open/"
upstream = "ws"
auth = "none"
websocket = true
"#
    );
    let tail = format!(
        "[websocket]\nmax_per_consumer = 1\nmax_per_source = 2\n\
         [policy]\nexempt_loopback = false\n\
         [proxy]\ntrusted_proxies = [\"127.0.0.1/32\"]\n\
         [auth]\n\
         [[auth.jwt]]\nname = \"a\"\nissuer = \"a\"\naudiences = [\"api\"]\nalgorithms = [\"HS256\"]\nsecret_file = \"{}\"\n\
         [[auth.jwt]]\nname = \"b\"\nissuer = \"b\"\naudiences = [\"api\"]\nalgorithms = [\"HS256\"]\nsecret_file = \"{}\"\n",
        a_path.display(),
        b_path.display()
    );
    let s = setup_with(
        "ws-tokens",
        PYTHON_CLIENT,
        "workers = 2",
        &routes,
        &tail,
        &[],
    );
    let token = |secret: &[u8], iss: &str, life: u64| {
        let claims = format!(
            r#"{{"iss":"{iss}","aud":"api","sub":"alice","exp":{}}}"#,
            unix_now() + life
        );
        format!("Authorization: Bearer {}\r\n", hs256_token(secret, &claims))
    };
    let open = |path: &str, extra: &str| {
        let mut c = s.client();
        let head = HANDSHAKE.replace("{path}", path);
        c.send(format!("{head}{extra}\r\n").as_bytes())
            .expect("send");
        let r = c.response("GET").expect("response");
        (r, c)
    };
    // Issuer a's alice, with a token good for 2 more seconds.
    let started = std::time::Instant::now();
    let (r, mut short) = open("/ws/echo", &token(&a_secret, "a", 2));
    assert_eq!(r.status, 101, "{}", r.head);
    // Issuer b's alice is another consumer.
    let (r, _b) = open("/ws/echo", &token(&b_secret, "b", 600));
    assert_eq!(r.status, 101, "{}", r.head);
    // A second tunnel for a's alice is over her cap.
    let (r, _) = open("/ws/echo", &token(&a_secret, "a", 600));
    assert_eq!(
        (r.status, reason_of(&r).as_str()),
        (429, "websocket.per_consumer")
    );
    // The short token's tunnel ends with it (its exp, not the 24 h lifetime).
    assert!(
        short.closed_within(Duration::from_secs(6)),
        "the tunnel outlived its token"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "closed after {took:?}, before the token expired"
    );
    // Behind the trusted proxy (loopback), each client it names holds its
    // own share: two for 198.18.0.5, and 198.18.0.6 still gets in.
    let via = |client: &str| format!("X-Forwarded-For: {client}\r\n");
    let (r1, _c1) = open("/open/x", &via("198.18.0.5"));
    let (r2, _c2) = open("/open/x", &via("198.18.0.5"));
    assert_eq!((r1.status, r2.status), (101, 101));
    let (r, _) = open("/open/x", &via("198.18.0.5"));
    assert_eq!(
        (r.status, reason_of(&r).as_str()),
        (429, "websocket.per_source")
    );
    let (r, _c3) = open("/open/x", &via("198.18.0.6"));
    assert_eq!(r.status, 101, "{}", r.head);
}
