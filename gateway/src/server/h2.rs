//! An HTTP/2 connection: the `h2` crate speaks the protocol over the TLS
//! stream (`tls::TlsIo`), this module runs the connection (its limits, its
//! timeouts, the resets and floods that close it), and each stream runs
//! the same pipeline as an HTTP/1.1 request over a
//! [`StreamIo`](crate::session::h2::StreamIo) of its own, in a task of its own.

use std::{
    cell::{Cell, RefCell},
    future::poll_fn,
    net::SocketAddr,
    rc::Rc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::session::h2::{self as stream, ConnInfo, Responder, StreamIo};
use crate::{
    addr,
    config::Http2Settings,
    control::Event,
    pipeline,
    session::conn::{ClientIo, Conn, ms},
    tls::{self, TlsIo, TlsStream},
    worker::Worker,
};

/// How often a connection looks at the clock (idle, stopping, PING).
const TICK: Duration = Duration::from_millis(500);

/// What a connection's stream tasks tell it.
struct Watch {
    /// Streams being served.
    open: Cell<usize>,
    /// Streams accepted.
    opened: Cell<u64>,
    /// Streams the client reset within `premature_reset_ms` of opening.
    premature: Cell<u64>,
    /// Since when no stream is open.
    idle_since: Cell<Instant>,
    /// A stream ended.
    wake: Notify,
    /// `http2.premature_reset_ms`.
    premature_within: Duration,
}

/// Serves an HTTP/2 connection until it closes.
pub async fn serve(w: Rc<Worker>, tls: TlsStream, peer: SocketAddr) {
    let snap = w.shared.published.current();
    let s = snap.cfg.http2;
    let limits = snap.cfg.limits;
    let trusted = snap.is_trusted_proxy(peer.ip());
    drop(snap);
    let info = Rc::new(ConnInfo {
        tls_version: tls.version(),
        sni: tls.sni().into(),
        write_timeout: ms(limits.body_timeout_ms),
    });
    let fd = tls.fd();
    let socket = tls.socket();
    let handshake = {
        // Not in flight until the preface is in: stopping may cut it.
        let _idle = w.mark_idle(fd);
        tokio::time::timeout(
            ms(limits.header_timeout_ms),
            builder(&s).handshake::<_, Bytes>(TlsIo::new(tls)),
        )
        .await
    };
    let mut conn = match handshake {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!("{peer}: HTTP/2 preface failed: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!("{peer}: HTTP/2 preface timed out");
            return;
        }
    };
    let watch = Rc::new(Watch {
        open: Cell::new(0),
        opened: Cell::new(0),
        premature: Cell::new(0),
        idle_since: Cell::new(Instant::now()),
        wake: Notify::new(),
        premature_within: ms(s.premature_reset_ms),
    });
    let mut ping = (s.keepalive_interval_ms > 0)
        .then(|| conn.ping_pong())
        .flatten();
    let mut ping_sent: Option<Instant> = None;
    let mut first = true;
    let mut closing = false;
    let mut abuse = None;
    // One timer for the connection's life, not one per stream.
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            next = conn.accept() => match next {
                Some(Ok((req, respond))) => {
                    first = false;
                    w.tally.borrow_mut().h2_streams += 1;
                    start_stream(&w, &watch, &info, peer, req, respond);
                }
                Some(Err(e)) => {
                    tracing::debug!("{peer}: HTTP/2 connection ended: {e}");
                    if (e.is_go_away() && e.is_library())
                        || e.reason() == Some(::h2::Reason::ENHANCE_YOUR_CALM)
                    {
                        abuse.get_or_insert("h2");
                    }
                    break;
                }
                None => break,
            },
            _ = watch.wake.notified() => {
                let opened = watch.opened.get();
                if !closing
                    && opened >= s.premature_reset_streams
                    && watch.premature.get() * 2 > opened
                {
                    tracing::info!(
                        "{peer}: HTTP/2 connection closed: {} of its {opened} streams reset within {} ms (premature resets)",
                        watch.premature.get(),
                        s.premature_reset_ms,
                    );
                    conn.abrupt_shutdown(::h2::Reason::ENHANCE_YOUR_CALM);
                    closing = true;
                    abuse = Some("h2.premature_reset");
                }
            }
            pong = poll_fn(|cx| match ping.as_mut() {
                Some(p) if ping_sent.is_some() => p.poll_pong(cx),
                _ => std::task::Poll::Pending,
            }) => {
                ping_sent = None;
                if pong.is_err() {
                    break;
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                let open = watch.open.get();
                let idle_for = now.saturating_duration_since(watch.idle_since.get());
                let idle_limit = ms(if first {
                    limits.header_timeout_ms.min(limits.idle_timeout_ms)
                } else {
                    limits.idle_timeout_ms
                });
                if !closing && (w.stopping() || (open == 0 && idle_for >= idle_limit)) {
                    if open == 0 {
                        // Nothing in flight: GOAWAY naming the last stream
                        // served, and close now (a client that never
                        // answers the graceful PING cannot hold a stop).
                        conn.abrupt_shutdown(::h2::Reason::NO_ERROR);
                    } else {
                        // Streams in flight finish, no new ones start.
                        conn.graceful_shutdown();
                    }
                    closing = true;
                }
                if let Some(sent) = ping_sent {
                    if now.saturating_duration_since(sent) >= ms(s.keepalive_timeout_ms) {
                        tracing::debug!("{peer}: HTTP/2 PING unanswered, closing");
                        break;
                    }
                } else if let Some(p) = ping.as_mut()
                    && open == 0
                    && !closing
                    && idle_for >= ms(s.keepalive_interval_ms)
                    && p.send_ping(::h2::Ping::opaque()).is_ok()
                {
                    ping_sent = Some(now);
                }
            }
        }
    }
    // h2 has sent its last frames (GOAWAY) and shut the write side; bytes
    // the client sent meanwhile must not turn the close into a reset that
    // destroys them before the client reads them.
    drop(conn);
    let _ = socket.shutdown(std::net::Shutdown::Write);
    Box::pin(tls::linger(&socket)).await;
    if let Some(what) = abuse {
        w.tally.borrow_mut().h2_abuse += 1;
        if !trusted {
            tracing::debug!("{peer}: HTTP/2 abuse ({what}) reported");
            let source = addr::canonical(peer.ip());
            w.shared.events.report(Event::Attack { source });
        }
    }
}

/// The `h2` server with the configured limits.
fn builder(s: &Http2Settings) -> ::h2::server::Builder {
    let mut b = ::h2::server::Builder::new();
    b.max_concurrent_streams(s.max_concurrent_streams)
        .initial_window_size(s.stream_window_bytes)
        .initial_connection_window_size(s.connection_window_bytes)
        .max_header_list_size(s.max_header_list_bytes)
        .max_pending_accept_reset_streams(s.max_pending_reset_streams)
        .max_local_error_reset_streams(Some(s.max_local_error_resets))
        // What one stream's response may queue beyond the client's window.
        .max_send_buffer_size(64 * 1024);
    b
}

/// Runs one stream's request through the pipeline in a task of its own,
/// dropped at once when the client resets the stream.
fn start_stream(
    w: &Rc<Worker>,
    watch: &Rc<Watch>,
    info: &Rc<ConnInfo>,
    peer: SocketAddr,
    req: ::http::Request<::h2::RecvStream>,
    respond: ::h2::server::SendResponse<Bytes>,
) {
    watch.open.set(watch.open.get() + 1);
    watch.opened.set(watch.opened.get() + 1);
    let (w, watch, info) = (w.clone(), watch.clone(), info.clone());
    let opened = Instant::now();
    tokio_uring::spawn(async move {
        let (parts, body) = req.into_parts();
        let respond = Rc::new(RefCell::new(Responder::new(respond)));
        let has_body = !body.is_end_stream();
        let head_request = parts.method == ::http::Method::HEAD;
        let grpc = parts
            .headers
            .get(::http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let mut head = Vec::new();
        let written = stream::write_request_head(&parts, has_body, &mut head);
        let chunked = matches!(written, Ok(true));
        let reason = match written {
            Err(f) if f != stream::CONNECT => ::h2::Reason::PROTOCOL_ERROR,
            _ => ::h2::Reason::INTERNAL_ERROR,
        };
        let io = StreamIo::new(respond.clone(), body, chunked, head_request, grpc, info);
        let mut c = Conn::over(ClientIo::H2(io), peer, &w.shared.published);
        let work = async {
            match written {
                Ok(_) => {
                    c.with_head(|b| b.extend_from_slice(&head));
                    pipeline::handle_request(&w, &mut c).await;
                }
                // CONNECT is answered (405); a malformed request is a
                // stream error (RFC 9113 §8.1.1): logged, then reset below.
                Err(f) => pipeline::refuse(&w, &mut c, f, f == stream::CONNECT).await,
            }
        };
        let reset = poll_fn(|cx| respond.borrow_mut().poll_reset(cx));
        tokio::select! {
            biased;
            () = work => {}
            _ = reset => {
                if opened.elapsed() < watch.premature_within {
                    watch.premature.set(watch.premature.get() + 1);
                }
            }
        }
        if let ClientIo::H2(io) = &mut c.io {
            io.finish(reason);
        }
        c.release();
        let open = watch.open.get() - 1;
        watch.open.set(open);
        if open == 0 {
            watch.idle_since.set(Instant::now());
        }
        watch.wake.notify_one();
    });
}
