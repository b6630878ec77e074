//! A gRPC call on an HTTP/2 stream, relayed to an HTTP/2 upstream
//! (`proxy::grpc` opens the upstream stream): messages both ways at once
//! within each side's window, the upstream's trailers to the client, and
//! the endings the gateway decides itself (its deadline, a failed
//! upstream) as gRPC statuses.

use std::{future::poll_fn, io, time::Duration};

use bytes::Bytes;
use h2::SendStream;

use super::{StreamIo, h2_error};
use crate::tls::StreamError;

/// A gRPC call relayed to an HTTP/2 upstream, as it ended.
pub struct Relayed {
    /// When the upstream's response head came (none: it never did).
    pub head_at: Option<std::time::Instant>,
    /// Response message bytes relayed.
    pub bytes: u64,
    /// The gRPC status the gateway ended the call with itself (the
    /// upstream's own trailers went through untouched otherwise).
    pub ended_by_gateway: Option<(u32, &'static str)>,
}

/// The gRPC status for a failure the gateway decides (its HTTP status).
pub fn grpc_status(http: u16) -> u32 {
    match http {
        401 => 16,                              // UNAUTHENTICATED
        403 => 7,                               // PERMISSION_DENIED
        429 => 8,                               // RESOURCE_EXHAUSTED
        400 | 411 | 413 | 414 | 415 | 431 => 3, // INVALID_ARGUMENT
        404 | 405 => 12,                        // UNIMPLEMENTED
        408 | 504 => 4,                         // DEADLINE_EXCEEDED
        502 | 503 => 14,                        // UNAVAILABLE
        500 => 13,                              // INTERNAL
        _ => 2,                                 // UNKNOWN
    }
}

/// `grpc-timeout` (RFC-less, the gRPC spec's `TimeoutValue TimeoutUnit`:
/// at most 8 digits, then H, M, S, m, u or n).
pub fn grpc_timeout(v: &[u8]) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n * 3600),
        b"M" => Duration::from_secs(n * 60),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Waits for room in `send` for up to `want` bytes, within `limit`.
async fn capacity(
    send: &mut SendStream<Bytes>,
    want: usize,
    limit: Duration,
) -> Result<usize, StreamError> {
    send.reserve_capacity(want);
    if send.capacity() > 0 {
        return Ok(send.capacity());
    }
    match tokio::time::timeout(limit, poll_fn(|cx| send.poll_capacity(cx))).await {
        Err(_) => Err(StreamError::TimedOut),
        Ok(None) => Err(StreamError::Io(io::ErrorKind::BrokenPipe.into())),
        Ok(Some(Err(e))) => Err(h2_error(e)),
        Ok(Some(Ok(n))) => Ok(n),
    }
}

impl StreamIo {
    /// Relays a gRPC call both ways at once until the upstream's response
    /// ends: the client's messages (then END_STREAM) to `up`, the
    /// upstream's head, messages and trailers to the client, each within
    /// the other side's window. An upstream that fails ends the call
    /// UNAVAILABLE; one that does not answer before `deadline`
    /// (`grpc-timeout`), DEADLINE_EXCEEDED; the upstream stream is reset
    /// then (dropped).
    pub async fn relay_grpc(
        &mut self,
        response: h2::client::ResponseFuture,
        mut up: SendStream<Bytes>,
        deadline: Option<std::time::Instant>,
    ) -> Relayed {
        let limit = self.conn.write_timeout;
        let respond = self.respond.clone();
        let body = &mut self.body;
        let mut body_done = self.body_done;
        let to_upstream = async {
            loop {
                if body_done {
                    break;
                }
                match body.data().await {
                    Some(Ok(mut data)) => {
                        let _ = body.flow_control().release_capacity(data.len());
                        while !data.is_empty() {
                            let n = match capacity(&mut up, data.len(), limit).await {
                                Ok(n) => n.min(data.len()),
                                Err(_) => return,
                            };
                            if up.send_data(data.split_to(n), false).is_err() {
                                return;
                            }
                        }
                    }
                    Some(Err(_)) => {
                        up.send_reset(h2::Reason::CANCEL);
                        return;
                    }
                    None => body_done = true,
                }
            }
            // Request trailers are gRPC's to define, and it defines none.
            let _ = up.send_data(Bytes::new(), true);
            std::future::pending::<()>().await
        };
        let mut out = Relayed {
            head_at: None,
            bytes: 0,
            ended_by_gateway: None,
        };
        let to_client = async {
            let resp = match response.await {
                Ok(r) => r,
                Err(_) => return Some((14, "upstream.closed")),
            };
            out.head_at = Some(std::time::Instant::now());
            let (mut parts, mut down) = resp.into_parts();
            for name in ["connection", "keep-alive", "transfer-encoding", "upgrade"] {
                parts.headers.remove(name);
            }
            let end = down.is_end_stream();
            let sent = respond
                .borrow_mut()
                .respond
                .send_response(::http::Response::from_parts(parts, ()), end);
            let mut send = match sent {
                Ok(s) => s,
                Err(_) => return None,
            };
            if end {
                return None;
            }
            loop {
                match down.data().await {
                    Some(Ok(mut data)) => {
                        let _ = down.flow_control().release_capacity(data.len());
                        out.bytes += data.len() as u64;
                        while !data.is_empty() {
                            let Ok(n) = capacity(&mut send, data.len(), limit).await else {
                                return None;
                            };
                            let n = n.min(data.len());
                            if send.send_data(data.split_to(n), false).is_err() {
                                return None;
                            }
                        }
                    }
                    Some(Err(_)) => {
                        respond.borrow_mut().send = Some(send);
                        return Some((14, "upstream.closed"));
                    }
                    None => break,
                }
            }
            match down.trailers().await {
                Ok(Some(t)) => {
                    let _ = send.send_trailers(t);
                }
                Ok(None) => {
                    let _ = send.send_data(Bytes::new(), true);
                }
                Err(_) => {
                    respond.borrow_mut().send = Some(send);
                    return Some((14, "upstream.closed"));
                }
            }
            None
        };
        let until = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        let ended = tokio::select! {
            ended = to_client => ended,
            () = to_upstream => None,
            () = until => Some((4, "grpc.deadline")),
        };
        // The head went (or the call ended) either way: what is left is
        // the gateway's own ending.
        self.responded = true;
        self.ended = true;
        if let Some((code, why)) = ended {
            self.end_grpc(code, why);
            out.ended_by_gateway = Some((code, why));
        }
        out
    }

    /// Ends a gRPC call with `code`: trailers after a head already sent,
    /// else a trailers-only response.
    fn end_grpc(&mut self, code: u32, message: &str) {
        let mut trailers = ::http::HeaderMap::new();
        trailers.insert("grpc-status", ::http::HeaderValue::from(code));
        if let Ok(v) = ::http::HeaderValue::from_str(message) {
            trailers.insert("grpc-message", v);
        }
        let mut r = self.respond.borrow_mut();
        match r.send.as_mut() {
            Some(send) => {
                let _ = send.send_trailers(trailers);
            }
            None => {
                let mut resp = ::http::Response::new(());
                trailers.insert(
                    ::http::header::CONTENT_TYPE,
                    ::http::HeaderValue::from_static("application/grpc"),
                );
                *resp.headers_mut() = trailers;
                let _ = r.respond.send_response(resp, true);
            }
        }
    }
}
