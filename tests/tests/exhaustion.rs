//! Resources an attacker can hold without credentials, each bounded: slow
//! uploads against an upstream's request places, open connections per
//! source, a TLS connection that never sends a request, a body trickled
//! for ever, and silent connections to the admin API.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use gateway_tests::{
    connect_from,
    harness::{Client, Setup, client_config, reason_of, setup_with},
};

fn tls_from(s: &Setup, src: &str) -> std::io::Result<Client> {
    let tcp = connect_from(
        src.parse::<IpAddr>().expect("ip"),
        SocketAddr::from(([127, 0, 0, 1], s.gw.port)),
        Duration::from_secs(2),
    )?;
    let cfg = client_config(&s.certs.ca, &[&rustls::version::TLS13]);
    Client::over(tcp, "localhost", cfg)
}

/// Trickling uploads take `max_uploads` places, never the `max_requests`
/// places other requests to the upstream need.
#[test]
fn trickling_uploads_never_take_the_places_other_requests_need() {
    let routes = r#"
[[upstreams]]
name = "capped"
servers = ["BACKEND"]
max_requests = 4

[[routes]]
path_prefix = "/capped"
upstream = "capped"
auth = "none"
"#;
    let backend = gateway_tests::harness::Backend::start();
    let routes = routes.replace("BACKEND", &backend.addr.to_string());
    let s = setup_with(
        "uploads",
        "body_timeout_ms = 5000",
        "workers = 1",
        &routes,
        "",
        &[],
    );
    // Four uploads of 1 MiB that send 32 KiB and then nothing (beyond the
    // 16 KiB read whole, so they stream).
    let mut uploads = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..4 {
        let mut c = s.client();
        let mut raw =
            b"POST /capped/upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1048576\r\n\r\n"
                .to_vec();
        raw.extend_from_slice(&[b'u'; 32 * 1024]);
        c.send(&raw).expect("send");
        if c.answered_within(Duration::from_millis(300)) {
            let r = c.response("POST").expect("response");
            refused.push((r.status, reason_of(&r)));
        } else {
            uploads.push(c);
        }
    }
    // max_uploads defaults to a quarter of max_requests: one streams, the
    // others are refused at once.
    assert_eq!(uploads.len(), 1, "{refused:?}");
    assert_eq!(refused, vec![(503, "upstream.max_uploads".to_owned()); 3]);
    // Meanwhile every other request to that upstream is served.
    for i in 0..20 {
        let r = s.get(&format!("/capped/get/{i}"), "");
        assert_eq!(r.status, 200, "request {i}: {r:?}");
    }
    assert_eq!(backend.hits("/capped/get"), 20);
    drop(uploads);
}

/// One source holds at most `limits.max_connections_per_source` open
/// connections; another source is unaffected, and a closed connection
/// gives its place back.
#[test]
fn a_source_holds_at_most_its_share_of_connections() {
    let s = setup_with(
        "per-source",
        "max_connections_per_source = 8\nheader_timeout_ms = 30000\nidle_timeout_ms = 30000",
        "workers = 2",
        "",
        "[policy]\nexempt_loopback = false\n",
        &[],
    );
    let mut held: Vec<Client> = (0..8)
        .map(|_| tls_from(&s, "127.0.0.1").expect("under the cap"))
        .collect();
    // The ninth is closed at accept: the handshake fails.
    assert!(
        tls_from(&s, "127.0.0.1").is_err(),
        "a ninth connection was served"
    );
    // Another address is its own source.
    let mut other = tls_from(&s, "127.0.0.2").expect("another source");
    let r = {
        other
            .send(b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .expect("send");
        other.response("GET").expect("response")
    };
    assert_eq!(r.status, 200);
    // A closed connection gives its place back.
    held.pop();
    std::thread::sleep(Duration::from_millis(200));
    let mut again = tls_from(&s, "127.0.0.1").expect("a place came back");
    again
        .send(b"GET /y HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("send");
    assert_eq!(again.response("GET").expect("response").status, 200);
    // Counted in the metrics (workers publish every 500 ms).
    let admin = s.gw.admin_addr().expect("admin");
    let counted = |m: &str| {
        m.lines().any(|l| {
            l.starts_with("gateway_connections_refused_per_source_total ") && !l.ends_with(" 0")
        })
    };
    let until = Instant::now() + Duration::from_secs(5);
    let mut metrics = http_get(admin, "/metrics");
    while !counted(&metrics) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
        metrics = http_get(admin, "/metrics");
    }
    assert!(counted(&metrics), "{metrics}");
}

/// A connection that completes TLS and sends nothing is closed after the
/// header timeout, as one that sends a head slowly is, not after the idle
/// timeout.
#[test]
fn a_silent_tls_connection_lives_no_longer_than_a_slow_head() {
    let s = setup_with(
        "silent-tls",
        "header_timeout_ms = 800\nidle_timeout_ms = 60000",
        "workers = 1",
        "",
        "",
        &[],
    );
    let mut c = s.client();
    let started = Instant::now();
    assert!(
        c.closed_within(Duration::from_secs(5)),
        "still open after {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // After a first request, the idle timeout applies.
    let mut c = s.client();
    c.send(b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("send");
    assert_eq!(c.response("GET").expect("response").status, 200);
    assert!(
        !c.closed_within(Duration::from_millis(1500)),
        "idle keep-alive cut at the header timeout"
    );
}

/// A body that keeps trickling fast enough for `body_min_rate` still ends
/// at `limits.body_total_timeout_ms`.
#[test]
fn a_trickled_body_ends_at_the_total_body_deadline() {
    let s = setup_with(
        "body-total",
        "body_total_timeout_ms = 1500\nbody_timeout_ms = 1000\nbody_min_rate = 1",
        "workers = 1",
        "",
        "",
        &[],
    );
    let mut c = s.client();
    c.send(b"POST /trickle HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\r\n")
        .expect("send head");
    let started = Instant::now();
    let mut answered = false;
    while started.elapsed() < Duration::from_secs(6) {
        if c.send(b"x").is_err() || c.answered_within(Duration::from_millis(200)) {
            answered = true;
            break;
        }
    }
    assert!(answered, "the trickle was never cut");
    let elapsed = started.elapsed();
    let r = c.response("POST").expect("response");
    assert_eq!(
        (r.status, reason_of(&r).as_str()),
        (408, "limit.body_time"),
        "{r:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(1400),
        "cut early: {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(4), "cut late: {elapsed:?}");
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect admin");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .expect("send");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// Silent connections to the admin API do not delay the operator: each
/// connection is served on its own, and one that sends nothing is cut
/// after a short read deadline.
#[test]
fn silent_admin_connections_do_not_delay_the_operator() {
    let s = setup_with("admin-silent", "", "workers = 1", "", "", &[]);
    let admin = s.gw.admin_addr().expect("admin");
    let silent: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(admin).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    let out = http_get(admin, "/verdicts");
    assert!(out.starts_with("HTTP/1.1 200 "), "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "answered after {:?}",
        started.elapsed()
    );
    // The silent ones are cut after the pre-auth read deadline.
    let mut first = silent.into_iter().next().expect("one");
    first
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = String::new();
    let cut = Instant::now();
    let _ = first.read_to_string(&mut buf);
    assert!(
        cut.elapsed() < Duration::from_secs(4),
        "held {:?}",
        cut.elapsed()
    );
}
