//! TLS to upstreams end to end, against a real rustls backend: verified
//! against the configured CA with SNI, sessions resumed across new
//! connections, kept-alive TLS connections pooled, health checks over TLS,
//! mutual TLS, and the handshakes that must fail (an untrusted chain, a
//! wrong name, a missing client certificate) never carrying a request.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use gateway_tests::harness::{
    Certs, Setup, TempDir, read_until_head, reason_of, setup_with, sha256_hex,
};
use rustls::{
    ServerConfig, ServerConnection,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};

/// One handshake as the backend saw it.
#[derive(Debug, Clone)]
struct Hello {
    sni: Option<String>,
    resumed: bool,
    client_cert: bool,
}

/// A TLS HTTP/1.1 backend, keep-alive, recording handshakes, failed
/// handshakes and request paths: `/big/<n>` answers n bytes, `/chunks/<n>`
/// n bytes chunked in 5,000-byte writes (records of their own), a request
/// with a body gets `received <n> <sha256>`, anything else `tls ok`.
struct TlsBackend {
    addr: SocketAddr,
    hellos: Arc<Mutex<Vec<Hello>>>,
    failed: Arc<Mutex<usize>>,
    paths: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl TlsBackend {
    fn start(certs: &Certs, require_client_cert: bool) -> Self {
        let (_, cert, key) = &certs.files[0];
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .expect("cert")
            .collect::<Result<_, _>>()
            .expect("cert");
        let key = PrivateKeyDer::from_pem_file(key).expect("key");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions");
        let builder = if require_client_cert {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(certs.ca.clone()).expect("CA");
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .expect("verifier");
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let config = Arc::new(builder.with_single_cert(chain, key).expect("server config"));
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let hellos = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(Mutex::new(0));
        let paths = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, f, p, s) = (hellos.clone(), failed.clone(), paths.clone(), stop.clone());
        std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(120);
            while !s.load(Ordering::Relaxed) && Instant::now() < until {
                let Ok((tcp, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                };
                let (config, h, f, p) = (config.clone(), h.clone(), f.clone(), p.clone());
                std::thread::spawn(move || serve(tcp, config, &h, &f, &p));
            }
        });
        Self {
            addr,
            hellos,
            failed,
            paths,
            stop,
        }
    }

    fn hellos(&self) -> Vec<Hello> {
        self.hellos.lock().expect("hellos").clone()
    }

    fn requests(&self, prefix: &str) -> usize {
        self.paths
            .lock()
            .expect("paths")
            .iter()
            .filter(|p| p.starts_with(prefix))
            .count()
    }
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(
    tcp: TcpStream,
    config: Arc<ServerConfig>,
    hellos: &Mutex<Vec<Hello>>,
    failed: &Mutex<usize>,
    paths: &Mutex<Vec<String>>,
) {
    let _ = tcp.set_nonblocking(false);
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
    let Ok(conn) = ServerConnection::new(config) else {
        return;
    };
    let mut s = rustls::StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        if s.conn.complete_io(&mut s.sock).is_err() {
            *failed.lock().expect("failed") += 1;
            return;
        }
    }
    hellos.lock().expect("hellos").push(Hello {
        sni: s.conn.server_name().map(str::to_owned),
        resumed: s.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
        client_cert: s.conn.peer_certificates().is_some(),
    });
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Some(end) = read_until_head(&mut s, &mut buf) else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
        paths.lock().expect("paths").push(path.clone());
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().to_owned())
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < length {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buf.drain(..length).collect();
        let n = |p: &str| path.strip_prefix(p).and_then(|v| v.parse::<usize>().ok());
        let sent = if let Some(n) = n("/pooled/big/") {
            s.write_all(format!("HTTP/1.1 200 OK\r\ncontent-length: {n}\r\n\r\n").as_bytes())
                .and_then(|()| s.write_all(&pattern(n)))
        } else if let Some(n) = n("/pooled/chunks/") {
            let mut r = s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
            for piece in pattern(n).chunks(5000) {
                r = r
                    .and_then(|()| s.write_all(format!("{:x}\r\n", piece.len()).as_bytes()))
                    .and_then(|()| s.write_all(piece))
                    .and_then(|()| s.write_all(b"\r\n"))
                    .and_then(|()| s.flush());
            }
            r.and_then(|()| s.write_all(b"0\r\n\r\n"))
        } else if length > 0 {
            let text = format!("received {} {}", body.len(), sha256_hex(&body));
            s.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{text}",
                    text.len()
                )
                .as_bytes(),
            )
        } else {
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\ntls ok")
        };
        if sent.and_then(|()| s.flush()).is_err() {
            return;
        }
    }
}

/// `n` bytes of a pattern that shows any misplaced byte.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// An upstream `name` over TLS to `backend`, routed at `/name`.
fn upstream(name: &str, backend: SocketAddr, tls: &str, extra: &str) -> String {
    format!(
        "[[upstreams]]\nname = \"{name}\"\nservers = [\"{backend}\"]\n{extra}\n[upstreams.tls]\n{tls}\n\
         [[routes]]\npath_prefix = \"/{name}\"\nupstream = \"{name}\"\nauth = \"none\"\n"
    )
}

fn start(tag: &str, upstreams: &str) -> Setup {
    setup_with(tag, "", "workers = 2", upstreams, "", &[])
}

#[test]
fn tls_upstreams_are_verified_resumed_pooled_and_checked() {
    let dir = TempDir::new("up-tls-certs");
    let certs = Certs::issue(&dir.0, &["backend.test"]);
    let backend = TlsBackend::start(&certs, false);
    let checked = TlsBackend::start(&certs, false);
    let tls = format!(
        "ca_file = \"{}\"\nserver_name = \"backend.test\"",
        certs.ca_pem.display()
    );
    let s = start(
        "up-tls",
        &[
            upstream("fresh", backend.addr, &tls, "idle_per_server = 0"),
            upstream("pooled", backend.addr, &tls, "max_requests = 64"),
            upstream(
                "checked",
                checked.addr,
                &tls,
                "[upstreams.health_check]\npath = \"/healthz\"\ninterval_ms = 300",
            ),
        ]
        .concat(),
    );
    // A new connection for each request: the first handshake is full,
    // later ones resume from the upstream's session cache.
    for i in 0..4 {
        let r = s.get(&format!("/fresh/{i}"), "");
        assert_eq!(r.status, 200, "{}", r.head);
        assert_eq!(r.body, b"tls ok");
    }
    let hellos = backend.hellos();
    assert_eq!(hellos.len(), 4, "{hellos:?}");
    assert!(
        hellos
            .iter()
            .all(|h| h.sni.as_deref() == Some("backend.test")),
        "{hellos:?}"
    );
    assert!(
        hellos.iter().skip(1).any(|h| h.resumed),
        "no session was resumed: {hellos:?}"
    );
    // Kept alive: one handshake for the requests of one client connection
    // (one worker), with large bodies both ways in records of every size.
    let c = &mut s.client();
    for (path, want) in [
        ("/pooled/a", b"tls ok".to_vec()),
        ("/pooled/big/150000", pattern(150_000)),
        ("/pooled/chunks/123457", pattern(123_457)),
    ] {
        c.send(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
            .expect("send");
        let r = c.response("GET").expect("response");
        assert_eq!(r.status, 200, "{path}: {}", r.head);
        assert!(r.body == want, "{path}: {} bytes differ", r.body.len());
    }
    let big = pattern(200_000);
    c.send(
        format!(
            "POST /pooled/upload HTTP/1.1\r\nHost: localhost\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\n\r\n",
            big.len()
        )
        .as_bytes(),
    )
    .expect("send head");
    c.send(&big).expect("send body");
    let r = c.response("POST").expect("upload response");
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        format!("received {} {}", big.len(), sha256_hex(&big))
    );
    assert_eq!(
        backend.hellos().len(),
        5,
        "the pooled requests did not share one TLS connection"
    );
    // Health checks over TLS.
    let deadline = Instant::now() + Duration::from_secs(3);
    while checked.requests("/healthz") < 2 {
        assert!(
            Instant::now() < deadline,
            "no health check over TLS arrived"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        checked
            .hellos()
            .iter()
            .all(|h| h.sni.as_deref() == Some("backend.test"))
    );
    assert_eq!(*backend.failed.lock().expect("failed"), 0);
}

#[test]
fn mutual_tls_and_the_handshakes_that_must_fail() {
    let dir = TempDir::new("up-mtls-certs");
    let certs = Certs::issue(&dir.0, &["backend.test", "gateway-client"]);
    let other_dir = TempDir::new("up-mtls-other");
    let other = Certs::issue(&other_dir.0, &["backend.test"]);
    let backend = TlsBackend::start(&certs, true);
    let ca = certs.ca_pem.display();
    let (_, client_cert, client_key) = &certs.files[1];
    let s = start(
        "up-mtls",
        &[
            upstream(
                "mutual",
                backend.addr,
                &format!(
                    "ca_file = \"{ca}\"\nserver_name = \"backend.test\"\nclient_cert = \"{}\"\nclient_key = \"{}\"",
                    client_cert.display(),
                    client_key.display()
                ),
                "",
            ),
            upstream(
                "nocert",
                backend.addr,
                &format!("ca_file = \"{ca}\"\nserver_name = \"backend.test\""),
                "",
            ),
            upstream(
                "untrusted",
                backend.addr,
                &format!(
                    "ca_file = \"{}\"\nserver_name = \"backend.test\"",
                    other.ca_pem.display()
                ),
                "",
            ),
            upstream(
                "wrongname",
                backend.addr,
                &format!("ca_file = \"{ca}\"\nserver_name = \"elsewhere.test\""),
                "",
            ),
        ]
        .concat(),
    );
    let r = s.get("/mutual/x", "");
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(backend.hellos().iter().all(|h| h.client_cert));
    for path in ["/nocert/x", "/untrusted/x", "/wrongname/x"] {
        let r = s.get(path, "");
        assert_eq!(r.status, 502, "{path}: {}", r.head);
        assert_eq!(reason_of(&r), "upstream.tls", "{path}");
        let first = path.split('/').nth(1).unwrap_or_default();
        assert_eq!(
            backend.requests(&format!("/{first}")),
            0,
            "{path} reached the backend"
        );
    }
    assert_eq!(backend.requests("/mutual"), 1);
}
