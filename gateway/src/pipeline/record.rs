//! The single exit every request passes: its metrics, its anomaly counts
//! and its access-log line.

use super::*;

/// The access log line.
pub(super) fn record(w: &Worker, c: &mut Conn, ctx: &Ctx) {
    let elapsed = ctx.started.elapsed();
    w.tally.borrow_mut().request(
        ctx.route,
        ctx.status,
        ctx.reason,
        elapsed.as_micros() as u64,
        ctx.upstream_time.map(|t| t.as_micros() as u64),
    );
    count_traffic(w, c, ctx);
    log_line(w, c, ctx);
}

/// The request's access-log line alone (a tunnel's opening gets one, its
/// close is the request's own).
pub(super) fn log_line(w: &Worker, c: &mut Conn, ctx: &Ctx) {
    let elapsed = ctx.started.elapsed();
    let Some(log) = &w.shared.access_log else {
        return;
    };
    if c.req.note.request_id.is_empty() {
        // Refused before it parsed: an id all the same.
        w.next_request_id(&mut c.req.note.request_id);
    }
    let (note, paths) = (&c.req.note, &c.req.paths);
    let snap = c.snap();
    let consumer = match ctx.identity {
        Identity::Consumer(i) => snap.keys.consumer(i).id.as_str(),
        Identity::Token(_) if !c.req.caller.subject.is_empty() => c.req.caller.subject.as_str(),
        Identity::Token(_) | Identity::Anonymous => "-",
    };
    // The routed path (no `;` parameters), or the path as sent; never the
    // query, which may carry any credential.
    let path = if ctx.normalized {
        // `routed` is filled only for a path with `;` parameters.
        if paths.normalized.contains(';') {
            paths.routed.as_str()
        } else {
            paths.normalized.as_str()
        }
    } else if note.target.is_empty() {
        "-"
    } else {
        note.target.split(['?', ';']).next().unwrap_or("-")
    };
    w.lines.borrow_mut().push(
        log,
        &AccessRecord {
            id: &note.request_id,
            peer: c.peer,
            tls: c.io.version(),
            sni: c.io.sni(),
            consumer,
            route: ctx.route.map(|i| snap.routes[i].settings.name.as_str()),
            method: if note.method.is_empty() {
                "-"
            } else {
                &note.method
            },
            path,
            status: ctx.status,
            reason: ctx.reason,
            bytes_in: ctx.bytes_in,
            bytes_out: ctx.bytes,
            upstream: ctx.upstream,
            upstream_time: ctx.upstream_time,
            elapsed,
            worker: w.index,
        },
    );
}

/// Counts the request for anomaly detection, by source (never a trusted
/// proxy's: that would be everyone behind it) and API-key consumer.
fn count_traffic(w: &Worker, c: &Conn, ctx: &Ctx) {
    let snap = c.snap();
    if !snap.cfg.anomaly.enabled {
        return;
    }
    // Behind a trusted proxy the subject is the client it names; the
    // proxy's own address is never counted.
    let source = match (c.trusted, ctx.client) {
        (false, _) => addr::canonical(c.peer.ip()),
        (true, Some(client)) => addr::canonical(client),
        (true, None) => return,
    };
    // A chain of trusted hops names no client: no proxy is ever counted.
    if c.trusted && snap.is_trusted_proxy(source) {
        return;
    }
    let consumer = match ctx.identity {
        Identity::Consumer(i) => Some(i as u32),
        _ => None,
    };
    // An IPv6 client holds a /64: one subject, not 2^64.
    let subject = match source {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    };
    w.traffic.borrow_mut().count(subject, consumer, ctx.status);
}

/// Method and target of a request line that did not parse, for the log:
/// printable ASCII only, cut short, `-` when absent.
pub(super) fn request_line_words(buf: &[u8]) -> (&str, &str) {
    let line = buf
        .split(|&b| b == b'\n' || b == b'\r')
        .next()
        .unwrap_or_default();
    let mut words = line.split(|&b| b == b' ').map(|w| {
        let w = &w[..w.len().min(128)];
        match std::str::from_utf8(w) {
            Ok(t) if !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()) => t,
            _ => "-",
        }
    });
    (words.next().unwrap_or("-"), words.next().unwrap_or("-"))
}
