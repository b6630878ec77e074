//! The loop over one client connection's requests: TLS handshake, then
//! read a head, hand it to the pipeline, until either side closes.

use std::{net::SocketAddr, rc::Rc, time::Instant};

use tokio_uring::net::TcpStream;

use crate::{
    config::Limits,
    conn::{Conn, ms},
    http, pipeline,
    respond::Failure,
    tls::TlsStream,
    worker::Worker,
};

/// Serves one accepted connection until it closes.
pub async fn serve(w: Rc<Worker>, tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let snap = w.shared.published.current();
    let limits = snap.cfg.limits;
    let mut tls = match TlsStream::new(tcp, snap.tls.clone(), ms(limits.body_timeout_ms)) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!("{peer}: cannot start TLS: {e}");
            return;
        }
    };
    // A connection still in its handshake is not in flight: stopping may cut it.
    let fd = tls.fd();
    w.idle.borrow_mut().insert(fd);
    let handshake = tls.handshake(ms(limits.header_timeout_ms)).await;
    w.idle.borrow_mut().remove(&fd);
    {
        let mut t = w.tally.borrow_mut();
        match &handshake {
            Ok(()) => {
                t.handshakes += 1;
                t.resumed += u64::from(tls.resumed());
            }
            Err(_) => t.handshake_failures += 1,
        }
    }
    if let Err(e) = handshake {
        tracing::debug!("{peer}: TLS handshake failed: {e}");
        return;
    }
    let mut c = Conn::new(tls, peer, &w.shared.published);
    loop {
        c.refresh(&w.shared.published);
        match next_head(&w, &mut c).await {
            Head::Ready => {}
            Head::Closed => break,
            Head::TimedOut => {
                c.send_failure(Failure::HEADER_TIMEOUT, false).await;
                break;
            }
        }
        if !pipeline::handle_request(&w, &mut c).await || w.stopping() {
            break;
        }
    }
    c.tls.close().await;
}

enum Head {
    Ready,
    Closed,
    TimedOut,
}

/// Reads until the pending bytes hold a complete head (or enough to refuse it).
async fn next_head(w: &Worker, c: &mut Conn) -> Head {
    let limits = c.snap().cfg.limits;
    let mut header_deadline: Option<Instant> = None;
    loop {
        if head_decidable(c.pending(), &limits) {
            return Head::Ready;
        }
        let limit = match header_deadline {
            // Waiting for the first byte of a request: the idle timeout.
            None if c.pending().is_empty() => {
                if w.stopping() {
                    return Head::Closed;
                }
                ms(limits.idle_timeout_ms)
            }
            None => {
                let d = Instant::now() + ms(limits.header_timeout_ms);
                header_deadline = Some(d);
                ms(limits.header_timeout_ms)
            }
            Some(d) => d.saturating_duration_since(Instant::now()),
        };
        let idle = c.pending().is_empty();
        if idle {
            w.idle.borrow_mut().insert(c.tls.fd());
        }
        let r = c.read_within(limit).await;
        if idle {
            w.idle.borrow_mut().remove(&c.tls.fd());
        }
        match r {
            None if idle => return Head::Closed,
            None => return Head::TimedOut,
            Some(Ok(0)) | Some(Err(_)) => return Head::Closed,
            Some(Ok(_)) => {
                if header_deadline.is_none() {
                    header_deadline = Some(Instant::now() + ms(limits.header_timeout_ms));
                }
            }
        }
    }
}

/// Whether `buf` holds a whole head, or enough to refuse one.
fn head_decidable(buf: &[u8], limits: &Limits) -> bool {
    if buf.is_empty() {
        return false;
    }
    let line_too_long = !buf[..buf.len().min(limits.max_request_line_bytes + 1)].contains(&b'\n')
        && buf.len() > limits.max_request_line_bytes;
    let bad_endings = http::check_line_endings(buf.strip_suffix(b"\r").unwrap_or(buf)).is_err();
    http::head_end(buf).is_some()
        || buf.len() > limits.max_header_bytes
        || line_too_long
        || bad_endings
}
