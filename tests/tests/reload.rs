//! Hot reload end to end: a load loop that never sees a failed or reset
//! request while the configuration is reloaded every second (by SIGHUP and
//! by `gateway reload` in turn), a certificate rotation new handshakes see,
//! a slow request crossing reloads, upstreams and the source policy
//! changing, and refused reloads that change nothing.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use gateway_tests::{
    connect_from, gateway_bin,
    harness::{Backend, Certs, Client, Gateway, TempDir, client_config, free_port},
};
use rustls_pki_types::{CertificateDer, pem::PemObject};

/// One of the two configurations the test moves between.
struct Variant<'a> {
    /// Certificate and key served by default.
    cert: &'a Path,
    key: &'a Path,
    /// Where `backend` points.
    upstream: SocketAddr,
    /// A route only this variant has.
    only: &'a str,
    /// `policy.deny` entries.
    deny: &'a str,
}

fn config(port: u16, v: &Variant<'_>) -> String {
    format!(
        r#"
[listen]
https = "127.0.0.1:{port}"
plain_http_port = {plain}

[runtime]
workers = 2

[limits]
header_timeout_ms = 2000
shutdown_grace_ms = 5000

[[tls.certificates]]
cert = "{cert}"
key = "{key}"

[[upstreams]]
name = "backend"
servers = ["{upstream}"]
response_timeout_ms = 5000

[[routes]]
path_prefix = "{only}"
upstream = "backend"
auth = "none"

[[routes]]
path_prefix = "/load"
upstream = "backend"
auth = "none"

[[routes]]
path_prefix = "/slow"
upstream = "backend"
auth = "none"

[xdp]
enabled = false

[policy]
deny = [{deny}]

[admin]
listen = "127.0.0.1:0"

[rate_limit.escalation]
rejections = 0
auth_failures = 0
attacks = 0
"#,
        plain = port + 1,
        cert = v.cert.display(),
        key = v.key.display(),
        upstream = v.upstream,
        only = v.only,
        deny = v.deny,
    )
}

/// What the load loop saw.
#[derive(Default)]
struct Seen {
    /// (when it finished, how long it took) of every answered request.
    answered: Vec<(Instant, Duration)>,
    /// Every failure: an error, a reset, or a status other than 200.
    failures: Vec<String>,
}

/// Clients (the IP name: every test leaf is valid for 127.0.0.1) doing
/// `GET /load` until `stop`, 10 requests per connection so both new
/// handshakes and kept-alive connections cross the reloads.
fn load_loop(
    port: u16,
    ca: CertificateDer<'static>,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
) {
    let cfg = client_config(&ca, &[&rustls::version::TLS13, &rustls::version::TLS12]);
    // Bounded even if the test never says stop.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let mut c = match Client::connect(port, "127.0.0.1", cfg.clone()) {
            Ok(c) => c,
            Err(e) => {
                seen.lock()
                    .expect("seen")
                    .failures
                    .push(format!("connect: {e}"));
                continue;
            }
        };
        for _ in 0..10 {
            let t = Instant::now();
            let r = c.get("/load");
            let mut s = seen.lock().expect("seen");
            match r {
                Ok(r) if r.status == 200 => s.answered.push((Instant::now(), t.elapsed())),
                Ok(r) => s.failures.push(format!("status {}: {}", r.status, r.head)),
                Err(e) => {
                    s.failures.push(format!("request: {e}"));
                    break;
                }
            }
        }
    }
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get((v.len() * 99 / 100).min(v.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

/// `gateway reload` against the test gateway: (exit code, stdout, stderr).
fn reload_cmd(gw: &Gateway) -> (Option<i32>, String, String) {
    let admin = gw.admin_addr().expect("admin address in the log");
    let out = Command::new(gateway_bin())
        .args(["reload", "--admin", &admin.to_string()])
        .output()
        .expect("run gateway reload");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn hup(gw: &Gateway) {
    let pid = nix::unistd::Pid::from_raw(gw.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
}

fn leaf(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).expect("leaf PEM")
}

/// A new TLS 1.3 connection to the gateway, trusting `ca`.
fn connect(port: u16, ca: &CertificateDer<'static>) -> Client {
    let cfg = client_config(ca, &[&rustls::version::TLS13]);
    Client::connect(port, "127.0.0.1", cfg).expect("handshake")
}

/// The leaf a new handshake gets.
fn served_leaf(port: u16, ca: &CertificateDer<'static>) -> CertificateDer<'static> {
    connect(port, ca).peer_cert().expect("a certificate")
}

/// Waits (SIGHUP is asynchronous) until a new handshake gets `want`.
fn wait_for_leaf(port: u16, ca: &CertificateDer<'static>, want: &CertificateDer<'static>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while served_leaf(port, ca) != *want {
        assert!(
            Instant::now() < deadline,
            "the rotated certificate was never served"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn status(port: u16, ca: &CertificateDer<'static>, path: &str) -> u16 {
    connect(port, ca).get(path).expect("response").status
}

#[test]
fn reloads_under_load_fail_no_request() {
    let dir = TempDir::new("reload-load");
    let certs = Certs::issue(&dir.0, &["localhost", "rotated.test"]);
    let (one, two) = (Backend::start(), Backend::start());
    let port = free_port();
    let (a_cert, a_key) = (&certs.files[0].1, &certs.files[0].2);
    let (b_cert, b_key) = (&certs.files[1].1, &certs.files[1].2);
    let a = Variant {
        cert: a_cert,
        key: a_key,
        upstream: one.addr,
        only: "/only-a",
        deny: "",
    };
    let b = Variant {
        cert: b_cert,
        key: b_key,
        upstream: two.addr,
        only: "/only-b",
        // Userspace enforcement (no XDP here): a second loopback source.
        deny: "\"127.0.0.2/32\"",
    };
    let mut gw = Gateway::start(dir, port, &config(port, &a));
    let path = gw.dir.0.join("gateway.toml");
    assert_eq!(served_leaf(port, &certs.ca), leaf(a_cert));

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let loops: Vec<_> = (0..3)
        .map(|_| {
            let (ca, stop, seen) = (certs.ca.clone(), stop.clone(), seen.clone());
            std::thread::spawn(move || load_loop(port, ca, stop, seen))
        })
        .collect();
    // Three seconds without reloads, for the figures to compare against.
    std::thread::sleep(Duration::from_secs(3));
    let reloads_began = Instant::now();

    // A slow request in flight across the reloads that follow.
    let ca = certs.ca.clone();
    let slow = std::thread::spawn(move || {
        let mut c = connect(port, &ca);
        let t = Instant::now();
        let r = c.get("/slow/2500").expect("slow response");
        (r.status, t.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));

    for round in 0..6 {
        let (next, prev, backend) = if round % 2 == 0 {
            (&b, &a, &two)
        } else {
            (&a, &b, &one)
        };
        std::fs::write(&path, config(port, next)).expect("write config");
        let before = backend.hits("/load");
        if round % 3 == 0 {
            // Lines of earlier reloads are read first, so the one below is this one's.
            let _ = gw.proc.wait_for_line("\0", Duration::from_millis(100));
            hup(&gw);
            assert!(
                gw.proc
                    .wait_for_line("reloaded ", Duration::from_secs(5))
                    .is_some(),
                "no reload logged after SIGHUP: {:?}",
                gw.proc.seen
            );
        } else {
            let (code, out, err) = reload_cmd(&gw);
            assert_eq!(code, Some(0), "gateway reload: {out}{err}");
            assert!(out.starts_with("reloaded "), "{out}");
            assert!(out.contains("certificates re-read: 1"), "{out}");
        }
        // New handshakes get the new certificate; the new route answers,
        // the other variant's is gone; requests reach the new upstream.
        wait_for_leaf(port, &certs.ca, &leaf(next.cert));
        assert_eq!(status(port, &certs.ca, next.only), 200);
        assert_eq!(status(port, &certs.ca, prev.only), 404);
        let deadline = Instant::now() + Duration::from_secs(3);
        while backend.hits("/load") == before {
            assert!(
                Instant::now() < deadline,
                "round {round}: no request reached the new upstream"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // The source policy follows: 127.0.0.2 is refused only under `b`.
        let from_two = connect_from(
            IpAddr::from([127, 0, 0, 2]),
            SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(2),
        )
        .and_then(|tcp| {
            Client::over(
                tcp,
                "127.0.0.1",
                client_config(&certs.ca, &[&rustls::version::TLS13]),
            )
        })
        .and_then(|mut c| c.get("/load"));
        assert_eq!(
            from_two.is_ok(),
            next.deny.is_empty(),
            "round {round}: 127.0.0.2 against deny [{}]: {:?}",
            next.deny,
            from_two.map(|r| r.status)
        );
        let spent = reloads_began.elapsed();
        let due = Duration::from_secs(round + 1);
        if spent < due {
            std::thread::sleep(due - spent);
        }
    }
    let reloads_ended = Instant::now();
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.join().expect("load loop");
    }
    let (slow_status, slow_took) = slow.join().expect("slow request");

    let seen = seen.lock().expect("seen");
    let split = |during: bool| -> Vec<Duration> {
        seen.answered
            .iter()
            .filter(|(at, _)| (*at >= reloads_began && *at <= reloads_ended) == during)
            .map(|(_, d)| *d)
            .collect()
    };
    let (quiet, busy) = (split(false), split(true));
    println!(
        "reload test: {} requests without reloads (p99 {:?}), {} during 6 reloads in {:?} (p99 {:?}), {} failed",
        quiet.len(),
        p99(quiet.clone()),
        busy.len(),
        reloads_ended - reloads_began,
        p99(busy.clone()),
        seen.failures.len()
    );
    assert!(
        seen.failures.is_empty(),
        "failed requests during reloads: {:?}",
        &seen.failures[..seen.failures.len().min(5)]
    );
    assert!(busy.len() > 50, "the load loop barely ran: {}", busy.len());
    assert_eq!(slow_status, 200, "the slow request crossing reloads");
    assert!(slow_took >= Duration::from_millis(2500), "{slow_took:?}");
    assert!(
        one.hits("/slow/2500") == 1,
        "the slow request went to its first upstream"
    );
}

#[test]
fn refused_reloads_change_nothing() {
    let dir = TempDir::new("reload-refused");
    let certs = Certs::issue(&dir.0, &["localhost"]);
    let backend = Backend::start();
    let port = free_port();
    let a = Variant {
        cert: &certs.files[0].1,
        key: &certs.files[0].2,
        upstream: backend.addr,
        only: "/only-a",
        deny: "",
    };
    let good = config(port, &a);
    let mut gw = Gateway::start(dir, port, &good);
    let path = gw.dir.0.join("gateway.toml");

    let refused = |gw: &Gateway, text: &str| -> String {
        std::fs::write(&path, text).expect("write config");
        let (code, out, err) = reload_cmd(gw);
        assert_eq!(code, Some(1), "accepted:\n{text}\n{out}");
        assert!(err.starts_with("gateway: error: reload refused: "), "{err}");
        assert_eq!(
            status(port, &certs.ca, "/only-a"),
            200,
            "the old config stopped serving"
        );
        err
    };
    // A route naming an unknown upstream: file and line.
    let err = refused(
        &gw,
        &good.replace(
            "path_prefix = \"/only-a\"\nupstream = \"backend\"",
            "path_prefix = \"/only-a\"\nupstream = \"nope\"",
        ),
    );
    assert!(err.contains("gateway.toml:"), "{err}");
    assert!(err.contains("routes[0].upstream"), "{err}");
    // Broken TOML.
    let err = refused(&gw, &format!("{good}\n[limits\n"));
    assert!(err.contains("gateway.toml"), "{err}");
    // A certificate that is not there: the path, and still the old one served.
    let missing = good.replace(&a.cert.display().to_string(), "/nonexistent/cert.pem");
    let err = refused(&gw, &missing);
    assert!(err.contains("/nonexistent/cert.pem"), "{err}");
    assert_eq!(served_leaf(port, &certs.ca), leaf(a.cert));
    // Valid changes (a deny CIDR that would refuse this very client, a new
    // route) beside one failing file: refused whole, none of them applied.
    let combined = config(
        port,
        &Variant {
            cert: Path::new("/nonexistent/cert.pem"),
            deny: "\"127.0.0.1/32\"",
            only: "/only-b",
            ..a
        },
    );
    let err = refused(&gw, &combined);
    assert!(err.contains("/nonexistent/cert.pem"), "{err}");
    assert_eq!(
        status(port, &certs.ca, "/only-b"),
        404,
        "the new route was applied"
    );
    assert_eq!(served_leaf(port, &certs.ca), leaf(a.cert));
    // A listener change needs a restart (to a port that is not the plain
    // one, `port + 1`, which free_port may hand out next).
    let other = std::iter::repeat_with(free_port)
        .find(|&p| p != port + 1)
        .expect("a free port");
    let err = refused(
        &gw,
        &good.replace(&format!("127.0.0.1:{port}"), &format!("127.0.0.1:{other}")),
    );
    assert!(err.contains("listen.https changed"), "{err}");
    assert!(err.contains("restart"), "{err}");
    // SIGHUP with a broken file: logged, nothing changes.
    std::fs::write(&path, format!("{good}\n[limits\n")).expect("write config");
    hup(&gw);
    assert!(
        gw.proc
            .wait_for_line("reload refused", Duration::from_secs(5))
            .is_some(),
        "{:?}",
        gw.proc.seen
    );
    assert_eq!(status(port, &certs.ca, "/only-a"), 200);
    // A Redis URL with a password and the wrong scheme: refused, and the
    // password is neither in the answer nor in the log.
    let err = refused(
        &gw,
        &format!(
            "{good}
[cluster]
redis = \"rediss://:hunter2-secret@127.0.0.1:6379/0\"
"
        ),
    );
    assert!(err.contains("cluster.redis"), "{err}");
    assert!(
        !err.contains("hunter2"),
        "the password is in the answer: {err}"
    );
    let logged = gw
        .proc
        .wait_for_line("cluster.redis", Duration::from_secs(5));
    assert!(logged.is_some(), "{:?}", gw.proc.seen);
    assert!(
        gw.proc.seen.iter().all(|l| !l.contains("hunter2")),
        "the password is in the log: {:?}",
        gw.proc.seen
    );
    // Fixed, it loads.
    std::fs::write(&path, &good).expect("write config");
    let (code, out, err) = reload_cmd(&gw);
    assert_eq!(code, Some(0), "{out}{err}");
}
