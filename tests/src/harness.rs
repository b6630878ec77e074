//! The proxy's end-to-end harness: certificates from a test CA, a real
//! backend that records what reaches it, the gateway binary run with a
//! config file, and a TLS client speaking raw HTTP/1.1.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use rustls::pki_types::{CertificateDer, ServerName};

use crate::{Running, gateway_bin};

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A fresh directory under the system temp dir.
    pub fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("gwtest-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A test CA and leaf certificates for several names.
pub struct Certs {
    /// The CA certificate (DER), to trust in clients.
    pub ca: CertificateDer<'static>,
    /// PEM paths per name: (cert, key).
    pub files: Vec<(String, PathBuf, PathBuf)>,
    /// The CA certificate as a PEM file (for `ca_file` settings).
    pub ca_pem: PathBuf,
}

impl Certs {
    /// Issues a leaf for each name (each also valid for 127.0.0.1).
    pub fn issue(dir: &Path, names: &[&str]) -> Self {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "gateway test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA cert");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let mut files = Vec::new();
        for name in names {
            let key = rcgen::KeyPair::generate().expect("leaf key");
            let params =
                rcgen::CertificateParams::new(vec![name.to_string(), "127.0.0.1".to_string()])
                    .expect("leaf params");
            let cert = params.signed_by(&key, &issuer).expect("leaf cert");
            let cp = dir.join(format!("{name}.crt"));
            let kp = dir.join(format!("{name}.key"));
            std::fs::write(&cp, cert.pem()).expect("write cert");
            std::fs::write(&kp, key.serialize_pem()).expect("write key");
            files.push((name.to_string(), cp, kp));
        }
        let ca_pem = dir.join("ca.pem");
        std::fs::write(&ca_pem, ca_cert.pem()).expect("write CA");
        Self {
            ca: ca_cert.der().clone(),
            files,
            ca_pem,
        }
    }

    /// The `[[tls.certificates]]` entries: the first name is the default.
    pub fn toml(&self) -> String {
        let mut s = String::new();
        for (i, (name, c, k)) in self.files.iter().enumerate() {
            let names = if i == 0 {
                String::new()
            } else {
                format!("\"{name}\"")
            };
            s.push_str(&format!(
                "[[tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"\nnames = [{names}]\n",
                c.display(),
                k.display()
            ));
        }
        s
    }
}

/// Ports handed out: below the kernel's ephemeral range (32768 and up,
/// where every outgoing connection takes its local port), so no client
/// socket of any test can hold one between its check here and the bind
/// that uses it; each at most once per test process, starting at a place
/// drawn from the process id (test binaries run one after the other).
const TEST_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A port nothing listens on, this process has not handed out before, and
/// no outgoing connection can take.
pub fn free_port() -> u16 {
    use std::sync::atomic::AtomicU16;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let span = TEST_PORTS.end - TEST_PORTS.start;
    let seed = (std::process::id() % u32::from(span)) as u16;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = TEST_PORTS.start + (seed.wrapping_add(n)) % span;
        // Free now on both loopbacks (nobody else listens there).
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("::1", port)).is_ok()
        {
            return port;
        }
    }
    panic!("no free port in {TEST_PORTS:?}");
}

/// One request as the backend received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// The head, as text.
    pub head: String,
    /// Body bytes after de-chunking.
    pub body_len: u64,
    /// SHA-256 of those bytes, hex: proof of what arrived, byte for byte.
    pub body_sha256: String,
    /// Whether the body arrived chunked.
    pub chunked: bool,
    /// The upstream connection's client port (same port = same connection).
    pub conn_port: u16,
}

/// A real HTTP/1.1 backend on loopback with behaviours chosen by path:
/// `/slow/<ms>` waits, `/chunked` answers chunked, `/bytes/<n>` sends n
/// bytes, `/bad/cl-te` and `/bad/cl` answer with broken framing,
/// `/bad/status/<code>` answers with that status code as written,
/// `/then-close` closes the connection 50 ms after answering,
/// `/close-twice` answers with `Connection: close` then
/// `Connection: keep-alive` and keeps reading (recording anything sent on
/// that connection afterwards) before it closes, a path ending in `/drop`
/// closes without answering, `/extra-bytes` sends bytes beyond its
/// response, anything else echoes what it received.
pub struct Backend {
    /// Its address.
    pub addr: SocketAddr,
    /// What it received, in order.
    pub received: Arc<Mutex<Vec<Received>>>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    closed: Arc<std::sync::atomic::AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Backend {
    /// Starts it on a free loopback port.
    pub fn start() -> Self {
        Self::start_at("127.0.0.1:0".parse().expect("address"))
    }

    /// Starts it on `addr` (in the caller's network namespace).
    pub fn start_at(addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).expect("backend listener");
        let addr = listener.local_addr().expect("addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let closed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (r, s, a, c) = (
            received.clone(),
            stop.clone(),
            accepted.clone(),
            closed.clone(),
        );
        std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(300);
            while !s.load(Ordering::Relaxed) && Instant::now() < until {
                match listener.accept() {
                    Ok((conn, peer)) => {
                        a.fetch_add(1, Ordering::Relaxed);
                        let _ = conn.set_nonblocking(false);
                        let (r, c) = (r.clone(), c.clone());
                        std::thread::spawn(move || {
                            backend_conn(conn, peer.port(), r);
                            // The connection is closed by now (dropped).
                            c.fetch_add(1, Ordering::Relaxed);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Self {
            addr,
            received,
            accepted,
            closed,
            stop,
        }
    }

    /// Connections it has closed (or seen closed) so far.
    pub fn closed(&self) -> usize {
        self.closed.load(Ordering::Relaxed)
    }

    /// Connections it accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    /// The targets of the requests it received so far, in order.
    pub fn paths(&self) -> Vec<String> {
        self.received()
            .iter()
            .map(|r| r.head.split_whitespace().nth(1).unwrap_or("").to_owned())
            .collect()
    }

    /// Requests received so far whose path starts with `prefix`.
    pub fn hits(&self, prefix: &str) -> usize {
        self.paths()
            .iter()
            .filter(|p| p.starts_with(prefix))
            .count()
    }

    /// What it received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Waits until `done()` holds, polling, for at most `within` (a bound for
/// a loaded machine, not a timing the test relies on); panics naming
/// `what` if it never does.
pub fn wait_until(what: &str, within: Duration, done: impl Fn() -> bool) {
    let until = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < until, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A route `/shop` whose WAF blocks, for tests that need refusals with a
/// reason code that passes no authentication.
pub const SHOP_ROUTE: &str = r#"
[[routes]]
path_prefix = "/shop"
upstream = "backend"
auth = "none"
waf = "block"
"#;

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of `bytes`, hex, to compare with [`Received::body_sha256`].
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// Reads into `buf` until it holds a whole HTTP head; the head's length
/// (through the blank line), or `None` when the peer stopped first.
pub fn read_until_head(conn: &mut impl Read, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(p + 4);
        }
        let mut tmp = [0u8; 65536];
        match conn.read(&mut tmp) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
}

fn fill(conn: &mut TcpStream, buf: &mut Vec<u8>, want: usize) -> bool {
    while buf.len() < want {
        let mut tmp = [0u8; 65536];
        match conn.read(&mut tmp) {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
    true
}

/// A deliberately simple, independent parser (not the gateway's).
fn backend_conn(mut conn: TcpStream, port: u16, received: Arc<Mutex<Vec<Received>>>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = Vec::new();
    loop {
        let Some(end) = read_until_head(&mut conn, &mut buf) else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let lower = head.to_ascii_lowercase();
        let cl = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok());
        let chunked = lower
            .lines()
            .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
        let mut body_len = 0u64;
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        if chunked {
            loop {
                let found = loop {
                    if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
                        break Some(p);
                    }
                    let mut tmp = [0u8; 65536];
                    match conn.read(&mut tmp) {
                        Ok(0) | Err(_) => break None,
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    }
                };
                let Some(line_end) = found else { return };
                let size =
                    usize::from_str_radix(String::from_utf8_lossy(&buf[..line_end]).trim(), 16)
                        .unwrap_or(0);
                buf.drain(..line_end + 2);
                if size == 0 {
                    // Trailers end with an empty line.
                    let Some(t) = read_until_head_or_crlf(&mut conn, &mut buf) else {
                        return;
                    };
                    buf.drain(..t);
                    break;
                }
                if !fill(&mut conn, &mut buf, size + 2) {
                    return;
                }
                digest.update(&buf[..size]);
                buf.drain(..size + 2);
                body_len += size as u64;
            }
        } else if let Some(n) = cl {
            // Stream big bodies through without holding them.
            let mut left = n;
            while left > 0 {
                if buf.is_empty() && !fill(&mut conn, &mut buf, 1) {
                    return;
                }
                let take = buf.len().min(left);
                digest.update(&buf[..take]);
                buf.drain(..take);
                left -= take;
            }
            body_len = n as u64;
        }
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
        if let Ok(mut r) = received.lock() {
            r.push(Received {
                head: head.clone(),
                body_len,
                body_sha256: hex(digest.finish().as_ref()),
                chunked,
                conn_port: port,
            });
        }
        if path.ends_with("/drop") {
            return;
        }
        let ok = respond(&mut conn, &path, &head, body_len);
        // `/until-close` ends its body by closing.
        if !ok || lower.contains("connection: close") || path == "/until-close" {
            return;
        }
        if path == "/close-twice" {
            // It said close: a gateway that honours that sends nothing
            // more here. Anything that arrives is recorded, then dropped.
            let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
            if read_until_head(&mut conn, &mut buf).is_some() {
                let head = String::from_utf8_lossy(&buf).into_owned();
                if let Ok(mut r) = received.lock() {
                    r.push(Received {
                        head,
                        body_len: 0,
                        body_sha256: String::new(),
                        chunked: false,
                        conn_port: port,
                    });
                }
            }
            return;
        }
        if path == "/then-close" {
            // Like a backend whose keep-alive timeout is short: close while
            // the gateway holds this connection in its pool.
            std::thread::sleep(Duration::from_millis(50));
            return;
        }
    }
}

fn read_until_head_or_crlf(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if buf.starts_with(b"\r\n") {
            return Some(2);
        }
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(p + 4);
        }
        let mut tmp = [0u8; 4096];
        match conn.read(&mut tmp) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
}

fn respond(conn: &mut TcpStream, path: &str, head: &str, body_len: u64) -> bool {
    if let Some(ms) = path
        .strip_prefix("/slow/")
        .and_then(|v| v.parse::<u64>().ok())
    {
        std::thread::sleep(Duration::from_millis(ms));
    }
    let reply = if path == "/chunked" {
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n".to_owned()
    } else if path == "/until-close" {
        // No length and no chunks: the body ends when the connection does.
        "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nhello until close".to_owned()
    } else if path == "/bad/cl-te" {
        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_owned()
    } else if let Some(code) = path.strip_prefix("/bad/status/") {
        format!("HTTP/1.1 {code} Odd\r\ncontent-length: 2\r\n\r\nok")
    } else if path.ends_with("/fingerprint") {
        // What an nginx/PHP backend says about itself, and headers the
        // gateway replaces.
        "HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nX-Powered-By: PHP/8.2.7\r\nX-AspNet-Version: 4.0.30319\r\nX-Frame-Options: ALLOWALL\r\nContent-Security-Policy: default-src *\r\nCache-Control: public, max-age=3600\r\nAccess-Control-Allow-Origin: *\r\ncontent-length: 2\r\n\r\nok".to_owned()
    } else if path == "/extra-bytes" {
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokJUNK".to_owned()
    } else if path == "/close-twice" {
        "HTTP/1.1 200 OK\r\nconnection: close\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nok".to_owned()
    } else if path == "/bad/cl" {
        "HTTP/1.1 200 OK\r\ncontent-length: 5x\r\n\r\nhello".to_owned()
    } else if let Some(n) = path
        .strip_prefix("/bytes/")
        .and_then(|v| v.parse::<usize>().ok())
    {
        let mut r = format!("HTTP/1.1 200 OK\r\ncontent-length: {n}\r\n\r\n");
        r.push_str(&"x".repeat(n));
        r
    } else {
        let body = format!("received {body_len} bytes\n");
        let _ = head;
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nx-upstream-hsts-test: 1\r\n\r\n{body}",
            body.len()
        )
    };
    conn.write_all(reply.as_bytes()).is_ok()
}

/// The gateway binary running a config file; stopped with SIGTERM on drop.
pub struct Gateway {
    /// The process.
    pub proc: Running,
    /// Its HTTPS port.
    pub port: u16,
    /// Its scratch directory (config, state).
    pub dir: TempDir,
}

impl Gateway {
    /// Starts `gateway run` with `config` (which must listen on `port`)
    /// and waits until it serves.
    pub fn start(dir: TempDir, port: u16, config: &str) -> Self {
        Self::start_under(dir, port, config, &[])
    }

    /// Like [`Gateway::start`], run under a wrapper command (e.g.
    /// `["prlimit", "--nofile=128:128", "--"]`).
    pub fn start_under(dir: TempDir, port: u16, config: &str, wrapper: &[&str]) -> Self {
        let path = dir.0.join("gateway.toml");
        std::fs::write(&path, config).expect("write config");
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(gateway_bin());
                c
            }
            None => Command::new(gateway_bin()),
        };
        cmd.arg("run")
            .arg("--config")
            .arg(&path)
            .env("GATEWAY_STATE_DIR", dir.0.join("state"));
        let mut proc = Running::spawn(cmd);
        assert!(
            proc.wait_for_line("running;", Duration::from_secs(15))
                .is_some(),
            "gateway did not start: {:?}",
            proc.seen
        );
        Self { proc, port, dir }
    }

    /// The gateway's PID.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// The admin API's `/metrics` text.
    pub fn metrics_text(&self) -> String {
        use std::io::{Read as _, Write as _};
        let admin = self.admin_addr().expect("admin API address in the log");
        let mut s = TcpStream::connect(admin).expect("admin");
        s.write_all(
            format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .expect("send");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        out
    }

    /// The process's resident memory in KiB.
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .ok()
            .and_then(|st| {
                st.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// The admin API's address, from the start-up log.
    pub fn admin_addr(&self) -> Option<std::net::SocketAddr> {
        self.proc.seen.iter().find_map(|l| {
            l.split("admin API on http://")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
    }
}

/// A TLS client speaking raw HTTP/1.1.
pub struct Client {
    /// The TLS stream.
    pub tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    buf: Vec<u8>,
}

/// A response as the client got it.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// The head, as text (lowercase header names).
    pub head: String,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl Response {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

/// A client TLS configuration trusting `ca`.
pub fn client_config(
    ca: &CertificateDer<'static>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).expect("CA");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

impl Client {
    /// Connects to 127.0.0.1:`port` asking for `sni`.
    pub fn connect(port: u16, sni: &str, cfg: Arc<rustls::ClientConfig>) -> std::io::Result<Self> {
        Self::over(TcpStream::connect(("127.0.0.1", port))?, sni, cfg)
    }

    /// TLS over a connected socket (e.g. one bound to a chosen source).
    pub fn over(
        tcp: TcpStream,
        sni: &str,
        cfg: Arc<rustls::ClientConfig>,
    ) -> std::io::Result<Self> {
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        let name = ServerName::try_from(sni.to_owned()).map_err(std::io::Error::other)?;
        let conn = rustls::ClientConnection::new(cfg, name).map_err(std::io::Error::other)?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        // Drive the handshake now so errors surface here.
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        Ok(Self {
            tls,
            buf: Vec::new(),
        })
    }

    /// The leaf certificate the server presented.
    pub fn peer_cert(&self) -> Option<CertificateDer<'static>> {
        self.tls
            .conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.clone().into_owned())
    }

    /// Sends a TLS close_notify alert, then `after` raw on the socket
    /// (bytes the peer must ignore once the TLS stream has ended).
    pub fn close_notify_then(&mut self, pause: Duration, after: &[u8]) -> std::io::Result<()> {
        self.tls.conn.send_close_notify();
        while self.tls.conn.wants_write() {
            self.tls.conn.write_tls(&mut self.tls.sock)?;
        }
        std::thread::sleep(pause);
        self.tls.sock.write_all(after)
    }

    /// Sends raw bytes.
    pub fn send(&mut self, raw: &[u8]) -> std::io::Result<()> {
        self.tls.write_all(raw)?;
        self.tls.flush()
    }

    fn fill(&mut self) -> std::io::Result<bool> {
        let mut tmp = [0u8; 65536];
        if !self.tls.conn.is_handshaking() {
            return self.fill_without_writing(&mut tmp);
        }
        match self.tls.read(&mut tmp) {
            Ok(0) => Ok(false),
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Reads after the handshake without flushing what a failed write
    /// left: a server that refuses a request part way answers, then closes
    /// on the rest of the body, and the answer is still there to read.
    fn fill_without_writing(&mut self, tmp: &mut [u8]) -> std::io::Result<bool> {
        loop {
            match self.tls.conn.reader().read(tmp) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    return Ok(true);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
                Err(e) => return Err(e),
            }
            if self.tls.conn.read_tls(&mut self.tls.sock)? == 0 {
                return Ok(false);
            }
            self.tls
                .conn
                .process_new_packets()
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        }
    }

    /// Sends `GET path` for Host localhost and reads the response.
    pub fn get(&mut self, path: &str) -> std::io::Result<Response> {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())?;
        self.response("GET")
    }

    /// Reads one response (for a request with method `method`).
    pub fn response(&mut self, method: &str) -> std::io::Result<Response> {
        let end = loop {
            if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            if !self.fill()? {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end);
        let status: u16 = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let lower = head.to_ascii_lowercase();
        let cl = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok());
        let chunked = lower.contains("transfer-encoding: chunked");
        let mut body = Vec::new();
        if method == "HEAD" || status == 204 || status == 304 || (100..200).contains(&status) {
        } else if chunked {
            loop {
                let line_end = loop {
                    if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break p;
                    }
                    if !self.fill()? {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                };
                let size = usize::from_str_radix(
                    String::from_utf8_lossy(&self.buf[..line_end]).trim(),
                    16,
                )
                .unwrap_or(0);
                self.buf.drain(..line_end + 2);
                while self.buf.len() < size + 2 {
                    if !self.fill()? {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                }
                body.extend_from_slice(&self.buf[..size]);
                if size == 0 {
                    // Trailers: up to the empty line.
                    loop {
                        if self.buf.starts_with(b"\r\n") {
                            self.buf.drain(..2);
                            break;
                        }
                        if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            self.buf.drain(..p + 4);
                            break;
                        }
                        if !self.fill()? {
                            return Err(std::io::ErrorKind::UnexpectedEof.into());
                        }
                    }
                    break;
                }
                self.buf.drain(..size + 2);
            }
        } else if let Some(n) = cl {
            while self.buf.len() < n {
                if !self.fill()? {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
            body = self.buf.drain(..n).collect();
        } else {
            while self.fill()? {}
            body = std::mem::take(&mut self.buf);
        }
        Ok(Response {
            status,
            head: lower,
            body,
        })
    }

    /// Whether response bytes (or EOF) arrive within `within`; the bytes
    /// are kept for [`Client::response`].
    pub fn answered_within(&mut self, within: Duration) -> bool {
        if !self.buf.is_empty() {
            return true;
        }
        let _ = self.tls.sock.set_read_timeout(Some(within));
        let answered = match self.fill() {
            Ok(_) => true,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        };
        let _ = self
            .tls
            .sock
            .set_read_timeout(Some(Duration::from_secs(10)));
        answered
    }

    /// Whether the server closed the connection (EOF) within `within`.
    pub fn closed_within(&mut self, within: Duration) -> bool {
        let _ = self.tls.sock.set_read_timeout(Some(within));
        let mut tmp = [0u8; 1024];
        loop {
            match self.tls.read(&mut tmp) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return false;
                }
                Err(_) => return true,
            }
        }
    }
}

/// A gateway in front of a recording backend, with its certificates.
pub struct Setup {
    /// The gateway.
    pub gw: Gateway,
    /// The default backend.
    pub backend: Backend,
    /// The test CA and leaves.
    pub certs: Certs,
    /// The plain-HTTP port.
    pub plain_port: u16,
}

/// A gateway with the test config; `extra` goes into `[limits]`.
pub fn setup(tag: &str, extra: &str) -> Setup {
    setup_full(tag, extra, "workers = 2", "")
}

/// `limits` goes into `[limits]`, `runtime` into `[runtime]`, `tail` at the end.
pub fn setup_full(tag: &str, extra: &str, runtime: &str, tail: &str) -> Setup {
    setup_with(tag, extra, runtime, "", tail, &[])
}

/// The short limits the tests use, each left out when `extra` sets it.
const TEST_LIMITS: [&str; 3] = [
    "header_timeout_ms = 800",
    "body_timeout_ms = 3000",
    "shutdown_grace_ms = 5000",
];

/// Like [`setup_full`]; `routes` (upstreams and routes) go before the
/// catch-all routes, and the gateway runs under `wrapper` (e.g. prlimit).
pub fn setup_with(
    tag: &str,
    extra: &str,
    runtime: &str,
    routes: &str,
    tail: &str,
    wrapper: &[&str],
) -> Setup {
    let dir = TempDir::new(tag);
    let certs = Certs::issue(&dir.0, &["localhost", "api.test", "other.test"]);
    let backend = Backend::start();
    // The kernel may hand the same free port out twice: draw until distinct.
    let port = free_port();
    let plain_port = std::iter::repeat_with(free_port)
        .find(|p| *p != port)
        .unwrap_or(port + 1);
    let closed = std::iter::repeat_with(free_port)
        .find(|p| *p != port && *p != plain_port)
        .unwrap_or(port + 2);
    let limits: Vec<&str> = TEST_LIMITS
        .iter()
        .copied()
        .filter(|l| {
            let key = l.split(' ').next().unwrap_or_default();
            !extra.lines().any(|e| e.trim_start().starts_with(key))
        })
        .collect();
    let config = format!(
        r#"
[listen]
https = "127.0.0.1:{port}"
plain_http_port = {plain_port}
redirect_plain_http = true

[runtime]
{runtime}

[limits]
{limits}
{extra}

{certs}

[[upstreams]]
name = "backend"
servers = ["{backend}"]
response_timeout_ms = 700

[[upstreams]]
name = "down"
servers = ["127.0.0.1:{closed}"]

[[upstreams]]
name = "mixed"
servers = ["127.0.0.1:{closed}", "{backend}"]

{routes}

[[routes]]
path_prefix = "/down"
upstream = "down"
auth = "none"

[[routes]]
path_prefix = "/mixed"
upstream = "mixed"
auth = "none"

[[routes]]
path_prefix = "/big"
upstream = "backend"
auth = "none"
max_body_bytes = 104857600

[[routes]]
path_prefix = "/"
upstream = "backend"
auth = "none"

[xdp]
enabled = false

{tail}
"#,
        certs = certs.toml(),
        backend = backend.addr,
        limits = limits.join("\n"),
    );
    // Every test talks from 127.0.0.1: a test that is not about verdicts
    // must not earn one for its refused requests.
    let mut config = config;
    if !tail.contains("[rate_limit.escalation]") {
        config.push_str(
            "\n[rate_limit.escalation]\nrejections = 0\nauth_failures = 0\nattacks = 0\n",
        );
    }
    // Tests run side by side: each admin API on a port of its own.
    if !tail.contains("[admin]") {
        config.push_str("\n[admin]\nlisten = \"127.0.0.1:0\"\n");
    }
    let gw = Gateway::start_under(dir, port, &config, wrapper);
    Setup {
        gw,
        backend,
        certs,
        plain_port,
    }
}

impl Setup {
    /// A TLS client for `localhost`.
    pub fn client(&self) -> Client {
        self.client_sni("localhost")
    }

    /// `GET path` with extra header lines (each ending in CRLF) on a new
    /// connection.
    pub fn get(&self, path: &str, headers: &str) -> Response {
        let mut c = self.client();
        c.send(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{headers}\r\n").as_bytes())
            .expect("send");
        c.response("GET").expect("response")
    }

    /// A TLS client asking for `sni`.
    pub fn client_sni(&self, sni: &str) -> Client {
        let cfg = client_config(
            &self.certs.ca,
            &[&rustls::version::TLS13, &rustls::version::TLS12],
        );
        Client::connect(self.gw.port, sni, cfg).expect("TLS connect")
    }
}

/// The reason code of an error response body.
pub fn reason_of(r: &Response) -> String {
    let body = String::from_utf8_lossy(&r.body);
    body.split("\"reason\":\"")
        .nth(1)
        .and_then(|t| t.split('"').next())
        .unwrap_or("")
        .to_owned()
}

/// An HTTPS server on loopback serving documents by path (an identity
/// provider's discovery document and JWKS), counting requests; it can be
/// taken down (every request then gets 503).
pub struct DocServer {
    /// Its address.
    pub addr: SocketAddr,
    docs: Arc<Mutex<std::collections::HashMap<String, String>>>,
    hits: Arc<std::sync::atomic::AtomicUsize>,
    down: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl DocServer {
    /// Starts it with the leaf for `localhost` (valid for 127.0.0.1 too).
    pub fn start(certs: &Certs) -> Self {
        let (_, cert, key) = &certs.files[0];
        let chain: Vec<CertificateDer<'static>> =
            rustls_pki_types::pem::PemObject::pem_file_iter(cert)
                .and_then(|it| it.collect())
                .expect("cert");
        let key = rustls_pki_types::pem::PemObject::from_pem_file(key).expect("key");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .expect("server config"),
        );
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let docs: Arc<Mutex<std::collections::HashMap<String, String>>> = Arc::default();
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (down, stop) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let (d, h, dn, st) = (docs.clone(), hits.clone(), down.clone(), stop.clone());
        std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(300);
            while !st.load(Ordering::Relaxed) && Instant::now() < until {
                let Ok((tcp, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let _ = tcp.set_nonblocking(false);
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
                let (config, d, h, dn) = (config.clone(), d.clone(), h.clone(), dn.clone());
                std::thread::spawn(move || serve_doc(tcp, config, &d, &h, &dn));
            }
        });
        Self {
            addr,
            docs,
            hits,
            down,
            stop,
        }
    }

    /// `https://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    /// Serves `body` at `path`.
    pub fn put(&self, path: &str, body: &str) {
        if let Ok(mut d) = self.docs.lock() {
            d.insert(path.to_owned(), body.to_owned());
        }
    }

    /// Requests served so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }

    /// Takes it down (503 for everything) or brings it back.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::Relaxed);
    }
}

impl Drop for DocServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve_doc(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    docs: &Mutex<std::collections::HashMap<String, String>>,
    hits: &std::sync::atomic::AtomicUsize,
    down: &AtomicBool,
) {
    let Ok(conn) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match tls.read(&mut tmp) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
    hits.fetch_add(1, Ordering::Relaxed);
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(buf.len(), |p| p + 4);
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let lower = head.to_ascii_lowercase();
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
    // A POST (introspection): the form's `token` picks the document, and
    // the client credentials must be the ones put under "AUTH".
    let key = if head.starts_with("POST ") {
        let len = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = buf[end..].to_vec();
        while body.len() < len {
            match tls.read(&mut tmp) {
                Ok(0) | Err(_) => return,
                Ok(n) => body.extend_from_slice(&tmp[..n]),
            }
        }
        let body = String::from_utf8_lossy(&body).into_owned();
        let token = body
            .split('&')
            .find_map(|kv| kv.strip_prefix("token="))
            .unwrap_or_default()
            .to_owned();
        let want = docs
            .lock()
            .ok()
            .and_then(|d| d.get("AUTH").cloned())
            .unwrap_or_default();
        let sent = head
            .lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(n, _)| n.eq_ignore_ascii_case("authorization"))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_default();
        if sent == want {
            format!("POST {path} {token}")
        } else {
            "UNAUTHORIZED".to_owned()
        }
    } else {
        path
    };
    let doc = docs.lock().ok().and_then(|d| d.get(&key).cloned());
    let reply = match doc {
        _ if down.load(Ordering::Relaxed) => {
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                .to_owned()
        }
        Some(body) => format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        ),
        None => {
            "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_owned()
        }
    };
    let _ = tls.write_all(reply.as_bytes());
    tls.conn.send_close_notify();
    let _ = tls.flush();
}

/// A 2048-bit RSA key made by openssl (ring makes none): `(PEM path, PKCS#1
/// DER)`, the PEM for tools that read it (HAProxy), the DER for ring.
pub fn openssl_rsa_key(dir: &Path) -> (PathBuf, Vec<u8>) {
    let pem = dir.join("rsa.pem");
    let der = dir.join("rsa.der");
    let run = |args: &[&str]| {
        let ok = Command::new("openssl")
            .args(args)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl (apt-get install openssl)");
        assert!(ok.success(), "openssl {args:?}");
    };
    let (pem_s, der_s) = (pem.display().to_string(), der.display().to_string());
    run(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        &pem_s,
    ]);
    run(&[
        "rsa",
        "-in",
        &pem_s,
        "-traditional",
        "-outform",
        "DER",
        "-out",
        &der_s,
    ]);
    let bytes = std::fs::read(&der).expect("RSA key");
    (pem, bytes)
}

/// A `redis-server` of the test's own on a free loopback port; killed on drop.
pub struct Redis {
    /// Its port.
    pub port: u16,
    child: Option<std::process::Child>,
}

impl Redis {
    /// Starts one and waits until it answers.
    pub fn start() -> Self {
        let mut r = Self {
            port: free_port(),
            child: None,
        };
        r.restart();
        r
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills it (as a crash would).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (empty: nothing is saved).
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (apt install redis-server)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if self.cli(&["PING"]).trim() == "PONG" {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server on port {} did not answer", self.port);
    }

    /// `redis-cli -p PORT ARGS`, its output.
    pub fn cli(&self, args: &[&str]) -> String {
        Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// How many times Redis ran `command` (from `INFO commandstats`).
    pub fn calls(&self, command: &str) -> u64 {
        let info = self.cli(&["INFO", "commandstats"]);
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Writes a key file (`auth.key_file`) in `dir` with one key per
/// consumer (`(id, key)`); returns its path.
pub fn write_key_file(dir: &Path, consumers: &[(&str, &str)]) -> PathBuf {
    let mut text = String::new();
    for (id, key) in consumers {
        text.push_str(&format!(
            "[[consumers]]\nid = \"{id}\"\n[[consumers.keys]]\nhash = \"{}\"\nprefix = \"{}\"\n",
            gateway::stages::auth::api_key::hash_line(key),
            gateway::stages::auth::api_key::shown_prefix(key)
        ));
    }
    let path = dir.join("keys.toml");
    std::fs::write(&path, text).expect("key file");
    path
}

/// A gateway whose key file holds one consumer, `alice`, and her key.
pub struct Keyed {
    /// The gateway.
    pub s: Setup,
    /// Alice's API key.
    pub key: String,
    _dir: TempDir,
}

/// [`setup_with`] with `routes`, `tail` and a key file for `alice`.
pub fn setup_keyed(tag: &str, routes: &str, tail: &str) -> Keyed {
    setup_keyed_with(tag, "", routes, tail)
}

/// Like [`setup_keyed`], with `extra` lines in `[limits]` (each replacing
/// the tests' own setting of the same key).
pub fn setup_keyed_with(tag: &str, extra: &str, routes: &str, tail: &str) -> Keyed {
    let dir = TempDir::new(&format!("{tag}-keys"));
    let key = gateway::stages::auth::api_key::generate().expect("key");
    let keys = write_key_file(&dir.0, &[("alice", &key)]);
    let s = setup_with(
        tag,
        extra,
        "workers = 2",
        routes,
        &format!("{tail}\n[auth]\nkey_file = \"{}\"\n", keys.display()),
        &[],
    );
    Keyed { s, key, _dir: dir }
}

/// An HS256 JWT over `claims` (JSON), signed with `secret`.
pub fn hs256_token(secret: &[u8], claims: &str) -> String {
    use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD as B64};
    let input = format!(
        "{}.{}",
        B64.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
        B64.encode(claims)
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let sig = ring::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", B64.encode(sig.as_ref()))
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A Python test server (the gRPC and WebSocket tests' real peers),
/// killed on drop.
pub struct PyServer(std::process::Child);

impl Drop for PyServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `python3 script args` and waits until it listens on 127.0.0.1:`port`;
/// `needs` names what pip installs when python3 cannot run it.
pub fn start_python(script: &Path, args: &[&std::ffi::OsStr], port: u16, needs: &str) -> PyServer {
    let child = std::process::Command::new("python3")
        .arg(script)
        .args(args)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "python3 runs {} (pip install {needs}): {e}",
                script.display()
            )
        });
    let server = PyServer(child);
    wait_until(
        &format!("{} listens", script.display()),
        Duration::from_secs(15),
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
    );
    server
}

/// Runs `python3 script args` (a test client that prints one JSON line)
/// and parses what it printed; a line that does not parse panics with the
/// script's stderr.
pub fn run_python_json(script: &Path, args: &[&std::ffi::OsStr]) -> serde_json::Value {
    let out = std::process::Command::new("python3")
        .arg(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("python3 runs {}: {e}", script.display()));
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "{} {args:?}: {e}: {text} {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The JSON metadata a test client sends: the API key, if any.
pub fn api_key_json(key: Option<&str>) -> String {
    match key {
        Some(k) => format!("{{\"x-api-key\":\"{k}\"}}"),
        None => "{}".into(),
    }
}
