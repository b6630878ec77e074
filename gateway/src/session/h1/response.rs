//! A proxied response as an HTTP/1.1 client gets it: the upstream's head
//! rewritten (hop-by-hop fields and the ones the gateway sets dropped, its
//! own lines added), and the body framed for the client as it is relayed.
//! The proxy reads the upstream's framing; what the client reads is
//! decided here.

use std::io::Write as _;

use crate::{
    http::{self, Framing, is_hop_by_hop},
    session::conn::Conn,
    tls::StreamError,
};

/// What the head's rewrite needs to know of the client's request.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    /// It asked with HEAD (the body is left out, its length kept).
    pub head_request: bool,
    /// It speaks HTTP/1.0 (no chunked framing).
    pub http10: bool,
    /// Its connection stays open after this response.
    pub keep: bool,
    /// Its transport frames the body itself (an HTTP/2 stream): no
    /// chunked encoding.
    pub framed: bool,
}

/// How the client's copy of a body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    /// As it comes: a known length, or an HTTP/1.0 body ended by the close.
    Raw,
    /// Chunked (the upstream's chunks, or a body it ends by closing).
    Chunked,
}

/// A response body on its way to the client: the head goes with the first
/// bytes (one write for a small response), then data as it is relayed.
#[derive(Debug)]
#[must_use = "the head is sent with the body's first bytes or by finish"]
pub struct BodyOut {
    frame: Frame,
    head_sent: bool,
}

/// Writes the client's response head for the upstream's `resp` into
/// `out`: every field of the upstream's but the hop-by-hop ones (and those
/// its `Connection` names), the framing fields and the ones `overridden`
/// (the gateway sets its own), then `added` (the route's headers, the
/// request's rate-limit and CORS lines). Returns how the body that follows
/// is framed.
pub fn write_response_head(
    out: &mut Vec<u8>,
    resp: &http::response::ResponseHead<'_, '_>,
    client: Client,
    added: [&[u8]; 4],
    overridden: impl Fn(&str) -> bool,
) -> BodyOut {
    out.clear();
    let _ = write!(out, "HTTP/1.1 {} {}\r\n", resp.code, resp.reason);
    let has_connection = resp
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("connection"));
    // HEAD and 304 keep the upstream's Content-Length: it describes the
    // representation, not this (empty) body.
    let keep_length = client.head_request || resp.code == 304;
    for h in resp.headers {
        let name = h.name;
        let is_length = name.eq_ignore_ascii_case("content-length");
        if is_hop_by_hop(name)
            || (is_length && !keep_length)
            || (has_connection && http::named_by_connection(resp.headers, name))
            || overridden(name)
        {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    let frame = match resp.framing {
        Framing::Length(n) => {
            let _ = write!(out, "content-length: {n}\r\n");
            Frame::Raw
        }
        Framing::Chunked | Framing::UntilClose if !client.http10 && !client.framed => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            Frame::Chunked
        }
        Framing::Chunked | Framing::UntilClose | Framing::None => Frame::Raw,
    };
    for lines in added {
        out.extend_from_slice(lines);
    }
    let close = !client.keep
        || (client.http10 && matches!(resp.framing, Framing::Chunked | Framing::UntilClose));
    if resp.code == 101 {
        // The proxy accepts a 101 only as the switch to WebSocket the
        // client asked for.
        out.extend_from_slice(b"connection: upgrade\r\nupgrade: websocket\r\n");
    } else if close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if client.http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    BodyOut {
        frame,
        head_sent: false,
    }
}

impl BodyOut {
    /// Sends `data` (the body's next bytes, never framing), after the head
    /// when it is still unsent. Empty data sends only a pending head: an
    /// empty chunk would end a chunked body.
    pub async fn send(&mut self, c: &mut Conn, data: &[u8]) -> Result<(), StreamError> {
        let mut out = std::mem::take(&mut c.req.wire.out);
        if self.head_sent {
            out.clear();
        }
        let sent = match self.frame {
            _ if data.is_empty() && self.head_sent => Ok(()),
            Frame::Raw if self.head_sent => c.io.send(&[data]).await,
            Frame::Raw if data.is_empty() => c.io.send(&[&out]).await,
            Frame::Raw => c.io.send(&[&out, data]).await,
            Frame::Chunked => {
                // One write: the size line and CRLF around the data, after
                // the head when it goes now.
                if !data.is_empty() {
                    http::chunked::push_size_line(&mut out, data.len() as u64);
                    out.extend_from_slice(data);
                    out.extend_from_slice(b"\r\n");
                }
                c.io.send(&[&out]).await
            }
        };
        self.head_sent = true;
        c.req.wire.out = out;
        sent
    }

    /// Ends the body: the last chunk of a chunked one (the head too, when
    /// no data came); over HTTP/2, the stream.
    pub async fn finish(mut self, c: &mut Conn) -> Result<(), StreamError> {
        match self.frame {
            Frame::Raw => {
                self.send(c, b"").await?;
                c.io.end_body().await
            }
            Frame::Chunked => {
                let mut out = std::mem::take(&mut c.req.wire.out);
                if self.head_sent {
                    out.clear();
                }
                out.extend_from_slice(b"0\r\n\r\n");
                let sent = c.io.send(&[&out]).await;
                self.head_sent = true;
                c.req.wire.out = out;
                sent
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &[u8], client: Client) -> (String, BodyOut) {
        let mut hdrs = [httparse::EMPTY_HEADER; 16];
        let resp = http::response::parse(raw, &mut hdrs, 8192, client.head_request)
            .expect("parses")
            .expect("whole");
        let mut out = Vec::new();
        let body = write_response_head(
            &mut out,
            &resp,
            client,
            [b"x-frame-options: DENY\r\n", b"", b"", b""],
            |n| n.eq_ignore_ascii_case("x-frame-options"),
        );
        (String::from_utf8(out).expect("utf8"), body)
    }

    #[test]
    fn the_head_drops_hop_by_hop_and_overridden_fields_and_frames_for_the_client() {
        let keep = Client {
            head_request: false,
            http10: false,
            keep: true,
            framed: false,
        };
        let (h, body) = head(
            b"HTTP/1.1 200 OK\r\nConnection: x-secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nX-Frame-Options: ALLOW\r\nContent-Length: 2\r\nX-Kept: y\r\n\r\n",
            keep,
        );
        assert_eq!(
            h,
            "HTTP/1.1 200 OK\r\nx-kept: y\r\ncontent-length: 2\r\nx-frame-options: DENY\r\n\r\n"
                .replace("x-kept", "X-Kept")
        );
        assert_eq!(body.frame, Frame::Raw);
        // A body the upstream ends by closing is chunked for an HTTP/1.1
        // client, raw (and the connection closed) for an HTTP/1.0 one.
        let close = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n";
        let (h, body) = head(close, keep);
        assert!(h.contains("transfer-encoding: chunked\r\n"), "{h}");
        assert_eq!(body.frame, Frame::Chunked);
        let (h, body) = head(
            close,
            Client {
                http10: true,
                ..keep
            },
        );
        assert!(!h.contains("transfer-encoding"), "{h}");
        assert!(h.contains("connection: close\r\n"), "{h}");
        assert_eq!(body.frame, Frame::Raw);
    }

    #[test]
    fn head_and_304_keep_the_length_that_describes_the_representation() {
        let client = Client {
            head_request: true,
            http10: false,
            keep: true,
            framed: false,
        };
        let (h, _) = head(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", client);
        assert_eq!(
            h,
            "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nx-frame-options: DENY\r\n\r\n"
        );
    }
}
