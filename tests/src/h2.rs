//! A raw HTTP/2 client over TLS, for the attacker's side of the tests: it
//! writes any frame and any header block (an HPACK encoder of literals,
//! never checking what it sends), and reads frames as they come.

use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::Arc,
    time::{Duration, Instant},
};

use rustls::pki_types::{CertificateDer, ServerName};

/// Frame types.
pub const DATA: u8 = 0x0;
/// HEADERS.
pub const HEADERS: u8 = 0x1;
/// RST_STREAM.
pub const RST_STREAM: u8 = 0x3;
/// SETTINGS.
pub const SETTINGS: u8 = 0x4;
/// PING.
pub const PING: u8 = 0x6;
/// GOAWAY.
pub const GOAWAY: u8 = 0x7;
/// WINDOW_UPDATE.
pub const WINDOW_UPDATE: u8 = 0x8;
/// CONTINUATION.
pub const CONTINUATION: u8 = 0x9;

/// Flags.
pub const END_STREAM: u8 = 0x1;
/// ACK (SETTINGS, PING).
pub const ACK: u8 = 0x1;
/// END_HEADERS.
pub const END_HEADERS: u8 = 0x4;

/// Error codes.
pub const PROTOCOL_ERROR: u32 = 0x1;
/// REFUSED_STREAM.
pub const REFUSED_STREAM: u32 = 0x7;
/// ENHANCE_YOUR_CALM.
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// One frame as read.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Its type.
    pub kind: u8,
    /// Its flags.
    pub flags: u8,
    /// Its stream.
    pub stream: u32,
    /// Its payload.
    pub payload: Vec<u8>,
}

impl Frame {
    /// The error code of a RST_STREAM or GOAWAY.
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            RST_STREAM => 0,
            GOAWAY => 4,
            _ => return None,
        };
        let b = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// The status of a response's HEADERS, when the block's first field
    /// is `:status` as a static-table entry or a literal of digits (what
    /// a fresh connection's first responses use).
    pub fn status(&self) -> Option<u16> {
        if self.kind != HEADERS {
            return None;
        }
        let block = &self.payload;
        let first = *block.first()?;
        if first & 0x80 != 0 {
            return match first & 0x7f {
                8 => Some(200),
                9 => Some(204),
                10 => Some(206),
                11 => Some(304),
                12 => Some(400),
                13 => Some(404),
                14 => Some(500),
                _ => None,
            };
        }
        // A literal whose name is `:status` (static 8..=14), any indexing.
        let name = if first & 0x40 != 0 {
            first & 0x3f
        } else {
            first & 0x0f
        };
        if !(8..=14).contains(&name) {
            return None;
        }
        let len_byte = *block.get(1)?;
        let len = usize::from(len_byte & 0x7f);
        let value = block.get(2..2 + len)?;
        let text = if len_byte & 0x80 != 0 {
            huffman_digits(value)?
        } else {
            String::from_utf8(value.to_vec()).ok()?
        };
        text.parse().ok()
    }
}

/// Decodes a Huffman-coded string of digits (RFC 7541 Appendix B).
fn huffman_digits(bytes: &[u8]) -> Option<String> {
    let codes: [(u32, u8); 10] = [
        (0b00000, 5),
        (0b00001, 5),
        (0b00010, 5),
        (0b011001, 6),
        (0b011010, 6),
        (0b011011, 6),
        (0b011100, 6),
        (0b011101, 6),
        (0b011110, 6),
        (0b011111, 6),
    ];
    let bits: Vec<u8> = bytes
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
        .collect();
    let mut out = String::new();
    let mut at = 0;
    'next: while at < bits.len() {
        for (d, (code, n)) in codes.iter().enumerate() {
            let n = usize::from(*n);
            if at + n > bits.len() {
                continue;
            }
            let v = bits[at..at + n]
                .iter()
                .fold(0u32, |acc, b| (acc << 1) | u32::from(*b));
            if v == *code {
                out.push(char::from(b'0' + d as u8));
                at += n;
                continue 'next;
            }
        }
        // Padding: the most significant bits of EOS (all ones).
        if bits[at..].iter().all(|b| *b == 1) && bits.len() - at < 8 {
            break;
        }
        return None;
    }
    Some(out)
}

/// A frame's bytes.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer with an `n`-bit prefix whose first byte starts as `first`.
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u8, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// A header block of literal fields without indexing, names and values
/// as given (uppercase, CR/LF, anything).
pub fn block(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        hpack_int(&mut out, 0, 7, name.len());
        out.extend_from_slice(name);
        hpack_int(&mut out, 0, 7, value.len());
        out.extend_from_slice(value);
    }
    out
}

/// The pseudo-headers of a request, then `extra`.
pub fn request<'a>(
    method: &'a str,
    path: &'a str,
    extra: &[(&'a [u8], &'a [u8])],
) -> Vec<(&'a [u8], &'a [u8])> {
    let mut f: Vec<(&[u8], &[u8])> = vec![
        (b":method", method.as_bytes()),
        (b":scheme", b"https"),
        (b":authority", b"localhost"),
        (b":path", path.as_bytes()),
    ];
    f.extend_from_slice(extra);
    f
}

/// A GET on stream `id` for `path`, reset at once (CANCEL): Rapid Reset's
/// two frames.
pub fn opened_and_reset(id: u32, path: &str) -> Vec<u8> {
    let mut out = frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        id,
        &block(&request("GET", path, &[])),
    );
    out.extend(frame(RST_STREAM, 0, id, &0x8u32.to_be_bytes()));
    out
}

/// A TLS connection speaking raw HTTP/2.
pub struct Raw {
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    buf: Vec<u8>,
}

/// A client TLS configuration trusting `ca` that offers only `h2`.
pub fn h2_config(ca: &CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).expect("CA");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(cfg)
}

impl Raw {
    /// Connects to 127.0.0.1:`port`, checks the server chose h2, and sends
    /// the preface and an empty SETTINGS.
    pub fn connect(port: u16, ca: &CertificateDer<'static>) -> std::io::Result<Self> {
        let tcp = TcpStream::connect(("127.0.0.1", port))?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        let name = ServerName::try_from("localhost").map_err(std::io::Error::other)?;
        let conn = rustls::ClientConnection::new(h2_config(ca), name.to_owned())
            .map_err(std::io::Error::other)?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        if tls.conn.alpn_protocol() != Some(b"h2") {
            return Err(std::io::Error::other("the server did not choose h2"));
        }
        let mut raw = Self {
            tls,
            buf: Vec::new(),
        };
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        raw.send(&hello)?;
        Ok(raw)
    }

    /// Sends bytes.
    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.tls.write_all(bytes)?;
        self.tls.flush()
    }

    /// Sends a request's HEADERS (END_HEADERS; END_STREAM when `end`).
    pub fn headers(
        &mut self,
        stream: u32,
        fields: &[(&[u8], &[u8])],
        end: bool,
    ) -> std::io::Result<()> {
        let flags = END_HEADERS | if end { END_STREAM } else { 0 };
        self.send(&frame(HEADERS, flags, stream, &block(fields)))
    }

    /// The next frame (SETTINGS and PING from the server are acknowledged,
    /// as any client does, and returned too); `None` at EOF or after `within`.
    pub fn next_frame(&mut self, within: Duration) -> Option<Frame> {
        let until = Instant::now() + within;
        loop {
            if self.buf.len() >= 9 {
                let len = (usize::from(self.buf[0]) << 16)
                    | (usize::from(self.buf[1]) << 8)
                    | usize::from(self.buf[2]);
                if self.buf.len() >= 9 + len {
                    let f = Frame {
                        kind: self.buf[3],
                        flags: self.buf[4],
                        stream: u32::from_be_bytes([
                            self.buf[5],
                            self.buf[6],
                            self.buf[7],
                            self.buf[8],
                        ]) & 0x7fff_ffff,
                        payload: self.buf[9..9 + len].to_vec(),
                    };
                    self.buf.drain(..9 + len);
                    if f.kind == SETTINGS && f.flags & ACK == 0 {
                        let _ = self.send(&frame(SETTINGS, ACK, 0, &[]));
                    }
                    if f.kind == PING && f.flags & ACK == 0 {
                        let _ = self.send(&frame(PING, ACK, 0, &f.payload));
                    }
                    return Some(f);
                }
            }
            if Instant::now() >= until {
                return None;
            }
            let left = until.saturating_duration_since(Instant::now());
            let _ = self
                .tls
                .sock
                .set_read_timeout(Some(left.max(Duration::from_millis(1))));
            let mut tmp = [0u8; 16384];
            match self.tls.read(&mut tmp) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return None,
            }
        }
    }

    /// Reads frames until one satisfies `want` (returned), or EOF or
    /// `within` passes (`None`); every frame read is kept in `seen`.
    pub fn until(
        &mut self,
        within: Duration,
        seen: &mut Vec<Frame>,
        want: impl Fn(&Frame) -> bool,
    ) -> Option<Frame> {
        let until = Instant::now() + within;
        while let Some(f) = self.next_frame(until.saturating_duration_since(Instant::now())) {
            seen.push(f.clone());
            if want(&f) {
                return Some(f);
            }
        }
        None
    }

    /// Whether the server closed the connection within `within` (frames
    /// read meanwhile go to `seen`).
    pub fn closed_within(&mut self, within: Duration, seen: &mut Vec<Frame>) -> bool {
        let until = Instant::now() + within;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match self.next_frame(left) {
                Some(f) => seen.push(f),
                None => return Instant::now() < until,
            }
        }
    }
}
