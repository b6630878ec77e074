//! gRPC through the gateway with a real gRPC server and client (PyPI
//! `grpcio`, `tests/grpc/`): unary, server streaming, client streaming and
//! bidi calls relayed with their trailers; a refused call answered the gRPC
//! way and never reaching the server; `grpc-timeout` honoured by the
//! gateway; an upstream that dies mid-stream ending the call UNAVAILABLE;
//! upstreams over TLS (verified, `h2` in ALPN) and the gRPC health check
//! taking a server out and bringing it back.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use gateway_tests::{
    h2::{self, Raw, frame},
    harness::{
        Certs, Keyed, PyServer, TempDir, api_key_json, free_port, run_python_json, setup_keyed,
        start_python, wait_until,
    },
};

fn scripts() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/grpc"))
}

fn start_server(port: u16, log: &Path) -> PyServer {
    start_server_with(port, log, &[])
}

/// The server, over TLS with `tls` (certificate and key files) when given.
fn start_server_with(port: u16, log: &Path, tls: &[&Path]) -> PyServer {
    let port_arg = port.to_string();
    let mut args = vec![port_arg.as_ref(), log.as_os_str()];
    args.extend(tls.iter().map(|p| p.as_os_str()));
    start_python(
        &scripts().join("server.py"),
        &args,
        port,
        "grpcio grpcio-health-checking",
    )
}

/// One call through the gateway: (status code name, details, replies).
fn call(port: u16, ca: &Path, which: &str, key: Option<&str>) -> (String, String, Vec<String>) {
    let port = port.to_string();
    let meta = api_key_json(key);
    let v = run_python_json(
        &scripts().join("client.py"),
        &[port.as_ref(), ca.as_os_str(), which.as_ref(), meta.as_ref()],
    );
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
    let replies = v["replies"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    (s("code"), s("details"), replies)
}

/// The calls the server saw, by method.
fn seen(log: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn setup(tag: &str, grpc_port: u16) -> Keyed {
    let routes = format!(
        r#"
[[upstreams]]
name = "grpc"
servers = ["127.0.0.1:{grpc_port}"]
http2 = true

[[routes]]
path_prefix = "/test.Echo/"
upstream = "grpc"
auth = ["api_key"]
grpc = true
"#
    );
    setup_keyed(tag, &routes, "")
}

#[test]
fn calls_of_every_kind_are_relayed_with_their_trailers_and_a_refused_one_never_arrives() {
    let dir = TempDir::new("grpc-calls");
    let log = dir.0.join("calls.jsonl");
    let port = free_port();
    let _server = start_server(port, &log);
    let Keyed { s, key, .. } = setup("grpc-calls", port);
    let ca = &s.certs.ca_pem;
    let gw = s.gw.port;
    let ok = |replies: &[&str]| {
        (
            "OK".to_owned(),
            String::new(),
            replies.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
        )
    };
    assert_eq!(call(gw, ca, "unary", Some(&key)), ok(&["echo:hi"]));
    assert_eq!(
        call(gw, ca, "count", Some(&key)),
        ok(&["0", "1", "2", "3", "4"])
    );
    assert_eq!(call(gw, ca, "join", Some(&key)), ok(&["a+b+c"]));
    assert_eq!(call(gw, ca, "chat", Some(&key)), ok(&["re:x", "re:y"]));
    // Refused by the gateway, the gRPC way: UNAUTHENTICATED with the reason.
    let (code, details, _) = call(gw, ca, "unary", None);
    assert_eq!(
        (code.as_str(), details.as_str()),
        ("UNAUTHENTICATED", "auth.missing")
    );
    let (code, details, _) = call(gw, ca, "unary", Some("gwk_forged"));
    assert_eq!(
        (code.as_str(), details.as_str()),
        ("UNAUTHENTICATED", "auth.invalid_key")
    );
    let calls = seen(&log);
    let methods: Vec<&str> = calls.iter().filter_map(|c| c["method"].as_str()).collect();
    assert_eq!(methods, ["Unary", "Count", "Join", "Chat"], "{calls:?}");
    // What the server saw is what the gateway proved: the consumer, the
    // client's address; never the key.
    for c in &calls {
        let m = &c["metadata"];
        assert_eq!(m["x-consumer-id"], "alice", "{c}");
        assert_eq!(m["x-forwarded-for"], "127.0.0.1", "{c}");
        assert!(m.get("x-api-key").is_none(), "{c}");
    }
    // A gRPC route over HTTP/1.1 is refused.
    let r = s.get("/test.Echo/Unary", &format!("x-api-key: {key}\r\n"));
    assert_eq!(r.status, 400);
    assert_eq!(seen(&log).len(), 4);
}

#[test]
fn the_gateway_ends_a_call_at_its_grpc_timeout_and_when_the_upstream_dies() {
    let dir = TempDir::new("grpc-deadline");
    let log = dir.0.join("calls.jsonl");
    let port = free_port();
    let _server = start_server(port, &log);
    let Keyed { s, key, .. } = setup("grpc-deadline", port);
    // grpc-timeout 300 ms on a method that answers after 3 s: the gateway
    // ends the call (raw frames, so no client deadline races it).
    let mut raw = Raw::connect(s.gw.port, &s.certs.ca).expect("h2 connect");
    let fields: Vec<(&[u8], &[u8])> = vec![
        (b":method", b"POST"),
        (b":scheme", b"https"),
        (b":authority", b"localhost"),
        (b":path", b"/test.Echo/Slow"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        (b"grpc-timeout", b"300m"),
        (b"x-api-key", key.as_bytes()),
    ];
    let started = Instant::now();
    raw.headers(1, &fields, false).expect("headers");
    // One empty message: the 5-byte gRPC prefix.
    raw.send(&frame(h2::DATA, h2::END_STREAM, 1, &[0, 0, 0, 0, 0]))
        .expect("data");
    let mut frames = Vec::new();
    let end = raw
        .until(Duration::from_secs(5), &mut frames, |f| {
            f.stream == 1 && f.kind == h2::HEADERS && f.flags & h2::END_STREAM != 0
        })
        .unwrap_or_else(|| panic!("the call did not end: {frames:?}"));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(2500),
        "ended after {took:?}: {end:?}"
    );
    assert!(
        !frames.iter().any(|f| f.kind == h2::DATA && f.stream == 1),
        "the late answer reached the client: {frames:?}"
    );
    // An upstream that dies after two messages: the client has them, then
    // UNAVAILABLE.
    let (code, details, replies) = call(s.gw.port, &s.certs.ca_pem, "die", Some(&key));
    assert_eq!(replies, ["one", "two"]);
    assert_eq!(
        (code.as_str(), details.as_str()),
        ("UNAVAILABLE", "upstream.closed")
    );
}

/// The gateway's count of `upstream`'s health checks of 127.0.0.1:`port`
/// with `result` (pass or fail).
fn checks(s: &gateway_tests::harness::Setup, port: u16, result: &str) -> u64 {
    let want = format!(
        "gateway_upstream_health_checks_total{{upstream=\"grpc\",server=\"127.0.0.1:{port}\",result=\"{result}\"}} "
    );
    s.gw.metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix(want.as_str())?.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn tls_upstreams_are_verified_and_the_grpc_health_check_takes_servers_out_and_back() {
    let dir = TempDir::new("grpc-tls");
    let certs = Certs::issue(&dir.0, &["backend.test"]);
    let (_, cert, tls_key) = &certs.files[0];
    let (log_a, log_b) = (dir.0.join("a.jsonl"), dir.0.join("b.jsonl"));
    let pa = free_port();
    let pb = std::iter::repeat_with(free_port)
        .find(|p| *p != pa)
        .expect("a port");
    let _a = start_server_with(pa, &log_a, &[cert, tls_key]);
    let _b = start_server_with(pb, &log_b, &[cert, tls_key]);
    let ca = certs.ca_pem.display();
    // Join goes to an upstream whose expected name the certificate does
    // not carry: its calls must never reach the server.
    let routes = format!(
        r#"
[[upstreams]]
name = "grpc"
servers = ["127.0.0.1:{pa}", "127.0.0.1:{pb}"]
http2 = true
[upstreams.tls]
ca_file = "{ca}"
server_name = "backend.test"
[upstreams.health_check]
grpc_service = "test.Echo"
interval_ms = 200
healthy_threshold = 1
unhealthy_threshold = 1

[[upstreams]]
name = "misnamed"
servers = ["127.0.0.1:{pa}"]
http2 = true
[upstreams.tls]
ca_file = "{ca}"
server_name = "elsewhere.test"

[[routes]]
path = "/test.Echo/Join"
upstream = "misnamed"
auth = ["api_key"]
grpc = true

[[routes]]
path_prefix = "/test.Echo/"
upstream = "grpc"
auth = ["api_key"]
grpc = true
"#
    );
    let Keyed { s, key, .. } = setup_keyed("grpc-tls", &routes, "");
    let (gw, client_ca) = (s.gw.port, &s.certs.ca_pem);
    wait_until("both servers pass a check", Duration::from_secs(10), || {
        checks(&s, pa, "pass") > 0 && checks(&s, pb, "pass") > 0
    });
    let unary = || call(gw, client_ca, "unary", Some(&key));
    let ok = ("OK".to_owned(), String::new(), vec!["echo:hi".to_owned()]);
    for _ in 0..4 {
        assert_eq!(unary(), ok);
    }
    assert_eq!(
        call(gw, client_ca, "chat", Some(&key)).2,
        ["re:x", "re:y"],
        "bidi over TLS"
    );
    let calls = |log: &Path| seen(log).len();
    assert_eq!(calls(&log_a) + calls(&log_b), 5);
    // The misnamed hop fails its handshake: UNAVAILABLE, nothing sent.
    let (code, details, _) = call(gw, client_ca, "join", Some(&key));
    assert_eq!(
        (code.as_str(), details.as_str()),
        ("UNAVAILABLE", "upstream.tls")
    );
    assert!(
        !seen(&log_a)
            .iter()
            .chain(&seen(&log_b))
            .any(|c| c["method"] == "Join"),
        "a call crossed a hop that failed verification"
    );
    // A says NOT_SERVING: the check takes it out, every call goes to B.
    std::fs::write(dir.0.join("a.jsonl.down"), "").expect("down file");
    let failed_before = checks(&s, pa, "fail");
    wait_until("A's check fails", Duration::from_secs(10), || {
        checks(&s, pa, "fail") > failed_before
    });
    let (a_before, b_before) = (calls(&log_a), calls(&log_b));
    for _ in 0..4 {
        assert_eq!(unary(), ok);
    }
    assert_eq!(calls(&log_a), a_before, "a server taken out got calls");
    assert_eq!(calls(&log_b), b_before + 4);
    // Both out: the gateway answers UNAVAILABLE itself.
    std::fs::write(dir.0.join("b.jsonl.down"), "").expect("down file");
    let failed_before = checks(&s, pb, "fail");
    wait_until("B's check fails", Duration::from_secs(10), || {
        checks(&s, pb, "fail") > failed_before
    });
    let (code, details, _) = unary();
    assert_eq!(
        (code.as_str(), details.as_str()),
        ("UNAVAILABLE", "upstream.unavailable")
    );
    // Serving again: back in.
    std::fs::remove_file(dir.0.join("a.jsonl.down")).expect("up again");
    let passed_before = checks(&s, pa, "pass");
    wait_until("A passes again", Duration::from_secs(10), || {
        checks(&s, pa, "pass") > passed_before
    });
    assert_eq!(unary(), ok);
    assert_eq!(calls(&log_a), a_before + 1);
}
