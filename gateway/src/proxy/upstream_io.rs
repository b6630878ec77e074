//! An upstream connection that switched protocols, as tokio's
//! `AsyncRead + AsyncWrite`, so a tunnel can read and write it at once
//! (`tunnel`). Like `tls::TlsIo` on the client side, each io_uring
//! operation in flight is kept, boxed with the buffer it owns, across
//! polls (one made afresh in every poll would never complete,
//! tokio-uring#318), each poll spends tokio's cooperative budget, and on a
//! TLS hop rustls is only called synchronously. At most one read and one
//! write are in flight, so a side that stops reading holds a bounded
//! amount here.

use std::{
    future::Future,
    io::{self, Read as _, Write as _},
    pin::Pin,
    rc::Rc,
    task::{Context, Poll, ready},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_uring::net::TcpStream;

use super::upstream_conn::{Session, UpstreamConn, invalid};
use crate::buffers;

type ReadOp = Pin<Box<dyn Future<Output = (io::Result<usize>, Vec<u8>)>>>;
type SendOp = Pin<Box<dyn Future<Output = (io::Result<()>, Vec<u8>)>>>;

/// An upstream connection polled as tokio I/O.
pub struct UpstreamIo {
    tcp: Rc<TcpStream>,
    /// Plaintext not yet handed out is `plain[at..]` (on a plain hop, what
    /// the socket gave; the first bytes are what came after the 101).
    plain: Vec<u8>,
    at: usize,
    tls: Option<Box<Session>>,
    reading: Option<ReadOp>,
    sending: Option<SendOp>,
    /// Bytes waiting for the next socket write (records on a TLS hop).
    queued: Vec<u8>,
    /// The last written buffer, for the next write.
    spare: Vec<u8>,
    /// The socket ended.
    eof: bool,
    /// close_notify was queued.
    closing: bool,
    /// The last read filled its buffer.
    wide: bool,
}

impl UpstreamIo {
    /// Takes over `conn` (never pooled again): what it read past the
    /// response head is handed out first.
    pub fn new(conn: UpstreamConn) -> Self {
        let UpstreamConn {
            tcp,
            buf,
            start,
            tls,
            ..
        } = conn;
        Self {
            tcp: Rc::new(tcp),
            plain: buf,
            at: start,
            tls,
            reading: None,
            sending: None,
            queued: Vec::new(),
            spare: Vec::new(),
            eof: false,
            closing: false,
            wide: false,
        }
    }

    /// Waits for the socket operations still in flight, after the socket
    /// was shut down: see `tls::TlsIo::settle`.
    pub async fn settle(&mut self) {
        if let Some(op) = self.reading.take() {
            let (_, buf) = op.await;
            give_back(buf);
        }
        if let Some(op) = self.sending.take() {
            let _ = op.await;
        }
    }

    /// The socket's descriptor.
    pub fn fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd as _;
        self.tcp.as_raw_fd()
    }

    /// Drives the write in flight, starting one for queued bytes, until
    /// everything queued is sent.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if let Some(op) = self.sending.as_mut() {
                let (res, mut buf) = ready!(op.as_mut().poll(cx));
                self.sending = None;
                buf.clear();
                self.spare = buf;
                res?;
            }
            if let Some(s) = self.tls.as_mut() {
                while s.conn.wants_write() {
                    s.conn.write_tls(&mut self.queued)?;
                }
            }
            if self.queued.is_empty() {
                return Poll::Ready(Ok(()));
            }
            let buf = std::mem::replace(&mut self.queued, std::mem::take(&mut self.spare));
            let tcp = self.tcp.clone();
            self.sending = Some(Box::pin(async move { tcp.write_all(buf).await }));
        }
    }
}

/// Returns a read buffer to the worker's pools (one of another size is
/// dropped).
fn give_back(b: Vec<u8>) {
    match b.capacity() {
        buffers::SMALL => buffers::give_small(b),
        buffers::READ => buffers::give_read(b),
        _ => {}
    }
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let coop = ready!(tokio::task::coop::poll_proceed(cx));
        loop {
            if this.at < this.plain.len() {
                let n = out.remaining().min(this.plain.len() - this.at);
                out.put_slice(&this.plain[this.at..this.at + n]);
                this.at += n;
                if this.at == this.plain.len() {
                    // Handed out: an idle tunnel keeps no read buffer.
                    give_back(std::mem::take(&mut this.plain));
                    this.at = 0;
                }
                coop.made_progress();
                return Poll::Ready(Ok(()));
            }
            let mut flush = false;
            if let Some(s) = this.tls.as_mut() {
                let st = s.conn.process_new_packets().map_err(invalid)?;
                if st.plaintext_bytes_to_read() > 0 {
                    let n = s.conn.reader().read(out.initialize_unfilled())?;
                    out.advance(n);
                    coop.made_progress();
                    return Poll::Ready(Ok(()));
                }
                if st.peer_has_closed() {
                    return Poll::Ready(Ok(()));
                }
                // An alert or a key update's answer goes out with the
                // next write, or now.
                flush = s.conn.wants_write();
                if s.feed()? {
                    continue;
                }
            }
            if flush
                && this.sending.is_none()
                && let Poll::Ready(Err(e)) = this.poll_send(cx)
            {
                return Poll::Ready(Err(e));
            }
            if this.eof {
                return Poll::Ready(match this.tls {
                    None => Ok(()),
                    Some(_) => Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the upstream closed its TLS stream without close_notify",
                    )),
                });
            }
            let wide = this.wide;
            let op = this.reading.get_or_insert_with(|| {
                let tcp = this.tcp.clone();
                let buf = if wide {
                    buffers::take_read()
                } else {
                    buffers::take_small()
                };
                Box::pin(async move { tcp.read(buf).await })
            });
            let (res, buf) = ready!(op.as_mut().poll(cx));
            this.reading = None;
            coop.made_progress();
            let n = res?;
            // A read that filled its buffer asks for a full one next; an
            // idle connection waits in a small one.
            this.wide = n == buf.capacity();
            if n == 0 {
                this.eof = true;
                continue;
            }
            match this.tls.as_mut() {
                Some(s) => {
                    give_back(std::mem::replace(&mut s.raw, buf));
                    s.fed = 0;
                }
                None => {
                    this.plain = buf;
                    this.at = 0;
                }
            }
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let coop = ready!(tokio::task::coop::poll_proceed(cx));
        // One write in flight: a server that does not read holds at most
        // that much here.
        if this.sending.is_some() || !this.queued.is_empty() {
            ready!(this.poll_send(cx))?;
        }
        let n = match this.tls.as_mut() {
            None => {
                this.queued.extend_from_slice(data);
                data.len()
            }
            Some(s) => s.conn.writer().write(data)?,
        };
        // Starts the write; it completes as the tunnel flushes.
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        coop.made_progress();
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let coop = ready!(tokio::task::coop::poll_proceed(cx));
        ready!(this.poll_send(cx))?;
        coop.made_progress();
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(s) = this.tls.as_mut().filter(|_| !this.closing) {
            s.conn.send_close_notify();
        }
        this.closing = true;
        ready!(this.poll_send(cx))?;
        let _ = this.tcp.shutdown(std::net::Shutdown::Write);
        Poll::Ready(Ok(()))
    }
}
