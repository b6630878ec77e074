//! A request body as an HTTP/1.1 client frames it. What the client
//! controls is counted as it arrives, raw: a chunked body's framing counts
//! against the limit like its data, each byte of it judged once, and a
//! body read whole is de-chunked in place as it comes (so memory follows
//! the data, never the framing) within the worker's body memory.

use crate::{
    http::{Framing, chunked},
    respond::{Abort, Failure},
    session::conn::{self, Conn},
};

/// What reading a body whole left in the pending bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whole {
    /// The body as sent (a known length, or none): `pending()[..length]`.
    AsSent,
    /// A chunked body, de-chunked in place: its `n` data bytes are
    /// `pending()[..n]`, and it goes on with that length.
    Dechunked(u64),
}

/// Reads the whole body, up to `limit` raw bytes judged as they come
/// (`too_large` past it).
pub async fn read_whole(
    c: &mut Conn,
    framing: Framing,
    limit: u64,
    too_large: Failure,
) -> Result<Whole, Abort> {
    let respond = |f| Abort::Respond(f, None);
    match framing {
        Framing::None | Framing::UntilClose => Ok(Whole::AsSent),
        Framing::Length(n) if n > limit => Err(respond(too_large)),
        Framing::Length(n) => {
            while (c.pending().len() as u64) < n {
                // Room grows as the bytes come, up to `n`.
                c.room_for_body(Some(n as usize)).map_err(respond)?;
                conn::read_body(c, None).await?;
            }
            Ok(Whole::AsSent)
        }
        Framing::Chunked => {
            let max_chunks = c.snap().cfg.limits.max_body_chunks;
            let mut body = InPlace::default();
            loop {
                if body.step(c, limit, max_chunks).map_err(|f| {
                    respond(if f == Failure::BODY_TOO_LARGE {
                        too_large
                    } else {
                        f
                    })
                })? {
                    return Ok(Whole::Dechunked(body.data as u64));
                }
                c.room_for_body(None).map_err(respond)?;
                conn::read_body(c, None).await?;
            }
        }
    }
}

/// A chunked body decoded in place as it arrives: the data so far is
/// `pending()[..data]`, followed by raw bytes not yet decoded; each step
/// decodes those and drops their framing.
struct InPlace {
    decoder: chunked::Decoder,
    data: usize,
    raw: u64,
}

impl Default for InPlace {
    fn default() -> Self {
        Self {
            decoder: chunked::Decoder::dechunking(),
            data: 0,
            raw: 0,
        }
    }
}

impl InPlace {
    /// Decodes what arrived; whether the body is complete. Refuses a body
    /// whose raw bytes exceed `limit` or whose chunks exceed `max_chunks`.
    fn step(&mut self, c: &mut Conn, limit: u64, max_chunks: u64) -> Result<bool, Failure> {
        if self.decoder.is_done() {
            return Ok(true);
        }
        let mut out = std::mem::take(&mut c.req.wire.chunks);
        out.clear();
        let fed = self.decoder.feed(&c.pending()[self.data..], Some(&mut out));
        let result = fed.map_err(Failure::http).and_then(|p| {
            self.raw += p.consumed as u64;
            if self.raw > limit {
                return Err(Failure::BODY_TOO_LARGE);
            }
            if self.decoder.chunks > max_chunks {
                return Err(Failure::BODY_CHUNKS);
            }
            c.splice_pending(self.data..self.data + p.consumed, &out);
            self.data += out.len();
            Ok(p.done)
        });
        c.req.wire.chunks = out;
        result
    }
}

/// Judges a chunked body's framing as it arrives, each byte once: the
/// decoder keeps its state and is fed only what it has not seen. Raw
/// bytes (framing included) count against the limit.
#[derive(Debug, Default)]
pub struct Judge {
    decoder: chunked::Decoder,
    judged: usize,
}

impl Judge {
    /// Judges the new part of `buf` (the body so far); whether it is complete.
    fn judge(&mut self, buf: &[u8], max_body: u64) -> Result<bool, Failure> {
        let p = self
            .decoder
            .feed(&buf[self.judged..], None)
            .map_err(Failure::http)?;
        self.judged += p.consumed;
        if self.judged as u64 > max_body {
            return Err(Failure::BODY_TOO_LARGE);
        }
        Ok(p.done)
    }
}

impl Judge {
    /// Judges what of a chunked body is already buffered (nothing for
    /// another framing).
    pub fn early(&mut self, c: &Conn, framing: Framing, max_body: u64) -> Result<(), Failure> {
        if framing == Framing::Chunked {
            self.judge(c.pending(), max_body)?;
        }
        Ok(())
    }
}

/// Reads a body of up to `max` bytes whole before an upstream connection
/// is taken, so a slow client ties up only its own connection (nginx's
/// `client_body_buffer_size`); a chunked one judged as it comes, within
/// `max_body`. Whether the rest must stream (a larger body).
pub async fn buffer(
    c: &mut Conn,
    framing: Framing,
    max_body: u64,
    max: u64,
    judge: &mut Judge,
) -> Result<bool, Abort> {
    loop {
        let enough = match framing {
            Framing::None | Framing::UntilClose => true,
            Framing::Length(n) => n > max || c.pending().len() as u64 >= n,
            Framing::Chunked => {
                let done = judge
                    .judge(c.pending(), max_body)
                    .map_err(|f| Abort::Respond(f, None))?;
                done || c.pending().len() as u64 >= max
            }
        };
        if enough {
            return Ok(match framing {
                Framing::Length(n) => (c.pending().len() as u64) < n,
                Framing::Chunked => !judge.decoder.is_done(),
                Framing::None | Framing::UntilClose => false,
            });
        }
        c.room_for_body(None).map_err(|f| Abort::Respond(f, None))?;
        conn::read_body(c, None).await?;
    }
}

/// A chunked body streamed on as it arrives: each step decodes the
/// client's pending bytes into their canonical chunked encoding (what an
/// HTTP/1.1 upstream gets), consuming them, within `max_body` raw bytes
/// (framing included, as for a body read whole) and `max_chunks`.
#[derive(Debug)]
pub struct Rechunk {
    decoder: chunked::Decoder,
    raw: u64,
    max_body: u64,
    max_chunks: u64,
}

impl Rechunk {
    /// At the start of a body.
    pub fn new(max_body: u64, max_chunks: u64) -> Self {
        Self {
            decoder: chunked::Decoder::new(),
            raw: 0,
            max_body,
            max_chunks,
        }
    }

    /// Decodes what is pending into `out` (appended); whether the body ended.
    pub fn step(&mut self, c: &mut Conn, out: &mut Vec<u8>) -> Result<bool, Failure> {
        let p = self
            .decoder
            .feed(c.pending(), Some(out))
            .map_err(Failure::http)?;
        c.consume(p.consumed);
        self.raw += p.consumed as u64;
        if self.raw > self.max_body {
            return Err(Failure::BODY_TOO_LARGE);
        }
        if self.decoder.chunks > self.max_chunks {
            return Err(Failure::BODY_CHUNKS);
        }
        Ok(p.done)
    }
}
