//! A connection to one upstream server, plain or TLS: the socket, the
//! bytes read and not yet consumed, and on a TLS hop rustls' client session
//! over the io_uring socket. The request and response code reads and writes
//! plaintext through [`UpstreamConn::write`] and [`UpstreamConn::read_more`],
//! whatever the hop; the pool ([`super::pool`]) keeps these between
//! requests, and [`super::tls`] builds the client configurations.

use std::{
    io::{self, Read as _, Write as _},
    os::fd::AsRawFd,
    sync::Arc,
    time::{Duration, Instant},
};

use rustls::{ClientConfig, ClientConnection, pki_types::ServerName};
use tokio_uring::{buf::BoundedBuf as _, net::TcpStream};

use crate::tls::write_deadline;

/// Read buffer of an upstream connection.
pub const UPSTREAM_READ: usize = 16 * 1024;
/// A connection to one upstream server.
pub struct UpstreamConn {
    /// The socket.
    pub tcp: TcpStream,
    /// Bytes read and not yet consumed are `buf[start..]`.
    pub buf: Vec<u8>,
    /// Start of unconsumed bytes in `buf`.
    pub start: usize,
    /// Index of the server within its upstream.
    pub server: usize,
    /// Whether it came from the idle pool (a failure before any response
    /// byte may then just mean the server closed it while idle).
    pub reused: bool,
    /// The TLS session, on a TLS hop.
    pub(super) tls: Option<Box<Session>>,
    /// When it last went back to the pool (for the idle timeout).
    pub(super) idle_since: Option<Instant>,
}

impl UpstreamConn {
    /// Reads more bytes into `buf`; returns how many (0 = EOF).
    pub async fn read_more(&mut self) -> io::Result<usize> {
        use tokio_uring::buf::BoundedBuf as _;
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        if self.tls.is_some() {
            return self.read_tls_plaintext().await;
        }
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(UPSTREAM_READ);
        }
        let len = self.buf.len();
        let buf = std::mem::take(&mut self.buf);
        let (res, slice) = self.tcp.read(buf.slice(len..)).await;
        self.buf = slice.into_inner();
        res
    }

    /// Unconsumed bytes.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Whether nothing the upstream sent is left unread: no pending bytes,
    /// and on a TLS hop no plaintext still inside the session (bytes past
    /// the response would be read as the next one's).
    pub fn drained(&mut self) -> bool {
        self.pending().is_empty() && self.tls.as_mut().is_none_or(|s| s.drained())
    }

    /// Marks `n` pending bytes consumed.
    pub fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }

    /// The socket's descriptor.
    pub fn fd(&self) -> std::os::fd::RawFd {
        self.tcp.as_raw_fd()
    }

    /// Whether an idle pooled connection is still open: a non-blocking peek
    /// that finds neither EOF nor stray bytes.
    pub fn looks_alive(&self) -> bool {
        let mut b = [0u8; 1];
        // SAFETY: recv(2) into a valid one-byte buffer on our own socket.
        let r = unsafe {
            libc::recv(
                self.fd(),
                b.as_mut_ptr().cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        r < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
    }
}

impl std::fmt::Debug for UpstreamConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConn")
            .field("server", &self.server)
            .finish()
    }
}

/// A TLS session on an upstream connection.
pub struct Session {
    pub(super) conn: ClientConnection,
    /// Records to send, reused.
    out: Vec<u8>,
    /// Bytes read from the socket; `raw[fed..]` not yet given to rustls
    /// (it takes them a record or so at a time, and holds at most 16 KiB
    /// of plaintext, so a read is fed in steps between plaintext reads).
    pub(super) raw: Vec<u8>,
    pub(super) fed: usize,
}

/// What a failed upstream read means for the client: `upstream.tls` when
/// TLS refused it (an alert such as a missing client certificate, which
/// TLS 1.3 servers send after the client's handshake is done), else
/// `upstream.closed`.
pub fn read_failure(e: &io::Error) -> crate::respond::Failure {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(_) => crate::respond::Failure::UPSTREAM_TLS,
        None => crate::respond::Failure::UPSTREAM_CLOSED,
    }
}

pub(super) fn invalid(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl Session {
    /// Whether the session holds no plaintext not yet read and the server
    /// has not closed it (a close_notify with the last record).
    pub(super) fn drained(&mut self) -> bool {
        self.fed == self.raw.len()
            && self
                .conn
                .process_new_packets()
                .is_ok_and(|st| st.plaintext_bytes_to_read() == 0 && !st.peer_has_closed())
    }

    /// Feeds buffered ciphertext to rustls until it has plaintext for us
    /// or needs more bytes; `false` when nothing was left to feed.
    pub(super) fn feed(&mut self) -> io::Result<bool> {
        if self.fed == self.raw.len() {
            return Ok(false);
        }
        loop {
            let mut input = &self.raw[self.fed..];
            let n = self.conn.read_tls(&mut input)?;
            self.fed += n;
            let st = self.conn.process_new_packets().map_err(invalid)?;
            if n == 0 || st.peer_has_closed() {
                // After close_notify rustls takes nothing more: what
                // follows it is dropped.
                self.fed = self.raw.len();
                return Ok(true);
            }
            if st.plaintext_bytes_to_read() > 0 || self.fed == self.raw.len() {
                return Ok(true);
            }
        }
    }
}

impl UpstreamConn {
    /// Handshakes within `limit`; afterwards every read and write on the
    /// connection goes through the session.
    pub async fn start_tls(
        &mut self,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
        limit: Duration,
    ) -> io::Result<()> {
        let conn = ClientConnection::new(config, name).map_err(invalid)?;
        self.tls = Some(Box::new(Session {
            conn,
            out: Vec::new(),
            raw: Vec::new(),
            fed: 0,
        }));
        let fd = self.fd();
        // Both directions: a handshake past its time is thrown away.
        match write_deadline(fd, limit, self.handshake()).await {
            Some(r) => r,
            None => Err(io::ErrorKind::TimedOut.into()),
        }
    }

    async fn handshake(&mut self) -> io::Result<()> {
        loop {
            let Some(s) = self.tls.as_mut() else {
                return Ok(());
            };
            if s.conn.wants_write() {
                self.flush_tls().await?;
                continue;
            }
            if !s.conn.is_handshaking() {
                return Ok(());
            }
            if s.feed()? {
                continue;
            }
            if self.read_records().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Sends what the session has queued.
    async fn flush_tls(&mut self) -> io::Result<()> {
        let Some(s) = self.tls.as_mut() else {
            return Ok(());
        };
        let mut out = std::mem::take(&mut s.out);
        out.clear();
        while s.conn.wants_write() {
            s.conn.write_tls(&mut out)?;
        }
        let len = out.len();
        let (res, slice) = self.tcp.write_all(out.slice(0..len)).await;
        if let Some(s) = self.tls.as_mut() {
            s.out = slice.into_inner();
        }
        res
    }

    /// Reads from the socket into the session's buffer (all of it fed
    /// already); 0 at EOF.
    async fn read_records(&mut self) -> io::Result<usize> {
        let Some(s) = self.tls.as_mut() else {
            return Ok(0);
        };
        let mut raw = std::mem::take(&mut s.raw);
        raw.clear();
        raw.reserve(UPSTREAM_READ);
        let cap = raw.capacity();
        let (res, slice) = self.tcp.read(raw.slice(0..cap)).await;
        let mut raw = slice.into_inner();
        let n = res.inspect_err(|_| raw.clear())?;
        if let Some(s) = self.tls.as_mut() {
            s.raw = raw;
            s.fed = 0;
        }
        Ok(n)
    }

    /// Writes `buf[range]` to the upstream within `limit` (encrypted on a
    /// TLS hop); gives the buffer back, empty when a timed-out plain write
    /// took it with it. A timeout leaves the connection unusable.
    pub async fn write(
        &mut self,
        buf: Vec<u8>,
        range: std::ops::Range<usize>,
        limit: Duration,
    ) -> (io::Result<()>, Vec<u8>) {
        let fd = self.fd();
        if self.tls.is_none() {
            return match write_deadline(fd, limit, self.tcp.write_all(buf.slice(range))).await {
                Some((res, slice)) => (res, slice.into_inner()),
                None => (Err(io::ErrorKind::TimedOut.into()), Vec::new()),
            };
        }
        // rustls queues at most 64 KiB: larger bodies go in slices, each
        // sent before the next is queued.
        let flow = async {
            let mut off = range.start;
            while off < range.end {
                let Some(s) = self.tls.as_mut() else {
                    return Err(io::ErrorKind::NotConnected.into());
                };
                let n = s.conn.writer().write(&buf[off..range.end])?;
                if n == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                off += n;
                self.flush_tls().await?;
            }
            Ok(())
        };
        let res = match write_deadline(fd, limit, flow).await {
            Some(r) => r,
            None => Err(io::ErrorKind::TimedOut.into()),
        };
        (res, buf)
    }

    /// Reads plaintext a TLS hop has for `buf`: 0 at the end of the
    /// stream the server closed with close_notify; an error when the
    /// socket ends without one (a cut that would pass for a whole
    /// close-delimited body).
    pub(super) async fn read_tls_plaintext(&mut self) -> io::Result<usize> {
        loop {
            let Some(s) = self.tls.as_mut() else {
                return Ok(0);
            };
            let st = s.conn.process_new_packets().map_err(invalid)?;
            let ready = st.plaintext_bytes_to_read();
            if ready > 0 {
                let len = self.buf.len();
                let take = ready.min(UPSTREAM_READ);
                self.buf.resize(len + take, 0);
                let got = s.conn.reader().read(&mut self.buf[len..]);
                self.buf.truncate(len + *got.as_ref().unwrap_or(&0));
                return got;
            }
            if st.peer_has_closed() {
                return Ok(0);
            }
            if s.conn.wants_write() {
                self.flush_tls().await?;
                continue;
            }
            if s.feed()? {
                continue;
            }
            if self.read_records().await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the upstream closed its TLS stream without close_notify",
                ));
            }
        }
    }
}
