//! TLS termination with rustls (ring provider): certificates chosen by SNI,
//! TLS 1.2 and 1.3 only, ALPN `http/1.1`, session cache and tickets; and the
//! stream that drives a rustls connection over an io_uring socket with owned,
//! reused buffers (rustls does not drive io_uring by itself).

use std::{
    collections::HashMap,
    io::{self, Read as _, Write as _},
    os::fd::{AsRawFd, RawFd},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use rustls::{
    ServerConfig, ServerConnection,
    server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio_uring::net::TcpStream;

use crate::{buffers, config::TlsSettings};

/// Certificate and key problems, all the operator's to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {what}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The self-signed certificate could not be made or stored.
    #[error("self-signed certificate in {dir}: {what}")]
    SelfSigned {
        /// The state directory.
        dir: PathBuf,
        /// What failed.
        what: String,
    },
}

/// Picks the certificate for a ClientHello's SNI name; unknown or absent
/// names get the default (the first certificate without names, else the first).
#[derive(Debug)]
struct SniResolver {
    by_name: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let named = hello.server_name().and_then(|n| {
            // SNI is case-insensitive; names were lowercased at load.
            self.by_name.get(&n.to_ascii_lowercase()).cloned()
        });
        Some(named.unwrap_or_else(|| self.default.clone()))
    }
}

fn load_key(
    provider: &rustls::crypto::CryptoProvider,
    cert: &Path,
    key: &Path,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| TlsError::File {
            path: cert.to_owned(),
            what: format!("cannot read certificates: {e}"),
        })?;
    if chain.is_empty() {
        return Err(TlsError::File {
            path: cert.to_owned(),
            what: "no CERTIFICATE block".into(),
        });
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::File {
        path: key.to_owned(),
        what: format!("cannot read private key: {e}"),
    })?;
    let signing = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| TlsError::File {
            path: key.to_owned(),
            what: format!("unusable private key: {e}"),
        })?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|e| TlsError::File {
        path: key.to_owned(),
        what: format!("does not match {}: {e}", cert.display()),
    })?;
    Ok(Arc::new(ck))
}

/// Where generated state (the self-signed certificate) lives:
/// `$GATEWAY_STATE_DIR`, else `$XDG_STATE_HOME/gateway`, else `~/.local/state/gateway`.
pub fn state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("GATEWAY_STATE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(d).join("gateway");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    home.join(".local/state/gateway")
}

/// Paths of the self-signed certificate and key, generated if missing.
/// Returns (cert, key, generated_now).
pub fn self_signed(dir: &Path, extra_name: &str) -> Result<(PathBuf, PathBuf, bool), TlsError> {
    let cert = dir.join("self-signed-cert.pem");
    let key = dir.join("self-signed-key.pem");
    if cert.is_file() && key.is_file() {
        return Ok((cert, key, false));
    }
    let fail = |what: String| TlsError::SelfSigned {
        dir: dir.to_owned(),
        what,
    };
    std::fs::create_dir_all(dir).map_err(|e| fail(format!("creating the directory: {e}")))?;
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if !names.iter().any(|n| n == extra_name) {
        names.push(extra_name.to_owned());
    }
    let generated = rcgen::generate_simple_self_signed(names).map_err(|e| fail(e.to_string()))?;
    std::fs::write(&cert, generated.cert.pem())
        .map_err(|e| fail(format!("writing {}: {e}", cert.display())))?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(&key)
        .and_then(|mut f| f.write_all(generated.signing_key.serialize_pem().as_bytes()))
        .map_err(|e| fail(format!("writing {}: {e}", key.display())))?;
    Ok((cert, key, true))
}

/// Builds the rustls server configuration shared by all workers.
pub fn server_config(
    settings: &TlsSettings,
    certs: &[(PathBuf, PathBuf, Vec<String>)],
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut by_name = HashMap::new();
    let mut default = None;
    let mut first = None;
    for (cert, key, names) in certs {
        let ck = load_key(&provider, cert, key)?;
        first.get_or_insert_with(|| ck.clone());
        if names.is_empty() {
            default.get_or_insert_with(|| ck.clone());
        }
        for n in names {
            by_name.insert(n.clone(), ck.clone());
        }
    }
    let default = default.or(first).ok_or_else(|| TlsError::File {
        path: PathBuf::from("tls.certificates"),
        what: "no certificate configured".into(),
    })?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { by_name, default }));
    // Advertise h2 only once it is served.
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.session_storage = ServerSessionMemoryCache::new(settings.session_cache.max(1));
    if settings.tickets {
        cfg.ticketer = rustls::crypto::ring::Ticketer::new()?;
    }
    Ok(Arc::new(cfg))
}

/// Most slices one `send` takes.
const MAX_PARTS: usize = 4;

/// How long, and how much, a closing connection drains from the client.
const LINGER: Duration = Duration::from_millis(250);
const LINGER_BYTES: usize = 256 * 1024;

/// Why a TLS connection ended early.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The socket failed.
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    /// The peer broke the TLS protocol (an alert was sent).
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    /// The peer spoke plain HTTP to the TLS port.
    #[error("plain HTTP on the TLS port")]
    PlainHttp,
    /// The peer closed before the handshake ended.
    #[error("closed during the handshake")]
    HandshakeEof,
    /// A deadline passed.
    #[error("timed out")]
    TimedOut,
    /// rustls wants neither to read nor to write while the handshake is
    /// unfinished: nothing can make progress, so the connection ends
    /// rather than spin.
    #[error("TLS state machine stalled")]
    Stalled,
}

/// A server-side TLS connection over an io_uring socket.
pub struct TlsStream {
    tcp: TcpStream,
    conn: ServerConnection,
    /// Lent by the worker's pool for one read or write; empty between.
    rbuf: Vec<u8>,
    /// See `rbuf`.
    wbuf: Vec<u8>,
    /// Bytes an idle wait read into `rbuf` (a small buffer) that rustls
    /// has not been given yet.
    unfed: usize,
    eof: bool,
    /// Longest a write may wait for a client that does not read.
    write_timeout: Duration,
}

impl TlsStream {
    /// The negotiated protocol, for the access log.
    pub fn version(&self) -> &'static str {
        match self.conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "-",
        }
    }

    /// Whether the handshake resumed an earlier session.
    pub fn resumed(&self) -> bool {
        self.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }

    /// The server name the client asked for (empty: none).
    pub fn sni(&self) -> &str {
        self.conn.server_name().unwrap_or("")
    }
}

/// Runs a write with a deadline; on expiry the socket is shut down both
/// ways, which fails the in-flight io_uring write (SHUT_RD alone would not).
pub async fn write_deadline<T>(
    fd: RawFd,
    limit: Duration,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    expire(fd, limit, libc::SHUT_RDWR, fut).await
}

/// Runs `fut` with a deadline; on expiry the socket's read side is shut
/// down so the in-flight io_uring read completes (dropping an operation does
/// not cancel it), while the write side stays open for a last response.
pub async fn deadline<T>(
    fd: RawFd,
    limit: Duration,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    expire(fd, limit, libc::SHUT_RD, fut).await
}

async fn expire<T>(
    fd: RawFd,
    limit: Duration,
    how: libc::c_int,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        r = fut => Some(r),
        _ = tokio::time::sleep(limit) => {
            // SAFETY: shutdown(2) on a descriptor the caller owns.
            unsafe { libc::shutdown(fd, how) };
            None
        }
    }
}

/// Shuts a socket down in both directions (the peer sees EOF at once).
pub fn shutdown_fd(fd: RawFd) {
    // SAFETY: shutdown(2) on a descriptor we own; errors (already closed) are harmless.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
}

impl TlsStream {
    /// Wraps an accepted socket; writes that wait longer than
    /// `write_timeout` for the client fail.
    pub fn new(
        tcp: TcpStream,
        config: Arc<ServerConfig>,
        write_timeout: Duration,
    ) -> Result<Self, StreamError> {
        Ok(Self {
            tcp,
            conn: ServerConnection::new(config)?,
            rbuf: Vec::new(),
            wbuf: Vec::new(),
            unfed: 0,
            eof: false,
            write_timeout,
        })
    }

    /// The socket's descriptor (for deadlines).
    pub fn fd(&self) -> RawFd {
        self.tcp.as_raw_fd()
    }

    /// One socket read fed to rustls; returns false at EOF.
    async fn read_socket(&mut self) -> Result<bool, StreamError> {
        let (res, buf) = self.tcp.read(buffers::take_read()).await;
        self.rbuf = buf;
        let fed = match res {
            Ok(0) => {
                self.eof = true;
                Ok(false)
            }
            Ok(n) => self.feed(n).await.map(|()| true),
            Err(e) => Err(e.into()),
        };
        buffers::give_read(std::mem::take(&mut self.rbuf));
        fed
    }

    /// Waits for the client's next bytes on an idle keep-alive connection
    /// holding only a small read buffer; false at EOF. The bytes reach
    /// rustls on the next [`TlsStream::read_plain`]: this future stays
    /// small because an idle connection's task holds it (see
    /// `server::connection::serve`).
    pub async fn fill_idle(&mut self) -> Result<bool, StreamError> {
        if self.unfed > 0 || !self.conn.wants_read() || self.eof {
            return Ok(!self.eof);
        }
        let (res, buf) = self.tcp.read(buffers::take_small()).await;
        match res {
            Ok(n) if n > 0 => {
                self.rbuf = buf;
                self.unfed = n;
                Ok(true)
            }
            Ok(_) => {
                buffers::give_small(buf);
                self.eof = true;
                Ok(false)
            }
            Err(e) => {
                buffers::give_small(buf);
                Err(e.into())
            }
        }
    }

    /// Hands rustls what [`TlsStream::fill_idle`] read.
    async fn feed_unfed(&mut self) -> Result<(), StreamError> {
        let n = std::mem::take(&mut self.unfed);
        let fed = self.feed(n).await;
        buffers::give_small(std::mem::take(&mut self.rbuf));
        fed
    }

    /// Feeds `rbuf[..n]` to rustls (it may take a slice in parts).
    ///
    /// Once the peer's close_notify is processed, `read_tls` takes nothing
    /// more (`Ok(0)` forever): the stream has ended and whatever follows is
    /// discarded. Looping on `Ok(0)` would spin the worker with no await.
    async fn feed(&mut self, n: usize) -> Result<(), StreamError> {
        let mut off = 0;
        while off < n {
            let took = self.conn.read_tls(&mut &self.rbuf[off..n])?;
            match self.conn.process_new_packets() {
                Ok(state) if state.peer_has_closed() => self.eof = true,
                Ok(_) => {}
                Err(e) => {
                    // Still send the alert that explains the failure.
                    let _ = self.flush().await;
                    return Err(e.into());
                }
            }
            if took == 0 {
                self.eof = true;
                break;
            }
            off += took;
        }
        Ok(())
    }

    /// Completes the handshake within `limit`.
    pub async fn handshake(&mut self, limit: Duration) -> Result<(), StreamError> {
        let fd = self.fd();
        deadline(fd, limit, async {
            let mut first = true;
            while self.conn.is_handshaking() {
                if self.conn.wants_write() {
                    self.flush().await?;
                }
                if self.eof {
                    return Err(StreamError::HandshakeEof);
                }
                if !self.conn.wants_read() {
                    if self.conn.wants_write() {
                        continue;
                    }
                    return Err(StreamError::Stalled);
                }
                if first {
                    first = false;
                    if self.plain_http_first().await? {
                        return Err(StreamError::PlainHttp);
                    }
                } else if !self.read_socket().await? {
                    return Err(StreamError::HandshakeEof);
                }
            }
            if self.conn.wants_write() {
                self.flush().await?;
            }
            Ok(())
        })
        .await
        .unwrap_or(Err(StreamError::TimedOut))
    }

    /// Reads the first bytes; if they are an HTTP request line rather than a
    /// TLS record, answers 400 in plain HTTP (when XDP does not reset it).
    async fn plain_http_first(&mut self) -> Result<bool, StreamError> {
        let (res, buf) = self.tcp.read(buffers::take_read()).await;
        self.rbuf = buf;
        let n = res?;
        if n == 0 {
            return Err(StreamError::HandshakeEof);
        }
        if n >= 4 {
            let head = [self.rbuf[0], self.rbuf[1], self.rbuf[2], self.rbuf[3]];
            if gateway_common::packet::classify(head)
                == gateway_common::packet::Payload::HttpRequest
            {
                let body = b"{\"error\":\"bad_request\",\"reason\":\"tls.plain_http\"}\n";
                let msg = format!(
                    "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let mut out = msg.into_bytes();
                out.extend_from_slice(body);
                let (_, _) = self.tcp.write_all(out).await;
                return Ok(true);
            }
        }
        let fed = self.feed(n).await;
        buffers::give_read(std::mem::take(&mut self.rbuf));
        fed.map(|()| false)
    }

    /// Appends available plaintext to `dst`, reading the socket as needed.
    /// Returns the bytes appended; 0 means the peer closed.
    pub async fn read_plain(&mut self, dst: &mut Vec<u8>) -> Result<usize, StreamError> {
        if self.unfed > 0 {
            self.feed_unfed().await?;
        }
        loop {
            let avail = self.conn.process_new_packets()?.plaintext_bytes_to_read();
            if avail > 0 {
                let start = dst.len();
                dst.resize(start + avail, 0);
                let n = match self.conn.reader().read(&mut dst[start..]) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                    Err(e) => return Err(e.into()),
                };
                dst.truncate(start + n);
                if n > 0 {
                    return Ok(n);
                }
            }
            if self.eof {
                return Ok(0);
            }
            if self.conn.wants_write() {
                self.flush().await?;
            }
            if !self.read_socket().await? {
                return Ok(0);
            }
        }
    }

    /// Sends plaintext as few TLS records as possible (one per 16 KiB; the
    /// parts of a small response share one record) in as few socket writes
    /// as rustls' send buffer allows, usually one.
    pub async fn send(&mut self, parts: &[&[u8]]) -> Result<(), StreamError> {
        // On the stack: a response is at most head, body and chunk framing.
        let mut slices = [io::IoSlice::new(&[]); MAX_PARTS];
        if parts.len() > MAX_PARTS {
            return Err(StreamError::Io(io::ErrorKind::InvalidInput.into()));
        }
        for (slot, p) in slices.iter_mut().zip(parts) {
            *slot = io::IoSlice::new(p);
        }
        let mut rest: &mut [io::IoSlice<'_>] = &mut slices[..parts.len()];
        while !rest.is_empty() {
            let n = self.conn.writer().write_vectored(rest)?;
            io::IoSlice::advance_slices(&mut rest, n);
            if !rest.is_empty() {
                if n == 0 && !self.conn.wants_write() {
                    // rustls takes nothing and has nothing to send: waiting
                    // would spin (e.g. after close_notify was sent).
                    return Err(StreamError::Io(io::ErrorKind::WriteZero.into()));
                }
                // rustls' send buffer is full: put it on the wire first.
                self.flush().await?;
            }
        }
        self.flush().await
    }

    /// Sends every queued record in one socket write.
    pub async fn flush(&mut self) -> Result<(), StreamError> {
        while self.conn.wants_write() {
            if self.wbuf.capacity() == 0 {
                self.wbuf = buffers::take_write(0);
            }
            self.conn.write_tls(&mut self.wbuf)?;
        }
        if self.wbuf.is_empty() {
            buffers::give_write(std::mem::take(&mut self.wbuf));
            return Ok(());
        }
        let buf = std::mem::take(&mut self.wbuf);
        let fd = self.fd();
        let Some((res, mut buf)) =
            write_deadline(fd, self.write_timeout, self.tcp.write_all(buf)).await
        else {
            return Err(StreamError::TimedOut);
        };
        buf.clear();
        // Back to the pool: an idle connection holds no write buffer.
        buffers::give_write(buf);
        res?;
        Ok(())
    }

    /// Sends close_notify, shuts the write side, and drains what the client
    /// still sends for a moment: closing with unread data makes the kernel
    /// answer with RST, which can destroy the last response before the
    /// client reads it (a lingering close, as HAProxy and nginx do).
    pub async fn close(mut self) {
        self.conn.send_close_notify();
        if self.flush().await.is_err() {
            return;
        }
        let _ = self.tcp.shutdown(std::net::Shutdown::Write);
        if self.eof {
            return;
        }
        let fd = self.fd();
        let until = std::time::Instant::now() + LINGER;
        let mut drained = 0;
        while drained < LINGER_BYTES {
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            match deadline(fd, left, self.tcp.read(buffers::take_read())).await {
                Some((Ok(n), b)) if n > 0 => {
                    buffers::give_read(b);
                    drained += n;
                }
                _ => break,
            }
        }
    }
}
