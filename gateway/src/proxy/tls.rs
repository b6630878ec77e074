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

use rustls::{
    ClientConfig, ClientConnection,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _},
};
use tokio_uring::buf::BoundedBuf as _;

use super::pool::{UPSTREAM_READ, UpstreamConn};
use crate::{
    config::{UpstreamSettings, UpstreamTls},
    tls::{deadline, write_deadline},
};

/// A TLS session on an upstream connection.
pub struct Session {
    conn: ClientConnection,
    /// Records to send, reused.
    out: Vec<u8>,
    /// Records read, reused.
    raw: Vec<u8>,
}

/// The client configuration `s` describes (reads its CA and certificate files).
pub fn client_config(s: &UpstreamTls) -> Result<Arc<ClientConfig>, String> {
    let roots = crate::fetch::trust_roots(s.ca_file.as_deref())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut cfg = match &s.client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect())
                .map_err(|e| format!("{}: {e}", cert.display()))?;
            if chain.is_empty() {
                return Err(format!("{}: no CERTIFICATE block", cert.display()));
            }
            let key =
                PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
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
pub fn client_configs(
    upstreams: &[UpstreamSettings],
) -> Result<Vec<Option<Arc<ClientConfig>>>, String> {
    upstreams
        .iter()
        .enumerate()
        .map(|(i, u)| {
            u.tls
                .as_ref()
                .map(|t| {
                    client_config(t).map_err(|e| format!("upstreams[{i}].tls ({}): {e}", u.name))
                })
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
        }));
        let fd = self.fd();
        match deadline(fd, limit, self.handshake()).await {
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

    /// Reads records from the socket into the session; 0 at EOF.
    async fn read_records(&mut self) -> io::Result<usize> {
        let Some(s) = self.tls.as_mut() else {
            return Ok(0);
        };
        let mut raw = std::mem::take(&mut s.raw);
        raw.clear();
        raw.reserve(UPSTREAM_READ);
        let cap = raw.capacity();
        let (res, slice) = self.tcp.read(raw.slice(0..cap)).await;
        let raw = slice.into_inner();
        let n = res?;
        let Some(s) = self.tls.as_mut() else {
            return Ok(0);
        };
        let mut input = &raw[..n];
        while !input.is_empty() {
            s.conn.read_tls(&mut input)?;
            s.conn.process_new_packets().map_err(invalid)?;
        }
        s.raw = raw;
        Ok(n)
    }

    /// Writes `buf[range]` to the upstream within `limit` (encrypted on a
    /// TLS hop); gives the buffer back, unless a timed-out plain write took
    /// it with it.
    pub async fn write(
        &mut self,
        buf: Vec<u8>,
        range: std::ops::Range<usize>,
        limit: Duration,
    ) -> (io::Result<()>, Option<Vec<u8>>) {
        let fd = self.fd();
        let Some(s) = self.tls.as_mut() else {
            return match write_deadline(fd, limit, self.tcp.write_all(buf.slice(range))).await {
                Some((res, slice)) => (res, Some(slice.into_inner())),
                None => (Err(io::ErrorKind::TimedOut.into()), None),
            };
        };
        if let Err(e) = s.conn.writer().write_all(&buf[range]) {
            return (Err(e), Some(buf));
        }
        let res = match write_deadline(fd, limit, self.flush_tls()).await {
            Some(r) => r,
            None => Err(io::ErrorKind::TimedOut.into()),
        };
        (res, Some(buf))
    }

    /// Reads plaintext a TLS hop has for `buf`; 0 at the end of the stream.
    pub(super) async fn read_tls_plaintext(&mut self) -> io::Result<usize> {
        loop {
            let Some(s) = self.tls.as_mut() else {
                return Ok(0);
            };
            let len = self.buf.len();
            self.buf.resize(len + UPSTREAM_READ, 0);
            let got = s.conn.reader().read(&mut self.buf[len..]);
            self.buf.truncate(len + *got.as_ref().unwrap_or(&0));
            match got {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if s.conn.wants_write() {
                self.flush_tls().await?;
            }
            if self.read_records().await? == 0 {
                // EOF without close_notify: the framing decides whether
                // the response was whole.
                return Ok(0);
            }
        }
    }
}
