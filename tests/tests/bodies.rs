//! Request bodies from the attacker's side: what an unauthenticated client
//! can make the gateway hold. Raw bytes are counted (chunk framing
//! included), a body read whole is de-chunked as it arrives, and every
//! worker holds bodies within `limits.body_memory_per_worker`, refusing
//! the rest with 503 before reading them; measured by the gateway's RSS.

use std::time::Duration;

use gateway_tests::harness::{Client, Setup, reason_of, setup_with, sha256_hex};

/// A blocking-WAF route, a streaming route and a schema route with small
/// body limits, one worker holding at most 8 MiB of bodies.
const ROUTES: &str = r#"
[[routes]]
path_prefix = "/shop"
upstream = "backend"
auth = "none"
waf = "block"
max_body_bytes = 2097152

[[routes]]
path_prefix = "/stream"
upstream = "backend"
auth = "none"
waf = "off"
max_body_bytes = 4096

[[routes]]
path_prefix = "/orders"
upstream = "backend"
auth = "none"
max_body_bytes = 65536
body_schema = { type = "object" }
"#;

const BUDGET: u64 = 8 * 1024 * 1024;

fn start(tag: &str, max_chunks: u64) -> Setup {
    setup_with(
        tag,
        &format!(
            "body_memory_per_worker = {BUDGET}\nbody_timeout_ms = 10000\nmax_body_chunks = {max_chunks}"
        ),
        "workers = 1",
        ROUTES,
        "[waf]\nmax_body_bytes = 2097152\n",
        &[],
    )
}

/// The gateway's resident memory, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

/// Waits until the gateway's RSS stops growing (a read in flight settles).
fn settled_rss(pid: u32) -> u64 {
    let mut last = rss(pid);
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(100));
        let now = rss(pid);
        if now.abs_diff(last) < 64 * 1024 {
            return now;
        }
        last = now;
    }
    last
}

/// The gateway's own answer to a refused request.
fn refused(c: &mut Client) -> (u16, String) {
    let r = c.response("POST").expect("response");
    (r.status, reason_of(&r))
}

#[test]
fn hostile_bodies_stay_within_the_workers_body_memory() {
    // Chunks uncapped here: the raw byte count alone must stop framing.
    let s = start("bodies-budget", 1_000_000);
    // Warm up: the worker's pools and the TLS session cache.
    let mut c = s.client();
    c.send(b"POST /shop/warm HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
        .expect("send");
    assert_eq!(c.response("POST").expect("response").status, 200);
    drop(c);
    let before = settled_rss(s.gw.pid());

    // Chunked bodies whose framing dwarfs their data: 200 bytes of
    // chunk extension per data byte, 3 MiB of it per connection.
    let ext = format!("1;x={}\r\nA\r\n", "e".repeat(196));
    let framing = ext.repeat(3 * 1024 * 1024 / ext.len());
    let mut framed = Vec::new();
    for _ in 0..8 {
        let mut c = s.client();
        c.send(b"POST /shop/chunks HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            .expect("send head");
        // The gateway refuses it part way: a write after that may fail.
        let _ = c.send(framing.as_bytes());
        framed.push(c);
    }
    // Framing counts against the 2 MiB limit like data; decoded in place,
    // it was never held.
    for c in &mut framed {
        assert_eq!(refused(c), (413, "limit.body_size".into()));
    }
    drop(framed);
    let total = 2 * 1024 * 1024;
    // A declared length books nothing: 32 connections announcing 2 MiB
    // (64 MiB in all) and trickling a few bytes are all held, and a whole
    // body still fits beside them.
    let mut trickling = Vec::new();
    for _ in 0..32 {
        let mut c = s.client();
        c.send(format!("POST /shop/trickle HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {total}\r\n\r\n{{\"a\":\"").as_bytes())
            .expect("send head");
        trickling.push(c);
    }
    for c in &mut trickling {
        assert!(
            !c.answered_within(Duration::from_millis(50)),
            "a trickled body was refused: {:?}",
            refused(c)
        );
    }
    let body = format!("{{\"a\":\"{}\"}}", "y".repeat(total - 8));
    let mut c = s.client();
    c.send(format!("POST /shop/beside HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes())
        .expect("send");
    let r = c.response("POST").expect("response");
    assert_eq!(r.status, 200, "{r:?}");
    drop(trickling);
    std::thread::sleep(Duration::from_millis(300));

    // Then 24 connections, each a 2 MiB JSON body sent but for its last byte:
    // what fits the budget is held, the rest is refused part way.
    let mut held = Vec::new();
    let mut refusals = Vec::new();
    for _ in 0..24 {
        let mut c = s.client();
        c.send(format!("POST /shop/upload HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {total}\r\n\r\n{{\"a\":\"").as_bytes())
            .expect("send head");
        // Refused part way, a write after that may fail.
        let _ = c.send(&vec![b'x'; total - 7]);
        if c.answered_within(Duration::from_millis(400)) {
            refusals.push(refused(&mut c));
        } else {
            held.push(c);
        }
    }
    let during = settled_rss(s.gw.pid());
    let grown = during.saturating_sub(before);
    assert!(
        grown < BUDGET + 8 * 1024 * 1024,
        "RSS grew by {} KiB holding {} bodies (budget {} KiB)",
        grown / 1024,
        held.len(),
        BUDGET / 1024
    );
    assert!(
        (1..=4).contains(&held.len()),
        "{} bodies held within an 8 MiB budget",
        held.len()
    );
    assert!(refusals.len() >= 20, "{refusals:?}");
    for r in &refusals {
        assert_eq!(r, &(503, "gateway.body_memory".to_owned()));
    }
    assert_eq!(s.backend.hits("/shop/upload"), 0);
    assert_eq!(s.backend.hits("/shop/chunks"), 0);
    assert_eq!(s.backend.hits("/shop/trickle"), 0);
    assert_eq!(s.backend.hits("/shop/beside"), 1);

    // Once they are gone, the memory is back for others.
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    let mut c = s.client();
    let body = format!("{{\"a\":\"{}\"}}", "y".repeat(total - 8));
    c.send(format!("POST /shop/after HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes())
        .expect("send");
    let r = c.response("POST").expect("response");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(s.backend.hits("/shop/after"), 1);
}

#[test]
fn a_chunked_body_read_whole_goes_upstream_dechunked_and_chunks_are_capped() {
    let s = start("bodies-dechunk", 64);
    // A valid chunked JSON body on a judged route: the backend gets the
    // same data, with a Content-Length.
    let json = br#"{"items":[1,2,3],"note":"fine"}"#;
    let mut raw = b"POST /orders/1 HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for part in json.chunks(7) {
        raw.extend_from_slice(format!("{:x};sig=abc\r\n", part.len()).as_bytes());
        raw.extend_from_slice(part);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\nX-Trailer: t\r\n\r\n");
    let mut c = s.client();
    c.send(&raw).expect("send");
    let r = c.response("POST").expect("response");
    assert_eq!(r.status, 200, "{r:?}");
    // Pipelined after it on the same connection: still its own request.
    c.send(b"GET /shop/next HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("send");
    assert_eq!(c.response("GET").expect("response").status, 200);
    let got = s.backend.received();
    let first = got
        .iter()
        .find(|r| r.head.contains("/orders/1"))
        .expect("forwarded");
    assert!(!first.chunked, "{}", first.head);
    assert!(
        first
            .head
            .to_ascii_lowercase()
            .contains(&format!("content-length: {}\r\n", json.len())),
        "{}",
        first.head
    );
    assert_eq!(first.body_sha256, sha256_hex(json));

    // More chunks than `limits.max_body_chunks` (64): 413, nothing forwarded.
    let mut raw = b"POST /orders/2 HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{\r\n".to_vec();
    for _ in 0..100 {
        raw.extend_from_slice(b"1\r\n \r\n");
    }
    raw.extend_from_slice(b"1\r\n}\r\n0\r\n\r\n");
    let mut c = s.client();
    c.send(&raw).expect("send");
    assert_eq!(refused(&mut c), (413, "limit.body_chunks".into()));
    // An extension past 256 bytes is a framing error.
    let mut c = s.client();
    c.send(format!("POST /orders/3 HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n2;x={}\r\n{{}}\r\n0\r\n\r\n", "e".repeat(300)).as_bytes())
        .expect("send");
    assert_eq!(refused(&mut c), (400, "http.chunked".into()));
    assert_eq!(s.backend.hits("/orders/2"), 0);
    assert_eq!(s.backend.hits("/orders/3"), 0);
}

#[test]
fn a_streamed_chunked_body_counts_its_framing_and_its_chunks() {
    let s = start("bodies-stream", 64);
    let chunked = |n: usize, ext: usize| {
        let mut raw =
            b"POST /stream/up HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_vec();
        for _ in 0..n {
            raw.extend_from_slice(format!("1;x={}\r\nA\r\n", "e".repeat(ext)).as_bytes());
        }
        raw.extend_from_slice(b"0\r\n\r\n");
        raw
    };
    // Within both limits: streamed to the backend as sent.
    let mut c = s.client();
    c.send(&chunked(10, 4)).expect("send");
    assert_eq!(c.response("POST").expect("response").status, 200);
    assert_eq!(s.backend.hits("/stream/up"), 1);
    // 40 data bytes in 6.6 KB of framing: over the 4 KiB limit, raw.
    let mut c = s.client();
    let _ = c.send(&chunked(40, 150));
    assert_eq!(refused(&mut c), (413, "limit.body_size".into()));
    // 100 one-byte chunks in 1.1 KB: over `max_body_chunks` (64).
    let mut c = s.client();
    let _ = c.send(&chunked(100, 1));
    assert_eq!(refused(&mut c), (413, "limit.body_chunks".into()));
    assert_eq!(
        s.backend.hits("/stream/up"),
        1,
        "a refused body completed upstream"
    );
}

/// Bodies larger than the 16 KiB a request buffers before the upstream,
/// within `max_body_bytes`, judged invalid by a schema or the WAF, plain
/// and chunked: refused before any connection upstream is opened (counted
/// at a listener that never accepts: what the gateway connected waits in
/// its queue).
#[test]
fn bodies_past_the_buffer_are_judged_before_any_upstream_connection() {
    let never = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let routes = format!(
        "[[upstreams]]\nname = \"never\"\nservers = [\"{}\"]\n\n\
         [[routes]]\npath_prefix = \"/schema\"\nupstream = \"never\"\nauth = \"none\"\n\
         max_body_bytes = 262144\nbody_schema = {{ type = \"object\", required = [\"a\"] }}\n\n\
         [[routes]]\npath_prefix = \"/waf\"\nupstream = \"never\"\nauth = \"none\"\n\
         max_body_bytes = 262144\nwaf = \"block\"\n",
        never.local_addr().expect("addr")
    );
    let s = setup_with("bodies-judged", "", "workers = 1", &routes, "", &[]);
    let filler = "x".repeat(100 * 1024);
    let broken = format!("{{\"a\":\"{filler}\",}}");
    let attack =
        format!("{{\"note\":\"{filler}\",\"q\":\"' UNION SELECT password FROM users--\"}}");
    let send = |path: &str, body: &str, chunked: bool| {
        let mut c = s.client();
        let mut raw = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        );
        if chunked {
            raw.push_str("Transfer-Encoding: chunked\r\n\r\n");
            for part in body.as_bytes().chunks(8000) {
                raw.push_str(&format!(
                    "{:x}\r\n{}\r\n",
                    part.len(),
                    String::from_utf8_lossy(part)
                ));
            }
            raw.push_str("0\r\n\r\n");
        } else {
            raw.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        }
        let _ = c.send(raw.as_bytes());
        refused(&mut c)
    };
    for chunked in [false, true] {
        assert_eq!(
            send("/schema/x", &broken, chunked),
            (400, "validation.json".into()),
            "chunked {chunked}"
        );
        assert_eq!(
            send("/waf/x", &attack, chunked),
            (403, "waf.sqli".into()),
            "chunked {chunked}"
        );
    }
    never.set_nonblocking(true).expect("nonblocking");
    let opened = std::iter::from_fn(|| never.accept().ok()).count();
    assert_eq!(opened, 0, "the gateway connected upstream before judging");
}
