//! The body stages of an admitted request, then the upstream: the body
//! is read whole on a route that judges it (a schema, or a WAF), parsed
//! once into the worker's buffers, judged, and the client's own bytes go
//! upstream; other bodies are buffered up to `limits.buffer_body_bytes`
//! or streamed. How the client frames a body, and counting what it
//! controls raw, is the session's (`session::h1::body`).

use super::*;
use crate::{
    session::{self, h1},
    stages::waf::Place,
};

/// The body stages, then the upstream.
pub(super) async fn forward(w: &Worker, c: &mut Conn, a: &mut Admitted) -> Result<Done, Abort> {
    c.consume(a.head_len());
    c.body = conn::BodyClock::start(&c.snap().cfg.limits, c.pending().len());
    if let Some(doc) = c.snap().routes[a.route].settings.serve.clone() {
        return docs::serve(c, a, &doc).await;
    }
    if c.snap().routes[a.route].settings.grpc {
        // Protobuf messages, streamed both ways: no body stage reads them.
        return proxy::grpc::forward(&w.upstreams, c, a).await;
    }
    let whole = judged_whole(c.snap(), a);
    let mut judge = h1::Judge::default();
    if whole.is_none() {
        // Judge the framing already buffered before anything goes
        // upstream: a bad chunk in the first bytes never reaches the backend.
        judge
            .early(c, a.framing, a.max_body)
            .map_err(|f| Abort::Respond(f, None))?;
    }
    // RFC 9110 §10.1.1: the gateway answers 100 itself once it will read
    // the body, and ignores Expect from an HTTP/1.0 client.
    if a.expect_continue && a.framing.has_body() && !a.http10 {
        session::answer(c, session::Answer::Continue, true, &[])
            .await
            .map_err(|_| Abort::Close(Failure::CLIENT_GONE, None))?;
    }
    let route = &c.snap().routes[a.route].settings;
    if a.body_kind == BodyKind::Repeated && route.waf == WafMode::Block && a.framing.has_body() {
        // Two media types: the WAF would read the body as one, the backend
        // perhaps as the other.
        return Err(Abort::Respond(Failure::CONTENT_TYPE, None));
    }
    if let Some(limit) = whole {
        // Below the route's own limit, the WAF's is what a body exceeds.
        let too_large = if limit < a.max_body {
            Failure::WAF_BODY_TOO_LARGE
        } else {
            Failure::BODY_TOO_LARGE
        };
        if let h1::Whole::Dechunked(n) = h1::read_whole(c, a.framing, limit, too_large).await? {
            // It goes upstream with a Content-Length (as nginx sends a
            // buffered body).
            a.body_read_whole(n);
            proxy::request::reframe_whole(&mut c.req.wire.up_head, n);
        }
        judge_body(w, c, a).map_err(|f| Abort::Respond(f, None))?;
    } else {
        let max = c.snap().cfg.limits.buffer_body_bytes as u64;
        let streaming = h1::buffer(c, a.framing, a.max_body, max, &mut judge).await?;
        a.set_streaming_body(streaming);
    }
    proxy::forward(&w.upstreams, &w.shared.stopping, c, a).await
}

/// The most a route reads whole of this body, if it judges it whole: it
/// has a schema (up to its limit, at most 16 MiB by configuration), or a
/// WAF (up to `[waf] max_body_bytes`: beyond, a blocking WAF answers 413
/// `waf.body_size` and a detecting one lets the body stream unscanned). A blocking WAF reads every body
/// it can: a body that does not say what it is may still be read as JSON
/// or text by the backend.
fn judged_whole(snap: &Snapshot, a: &Admitted) -> Option<u64> {
    let route = &snap.routes[a.route].settings;
    if route.body_schema.is_some() {
        // Also without a body: `body_required` is judged.
        return Some(a.max_body);
    }
    if !a.framing.has_body() || route.waf == WafMode::Off {
        return None;
    }
    let limit = route.judged_body_limit();
    match a.framing {
        Framing::Length(n) if n > limit && route.waf == WafMode::Detect => None,
        _ if route.waf == WafMode::Detect && a.body_kind == BodyKind::Other => {
            // Detect mode reads an unlabelled body whole only when it is
            // small enough to buffer anyway.
            let small = snap.cfg.limits.buffer_body_bytes as u64;
            matches!(a.framing, Framing::Length(n) if n <= small).then_some(small)
        }
        _ => Some(limit),
    }
}

/// Judges a whole body (`pending()[..n]`) as its kind says: the route's
/// schema, then its WAF. The bytes the upstream gets are the client's (or
/// their de-chunked data): the parse works on a copy.
fn judge_body(w: &Worker, c: &mut Conn, a: &Admitted) -> Result<(), Failure> {
    let snap = c.snap_arc();
    let route = &snap.routes[a.route].settings;
    let mut scratch = w.json.borrow_mut();
    let depth = snap.cfg.limits.json_max_depth;
    if scratch.max_depth() != depth {
        *scratch = validation::Scratch::new(depth);
    }
    let mut problem = std::mem::take(&mut c.req.extras.problem);
    let body = match a.framing {
        Framing::Length(n) => &c.pending()[..n as usize],
        // De-chunked while read (`read_whole_body`): no chunked body is left.
        Framing::Chunked | Framing::None | Framing::UntilClose => &[][..],
    };
    let scan = route.waf != WafMode::Off;
    let mut pointer = std::mem::take(&mut scratch.pointer);
    let found = match a.body_kind {
        _ if route.body_schema.is_some() => validation::judge_body(
            route.body_schema.as_ref(),
            body,
            &mut scratch,
            &mut problem,
            |root| scan.then(|| waf::scan_json(root, &mut pointer)).flatten(),
        ),
        BodyKind::Form => Ok(waf::scan_pairs(&String::from_utf8_lossy(body), Place::Body)),
        BodyKind::Json => {
            match validation::judge_body(None, body, &mut scratch, &mut problem, |root| {
                waf::scan_json(root, &mut pointer)
            }) {
                // A document a detect-only WAF cannot parse is still
                // scanned as text; a blocking one refuses it.
                Err(_) if route.waf == WafMode::Detect => {
                    problem.clear();
                    Ok(waf::scan_text(body))
                }
                other => other,
            }
        }
        BodyKind::Other | BodyKind::Repeated => {
            Ok(judge_unlabelled(body, &mut scratch, &mut pointer))
        }
    };
    scratch.pointer = pointer;
    scratch.trim();
    c.req.extras.problem = problem;
    match found? {
        Some(hit) => waf_hit(
            w,
            c.peer,
            !c.trusted && !a.on_behalf,
            &route.name,
            route.waf,
            &hit,
        ),
        None => Ok(()),
    }
}

/// A body whose media type does not say JSON or a form (or says none):
/// many backends parse JSON whatever the media type says, and read text
/// as text. So a body that reads as JSON (after a UTF-8 BOM) is scanned as
/// JSON; one that does not parse (a duplicate key, a stray byte) or is not
/// JSON at all is scanned as text. Binary data (a NUL in it) is scanned
/// run by run: each stretch of text between control bytes, so a NUL put in
/// front of a payload hides nothing.
fn judge_unlabelled(
    body: &[u8],
    scratch: &mut validation::Scratch,
    pointer: &mut String,
) -> Option<waf::Hit> {
    let text = body.strip_prefix(b"\xef\xbb\xbf").unwrap_or(body);
    if text.contains(&0) {
        return waf::scan_binary(text);
    }
    if matches!(
        text.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'{' | b'[')
    ) {
        let mut discard = String::new();
        if let Ok(found) = validation::judge_body(None, text, scratch, &mut discard, |root| {
            waf::scan_json(root, pointer)
        }) {
            return found;
        }
    }
    waf::scan_text(text)
}
