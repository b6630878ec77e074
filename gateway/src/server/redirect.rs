//! The plain-HTTP listener: every request is answered with 308 to the same
//! URL over HTTPS. Its connections share the worker's cap and its shutdown
//! accounting with HTTPS connections.

use std::{
    os::fd::AsRawFd,
    rc::Rc,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use tokio_uring::net::{TcpListener, TcpStream};

use crate::{http::MAX_HEADERS, worker::Worker};

pub(super) async fn accept_loop(w: Rc<Worker>, listener: TcpListener) {
    loop {
        let accepted = listener.accept().await;
        if w.shared.stopping.load(Ordering::Relaxed) {
            return;
        }
        let Ok((stream, peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        // Redirects share the worker's connection cap and its shutdown
        // accounting with HTTPS connections.
        if w.full(peer) {
            drop(stream);
            continue;
        }
        w.spawn_connection(|w| async move { redirect(&w, stream).await });
    }
}

/// Answers one plain-HTTP request with 308 to the same URL over HTTPS.
async fn redirect(w: &Worker, stream: TcpStream) {
    let snap = w.shared.published.current();
    let cfg = &snap.cfg;
    let limits = cfg.limits;
    let fd = stream.as_raw_fd();
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let deadline = Instant::now() + Duration::from_millis(limits.header_timeout_ms);
    loop {
        if crate::http::head_end(&buf).is_some() || buf.len() > limits.max_header_bytes {
            break;
        }
        use tokio_uring::buf::BoundedBuf as _;
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        let len = buf.len();
        let left = deadline.saturating_duration_since(Instant::now());
        // Until its first byte the connection is idle: stopping may cut it.
        let idle = buf.is_empty();
        if idle {
            if w.stopping() {
                return;
            }
            w.idle.borrow_mut().insert(fd);
        }
        let read =
            crate::tls::deadline(fd, left, stream.read(std::mem::take(&mut buf).slice(len..)))
                .await;
        if idle {
            w.idle.borrow_mut().remove(&fd);
        }
        let Some((res, slice)) = read else { return };
        buf = slice.into_inner();
        match res {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
    let mut hdrs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let head_limits = crate::http::request::HeadLimits {
        max_request_line: limits.max_request_line_bytes,
        max_head: limits.max_header_bytes,
    };
    let max = limits.max_headers.min(MAX_HEADERS);
    let response = match crate::http::request::parse(&buf, &mut hdrs[..max], &head_limits) {
        Ok(Some(head)) => {
            let host = if head.host.is_empty() {
                // An HTTP/1.0 request without Host: the listen address,
                // bracketed if IPv6 (RFC 3986 §3.2.2).
                match cfg.https.ip() {
                    std::net::IpAddr::V4(ip) => ip.to_string(),
                    std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                }
            } else {
                crate::route::host_without_port(head.host).to_owned()
            };
            let port = cfg.https.port();
            let authority = if port == 443 {
                host
            } else {
                format!("{host}:{port}")
            };
            // `OPTIONS *` names the server, not a resource: its root.
            let target = if head.target == "*" { "/" } else { head.target };
            let location = format!("https://{authority}{target}");
            let mut out = format!(
                "HTTP/1.1 308 Permanent Redirect\r\nlocation: {location}\r\ncontent-length: 0\r\nconnection: close\r\n"
            )
            .into_bytes();
            // The security headers every answer carries (HSTS only over TLS).
            out.extend_from_slice(snap.filters.plain_lines());
            out.extend_from_slice(b"\r\n");
            out
        }
        Ok(None) | Err(_) => {
            let mut out = Vec::new();
            crate::session::h1::write_failure(
                &mut out,
                crate::respond::Failure::http(crate::http::HttpError::Malformed),
                true,
                &[snap.filters.plain_lines()],
            );
            out
        }
    };
    let (_, _) = stream.write_all(response).await;
    let _ = stream.shutdown(std::net::Shutdown::Both);
}
