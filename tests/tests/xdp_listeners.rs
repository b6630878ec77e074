//! The listeners with XDP attached to `lo`, as `cargo xtask run` attaches
//! it (in a namespace of their own): the 308 listener answers although
//! `https_only` is on, and services of other processes on the gateway's
//! ports at other addresses, or on its plain-HTTP port before it started,
//! are never touched.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use gateway_tests::{
    NetNs, Running,
    harness::{Certs, TempDir},
    require_root, run_gateway_in,
};
use nix::sys::signal::Signal;

/// A neighbour's plain-HTTP service (a developer's `python -m http.server`):
/// answers every connection with `neighbour <addr>`; stops when dropped.
struct Neighbour {
    stop: Arc<AtomicBool>,
}

impl Neighbour {
    fn start(ns: &NetNs, addr: &str) -> Self {
        let listener = ns.run(|| TcpListener::bind(addr).expect("neighbour binds"));
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let me = addr.to_owned();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !st.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut buf = [0u8; 512];
                        let _ = c.read(&mut buf);
                        let body = format!("neighbour {me}");
                        let _ = write!(
                            c,
                            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self { stop }
    }
}

impl Drop for Neighbour {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A plain-HTTP GET from inside `ns`: the whole answer, or why none came.
fn plain_get(ns: &NetNs, addr: &str) -> Result<String, String> {
    let addr: SocketAddr = addr.parse().expect("address");
    ns.run(|| {
        let mut c = TcpStream::connect_timeout(&addr, Duration::from_millis(700))
            .map_err(|e| format!("connect: {e}"))?;
        c.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        c.write_all(b"GET /x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .map_err(|e| format!("send: {e}"))?;
        let mut out = String::new();
        c.read_to_string(&mut out)
            .map_err(|e| format!("read: {e}"))?;
        Ok(out)
    })
}

fn config(certs: &Certs, extra_listen: &str) -> String {
    format!(
        "[listen]\nhttps = \"127.0.0.1:8443\"\nplain_http_port = 8080\n{extra_listen}\n\n{certs}\n\
         [demo]\nlisten = \"127.0.0.1:8081\"\n\
         [[upstreams]]\nname = \"demo\"\nservers = [\"127.0.0.1:8081\"]\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"demo\"\nauth = \"none\"\n\
         [xdp]\ninterface = \"lo\"\nmode = \"skb\"\n",
        certs = certs.toml(),
    )
}

fn stop(mut gw: Running) {
    gw.stop(Signal::SIGTERM, Duration::from_secs(10))
        .expect("the gateway stops");
}

fn namespace(tag: &str) -> NetNs {
    NetNs::new(&format!("gwt-{tag}-{}", std::process::id() % 10_000)).expect("namespace")
}

#[test]
fn the_redirect_answers_with_xdp_attached_and_neighbours_are_untouched() {
    require_root();
    let ns = namespace("lsn-redir");
    let dir = TempDir::new("xdp-redirect");
    let certs = Certs::issue(&dir.0, &["localhost"]);
    // Another process's services on the gateway's two ports, at another
    // address of `lo`.
    let _plain = Neighbour::start(&ns, "127.0.0.2:8080");
    let _tls_port = Neighbour::start(&ns, "127.0.0.2:8443");
    let gw = run_gateway_in(
        &ns,
        &dir.0,
        &config(&certs, "https_only = true\nredirect_plain_http = true"),
    );
    assert!(
        gw.seen.iter().any(|l| l.contains("XDP attached to lo")),
        "XDP is not attached: {:?}",
        gw.seen
    );
    assert!(
        gw.seen
            .iter()
            .any(|l| l.contains("plain HTTP port 8080: answered with 308")),
        "{:?}",
        gw.seen
    );
    let answer = plain_get(&ns, "127.0.0.1:8080").expect("the 308 listener answers");
    assert!(answer.starts_with("HTTP/1.1 308"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("location: https://localhost:8443/x"),
        "{answer}"
    );
    // Plain HTTP to the neighbours, on the same ports: neither dropped
    // (8080) nor reset (8443, which XDP resets for the gateway's address).
    for addr in ["127.0.0.2:8080", "127.0.0.2:8443"] {
        let answer = plain_get(&ns, addr).unwrap_or_else(|e| panic!("{addr}: {e}"));
        assert!(answer.ends_with(&format!("neighbour {addr}")), "{answer}");
    }
    // While plain HTTP to the gateway's TLS port is still reset in XDP.
    let reset = plain_get(&ns, "127.0.0.1:8443");
    assert!(reset.is_err() || reset.as_deref() == Ok(""), "{reset:?}");
    stop(gw);
}

#[test]
fn https_only_drops_only_the_gateways_own_plain_port() {
    require_root();
    let ns = namespace("lsn-drop");
    let dir = TempDir::new("xdp-https-only");
    let certs = Certs::issue(&dir.0, &["localhost"]);
    let _other = Neighbour::start(&ns, "127.0.0.2:8080");
    let gw = run_gateway_in(&ns, &dir.0, &config(&certs, "https_only = true"));
    assert!(
        gw.seen.iter().any(|l| l.contains("XDP attached to lo")),
        "{:?}",
        gw.seen
    );
    let dropped = plain_get(&ns, "127.0.0.1:8080");
    assert!(
        dropped
            .as_ref()
            .is_err_and(|e| e.contains("timed out") || e.contains("connect")),
        "plain HTTP to the gateway's port was not dropped: {dropped:?}"
    );
    let answer = plain_get(&ns, "127.0.0.2:8080").expect("the neighbour answers");
    assert!(answer.ends_with("neighbour 127.0.0.2:8080"), "{answer}");
    stop(gw);

    // A service already on the gateway's own plain port is left alone,
    // and the log says why.
    let _mine = Neighbour::start(&ns, "127.0.0.1:8080");
    let gw = run_gateway_in(&ns, &dir.0, &config(&certs, "https_only = true"));
    assert!(
        gw.seen
            .iter()
            .any(|l| l.contains("another process listens there")),
        "{:?}",
        gw.seen
    );
    let answer = plain_get(&ns, "127.0.0.1:8080").expect("its service answers");
    assert!(answer.ends_with("neighbour 127.0.0.1:8080"), "{answer}");
    stop(gw);
}

/// Plain HTTP sent to the TLS port, as `plain_http_on_tls` says: reset in
/// XDP (the default, above), dropped, or passed to the gateway, which
/// answers 400 `tls.plain_http` in plain HTTP.
#[test]
fn plain_http_on_the_tls_port_is_dropped_or_answered_as_configured() {
    require_root();
    let ns = namespace("lsn-onTls");
    let dir = TempDir::new("xdp-on-tls");
    let certs = Certs::issue(&dir.0, &["localhost"]);
    let with = |action: &str| {
        config(&certs, "").replace(
            "mode = \"skb\"\n",
            &format!("mode = \"skb\"\nplain_http_on_tls = \"{action}\"\n"),
        )
    };
    let gw = run_gateway_in(&ns, &dir.0, &with("drop"));
    let dropped = plain_get(&ns, "127.0.0.1:8443");
    assert!(
        dropped.as_ref().is_err_and(|e| e.starts_with("read")),
        "connected, then nothing: {dropped:?}"
    );
    stop(gw);
    let gw = run_gateway_in(&ns, &dir.0, &with("pass"));
    let answer = plain_get(&ns, "127.0.0.1:8443").expect("the gateway answers");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("tls.plain_http"), "{answer}");
    stop(gw);
}

#[test]
fn http2_is_served_and_rapid_reset_refused_with_xdp_attached() {
    use gateway_tests::h2::{self, Raw};
    require_root();
    let ns = namespace("lsn-h2");
    let dir = TempDir::new("xdp-h2");
    let certs = Certs::issue(&dir.0, &["localhost"]);
    let gw = run_gateway_in(&ns, &dir.0, &config(&certs, "https_only = true"));
    assert!(
        gw.seen.iter().any(|l| l.contains("XDP attached to lo")),
        "XDP is not attached: {:?}",
        gw.seen
    );
    let ca = certs.ca_pem.display().to_string();
    let out = ns
        .exec(&[
            "curl",
            "-s",
            "--http2",
            "--max-time",
            "10",
            "--cacert",
            &ca,
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
            "https://localhost:8443/x",
        ])
        .expect("curl runs");
    assert_eq!(out.trim(), "2 200");
    // Rapid Reset from inside the namespace: the connection is closed with
    // ENHANCE_YOUR_CALM, as without XDP.
    let ca_der = certs.ca.clone();
    let goaway = ns.run(move || {
        let mut raw = Raw::connect(8443, &ca_der).expect("h2 connect");
        let mut out = Vec::new();
        for i in 0..400u32 {
            out.extend(h2::opened_and_reset(2 * i + 1, "/rapid"));
        }
        let _ = raw.send(&out);
        let mut seen = Vec::new();
        raw.until(Duration::from_secs(10), &mut seen, |f| f.kind == h2::GOAWAY)
    });
    let goaway = goaway.expect("GOAWAY");
    assert_eq!(
        goaway.error_code(),
        Some(h2::ENHANCE_YOUR_CALM),
        "{goaway:?}"
    );
    stop(gw);
}

#[test]
fn a_websocket_tunnel_passes_every_message_kind_with_xdp_attached() {
    require_root();
    let ns = namespace("lsn-ws");
    let dir = TempDir::new("xdp-ws");
    let certs = Certs::issue(&dir.0, &["localhost"]);
    let scripts = concat!(env!("CARGO_MANIFEST_DIR"), "/websocket");
    let log = dir.0.join("handshakes.jsonl");
    let mut echo = std::process::Command::new("ip")
        .args(["netns", "exec", ns.name(), "python3"])
        .arg(format!("{scripts}/echo.py"))
        .arg("8091")
        .arg(&log)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("the echo server starts (pip install websockets)");
    let listening = (0..150).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        ns.run(|| TcpStream::connect("127.0.0.1:8091").is_ok())
    });
    assert!(listening, "the echo server did not listen");
    // Routes match in order: the tunnel's goes before the catch-all.
    let routes = "[[upstreams]]\nname = \"ws\"\nservers = [\"127.0.0.1:8091\"]\n\
                  [[routes]]\npath_prefix = \"/ws/\"\nupstream = \"ws\"\nauth = \"none\"\nwebsocket = true\n\
                  [[routes]]\npath_prefix = \"/\"\n";
    let cfg = config(&certs, "https_only = true").replacen(
        "[[routes]]\npath_prefix = \"/\"\n",
        routes,
        1,
    );
    let gw = run_gateway_in(&ns, &dir.0, &cfg);
    assert!(
        gw.seen.iter().any(|l| l.contains("XDP attached to lo")),
        "XDP is not attached: {:?}",
        gw.seen
    );
    let ca = certs.ca_pem.display().to_string();
    let out = ns.exec(&[
        "python3",
        &format!("{scripts}/client.py"),
        "8443",
        &ca,
        "/ws/echo",
        "{}",
        "echo",
    ]);
    let _ = echo.kill();
    let _ = echo.wait();
    let out: serde_json::Value =
        serde_json::from_str(out.expect("the client runs").trim()).expect("client JSON");
    assert_eq!(
        out["echoed"],
        serde_json::json!(["hello", "0001ff", "fragmented", "big ok", "pong"]),
        "{out}"
    );
    assert_eq!(out["close_code"], 4000, "{out}");
    stop(gw);
}
