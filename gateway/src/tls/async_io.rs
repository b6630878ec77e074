//! A [`TlsStream`] as tokio's `AsyncRead + AsyncWrite`, for the `h2`
//! crate, which drives a connection by polling its I/O rather than awaiting
//! it (and interleaves reads and writes, so no single future can own the
//! stream).
//!
//! Two traps shape it. An io_uring operation completes only if the same
//! future is polled again: one made afresh in every `poll_read` would be
//! submitted again each time and never finish (tokio-uring#318), so the
//! read and the write in flight are each kept, boxed with the buffer they
//! own, across polls. And custom I/O spends none of tokio's cooperative
//! budget, which is what stops a peer that keeps a connection busy (a
//! CONTINUATION flood, RUSTSEC-2024-0332) from starving every other task
//! on the worker: each poll spends it here.
//!
//! rustls is only ever called synchronously: records are decrypted into the
//! stream's stash (plaintext handed out by `poll_read`) and written data is
//! encrypted into its output (sent by `poll_flush`). Next to HTTP/1.1,
//! which decrypts into the request buffer and encrypts from the response,
//! that is one more plaintext copy each way (`h2`'s own frame buffers).

use std::{
    borrow::BorrowMut,
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{
    StreamError, TlsStream,
    deadline::write_deadline,
    error::MAX_INPUT,
    stream::{MAX_QUEUED, Step, Write},
};
use crate::buffers;

type Read = Pin<Box<dyn Future<Output = (io::Result<usize>, Vec<u8>)>>>;
type Sent = Pin<Box<dyn Future<Output = Option<(io::Result<()>, Vec<u8>)>>>>;

/// A TLS stream polled as tokio I/O: owned (an HTTP/2 connection's), or
/// borrowed from the session for a while (a WebSocket tunnel's client
/// side, which hands the stream back to be closed).
pub struct TlsIo<S: BorrowMut<TlsStream> = TlsStream> {
    tls: S,
    /// Where the plaintext not yet handed out starts in the stash.
    plain_at: usize,
    /// The socket read in flight, if any.
    reading: Option<Read>,
    /// The socket write in flight, if any.
    sending: Option<Sent>,
    /// close_notify was queued.
    closing: bool,
    /// The last read filled a small buffer: the next takes a full one. An
    /// idle connection's read waits in 1 KiB, a busy one's in 8 KiB.
    wide: bool,
}

impl<S: BorrowMut<TlsStream>> TlsIo<S> {
    /// Wraps a stream whose handshake is done (plaintext that came with
    /// the handshake's last read is handed out first).
    pub fn new(tls: S) -> Self {
        Self {
            tls,
            plain_at: 0,
            reading: None,
            sending: None,
            closing: false,
            wide: false,
        }
    }

    /// Waits for the socket operations still in flight, after the socket
    /// was shut down (which completes a read). Dropping an io_uring
    /// operation does not cancel it: one left in flight holds the socket
    /// open, and one not yet submitted when the descriptor closes would run
    /// on whatever connection is given that descriptor number next.
    pub async fn settle(&mut self) {
        if let Some(op) = self.reading.take() {
            let (_, buf) = op.await;
            match buf.capacity() {
                buffers::READ => buffers::give_read(buf),
                _ => buffers::give_small(buf),
            }
        }
        if let Some(op) = self.sending.take() {
            let _ = op.await;
        }
    }

    /// Starts a socket read into a pooled buffer.
    fn start_read(&mut self) {
        let tcp = self.tls.borrow_mut().tcp.clone();
        let buf = match self.wide {
            true => buffers::take_read(),
            false => buffers::take_small(),
        };
        self.reading = Some(Box::pin(async move { tcp.read(buf).await }));
    }

    /// Drives the write in flight, starting one for queued output, until
    /// everything queued is sent.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if let Some(op) = self.sending.as_mut() {
                let done = ready!(op.as_mut().poll(cx));
                self.sending = None;
                match done {
                    None => return Poll::Ready(Err(io_error(StreamError::TimedOut))),
                    Some((res, mut buf)) => {
                        buf.clear();
                        buffers::give_write(buf);
                        res?;
                    }
                }
            }
            if self.tls.borrow_mut().output.is_empty() {
                return Poll::Ready(Ok(()));
            }
            let buf = std::mem::take(&mut self.tls.borrow_mut().output);
            let tcp = self.tls.borrow_mut().tcp.clone();
            let (fd, limit) = (
                self.tls.borrow_mut().fd(),
                self.tls.borrow_mut().write_timeout,
            );
            self.sending = Some(Box::pin(async move {
                write_deadline(fd, limit, tcp.write_all(buf)).await
            }));
        }
    }
}

/// A stream failure as tokio I/O reports it.
fn io_error(e: StreamError) -> io::Error {
    match e {
        StreamError::Io(e) => e,
        StreamError::TimedOut => io::Error::new(io::ErrorKind::TimedOut, e),
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

impl<S: BorrowMut<TlsStream> + Unpin> AsyncRead for TlsIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let coop = ready!(tokio::task::coop::poll_proceed(cx));
        loop {
            let stash = &mut this.tls.borrow_mut().stash;
            if this.plain_at < stash.len() {
                let n = out.remaining().min(stash.len() - this.plain_at);
                out.put_slice(&stash[this.plain_at..this.plain_at + n]);
                this.plain_at += n;
                if this.plain_at == stash.len() {
                    // Handed out: an idle connection keeps no plaintext
                    // buffer, nor the input it was decrypted from.
                    *stash = Vec::new();
                    this.plain_at = 0;
                    this.tls.borrow_mut().release_input();
                }
                coop.made_progress();
                return Poll::Ready(Ok(()));
            }
            if let Some(op) = this.reading.as_mut() {
                let (res, buf) = ready!(op.as_mut().poll(cx));
                this.reading = None;
                coop.made_progress();
                if let Ok(n) = res {
                    this.wide = n >= buf.capacity().min(buffers::SMALL);
                }
                match this.tls.borrow_mut().absorb(res, buf) {
                    Ok(true) => continue,
                    // EOF: what rustls holds is decrypted below, then EOF.
                    Ok(false) => {}
                    Err(e) => return Poll::Ready(Err(io_error(e))),
                }
            }
            match this.tls.borrow_mut().process(None, Write::Nothing) {
                Ok(Step::Again | Step::Written | Step::Data) => {}
                Ok(Step::NeedInput) => {
                    if this.tls.borrow_mut().eof {
                        return Poll::Ready(Ok(()));
                    }
                    if this.tls.borrow_mut().input.len() - this.tls.borrow_mut().head >= MAX_INPUT {
                        return Poll::Ready(Err(io_error(StreamError::Oversized)));
                    }
                    // Records rustls queued while reading (an alert, a key
                    // update's answer) go out now; h2's next flush completes it.
                    if !this.tls.borrow_mut().output.is_empty()
                        && this.sending.is_none()
                        && let Poll::Ready(Err(e)) = this.poll_send(cx)
                    {
                        return Poll::Ready(Err(e));
                    }
                    this.start_read();
                }
                Ok(Step::PeerClosed | Step::Closed) => return Poll::Ready(Ok(())),
                Err(e) => return Poll::Ready(Err(io_error(e))),
            }
        }
    }
}

impl<S: BorrowMut<TlsStream> + Unpin> AsyncWrite for TlsIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let coop = ready!(tokio::task::coop::poll_proceed(cx));
        // Backpressure: a client that does not read holds at most this much.
        if this.tls.borrow_mut().output.len() >= MAX_QUEUED || this.sending.is_some() {
            ready!(this.poll_send(cx))?;
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        loop {
            match this.tls.borrow_mut().process(None, Write::Data(data)) {
                Ok(Step::Written) => break,
                // Records the client sent meanwhile were stashed.
                Ok(Step::Again | Step::PeerClosed) => {}
                Ok(Step::NeedInput | Step::Closed | Step::Data) => {
                    return Poll::Ready(Err(io_error(StreamError::Stalled)));
                }
                Err(e) => return Poll::Ready(Err(io_error(e))),
            }
        }
        coop.made_progress();
        Poll::Ready(Ok(data.len()))
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
        if !this.closing {
            this.closing = true;
            while let Ok(Step::Again | Step::PeerClosed) =
                this.tls.borrow_mut().process(None, Write::CloseNotify)
            {}
        }
        ready!(this.poll_send(cx))?;
        let _ = this
            .tls
            .borrow_mut()
            .tcp
            .shutdown(std::net::Shutdown::Write);
        Poll::Ready(Ok(()))
    }
}
