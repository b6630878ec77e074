//! HTTP/2 from the client's side and the attacker's: curl over h2 through
//! every stage (a refused stream leaves the connection serving), bodies
//! both ways through flow control, and raw frames for what downgrade
//! smuggling and the HTTP/2 denial-of-service family send, each refused
//! without reaching the backend.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use gateway_tests::{
    h2::{self, Raw, frame},
    harness::{Keyed, Setup, setup_keyed, setup_with, sha256_hex, wait_until},
};

const ROUTES: &str = r#"
[[routes]]
path_prefix = "/keyed"
upstream = "backend"
auth = ["api_key"]

[[routes]]
path_prefix = "/shop"
upstream = "backend"
auth = "none"
waf = "block"

[[routes]]
path = "/orders"
methods = ["POST"]
upstream = "backend"
auth = "none"
body_schema = { type = "object", required = ["qty"], properties = { qty = { type = "integer", maximum = 100 } } }
"#;

/// A gateway in front of the test backend: `limits` in `[limits]`, `tail`
/// at the end of the file.
fn gateway(tag: &str, limits: &str, tail: &str) -> Setup {
    setup_with(tag, limits, "workers = 2", "", tail, &[])
}

/// Runs curl over HTTP/2 against the gateway with `args` (transfers
/// separated by `--next`, each given the same TLS options); its stdout.
fn curl(s: &Setup, args: &[&str]) -> String {
    let ca = s.certs.ca_pem.display().to_string();
    let common = ["-s", "--http2", "--max-time", "20", "--cacert", ca.as_str()];
    let mut cmd = Command::new("curl");
    cmd.args(common);
    for a in args {
        cmd.arg(a);
        if *a == "--next" {
            cmd.args(common);
        }
    }
    let out = cmd.output().expect("curl runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn url(s: &Setup, path: &str) -> String {
    format!("https://localhost:{}{path}", s.gw.port)
}

/// `-w` for one line per transfer: status, HTTP version, new connections.
const LINE: &str = "%{http_code} %{http_version} %{num_connects}\n";

#[test]
fn every_stage_judges_each_stream_and_a_refused_stream_leaves_the_connection_serving() {
    let Keyed { s, key, .. } = setup_keyed("h2-stages", ROUTES, "");
    let (u_keyed, u_plain) = (url(&s, "/keyed/a"), url(&s, "/plain/ok"));
    let u_waf = url(&s, "/shop/?q=%27%20OR%201%3D1--");
    let header = format!("x-api-key: {key}");
    // One connection (curl reuses it across --next), four streams.
    let out = curl(
        &s,
        &[
            "-o",
            "/dev/null",
            "-w",
            LINE,
            &u_keyed,
            "--next",
            "-o",
            "/dev/null",
            "-w",
            LINE,
            "-H",
            "x-api-key: gwk_forged",
            &u_keyed,
            "--next",
            "-o",
            "/dev/null",
            "-w",
            LINE,
            &u_waf,
            "--next",
            "-o",
            "/dev/null",
            "-w",
            LINE,
            "-H",
            &header,
            &u_keyed,
            "--next",
            "-o",
            "/dev/null",
            "-w",
            LINE,
            &u_plain,
        ],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        ["401 2 1", "401 2 0", "403 2 0", "200 2 0", "200 2 0"],
        "{out}"
    );
    // Only the keyed request with the right key and the plain one got through.
    assert_eq!(s.backend.hits("/keyed"), 1, "{:?}", s.backend.paths());
    assert_eq!(s.backend.hits("/shop"), 0);
    let got = s.backend.received();
    let plain = got
        .iter()
        .find(|r| r.head.starts_with("GET /plain/ok HTTP/1.1\r\n"))
        .expect("the plain request reached the backend as HTTP/1.1");
    let head = plain.head.to_ascii_lowercase();
    assert!(
        head.contains(&format!("host: localhost:{}\r\n", s.gw.port)),
        "{head}"
    );
    assert!(head.contains("x-forwarded-for: 127.0.0.1"), "{head}");
}

#[test]
fn bodies_cross_flow_control_both_ways_with_and_without_a_length() {
    let Keyed { s, .. } = setup_keyed("h2-bodies", ROUTES, "");
    // A JSON body with a length, validated, arrives with its length.
    let out = curl(
        &s,
        &[
            "-o",
            "/dev/null",
            "-w",
            LINE,
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"qty":3}"#,
            &url(&s, "/orders"),
            "--next",
            "-o",
            "/dev/null",
            "-w",
            LINE,
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"qty":300}"#,
            &url(&s, "/orders"),
        ],
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["200 2 1", "400 2 0"],
        "{out}"
    );
    let orders: Vec<_> = s
        .backend
        .received()
        .into_iter()
        .filter(|r| r.head.starts_with("POST /orders"))
        .collect();
    assert_eq!(orders.len(), 1, "only the valid order reaches the backend");
    assert!(!orders[0].chunked);
    assert_eq!(orders[0].body_sha256, sha256_hex(br#"{"qty":3}"#));

    // 1 MiB streamed without a length: sixteen stream windows, reaching
    // the HTTP/1.1 backend chunked, byte for byte.
    let dir = &s.gw.dir.0;
    let upload: Vec<u8> = (0..1024 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    let file = dir.join("upload.bin");
    std::fs::write(&file, &upload).expect("write upload");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cat {} | curl -s --http2 --max-time 20 --cacert {} -T - -o /dev/null -w '%{{http_code}} %{{http_version}}' {}",
            file.display(),
            s.certs.ca_pem.display(),
            url(&s, "/big/upload")
        ))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200 2");
    let up = s
        .backend
        .received()
        .into_iter()
        .find(|r| r.head.starts_with("PUT /big/upload"))
        .expect("upload reached the backend");
    assert!(up.chunked, "{}", up.head);
    assert_eq!(up.body_len, upload.len() as u64);
    assert_eq!(up.body_sha256, sha256_hex(&upload));

    // 3 MB down, as the client's window opens.
    let body = curl(&s, &[&url(&s, "/bytes/3000000")]);
    assert_eq!(body.len(), 3_000_000);
}

/// A request that downgrade smuggling or a malformed stream would send.
struct Case {
    what: &'static str,
    method: &'static str,
    extra: Vec<(&'static [u8], &'static [u8])>,
    /// DATA sent after the HEADERS (none: HEADERS end the stream).
    data: Option<&'static [u8]>,
}

fn case(what: &'static str, extra: Vec<(&'static [u8], &'static [u8])>) -> Case {
    Case {
        what,
        method: "GET",
        extra,
        data: None,
    }
}

#[test]
fn what_downgrade_smuggling_sends_is_refused_and_never_reaches_the_backend() {
    let s = gateway("h2-smuggle", "", "");
    let cases = [
        Case {
            what: "transfer-encoding",
            method: "POST",
            extra: vec![(b"transfer-encoding", b"chunked")],
            data: Some(b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n"),
        },
        case("connection", vec![(b"connection", b"keep-alive")]),
        case("keep-alive", vec![(b"keep-alive", b"5")]),
        case("upgrade", vec![(b"upgrade", b"h2c")]),
        case("te gzip", vec![(b"te", b"gzip")]),
        case("uppercase name", vec![(b"X-Upper", b"1")]),
        case("CRLF in a value", vec![(b"x-a", b"1\r\nx-injected: 1")]),
        case(
            "LF in a value",
            vec![(b"x-a", b"1\nGET /smuggled HTTP/1.1")],
        ),
        case("NUL in a value", vec![(b"x-a", b"1\0")]),
        case("CR in a name", vec![(b"x-a\r\nx-b", b"1")]),
        case("host unlike :authority", vec![(b"host", b"evil.test")]),
        case(
            "pseudo-header after a field",
            vec![(b"x-a", b"1"), (b":path", b"/other")],
        ),
        case("response pseudo-header", vec![(b":status", b"200")]),
        Case {
            what: "content-length unlike DATA",
            method: "POST",
            extra: vec![(b"content-length", b"5")],
            data: Some(b"0123456789"),
        },
    ];
    for (i, c) in cases.iter().enumerate() {
        let mut raw = Raw::connect(s.gw.port, &s.certs.ca).expect("h2 connect");
        let path = format!("/smuggle/{i}");
        let fields = h2::request(c.method, &path, &c.extra);
        raw.headers(1, &fields, c.data.is_none()).expect("send");
        if let Some(d) = c.data {
            raw.send(&frame(h2::DATA, h2::END_STREAM, 1, d))
                .expect("data");
        }
        let mut seen = Vec::new();
        let answer = raw.until(Duration::from_secs(10), &mut seen, |f| {
            (f.stream == 1 && matches!(f.kind, h2::HEADERS | h2::RST_STREAM))
                || f.kind == h2::GOAWAY
        });
        let refused = match &answer {
            Some(f) if f.kind == h2::HEADERS => f.status().is_some_and(|st| st >= 400),
            Some(_) => true,
            // Closed at once is a refusal too.
            None => true,
        };
        assert!(
            refused,
            "{}: not refused: {answer:?} after {seen:?}",
            c.what
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        s.backend.hits("/smuggle") + s.backend.hits("/smuggled") + s.backend.hits("/other"),
        0,
        "{:?}",
        s.backend.received()
    );
    // The same raw client's well-formed request is served: the refusals
    // above are about the fields, not the client.
    let mut raw = Raw::connect(s.gw.port, &s.certs.ca).expect("h2 connect");
    raw.headers(1, &h2::request("GET", "/fine", &[]), true)
        .expect("send");
    let mut seen = Vec::new();
    let f = raw
        .until(Duration::from_secs(10), &mut seen, |f| {
            f.kind == h2::HEADERS
        })
        .expect("a response");
    assert_eq!(f.status(), Some(200), "{seen:?}");
    assert_eq!(s.backend.hits("/fine"), 1);
}

#[test]
fn rapid_reset_closes_the_connection_before_its_streams_reach_the_backend() {
    let s = gateway("h2-rapid", "", "");
    let mut raw = Raw::connect(s.gw.port, &s.certs.ca).expect("h2 connect");
    let mut sent = 0;
    let mut out = Vec::new();
    let mut seen = Vec::new();
    // CVE-2023-44487: open a stream, reset it at once, again and again,
    // reading what comes back between batches.
    'flood: for i in 0..5000u32 {
        let id = 2 * i + 1;
        let path = format!("/rapid/{i}");
        out.extend(h2::opened_and_reset(id, &path));
        sent += 1;
        if out.len() > 16 * 1024 {
            if raw.send(&out).is_err() {
                break;
            }
            out.clear();
            while let Some(f) = raw.next_frame(Duration::from_millis(1)) {
                seen.push(f);
                if seen.last().is_some_and(|f| f.kind == h2::GOAWAY) {
                    break 'flood;
                }
            }
        }
    }
    let _ = raw.send(&out);
    let goaway = seen.iter().find(|f| f.kind == h2::GOAWAY).cloned();
    let goaway =
        goaway.or_else(|| raw.until(Duration::from_secs(10), &mut seen, |f| f.kind == h2::GOAWAY));
    let goaway = goaway.unwrap_or_else(|| panic!("no GOAWAY after {sent} resets: {seen:?}"));
    assert_eq!(
        goaway.error_code(),
        Some(h2::ENHANCE_YOUR_CALM),
        "{goaway:?}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let hits = s.backend.hits("/rapid");
    assert!(
        hits < 1000,
        "{hits} of {sent} reset streams reached the backend"
    );
    let m = s.gw.metrics_text();
    assert!(m.contains("gateway_http2_abuse_total 1"), "{m}");
}

#[test]
fn a_continuation_flood_is_cut_off_in_bounded_time() {
    let s = gateway("h2-continuation", "", "");
    for zero_length in [true, false] {
        let mut raw = Raw::connect(s.gw.port, &s.certs.ca).expect("h2 connect");
        // HEADERS without END_HEADERS, then CONTINUATION after
        // CONTINUATION (RUSTSEC-2024-0332): empty ones, or ones that keep
        // adding fields.
        raw.send(&frame(
            h2::HEADERS,
            0,
            1,
            &h2::block(&h2::request("GET", "/flood", &[])),
        ))
        .expect("headers");
        let filler = h2::block(&[(b"x-filler", &[b'a'; 1000])]);
        let payload: &[u8] = if zero_length { b"" } else { &filler };
        let started = Instant::now();
        let mut frames = 0;
        let mut batch = Vec::new();
        for _ in 0..200 {
            batch.clear();
            for _ in 0..500 {
                batch.extend(frame(h2::CONTINUATION, 0, 1, payload));
            }
            if raw.send(&batch).is_err() {
                break;
            }
            frames += 500;
        }
        let mut seen = Vec::new();
        assert!(
            raw.closed_within(Duration::from_secs(10), &mut seen),
            "zero-length {zero_length}: still open after {frames} CONTINUATION frames: {seen:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(20));
    }
    assert_eq!(s.backend.hits("/flood"), 0);
    // The gateway still serves.
    let r = s.get("/after", "");
    assert_eq!(r.status, 200);
}

#[test]
fn a_stream_beyond_the_concurrency_limit_is_refused_and_the_others_are_served() {
    let s = gateway("h2-streams", "", "[http2]\nmax_concurrent_streams = 10\n");
    let mut raw = Raw::connect(s.gw.port, &s.certs.ca).expect("h2 connect");
    let mut seen = Vec::new();
    // The limit is announced in the server's SETTINGS.
    raw.until(Duration::from_secs(5), &mut seen, |f| {
        f.kind == h2::SETTINGS && f.flags & h2::ACK == 0
    })
    .expect("server SETTINGS");
    // Eleven slow requests at once: the eleventh is refused.
    for i in 0..11u32 {
        let path = format!("/slow/{}", 1500 + i);
        raw.headers(2 * i + 1, &h2::request("GET", &path, &[]), true)
            .expect("send");
    }
    let refused = raw
        .until(Duration::from_secs(5), &mut seen, |f| {
            f.kind == h2::RST_STREAM
        })
        .unwrap_or_else(|| panic!("no RST_STREAM: {seen:?}"));
    assert_eq!(refused.stream, 21);
    assert_eq!(refused.error_code(), Some(h2::REFUSED_STREAM));
    let mut answered = 0;
    while answered < 10 {
        let f = raw
            .until(Duration::from_secs(10), &mut seen, |f| {
                f.kind == h2::HEADERS
            })
            .unwrap_or_else(|| panic!("{answered} of 10 answered: {seen:?}"));
        assert!(f.stream < 21);
        answered += 1;
    }
    assert_eq!(s.backend.hits("/slow"), 10);
}

#[test]
fn a_reader_that_never_opens_its_window_loses_the_stream_not_the_gateway() {
    let s = gateway("h2-slow-reader", "body_timeout_ms = 1000", "");
    let mut raw = Raw::connect(s.gw.port, &s.certs.ca).expect("h2 connect");
    // 4 MB asked for; the window (65,535 bytes) is never opened.
    raw.headers(1, &h2::request("GET", "/bytes/4000000", &[]), true)
        .expect("send");
    let mut seen = Vec::new();
    let reset = raw.until(Duration::from_secs(10), &mut seen, |f| {
        f.kind == h2::RST_STREAM && f.stream == 1
    });
    assert!(
        reset.is_some(),
        "the stream was not reset: {} frames",
        seen.len()
    );
    let data: usize = seen
        .iter()
        .filter(|f| f.kind == h2::DATA)
        .map(|f| f.payload.len())
        .sum();
    assert!(data <= 65_535, "{data} bytes sent beyond the window");
    // Others are served meanwhile.
    assert_eq!(s.get("/other", "").status, 200);
}

#[test]
fn ping_and_settings_floods_leave_the_gateway_serving() {
    let s = gateway("h2-floods", "body_timeout_ms = 1000", "");
    assert_eq!(s.get("/warm", "").status, 200);
    let before = s.gw.rss_kib();
    for kind in [h2::PING, h2::SETTINGS, h2::WINDOW_UPDATE] {
        let mut raw = Raw::connect(s.gw.port, &s.certs.ca).expect("h2 connect");
        let one = match kind {
            h2::PING => frame(h2::PING, 0, 0, &[7; 8]),
            h2::SETTINGS => frame(h2::SETTINGS, 0, 0, &[0, 4, 0, 1, 0, 0]),
            _ => frame(h2::WINDOW_UPDATE, 0, 0, &1u32.to_be_bytes()),
        };
        let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 1000).collect();
        let started = Instant::now();
        // Never reading the acknowledgements: the gateway must stop
        // reading rather than queue them without bound.
        for _ in 0..100 {
            if raw.send(&batch).is_err() || started.elapsed() > Duration::from_secs(10) {
                break;
            }
        }
        let t = Instant::now();
        assert_eq!(s.get("/during", "").status, 200, "frame type {kind}");
        assert!(t.elapsed() < Duration::from_secs(3));
    }
    let rss = s.gw.rss_kib();
    assert!(
        rss < before + 32 * 1024,
        "RSS grew from {before} to {rss} KiB during the floods"
    );
}

#[test]
fn an_idle_connection_gets_goaway_and_a_request_before_it_is_served() {
    let s = gateway("h2-idle", "idle_timeout_ms = 1000", "");
    let mut raw = Raw::connect(s.gw.port, &s.certs.ca).expect("h2 connect");
    raw.headers(1, &h2::request("GET", "/once", &[]), true)
        .expect("send");
    let mut seen = Vec::new();
    let f = raw
        .until(Duration::from_secs(5), &mut seen, |f| f.kind == h2::HEADERS)
        .expect("answered");
    assert_eq!(f.status(), Some(200));
    let t = Instant::now();
    let goaway = raw
        .until(Duration::from_secs(5), &mut seen, |f| f.kind == h2::GOAWAY)
        .unwrap_or_else(|| panic!("no GOAWAY: {seen:?}"));
    assert_eq!(goaway.error_code(), Some(0));
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    assert!(raw.closed_within(Duration::from_secs(5), &mut seen));
}

#[test]
fn repeated_http2_abuse_earns_the_source_a_verdict() {
    let mut s = gateway(
        "h2-verdict",
        "",
        "[http2]\npremature_reset_streams = 50\n[rate_limit.escalation]\nrejections = 0\nauth_failures = 0\nattacks = 2\nwindow_secs = 60\nban_secs = 2\nmax_ban_secs = 60\n",
    );
    for _ in 0..2 {
        let mut raw = Raw::connect(s.gw.port, &s.certs.ca).expect("h2 connect");
        let mut out = Vec::new();
        for i in 0..200u32 {
            out.extend(h2::opened_and_reset(2 * i + 1, "/slow/300"));
        }
        let _ = raw.send(&out);
        let mut seen = Vec::new();
        assert!(
            raw.until(Duration::from_secs(10), &mut seen, |f| f.kind == h2::GOAWAY)
                .is_some()
        );
    }
    let line =
        s.gw.proc
            .wait_for_line("verdict: 127.0.0.1", Duration::from_secs(3))
            .unwrap_or_else(|| panic!("no verdict in {:?}", s.gw.proc.seen));
    assert!(
        line.contains("2 attacks (WAF detections, HTTP/2 abuse)"),
        "{line}"
    );
    // A first offence is refused request by request, over h2 as well.
    let out = curl(&s, &["-o", "/dev/null", "-w", LINE, &url(&s, "/after")]);
    assert_eq!(out, "403 2 1\n");
    wait_until("the verdict lapses", Duration::from_secs(10), || {
        curl(
            &s,
            &["-o", "/dev/null", "-w", "%{http_code}", &url(&s, "/after")],
        ) == "200"
    });
}

#[test]
fn streams_reset_soon_after_they_start_close_the_connection_once_they_are_most() {
    let mut s = gateway(
        "h2-premature",
        "",
        "[http2]\npremature_reset_streams = 40\n",
    );
    let mut raw = Raw::connect(s.gw.port, &s.certs.ca).expect("h2 connect");
    let mut seen = Vec::new();
    // Envoy's rule, paced so that every stream is accepted (and its work
    // started) before its reset: h2's own count of resets awaiting accept
    // never fills.
    let mut goaway = None;
    for i in 0..80u32 {
        let id = 2 * i + 1;
        raw.headers(id, &h2::request("GET", "/slow/2000", &[]), true)
            .expect("send");
        std::thread::sleep(Duration::from_millis(5));
        if raw
            .send(&frame(h2::RST_STREAM, 0, id, &0x8u32.to_be_bytes()))
            .is_err()
        {
            break;
        }
        while let Some(f) = raw.next_frame(Duration::from_millis(1)) {
            seen.push(f);
        }
        goaway = seen.iter().find(|f| f.kind == h2::GOAWAY).cloned();
        if goaway.is_some() {
            break;
        }
    }
    let goaway = goaway
        .or_else(|| raw.until(Duration::from_secs(5), &mut seen, |f| f.kind == h2::GOAWAY))
        .expect("GOAWAY");
    assert_eq!(
        goaway.error_code(),
        Some(h2::ENHANCE_YOUR_CALM),
        "{goaway:?}"
    );
    let line =
        s.gw.proc
            .wait_for_line("premature resets", Duration::from_secs(3))
            .unwrap_or_else(|| panic!("{:?}", s.gw.proc.seen));
    assert!(line.contains("of its 40 streams"), "{line}");
}

#[test]
fn an_idle_h2_connection_does_not_hold_a_stop_for_the_grace_period() {
    // The tests' grace is 5 s; an idle client that never answers the
    // graceful shutdown's PING must not keep the gateway that long.
    let mut s = gateway("h2-stop", "", "");
    let mut raw = Raw::connect(s.gw.port, &s.certs.ca).expect("h2 connect");
    raw.headers(1, &h2::request("GET", "/before", &[]), true)
        .expect("send");
    let mut seen = Vec::new();
    raw.until(Duration::from_secs(5), &mut seen, |f| f.kind == h2::HEADERS)
        .expect("answered");
    let t = Instant::now();
    let status =
        s.gw.proc
            .stop(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(8))
            .expect("the gateway stops");
    assert!(status.success(), "{status}");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "stopping took {:?} with an idle h2 connection open",
        t.elapsed()
    );
    // The client was told: GOAWAY with NO_ERROR naming the stream served.
    let goaway = raw
        .until(Duration::from_secs(2), &mut seen, |f| f.kind == h2::GOAWAY)
        .unwrap_or_else(|| panic!("no GOAWAY: {seen:?}"));
    assert_eq!(goaway.error_code(), Some(0));
    assert_eq!(goaway.payload[..4], 1u32.to_be_bytes());
}
