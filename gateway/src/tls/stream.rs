//! A server-side TLS connection over an io_uring socket, on rustls'
//! unbuffered API: the connection owns no socket buffers (the buffered
//! `ServerConnection` keeps a 4 KiB read buffer for life), so between
//! requests a keep-alive connection holds only its pending read (1 KiB, or
//! a full read buffer after a long request), and records are decrypted in
//! place in the buffer the socket read into.

use std::{
    io,
    os::fd::{AsRawFd, RawFd},
    rc::Rc,
    sync::Arc,
    time::Duration,
};

use rustls::{ServerConfig, server::UnbufferedServerConnection, unbuffered::ConnectionState};
use tokio_uring::net::TcpStream;

use super::{
    deadline::{deadline, write_deadline},
    error::{MAX_INPUT, StreamError},
    room::{append, give_back},
};
use crate::buffers;

/// How long, and how much, a closing connection drains from the client.
const LINGER: Duration = Duration::from_millis(250);
const LINGER_BYTES: usize = 256 * 1024;

/// Most plaintext one TLS record carries.
const RECORD: usize = 16 * 1024;
/// More than any cipher suite adds to one record (header, nonce, tag,
/// content type): the first guess at the room an encryption needs.
const RECORD_OVERHEAD: usize = 64;
/// Encrypted output queued before it is sent, between a response's parts.
pub(super) const MAX_QUEUED: usize = 64 * 1024;

/// A server-side TLS connection over an io_uring socket.
pub struct TlsStream {
    /// Shared with the io_uring operations an HTTP/2 connection keeps in
    /// flight across polls (`super::async_io`).
    pub(super) tcp: Rc<TcpStream>,
    conn: UnbufferedServerConnection,
    /// Bytes read from the socket that rustls has not consumed, from
    /// `head`. Lent by the worker's pools while it holds any; empty (no
    /// allocation) between requests.
    pub(super) input: Vec<u8>,
    pub(super) head: usize,
    /// Encrypted records waiting for one socket write; lent like `input`.
    pub(super) output: Vec<u8>,
    /// Plaintext rustls decrypted while the stream was not reading (a
    /// request in the handshake's last read, pipelined requests met while
    /// answering): [`TlsStream::read_plain`] hands it out first.
    pub(super) stash: Vec<u8>,
    sni: Option<Box<str>>,
    pub(super) eof: bool,
    /// The last idle wait filled its buffer (a request over 1 KiB, such as
    /// a JSON POST): the next one reads into a full read buffer, saving
    /// the second read per request, while the worker's cap on such waits
    /// allows; a short request brings back the small one, so idle clients
    /// of small requests keep costing 1 KiB.
    wide_idle: bool,
    /// Longest a write may wait for a client that does not read.
    pub(super) write_timeout: Duration,
}

/// What rustls' answer to the input asks of the stream next.
pub(super) enum Step {
    /// Plaintext was appended to the caller's buffer.
    Data,
    /// Nothing to decrypt: read the socket (or, handshaking, wait for the peer).
    NeedInput,
    /// Records were queued for sending or plaintext stashed; ask rustls again.
    Again,
    /// What the caller asked to write was encrypted into `output`.
    Written,
    /// The peer's close_notify: nothing more will be read (reported once).
    PeerClosed,
    /// Both sides sent close_notify.
    Closed,
}

/// What a call into rustls should write once it may.
#[derive(Clone, Copy)]
pub(super) enum Write<'a> {
    Nothing,
    Data(&'a [u8]),
    CloseNotify,
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
            tcp: Rc::new(tcp),
            conn: UnbufferedServerConnection::new(config)?,
            input: Vec::new(),
            head: 0,
            output: Vec::new(),
            stash: Vec::new(),
            sni: None,
            eof: false,
            wide_idle: false,
            write_timeout,
        })
    }

    /// The socket's descriptor (for deadlines).
    pub fn fd(&self) -> RawFd {
        self.tcp.as_raw_fd()
    }

    /// The negotiated protocol, for the access log.
    pub fn version(&self) -> &'static str {
        match self.conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "-",
        }
    }

    /// Whether the client chose HTTP/2 in ALPN.
    pub fn is_h2(&self) -> bool {
        self.conn.alpn_protocol() == Some(b"h2")
    }

    /// Whether the handshake resumed an earlier session.
    pub fn resumed(&self) -> bool {
        self.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }

    /// The server name the client asked for (empty: none).
    pub fn sni(&self) -> &str {
        self.sni.as_deref().unwrap_or("")
    }

    /// One call into rustls with the unconsumed input (always all of it:
    /// rustls keeps positions in it while it joins a handshake message).
    /// Decrypted application data goes to `dst`, or to the stash when the
    /// caller is not reading; handshake records rustls emits, and what
    /// `write` asks for once rustls allows it, are queued in `output`.
    pub(super) fn process(
        &mut self,
        dst: Option<&mut Vec<u8>>,
        write: Write<'_>,
    ) -> Result<Step, StreamError> {
        let status = self.conn.process_tls_records(&mut self.input[self.head..]);
        // Taken after every call, so no name outlives the call whose
        // resolver set it (see `RESOLVED_SNI`).
        let sni = super::take_resolved_sni();
        if self.sni.is_none() {
            self.sni = sni;
        }
        let mut discard = status.discard;
        let step = match status.state {
            Err(e) => Err(StreamError::Tls(e)),
            Ok(ConnectionState::ReadTraffic(mut records)) => {
                let reading = dst.is_some();
                let out = match dst {
                    Some(d) => d,
                    None => &mut self.stash,
                };
                let before = out.len();
                let mut failed = None;
                while let Some(record) = records.next_record() {
                    match record {
                        Ok(r) => {
                            discard += r.discard;
                            out.extend_from_slice(r.payload);
                        }
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                match failed {
                    Some(e) => Err(e.into()),
                    None if reading && out.len() > before => Ok(Step::Data),
                    None => Ok(Step::Again),
                }
            }
            Ok(ConnectionState::EncodeTlsData(mut enc)) => {
                append(&mut self.output, 1024, |b| Ok(enc.encode(b)?)).map(|()| Step::Again)
            }
            // Queued records go out with the next socket write, in order.
            Ok(ConnectionState::TransmitTlsData(t)) => {
                t.done();
                Ok(Step::Again)
            }
            Ok(ConnectionState::WriteTraffic(mut w)) => match write {
                Write::Nothing => Ok(Step::NeedInput),
                Write::Data(data) => {
                    let hint = data.len() + (data.len() / RECORD + 1) * RECORD_OVERHEAD;
                    append(&mut self.output, hint, |b| Ok(w.encrypt(data, b)?))
                        .map(|()| Step::Written)
                }
                Write::CloseNotify => append(&mut self.output, RECORD_OVERHEAD, |b| {
                    Ok(w.queue_close_notify(b)?)
                })
                .map(|()| Step::Written),
            },
            Ok(ConnectionState::BlockedHandshake) => Ok(Step::NeedInput),
            Ok(ConnectionState::PeerClosed) => {
                self.eof = true;
                Ok(Step::PeerClosed)
            }
            Ok(ConnectionState::Closed) => {
                self.eof = true;
                Ok(Step::Closed)
            }
            // Early data is never enabled; anything newer is not handled.
            Ok(_) => Err(StreamError::Stalled),
        };
        self.head += discard;
        if self.head >= self.input.len() {
            self.head = 0;
            self.input.clear();
        }
        step
    }

    /// [`TlsStream::process`]; when rustls fails, the alert that explains
    /// it (queued first by rustls, so the next call hands it out without
    /// reading input) is sent, best effort.
    async fn step(
        &mut self,
        dst: Option<&mut Vec<u8>>,
        write: Write<'_>,
    ) -> Result<Step, StreamError> {
        match self.process(dst, write) {
            Err(StreamError::Tls(e)) => {
                if self.process(None, Write::Nothing).is_ok() && !self.output.is_empty() {
                    let _ = Box::pin(self.flush()).await;
                }
                Err(StreamError::Tls(e))
            }
            other => other,
        }
    }

    /// Reads the socket once; false at EOF. With nothing pending the read
    /// goes straight into a pooled buffer (`idle`: the idle wait's, small
    /// unless `wide_idle` and the worker's cap allow a full one) that
    /// becomes the input. Pending bytes stay where they are (rustls may
    /// hold positions in them) and the read goes to a buffer of its own,
    /// appended after: a read cut short by a deadline drops its own
    /// buffer, never bytes rustls has seen.
    async fn read_more(&mut self, idle: bool) -> Result<bool, StreamError> {
        if self.head >= self.input.len() {
            self.head = 0;
            give_back(std::mem::take(&mut self.input));
            let (buf, wide) = match idle {
                false => (buffers::take_read(), None),
                true if self.wide_idle => match buffers::take_wide_idle() {
                    Some((buf, guard)) => (buf, Some(guard)),
                    None => (buffers::take_small(), None),
                },
                true => (buffers::take_small(), None),
            };
            let (res, buf) = self.tcp.read(buf).await;
            drop(wide);
            if idle {
                self.wide_idle = matches!(res, Ok(n) if n >= buffers::SMALL);
            }
            self.input = buf;
            return self.after_read(res);
        }
        if self.input.len() - self.head >= MAX_INPUT {
            return Err(StreamError::Oversized);
        }
        let (res, buf) = self.tcp.read(buffers::take_read()).await;
        self.absorb(res, buf)
    }

    /// Takes in what a socket read into `buf` (a pooled read buffer) behind
    /// the pending input: false at EOF.
    pub(super) fn absorb(
        &mut self,
        res: io::Result<usize>,
        mut buf: Vec<u8>,
    ) -> Result<bool, StreamError> {
        if let Ok(n @ 1..) = res {
            if self.head >= self.input.len() {
                // Nothing pending: the read buffer becomes the input.
                self.head = 0;
                buf.truncate(n);
                give_back(std::mem::replace(&mut self.input, buf));
                return self.after_read(res);
            }
            if self.head > 0 {
                self.input.copy_within(self.head.., 0);
                self.input.truncate(self.input.len() - self.head);
                self.head = 0;
            }
            let need = self.input.len() + n;
            if need > self.input.capacity() && need <= buffers::READ {
                // Out of the small idle buffer into a pooled read buffer.
                let mut bigger = buffers::take_read();
                bigger.extend_from_slice(&self.input);
                give_back(std::mem::replace(&mut self.input, bigger));
            }
            self.input.extend_from_slice(&buf[..n]);
        }
        buffers::give_read(buf);
        self.after_read(res)
    }

    fn after_read(&mut self, res: io::Result<usize>) -> Result<bool, StreamError> {
        match res {
            Ok(0) => {
                self.eof = true;
                self.release_input();
                Ok(false)
            }
            Ok(_) => Ok(true),
            Err(e) => {
                self.release_input();
                Err(e.into())
            }
        }
    }

    /// Returns an input buffer holding nothing unconsumed to its pool.
    pub(super) fn release_input(&mut self) {
        if self.head >= self.input.len() && self.input.capacity() > 0 {
            self.head = 0;
            give_back(std::mem::take(&mut self.input));
        }
    }

    /// Waits for the client's next bytes on an idle keep-alive connection
    /// holding only the idle wait's read buffer; false at EOF. The bytes are
    /// decrypted on the next [`TlsStream::read_plain`]: this future stays
    /// small because an idle connection's task holds it (see
    /// `server::connection::serve`).
    pub async fn fill_idle(&mut self) -> Result<bool, StreamError> {
        if !self.stash.is_empty() || self.head < self.input.len() {
            return Ok(true);
        }
        if self.eof {
            return Ok(false);
        }
        if !self.output.is_empty() {
            // Boxed, and rare (records rustls queued while answering the
            // last request): a write's deadline would triple the idle future.
            Box::pin(self.flush()).await?;
        }
        self.read_more(true).await
    }

    /// Completes the handshake within `limit`.
    pub async fn handshake(&mut self, limit: Duration) -> Result<(), StreamError> {
        let fd = self.fd();
        deadline(fd, limit, async {
            // A resolver call of a connection that failed before taking
            // its name must not be taken for this one's.
            let _ = super::take_resolved_sni();
            if self.plain_http_first().await? {
                return Err(StreamError::PlainHttp);
            }
            loop {
                let step = self.step(None, Write::Nothing).await?;
                // Done, even when the client's first request came in the
                // same read (it waits in the stash or the input).
                if !self.conn.is_handshaking() {
                    break;
                }
                match step {
                    Step::Again | Step::Written | Step::Data => {}
                    Step::NeedInput => {
                        self.flush().await?;
                        if !self.read_more(false).await? {
                            return Err(StreamError::HandshakeEof);
                        }
                    }
                    Step::PeerClosed | Step::Closed => return Err(StreamError::HandshakeEof),
                }
            }
            // The last flight (and TLS 1.3 session tickets) go out now.
            while let Step::Again = self.step(None, Write::Nothing).await? {}
            self.flush().await?;
            self.release_input();
            Ok(())
        })
        .await
        .unwrap_or(Err(StreamError::TimedOut))
    }

    /// Reads the first bytes; if they are an HTTP request line rather than a
    /// TLS record, answers 400 in plain HTTP (when XDP does not reset it).
    async fn plain_http_first(&mut self) -> Result<bool, StreamError> {
        if !self.read_more(false).await? {
            return Err(StreamError::HandshakeEof);
        }
        if self.input.len() >= 4 {
            let head = [self.input[0], self.input[1], self.input[2], self.input[3]];
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
        Ok(false)
    }

    /// Appends available plaintext to `dst`, reading the socket as needed.
    /// Returns the bytes appended; 0 means the peer closed.
    pub async fn read_plain(&mut self, dst: &mut Vec<u8>) -> Result<usize, StreamError> {
        if !self.stash.is_empty() {
            dst.extend_from_slice(&self.stash);
            // Rare (pipelined requests met while answering): not kept.
            return Ok(std::mem::take(&mut self.stash).len());
        }
        let start = dst.len();
        loop {
            match self.step(Some(dst), Write::Nothing).await? {
                Step::Data => {
                    self.release_input();
                    return Ok(dst.len() - start);
                }
                Step::Again | Step::Written => {}
                Step::PeerClosed | Step::Closed => {
                    // rustls reads nothing after close_notify.
                    self.head = 0;
                    self.input.clear();
                    self.release_input();
                    return Ok(0);
                }
                Step::NeedInput => {
                    if self.eof {
                        return Ok(0);
                    }
                    if !self.output.is_empty() {
                        self.flush().await?;
                    }
                    if !self.read_more(false).await? {
                        return Ok(0);
                    }
                }
            }
        }
    }

    /// Encrypts `data` into `output` (records of up to 16 KiB), after
    /// whatever handshake records rustls has queued (a key update); records
    /// the client sent meanwhile are decrypted into the stash first.
    async fn encrypt(&mut self, data: &[u8]) -> Result<(), StreamError> {
        if data.is_empty() {
            return Ok(());
        }
        loop {
            match self.step(None, Write::Data(data)).await? {
                Step::Written => return Ok(()),
                // The client's close_notify: answers may still be sent.
                Step::Again | Step::PeerClosed => {}
                // Before the handshake ended, or after both closed.
                Step::NeedInput | Step::Closed | Step::Data => return Err(StreamError::Stalled),
            }
        }
    }

    /// Sends plaintext as few TLS records as possible (one per 16 KiB; the
    /// parts of a small response share one record) in one socket write
    /// per 64 KiB.
    pub async fn send(&mut self, parts: &[&[u8]]) -> Result<(), StreamError> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if parts.len() > 1 && total <= RECORD {
            let mut joined = buffers::take_write(total);
            for p in parts {
                joined.extend_from_slice(p);
            }
            let r = self.encrypt(&joined).await;
            buffers::give_write(joined);
            r?;
        } else {
            for p in parts {
                self.encrypt(p).await?;
                if self.output.len() >= MAX_QUEUED {
                    self.flush().await?;
                }
            }
        }
        self.flush().await
    }

    /// Sends the queued records in one socket write.
    pub async fn flush(&mut self) -> Result<(), StreamError> {
        if self.output.is_empty() {
            buffers::give_write(std::mem::take(&mut self.output));
            return Ok(());
        }
        let buf = std::mem::take(&mut self.output);
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
        // Each `Again` consumes a queued record or an input record (into
        // the stash, dropped with the stream): this ends.
        while let Ok(Step::Again | Step::PeerClosed) = self.process(None, Write::CloseNotify) {}
        if self.flush().await.is_err() {
            return;
        }
        let _ = self.tcp.shutdown(std::net::Shutdown::Write);
        if self.eof {
            return;
        }
        linger(&self.tcp).await;
    }

    /// The socket, shared: an HTTP/2 connection lingers on it once `h2`
    /// has closed the stream.
    pub fn socket(&self) -> Rc<TcpStream> {
        self.tcp.clone()
    }
}

/// Drains what the client still sends, for a moment, after the write side
/// was shut: see [`TlsStream::close`].
pub async fn linger(tcp: &TcpStream) {
    let fd = tcp.as_raw_fd();
    let until = std::time::Instant::now() + LINGER;
    let mut drained = 0;
    while drained < LINGER_BYTES {
        let left = until.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        match deadline(fd, left, tcp.read(buffers::take_read())).await {
            Some((Ok(n), b)) if n > 0 => {
                buffers::give_read(b);
                drained += n;
            }
            _ => break,
        }
    }
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;
