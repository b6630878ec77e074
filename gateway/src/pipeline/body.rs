//! The body stages of an admitted request, then the upstream: the body
//! is read whole on a route that judges it (a schema, or a WAF and a JSON or
//! form body), parsed once into the worker's buffers, judged, and the
//! client's own bytes go upstream; other bodies are buffered up to
//! `limits.buffer_body_bytes` or streamed.

use super::*;
use crate::config::MAX_VALIDATED_BODY;

/// The body stages, then the upstream.
pub(super) async fn forward(w: &Worker, c: &mut Conn, a: &Admitted) -> Result<Done, Abort> {
    c.consume(a.head_len());
    c.body = conn::BodyClock::start(&c.snap().cfg.limits, c.pending().len());
    if let Some(doc) = c.snap().cfg.routes[a.route].serve.clone() {
        return docs::serve(c, a, &doc).await;
    }
    let mut chunks = ChunkJudge::default();
    if a.framing == Framing::Chunked {
        // Judge the chunked framing already buffered before anything goes
        // upstream: a bad chunk in the first bytes never reaches the backend.
        chunks
            .judge(c.pending(), a.max_body)
            .map_err(|f| Abort::Respond(f, None))?;
    }
    // RFC 9110 §10.1.1: the gateway answers 100 itself once it will read
    // the body, and ignores Expect from an HTTP/1.0 client.
    if a.expect_continue && a.framing.has_body() && !a.http10 {
        c.tls
            .send(&[b"HTTP/1.1 100 Continue\r\n\r\n"])
            .await
            .map_err(|_| Abort::Close(Failure::CLIENT_GONE, None))?;
    }
    let route = &c.snap().cfg.routes[a.route];
    if a.body_kind == BodyKind::Repeated && route.waf == waf::Mode::Block && a.framing.has_body() {
        // Two media types: the WAF would read the body as one, the backend
        // perhaps as the other.
        return Err(Abort::Respond(Failure::CONTENT_TYPE, None));
    }
    if let Some(limit) = judged_whole(c.snap(), a) {
        read_whole_body(c, a, &mut chunks, limit).await?;
        judge_body(w, c, a, a.body_kind, false).map_err(|f| Abort::Respond(f, None))?;
    } else {
        buffer_small_body(c, a, &mut chunks).await?;
        if sniffs_json(c.snap(), a, c.pending()) {
            // Many backends parse JSON whatever the media type says.
            judge_body(w, c, a, BodyKind::Json, true).map_err(|f| Abort::Respond(f, None))?;
        }
    }
    proxy::forward(&w.upstreams, &w.shared.stopping, c, a).await
}

/// Reads the whole body (up to the route's limit, judged as it comes) on a
/// route that validates it.
async fn read_whole_body(
    c: &mut Conn,
    a: &Admitted,
    chunks: &mut ChunkJudge,
    limit: u64,
) -> Result<(), Abort> {
    loop {
        let complete = match a.framing {
            Framing::None | Framing::UntilClose => return Ok(()),
            Framing::Length(n) if n > limit => {
                return Err(Abort::Respond(Failure::BODY_TOO_LARGE, None));
            }
            Framing::Length(n) => c.pending().len() as u64 >= n,
            Framing::Chunked => chunks
                .judge(c.pending(), limit)
                .map_err(|f| Abort::Respond(f, None))?,
        };
        if complete {
            return Ok(());
        }
        conn::read_body(c, None).await?;
    }
}

/// The most a route reads whole of this body, if it judges it whole: it
/// has a schema (up to its limit, at most 16 MiB by configuration), or a
/// WAF and a body the WAF reads, JSON or a form (up to 16 MiB: beyond, a
/// blocking WAF answers 413 and a detecting one lets the body stream
/// unscanned).
fn judged_whole(snap: &Snapshot, a: &Admitted) -> Option<u64> {
    let route = &snap.cfg.routes[a.route];
    if route.body_schema.is_some() {
        // Also without a body: `body_required` is judged.
        return Some(a.max_body);
    }
    if !a.framing.has_body() || route.waf == waf::Mode::Off || a.body_kind == BodyKind::Other {
        return None;
    }
    let limit = a.max_body.min(MAX_VALIDATED_BODY);
    match a.framing {
        Framing::Length(n) if n > limit && route.waf == waf::Mode::Detect => None,
        _ => Some(limit),
    }
}

/// On a WAF route, a body of another (or no) media type that is already
/// read whole (`limits.buffer_body_bytes`) and starts like JSON.
fn sniffs_json(snap: &Snapshot, a: &Admitted, pending: &[u8]) -> bool {
    if snap.cfg.routes[a.route].waf == waf::Mode::Off || a.body_kind == BodyKind::Json {
        return false;
    }
    let Framing::Length(n) = a.framing else {
        return false;
    };
    let body = &pending[..pending.len().min(n as usize)];
    body.len() as u64 == n
        && matches!(
            body.iter().find(|b| !b.is_ascii_whitespace()),
            Some(b'{' | b'[')
        )
}

/// Judges a whole body read as `kind`: the route's schema, then its WAF.
/// The bytes the upstream gets are the client's: the parse works on a copy.
/// `sniffed`: the media type did not say JSON, so a body that does not
/// parse is not refused for it.
fn judge_body(
    w: &Worker,
    c: &mut Conn,
    a: &Admitted,
    kind: BodyKind,
    sniffed: bool,
) -> Result<(), Failure> {
    let snap = c.snap_arc();
    let route = &snap.cfg.routes[a.route];
    let mut scratch = w.json.borrow_mut();
    let depth = snap.cfg.limits.json_max_depth;
    if scratch.max_depth() != depth {
        *scratch = validation::Scratch::new(depth);
    }
    let mut dechunked = std::mem::take(&mut scratch.body);
    dechunked.clear();
    let mut problem = std::mem::take(&mut c.problem);
    let body = match a.framing {
        Framing::Length(n) => &c.pending()[..n as usize],
        Framing::Chunked => {
            chunked::Decoder::dechunking()
                .feed(c.pending(), Some(&mut dechunked))
                .map_err(Failure::http)?;
            &dechunked[..]
        }
        Framing::None | Framing::UntilClose => &[][..],
    };
    let scan = route.waf != waf::Mode::Off;
    let mut pointer = std::mem::take(&mut scratch.pointer);
    let found = match kind {
        BodyKind::Form if route.body_schema.is_none() => Ok(scan
            .then(|| waf::scan_pairs(&String::from_utf8_lossy(body), waf::Place::Body))
            .flatten()),
        _ => validation::judge_body(
            route.body_schema.as_ref(),
            body,
            &mut scratch,
            &mut problem,
            |root| scan.then(|| waf::scan_json(root, &mut pointer)).flatten(),
        ),
    };
    scratch.body = dechunked;
    scratch.pointer = pointer;
    scratch.trim();
    let found = match found {
        // A document a detect-only WAF cannot read goes on, as it would
        // without the WAF; a schema or a blocking WAF refuses it.
        Err(_) if route.body_schema.is_none() && (sniffed || route.waf == waf::Mode::Detect) => {
            problem.clear();
            Ok(None)
        }
        other => other,
    };
    c.problem = problem;
    match found? {
        Some(hit) => waf_hit(w, c.peer, c.trusted, a.route, route.waf, &hit),
        None => Ok(()),
    }
}

/// Judges a chunked body's framing as it arrives, each byte once: the
/// decoder keeps its state and is fed only what it has not seen.
#[derive(Default)]
struct ChunkJudge {
    decoder: chunked::Decoder,
    judged: usize,
}

impl ChunkJudge {
    /// Judges the new part of `buf` (the body so far); whether it is complete.
    fn judge(&mut self, buf: &[u8], max_body: u64) -> Result<bool, Failure> {
        let p = self
            .decoder
            .feed(&buf[self.judged..], None)
            .map_err(Failure::http)?;
        self.judged += p.consumed;
        if self.decoder.body_bytes > max_body {
            return Err(Failure::BODY_TOO_LARGE);
        }
        Ok(p.done)
    }
}

/// Reads a body of up to `limits.buffer_body_bytes` whole before an upstream
/// connection is taken, so a slow client ties up only its own connection
/// (nginx's `client_body_buffer_size`). Larger bodies stream.
async fn buffer_small_body(
    c: &mut Conn,
    a: &Admitted,
    chunks: &mut ChunkJudge,
) -> Result<(), Abort> {
    let max = c.snap().cfg.limits.buffer_body_bytes as u64;
    loop {
        let complete = match a.framing {
            Framing::None | Framing::UntilClose => return Ok(()),
            Framing::Length(n) if n > max => return Ok(()),
            Framing::Length(n) => c.pending().len() as u64 >= n,
            Framing::Chunked => {
                let done = chunks
                    .judge(c.pending(), a.max_body)
                    .map_err(|f| Abort::Respond(f, None))?;
                done || c.pending().len() as u64 >= max
            }
        };
        if complete {
            return Ok(());
        }
        conn::read_body(c, None).await?;
    }
}
