//! TLS to upstreams (`[upstreams.tls]`): rustls' client over the pooled
//! io_uring socket, verified against the system's roots or a configured CA,
//! with SNI and an optional client certificate (mutual TLS). One client
//! configuration per upstream, shared by every worker, so its session
//! cache resumes sessions whichever worker opened them; it survives reloads
//! that keep the upstream's TLS settings.
//!
//! The request and response code reads and writes plaintext through
//! [`UpstreamConn::write`] and [`UpstreamConn::read_more`], whatever the hop.

use std::{
    io::{self, Read as _, Write as _},
    sync::Arc,
    time::Duration,
};

use rustls::{ClientConfig, ClientConnection, pki_types::ServerName};
use tokio_uring::buf::BoundedBuf as _;

use super::pool::{UPSTREAM_READ, UpstreamConn};
use crate::{
    config::{UpstreamSettings, UpstreamTls},
    tls::write_deadline,
};

/// A TLS session on an upstream connection.
pub struct Session {
    conn: ClientConnection,
    /// Records to send, reused.
    out: Vec<u8>,
    /// Bytes read from the socket; `raw[fed..]` not yet given to rustls
    /// (it takes them a record or so at a time, and holds at most 16 KiB
    /// of plaintext, so a read is fed in steps between plaintext reads).
    raw: Vec<u8>,
    fed: usize,
}

/// A TLS client and a digest of the files it was built from, so a reload
/// that finds them unchanged keeps the client (and its sessions) and one
/// that finds them rotated takes the new one.
#[derive(Clone)]
pub struct Client {
    /// The rustls client configuration.
    pub config: Arc<ClientConfig>,
    /// SHA-256 over the CA, certificate and key files' contents.
    pub files: [u8; 32],
}

/// SHA-256 over the contents of the files `s` names (missing ones count as empty).
fn files_digest(s: &UpstreamTls) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let paths = [
        s.ca_file.as_deref(),
        s.client_cert.as_ref().map(|c| c.0.as_path()),
        s.client_cert.as_ref().map(|c| c.1.as_path()),
    ];
    for p in paths.into_iter().flatten() {
        let bytes = std::fs::read(p).unwrap_or_default();
        ctx.update(&(bytes.len() as u64).to_le_bytes());
        ctx.update(&bytes);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The client `s` describes (reads its CA and certificate files).
pub fn client(s: &UpstreamTls) -> Result<Client, String> {
    let files = files_digest(s);
    Ok(Client {
        config: client_config(s)?,
        files,
    })
}

/// The client configuration `s` describes (reads its CA and certificate files).
fn client_config(s: &UpstreamTls) -> Result<Arc<ClientConfig>, String> {
    let roots = crate::fetch::trust_roots(s.ca_file.as_deref())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut cfg = match &s.client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let (chain, key) = crate::tls::read_pair(cert, key).map_err(|e| e.to_string())?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("{}: {e}", cert.display()))?
        }
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Each upstream's client configuration (none for plain HTTP), every error
/// naming its upstream; built before anything is swapped in.
pub fn client_configs(upstreams: &[UpstreamSettings]) -> Result<Vec<Option<Client>>, String> {
    upstreams
        .iter()
        .enumerate()
        .map(|(i, u)| {
            u.tls
                .as_ref()
                .map(|t| client(t).map_err(|e| format!("upstreams[{i}].tls ({}): {e}", u.name)))
                .transpose()
        })
        .collect()
}

/// The name server `addr` is verified by: the configured one, or its IP.
pub fn server_name(s: &UpstreamTls, addr: std::net::SocketAddr) -> ServerName<'static> {
    s.server_name
        .as_deref()
        .and_then(|n| ServerName::try_from(n.to_owned()).ok())
        .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()))
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

fn invalid(e: rustls::Error) -> io::Error {
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
    fn feed(&mut self) -> io::Result<bool> {
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
