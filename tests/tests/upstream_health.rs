//! Upstream health end to end: the circuit breaker's limits answer 503 at
//! once and never reach the upstream, an active health check takes a
//! failing server out for every worker before a client meets it and
//! brings it back, consecutive 5xx answers eject a server for a while, and
//! the admin API and metrics show it.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU16, Ordering},
    },
    time::{Duration, Instant},
};

use gateway_tests::harness::{Setup, read_until_head, reason_of, setup_with};

/// A backend answering every request with a status the test sets, with
/// `connection: close`, recording the paths it got.
struct Flaky {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    paths: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Flaky {
    fn start(status: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let status = Arc::new(AtomicU16::new(status));
        let paths = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, p, s) = (status.clone(), paths.clone(), stop.clone());
        std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(120);
            while !s.load(Ordering::Relaxed) && Instant::now() < until {
                let Ok((mut c, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                };
                let _ = c.set_nonblocking(false);
                let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = Vec::new();
                // Answered even when the client stopped before a whole head.
                let _ = read_until_head(&mut c, &mut buf);
                let head = String::from_utf8_lossy(&buf);
                let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                p.lock().expect("paths").push(path);
                let code = st.load(Ordering::Relaxed);
                let _ = c.write_all(
                    format!(
                        "HTTP/1.1 {code} X\r\ncontent-length: 5\r\nconnection: close\r\n\r\nflaky"
                    )
                    .as_bytes(),
                );
            }
        });
        Self {
            addr,
            status,
            paths,
            stop,
        }
    }

    /// Requests it got other than health checks.
    fn requests(&self) -> usize {
        self.count(false)
    }

    fn checks(&self) -> usize {
        self.count(true)
    }

    /// Health checks (`/healthz`), or everything else.
    fn count(&self, checks: bool) -> usize {
        self.paths
            .lock()
            .expect("paths")
            .iter()
            .filter(|p| (*p == "/healthz") == checks)
            .count()
    }
}

impl Drop for Flaky {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn start(tag: &str, upstream: &str) -> Setup {
    let routes = format!(
        "{upstream}\n[[routes]]\npath_prefix = \"/pair\"\nupstream = \"pair\"\nauth = \"none\"\n"
    );
    setup_with(tag, "", "workers = 2", &routes, "", &[])
}

fn admin_get(s: &Setup, path: &str) -> String {
    let admin = s.gw.admin_addr().expect("admin address");
    let mut c = std::net::TcpStream::connect(admin).expect("admin");
    c.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .expect("send");
    let mut out = String::new();
    c.read_to_string(&mut out).expect("read");
    out
}

/// A GET of `path` answered 503 with `reason` at once (the circuit breaker,
/// not a timeout: well under the 3 s connect timeouts these tests set, with
/// room for a loaded machine).
fn refused_at_once(s: &Setup, path: &str, reason: &str) {
    let t = Instant::now();
    let r = s.get(path, "");
    assert_eq!(r.status, 503, "{}", r.head);
    assert_eq!(reason_of(&r), reason);
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn the_circuit_breaker_answers_503_at_once_and_spares_the_upstream() {
    let backend = gateway_tests::harness::Backend::start();
    let s = start(
        "breaker",
        &format!(
            "[[upstreams]]\nname = \"pair\"\nservers = [\"{}\"]\nresponse_timeout_ms = 5000\nmax_requests = 2\n\
             [[routes]]\npath_prefix = \"/slow\"\nupstream = \"pair\"\nauth = \"none\"\n",
            backend.addr
        ),
    );
    // Two slow requests hold both places.
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let mut c = s.client();
            c.send(b"GET /slow/1500 HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .expect("send");
            c
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(3);
    while backend.hits("/slow") < 2 {
        assert!(Instant::now() < deadline, "the slow requests never arrived");
        std::thread::sleep(Duration::from_millis(10));
    }
    refused_at_once(&s, "/pair/third", "upstream.max_requests");
    assert_eq!(
        backend.hits("/pair/third"),
        0,
        "the refused request reached the upstream"
    );
    for mut c in slow {
        assert_eq!(c.response("GET").expect("slow response").status, 200);
    }
    // The places came back.
    assert_eq!(s.get("/pair/fourth", "").status, 200);
    let metrics = admin_get(&s, "/metrics");
    assert!(
        metrics.contains(
            "gateway_upstream_overflow_total{upstream=\"pair\",limit=\"max_requests\"} 1\n"
        ),
        "{metrics}"
    );
}

#[test]
fn a_failing_health_check_takes_a_server_out_and_a_passing_one_brings_it_back() {
    let flaky = Flaky::start(503);
    let good = Flaky::start(200);
    let mut s = start(
        "health",
        &format!(
            "[[upstreams]]\nname = \"pair\"\nservers = [\"{}\", \"{}\"]\n\
             [upstreams.health_check]\npath = \"/healthz\"\ninterval_ms = 300\ntimeout_ms = 300\n\
             unhealthy_threshold = 2\nhealthy_threshold = 1\n\
             [upstreams.outlier]\nconsecutive_failures = 0\n",
            flaky.addr, good.addr
        ),
    );
    // The line naming the failing server (on a loaded machine the good
    // one may miss checks too, and come back).
    let deadline = Instant::now() + Duration::from_secs(6);
    let out = loop {
        let line =
            s.gw.proc
                .wait_for_line("taken out", Duration::from_secs(1))
                .unwrap_or_default();
        if line.contains(&flaky.addr.to_string()) {
            break line;
        }
        assert!(Instant::now() < deadline, "{:?}", s.gw.proc.seen);
    };
    assert!(out.contains("status 503"), "{out}");
    for i in 0..12 {
        assert_eq!(s.get(&format!("/pair/{i}"), "").status, 200);
    }
    assert_eq!(
        flaky.requests(),
        0,
        "a client request went to the server taken out"
    );
    let upstreams = admin_get(&s, "/upstreams");
    assert!(upstreams.contains("\"healthy\":false"), "{upstreams}");
    let metrics = admin_get(&s, "/metrics");
    assert!(
        metrics.contains(&format!(
            "gateway_upstream_server_healthy{{upstream=\"pair\",server=\"{}\"}} 0\n",
            flaky.addr
        )),
        "{metrics}"
    );
    // Healthy again: back in, and it gets requests.
    flaky.status.store(200, Ordering::Relaxed);
    s.gw.proc
        .wait_for_line("back in", Duration::from_secs(5))
        .unwrap_or_else(|| panic!("never back in: {:?}", s.gw.proc.seen));
    for i in 0..12 {
        assert_eq!(s.get(&format!("/pair/again/{i}"), "").status, 200);
    }
    assert!(
        flaky.requests() > 0,
        "the server never came back into rotation"
    );
    assert!(good.checks() > 0 && flaky.checks() >= 3);
}

#[test]
fn consecutive_5xx_eject_a_server_for_a_while() {
    let flaky = Flaky::start(500);
    let good = Flaky::start(200);
    let mut s = start(
        "outlier",
        &format!(
            "[[upstreams]]\nname = \"pair\"\nservers = [\"{}\", \"{}\"]\nretries = 0\n\
             [upstreams.outlier]\nconsecutive_failures = 3\nbase_ejection_ms = 4000\nmax_ejection_percent = 50\n",
            flaky.addr, good.addr
        ),
    );
    let mut fivexx = 0;
    for i in 0..10 {
        if s.get(&format!("/pair/{i}"), "").status == 500 {
            fivexx += 1;
        }
    }
    assert_eq!(fivexx, 3, "ejected after three 5xx in a row");
    let line =
        s.gw.proc
            .wait_for_line("ejected for", Duration::from_secs(2))
            .unwrap_or_default();
    assert!(line.contains(&flaky.addr.to_string()), "{line}");
    let before = flaky.requests();
    for i in 0..10 {
        assert_eq!(s.get(&format!("/pair/after/{i}"), "").status, 200);
    }
    assert_eq!(flaky.requests(), before, "an ejected server got requests");
    let metrics = admin_get(&s, "/metrics");
    assert!(
        metrics.contains(&format!(
            "gateway_upstream_ejections_total{{upstream=\"pair\",server=\"{}\"}} 1\n",
            flaky.addr
        )),
        "{metrics}"
    );
    // After its time it is tried again.
    let upstreams = admin_get(&s, "/upstreams");
    assert!(upstreams.contains("\"ejections\":1"), "{upstreams}");
    std::thread::sleep(Duration::from_millis(4100));
    for i in 0..4 {
        s.get(&format!("/pair/later/{i}"), "");
    }
    assert!(
        flaky.requests() > before,
        "never tried again after the ejection"
    );
}

/// Requests at `max_connects` wait while connects make progress (see
/// `pool.rs`); while they are stuck, the breaker answers at once.
#[test]
fn connects_past_max_connects_are_refused_at_once() {
    // A listener whose accept queue is full: the kernel drops further
    // SYNs, so a connect to it stays in progress until its timeout.
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    sock.listen(0).expect("listen");
    let stuck: SocketAddr = sock.local_addr().expect("addr").as_socket().expect("inet");
    let fillers: Vec<_> = (0..2)
        .filter_map(|_| {
            std::net::TcpStream::connect_timeout(&stuck, Duration::from_millis(300)).ok()
        })
        .collect();
    assert!(!fillers.is_empty(), "could not fill the accept queue");
    let s = start(
        "connects",
        &format!(
            "[[upstreams]]\nname = \"pair\"\nservers = [\"{stuck}\"]\nconnect_timeout_ms = 3000\n\
             retries = 0\nmax_connects = 1\n"
        ),
    );
    let mut first = s.client();
    first
        .send(b"GET /pair/first HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("send");
    // The breaker calls connects stuck once none ended for 200 ms: past
    // that (a property of time itself, not a wait for an event).
    std::thread::sleep(Duration::from_millis(300));
    refused_at_once(&s, "/pair/second", "upstream.max_connects");
    // The first one waited for its connect and timed out.
    let r = first.response("GET").expect("first response");
    assert_eq!(reason_of(&r), "upstream.timeout", "{}", r.head);
    drop(fillers);
}
