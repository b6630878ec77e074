//! Chunked transfer coding (RFC 9112 §7.1), decoded incrementally as bytes
//! arrive and re-encoded canonically for the next hop (or, for an HTTP/1.0
//! peer, passed on as plain data): chunk extensions are validated and
//! dropped; trailers are validated and dropped too, because a next hop that
//! merged them into the header section would see fields (forwarding,
//! framing) the gateway never vetted.

use super::HttpError;

/// Longest chunk-size line we accept (size, extensions, CRLF): room for
/// the longest extension seen in use (AWS's `;chunk-signature=` and 64 hex
/// digits), not for framing that costs a server a kilobyte per data byte.
pub const MAX_SIZE_LINE: usize = 256;
/// Longest trailer section we accept.
const MAX_TRAILERS: usize = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a chunk-size line into `line`.
    SizeLine,
    /// Reading chunk data; `remaining` bytes left.
    Data,
    /// Expecting the CRLF after chunk data (`crlf_seen` bytes of it seen).
    DataEnd,
    /// Reading the trailer section into `line`.
    Trailers,
    /// The message is complete.
    Done,
}

/// An incremental chunked decoder that writes the re-encoded stream.
#[derive(Debug)]
pub struct Decoder {
    state: State,
    remaining: u64,
    crlf_seen: u8,
    line: Vec<u8>,
    /// Write only the data, no chunk framing (for HTTP/1.0 peers).
    raw: bool,
    /// Total body bytes (chunk data) seen.
    pub body_bytes: u64,
    /// Chunks (of data) begun.
    pub chunks: u64,
}

/// What one call to [`Decoder::feed`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Input bytes consumed; the rest belongs to the next message.
    pub consumed: usize,
    /// Whether the body (and trailers) ended.
    pub done: bool,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder at the start of a body.
    pub fn new() -> Self {
        Self {
            state: State::SizeLine,
            remaining: 0,
            crlf_seen: 0,
            line: Vec::new(),
            raw: false,
            body_bytes: 0,
            chunks: 0,
        }
    }

    /// A decoder that writes only the body's data (no chunk framing).
    pub fn dechunking() -> Self {
        Self {
            raw: true,
            ..Self::new()
        }
    }

    /// Whether the whole body was decoded.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from `input`, appending the canonical chunked encoding of what
    /// it decoded to `out` (or, with `out = None`, just validating).
    pub fn feed(
        &mut self,
        input: &[u8],
        mut out: Option<&mut Vec<u8>>,
    ) -> Result<Progress, HttpError> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::SizeLine => {
                    let b = input[i];
                    i += 1;
                    self.line.push(b);
                    if self.line.len() > MAX_SIZE_LINE {
                        return Err(HttpError::Chunked);
                    }
                    if b == b'\n' {
                        let size = parse_size_line(&self.line)?;
                        self.line.clear();
                        if size == 0 {
                            self.state = State::Trailers;
                        } else {
                            self.remaining = size;
                            self.chunks += 1;
                            self.state = State::Data;
                            if let Some(o) = out.as_deref_mut()
                                && !self.raw
                            {
                                // One output chunk per input chunk: sizes are
                                // known up front, so no buffering is needed.
                                push_size_line(o, size);
                            }
                        }
                    }
                }
                State::Data => {
                    let take = (input.len() - i)
                        .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                    if let Some(o) = out.as_deref_mut() {
                        o.extend_from_slice(&input[i..i + take]);
                    }
                    i += take;
                    self.remaining -= take as u64;
                    self.body_bytes += take as u64;
                    if self.remaining == 0 {
                        self.state = State::DataEnd;
                        self.crlf_seen = 0;
                    }
                }
                State::DataEnd => {
                    let want = if self.crlf_seen == 0 { b'\r' } else { b'\n' };
                    if input[i] != want {
                        return Err(HttpError::Chunked);
                    }
                    i += 1;
                    self.crlf_seen += 1;
                    if self.crlf_seen == 2 {
                        self.state = State::SizeLine;
                        if let Some(o) = out.as_deref_mut()
                            && !self.raw
                        {
                            o.extend_from_slice(b"\r\n");
                        }
                    }
                }
                State::Trailers => {
                    let b = input[i];
                    i += 1;
                    self.line.push(b);
                    if self.line.len() > MAX_TRAILERS {
                        return Err(HttpError::Chunked);
                    }
                    if self.line.ends_with(b"\r\n\r\n") || self.line == b"\r\n" {
                        check_trailers(&self.line)?;
                        if let Some(o) = out.as_deref_mut()
                            && !self.raw
                        {
                            o.extend_from_slice(b"0\r\n\r\n");
                        }
                        self.line.clear();
                        self.state = State::Done;
                        return Ok(Progress {
                            consumed: i,
                            done: true,
                        });
                    }
                }
                State::Done => {
                    return Ok(Progress {
                        consumed: i,
                        done: true,
                    });
                }
            }
        }
        Ok(Progress {
            consumed: i,
            done: self.state == State::Done,
        })
    }
}

/// Appends `{size:x}\r\n` without allocating.
pub fn push_size_line(out: &mut Vec<u8>, size: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut n = 0;
    let mut v = size;
    loop {
        digits[n] = HEX[(v & 0xf) as usize];
        n += 1;
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    out.extend(digits[..n].iter().rev());
    out.extend_from_slice(b"\r\n");
}

/// `chunk-size [ chunk-ext ] CRLF` with chunk-ext = *( ";" token [ "=" ( token / quoted-string ) ] ).
/// No whitespace anywhere (RFC 9112 allows BWS around ";" and "=", which
/// parsers disagree on; refusing it closes that door).
fn parse_size_line(line: &[u8]) -> Result<u64, HttpError> {
    let line = line.strip_suffix(b"\r\n").ok_or(HttpError::Chunked)?;
    let hex_end = line
        .iter()
        .position(|&b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    if hex_end == 0 || hex_end > 16 {
        return Err(HttpError::Chunked);
    }
    let size = line[..hex_end]
        .iter()
        .try_fold(0u64, |acc, &d| {
            let v = (d as char).to_digit(16)? as u64;
            acc.checked_mul(16)?.checked_add(v)
        })
        .ok_or(HttpError::Chunked)?;
    check_extensions(&line[hex_end..])?;
    Ok(size)
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn check_extensions(mut ext: &[u8]) -> Result<(), HttpError> {
    while !ext.is_empty() {
        ext = ext.strip_prefix(b";").ok_or(HttpError::Chunked)?;
        let name_len = ext.iter().take_while(|&&b| is_tchar(b)).count();
        if name_len == 0 {
            return Err(HttpError::Chunked);
        }
        ext = &ext[name_len..];
        if let Some(rest) = ext.strip_prefix(b"=") {
            if let Some(q) = rest.strip_prefix(b"\"") {
                let mut j = 0;
                loop {
                    match q.get(j) {
                        None => return Err(HttpError::Chunked),
                        Some(b'"') => break,
                        Some(b'\\') => j += 2,
                        Some(&c) if c == b'\t' || (0x20..0x7f).contains(&c) || c >= 0x80 => j += 1,
                        Some(_) => return Err(HttpError::Chunked),
                    }
                }
                ext = &q[j + 1..];
            } else {
                let v = rest.iter().take_while(|&&b| is_tchar(b)).count();
                if v == 0 {
                    return Err(HttpError::Chunked);
                }
                ext = &rest[v..];
            }
        }
    }
    Ok(())
}

/// Trailer fields: each line `token ":" value` with the same byte rules as
/// header fields.
fn check_trailers(section: &[u8]) -> Result<(), HttpError> {
    super::check_line_endings(section)?;
    let body = section.strip_suffix(b"\r\n").ok_or(HttpError::Chunked)?;
    for line in body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let line = line.strip_suffix(b"\r").ok_or(HttpError::Chunked)?;
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(HttpError::Chunked)?;
        if colon == 0 || !line[..colon].iter().all(|&b| is_tchar(b)) {
            return Err(HttpError::Chunked);
        }
        if !line[colon + 1..]
            .iter()
            .all(|&b| b == b'\t' || b >= 0x20 && b != 0x7f)
        {
            return Err(HttpError::Chunked);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, usize), HttpError> {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        let p = d.feed(input, Some(&mut out))?;
        if !p.done {
            return Err(HttpError::Malformed);
        }
        Ok((out, p.consumed))
    }

    #[test]
    fn decodes_and_reencodes() {
        let msg = b"5\r\nhello\r\n6;ext=1;q=\"a b\"\r\n world\r\n0\r\n\r\n";
        let mut input = msg.to_vec();
        input.extend_from_slice(b"NEXT");
        let (out, used) = decode_all(&input).expect("valid");
        assert_eq!(out, b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
        assert_eq!(used, msg.len(), "stops at the end of the message");
    }

    #[test]
    fn byte_by_byte_equals_whole() {
        let input = b"a\r\n0123456789\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n";
        let (whole, _) = decode_all(input).expect("valid");
        let mut d = Decoder::new();
        let mut out = Vec::new();
        for b in input.iter() {
            d.feed(std::slice::from_ref(b), Some(&mut out))
                .expect("valid");
        }
        assert!(d.is_done());
        // Byte-at-a-time data re-encodes in the same chunks (sizes are copied).
        assert_eq!(out, whole);
        // Trailers are validated and dropped.
        assert!(out.ends_with(b"\r\n0\r\n\r\n"));
        assert_eq!(d.body_bytes, 13);
        assert_eq!(d.chunks, 2);
    }

    #[test]
    fn an_aws_chunk_signature_fits() {
        let sig = "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648";
        let msg = format!("5;chunk-signature={sig}\r\nhello\r\n0;chunk-signature={sig}\r\n\r\n");
        let (out, _) = decode_all(msg.as_bytes()).expect("valid");
        assert_eq!(out, b"5\r\nhello\r\n0\r\n\r\n");
    }

    #[test]
    fn dechunking_writes_only_data() {
        let mut d = Decoder::dechunking();
        let mut out = Vec::new();
        let input = b"5\r\nhello\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nT: 1\r\n\r\n";
        let p = d.feed(input, Some(&mut out)).expect("valid");
        assert!(p.done);
        assert_eq!(out, b"helloabcdefghijklmnopqrstuvwxyz");
    }

    #[test]
    fn invalid_framing_table() {
        let mut long_extension = b"1;x=".to_vec();
        long_extension.extend_from_slice(&[b'a'; MAX_SIZE_LINE]);
        long_extension.extend_from_slice(b"\r\nA\r\n0\r\n\r\n");
        let rows: &[(&str, &[u8])] = &[
            ("no_size", b"\r\nabc\r\n0\r\n\r\n"),
            ("negative", b"-5\r\nhello\r\n0\r\n\r\n"),
            ("space_after_size", b"5 \r\nhello\r\n0\r\n\r\n"),
            ("space_before_ext", b"5 ;a=b\r\nhello\r\n0\r\n\r\n"),
            ("bad_ext_name", b"5;=b\r\nhello\r\n0\r\n\r\n"),
            ("bad_ext_value", b"5;a=\r\nhello\r\n0\r\n\r\n"),
            ("unterminated_quote", b"5;a=\"b\r\nhello\r\n0\r\n\r\n"),
            ("overflow", b"fffffffffffffffff\r\nx\r\n0\r\n\r\n"),
            ("hex_prefix", b"0x5\r\nhello\r\n0\r\n\r\n"),
            ("bare_lf_size", b"5\nhello\r\n0\r\n\r\n"),
            ("data_too_long", b"5\r\nhelloX\r\n0\r\n\r\n"),
            ("data_lf_only", b"5\r\nhello\n0\r\n\r\n"),
            ("bad_trailer", b"0\r\nno colon\r\n\r\n"),
            ("trailer_ctl", b"0\r\nX: a\x01b\r\n\r\n"),
            ("trailer_space_name", b"0\r\nX Y: a\r\n\r\n"),
            ("long_extension", &long_extension[..]),
        ];
        let mut failed = Vec::new();
        for (name, raw) in rows {
            if decode_all(raw) != Err(HttpError::Chunked) {
                failed.push(format!("{name}: {:?}", decode_all(raw)));
            }
        }
        assert!(failed.is_empty(), "{}", failed.join("\n"));
    }
}
