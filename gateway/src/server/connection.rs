//! The loop over one client connection's requests: TLS handshake, then
//! read a head, hand it to the pipeline, until either side closes. A
//! client that chose HTTP/2 in ALPN is served by `session::h2` instead.

use std::{net::SocketAddr, rc::Rc};

use tokio_uring::net::TcpStream;

use crate::{
    pipeline,
    respond::Failure,
    session::conn::{ClientIo, Conn, ms},
    session::{
        self, Answer,
        h1::{self, Head},
    },
    tls::TlsStream,
    worker::Worker,
};

/// Serves one accepted connection until it closes.
///
/// This future lives as long as the connection, and its size is that of
/// its largest state: the handshake, a request and the close are boxed, and
/// so is the connection's state, so an idle keep-alive connection costs
/// only what waiting for a head needs (README: memory per idle connection).
pub async fn serve(w: Rc<Worker>, tcp: TcpStream, peer: SocketAddr) {
    let Some(tls) = Box::pin(handshake(&w, tcp, peer)).await else {
        return;
    };
    if tls.is_h2() {
        Box::pin(super::h2::serve(w, tls, peer)).await;
        return;
    }
    let mut c = Box::new(Conn::new(tls, peer, &w.shared.published));
    let mut first = true;
    loop {
        c.refresh(&w.shared.published);
        if !await_request(&w, &mut c, first).await || !Box::pin(request(&w, &mut c)).await {
            break;
        }
        first = false;
    }
    c.release();
    if let ClientIo::H1(tls) = c.io {
        Box::pin(tls.close()).await;
    }
}

/// Waits until the next request's first bytes arrive (at once when
/// pipelined ones are pending); false when the connection should close.
/// The first request gets the header timeout, not the idle one: a client
/// that completes TLS and sends nothing holds its connection no longer
/// than one that sends a head slowly.
async fn await_request(w: &Worker, c: &mut Conn, first: bool) -> bool {
    if !c.pending().is_empty() {
        return true;
    }
    if w.stopping() {
        return false;
    }
    // Idle: the scratch buffers go back to the pool, and stopping may cut it.
    let ClientIo::H1(tls) = &c.io else {
        return false;
    };
    let fd = tls.fd();
    let limits = &c.snap().cfg.limits;
    let limit = ms(if first {
        limits.header_timeout_ms.min(limits.idle_timeout_ms)
    } else {
        limits.idle_timeout_ms
    });
    c.park();
    let idle = w.mark_idle(fd);
    let r = c.await_bytes(limit).await;
    drop(idle);
    matches!(r, Some(Ok(true)))
}

/// Reads the rest of a head and hands it to the pipeline; false when the
/// connection should close.
async fn request(w: &Worker, c: &mut Conn) -> bool {
    match h1::read_head(c).await {
        Head::Ready => {}
        Head::Closed => return false,
        Head::TimedOut => {
            // A head that never completed earned no lines of its own, and
            // must not carry the last request's (its CORS, its limits).
            c.req.extras.clear();
            let _ = session::answer(c, Answer::Failure(Failure::HEADER_TIMEOUT), false, &[]).await;
            return false;
        }
    }
    pipeline::handle_request(w, c).await && !w.stopping()
}

/// The TLS handshake, counted; the stream once it succeeded.
async fn handshake(w: &Worker, tcp: TcpStream, peer: SocketAddr) -> Option<TlsStream> {
    let _ = tcp.set_nodelay(true);
    let snap = w.shared.published.current();
    let limits = snap.cfg.limits;
    let mut tls = match TlsStream::new(tcp, snap.tls.clone(), ms(limits.body_timeout_ms)) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!("{peer}: cannot start TLS: {e}");
            return None;
        }
    };
    // A connection still in its handshake is not in flight: stopping may cut it.
    let fd = tls.fd();
    let idle = w.mark_idle(fd);
    let handshake = tls.handshake(ms(limits.header_timeout_ms)).await;
    drop(idle);
    let mut t = w.tally.borrow_mut();
    match handshake {
        Ok(()) => {
            t.handshakes += 1;
            t.resumed += u64::from(tls.resumed());
            t.h2_connections += u64::from(tls.is_h2());
            Some(tls)
        }
        Err(e) => {
            t.handshake_failures += 1;
            tracing::debug!("{peer}: TLS handshake failed: {e}");
            None
        }
    }
}
