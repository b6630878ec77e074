//! The life of a request, in the order it meets the stages:
//!
//! parse (`http::request`) → normalize the path (`route::normalize`) →
//! route (`route`) → [authentication, authorization, limits, validation] →
//! the upstream head (`proxy::request`) → body (`conn`) → proxy (`proxy`)
//! → respond (`respond`) → log (`log`).
//!
//! Every stage that judges the head runs synchronously in [`admit_head`]
//! (the head borrows the read buffer, which an `.await` would end), and
//! only an [`Admitted`] request, which only `admit_head` can make, reaches
//! `proxy::forward`. Every exit goes through one response and one log line.

mod body;
mod caller;
mod docs;
mod record;
mod source;

use caller::{check_caller, introspect};
use record::{record, request_line_words};

use std::{
    net::{IpAddr, SocketAddr},
    time::Instant,
};

use crate::{
    addr,
    config::{RouteSettings, Underscores, WafMode},
    conn::{self, Conn, HeadParts},
    control::Event,
    http::{
        self, Framing, HttpError, MAX_HEADERS, chunked,
        request::{HeadLimits, RequestHead},
    },
    observe::access_log::AccessRecord,
    proxy::{self, Admitted, BodyKind, Done, Plan},
    respond::{Abort, Failure},
    route::{Miss, normalize},
    snapshot::Snapshot,
    stages::{
        auth::{self, AuthError, Identity},
        cors,
        rate_limit::{self, Consumer, Meter, Phase},
        validation, waf,
    },
    worker::Worker,
};

/// What a request's stages decided, read by the access log at the single exit.
pub struct Ctx {
    /// When the whole head was in.
    pub started: Instant,
    /// The route taken, by index.
    pub route: Option<usize>,
    /// Status sent (0 while none).
    pub status: u16,
    /// Reason code of a failure, `-` otherwise.
    pub reason: &'static str,
    /// The upstream server that answered.
    pub upstream: Option<SocketAddr>,
    /// Response body bytes sent.
    pub bytes: u64,
    /// Request bytes read: the head, then the body.
    pub bytes_in: u64,
    /// The upstream exchange's time to the response head.
    pub upstream_time: Option<std::time::Duration>,
    /// Who called, once authenticated.
    pub identity: Identity,
    /// The limits judged before authentication were charged (a head judged
    /// again after introspection is not charged twice).
    pub charged: bool,
    /// A 429 came from a limit that counts the source address.
    pub by_source: bool,
    /// Behind a trusted proxy: the client its X-Forwarded-For names.
    pub client: Option<IpAddr>,
    /// The path normalized (it is in the connection's path scratch).
    pub normalized: bool,
    /// A browser sent it for another site's page (`Sec-Fetch-Site:
    /// cross-site` or `same-site`): refused like any request, but never
    /// counted against the source, whom that page chose for it.
    pub on_behalf: bool,
}

impl Ctx {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            route: None,
            status: 0,
            reason: "-",
            upstream: None,
            bytes: 0,
            bytes_in: 0,
            upstream_time: None,
            identity: Identity::Anonymous,
            charged: false,
            by_source: false,
            client: None,
            normalized: false,
            on_behalf: false,
        }
    }

    fn failed(&mut self, f: Failure, upstream: Option<SocketAddr>) {
        self.status = f.status;
        self.reason = f.reason;
        self.upstream = upstream;
    }
}

/// A request a head stage refused.
struct Refused {
    failure: Failure,
    /// Whether the connection can carry another request.
    keep: bool,
    /// Bytes of the head (0 when it did not parse).
    head_len: usize,
    /// Not refused yet: the bearer token (in the connection's token
    /// scratch) must first be looked up at this introspection endpoint.
    lookup: Option<usize>,
}

/// Handles the request whose head is at the start of the pending bytes.
/// Returns whether the connection stays open.
pub async fn handle_request(w: &Worker, c: &mut Conn) -> bool {
    let mut ctx = Ctx::new();
    c.request_id.clear();
    let mut admitted = admit_head(w, c, &mut ctx);
    if let Err(Refused {
        lookup: Some(endpoint),
        head_len,
        keep,
        ..
    }) = admitted
    {
        // The head is judged again once the answer is cached (it is still
        // in the read buffer: nothing was consumed).
        // Behind a trusted proxy, the client it names (when known): the
        // proxy's own address would throttle everyone behind it.
        let source = if c.trusted {
            ctx.client
        } else {
            Some(c.peer.ip())
        };
        admitted = match introspect(w, c, endpoint, source).await {
            Ok(()) => admit_head(w, c, &mut ctx),
            Err(failure) => {
                // Too many unknown tokens says something about the address.
                ctx.by_source = failure == auth::introspect::LOOKUP_RATE;
                Err(Refused {
                    failure,
                    keep,
                    head_len,
                    lookup: None,
                })
            }
        };
    }
    let keep = match admitted {
        Ok(mut a) => {
            let outcome = body::forward(w, c, &mut a).await;
            finish(w, c, &a, &mut ctx, outcome).await
        }
        Err(r) => {
            c.consume(r.head_len);
            let keep = r.keep && !w.stopping();
            if !ctx.on_behalf {
                report(w, c, r.failure, ctx.by_source);
            }
            let cors = std::mem::take(&mut c.cors_lines);
            c.send_failure_with(r.failure, keep, &[&cors]).await;
            c.cors_lines = cors;
            ctx.failed(r.failure, None);
            keep
        }
    };
    record(w, c, &ctx);
    c.settle_body();
    keep
}

/// Tells the control side of a refusal escalation counts: a 401 or a 429
/// from a peer that is not a trusted proxy (a verdict on a proxy would
/// drop everyone behind it). A 401 counts only when a credential was
/// guessed: a missing one (a browser loading a protected URL a page
/// pointed it at) or one that was valid once (expired, not yet valid) is
/// no guess.
fn report(w: &Worker, c: &Conn, f: Failure, by_source: bool) {
    if c.trusted {
        return;
    }
    let source = addr::canonical(c.peer.ip());
    let event = match f.status {
        401 if !auth::is_guess(f) => return,
        401 => Event::AuthFailed { source },
        // Only a limit that counts the address says something about it: a
        // route-wide or per-consumer refusal must not ban a shared NAT.
        429 if by_source => Event::RateLimited { source },
        _ => return,
    };
    w.shared.events.report(event);
}

/// Runs every stage that judges the head, in order.
fn admit_head(w: &Worker, c: &mut Conn, ctx: &mut Ctx) -> Result<Admitted, Refused> {
    let p = c.head_parts();
    p.limit_lines.clear();
    p.cors_lines.clear();
    let limits = &p.snap.cfg.limits;
    let head_limits = HeadLimits {
        max_request_line: limits.max_request_line_bytes,
        max_head: limits.max_header_bytes,
    };
    let mut hdrs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let max_headers = limits.max_headers.min(MAX_HEADERS);
    let head = match http::request::parse(p.pending, &mut hdrs[..max_headers], &head_limits) {
        Ok(Some(head)) => head,
        parsed => return Err(unparsed(p, parsed.err().unwrap_or(HttpError::Malformed))),
    };
    p.method.clear();
    p.method.push_str(head.method);
    auth::redact_query(head.target, &p.snap.cfg.auth.key_header, p.target);
    ctx.bytes_in = head.len as u64;
    ctx.on_behalf = source::on_behalf(&head, &p.snap.cfg.auth.key_header);
    request_id(w, p.trusted, &head, p.request_id);
    // Behind a trusted proxy the anomaly detector counts the client it
    // names, whatever becomes of the request.
    if p.trusted && p.snap.cfg.anomaly.enabled {
        let client = rate_limit::client_source(p.peer.ip(), head.headers, &p.snap.trusted_proxies);
        ctx.client = Some(client);
    }
    // A refused request with a body leaves the body unread: close.
    let refuse = |failure, keep: bool| Refused {
        failure,
        keep: keep && !head.framing.has_body(),
        head_len: head.len,
        lookup: None,
    };
    // A source serving a verdict in userspace is answered before any stage.
    let from = (p.peer.ip(), p.trusted);
    if let Some((f, secs)) = source::verdict(w, p.snap, from, ctx.client, &head) {
        use std::io::Write as _;
        let _ = write!(p.limit_lines, "retry-after: {secs}\r\n");
        return Err(refuse(f, false));
    }
    // Paths are normalized before routing and before any check.
    let path = if head.target == "*" {
        "*"
    } else {
        normalize::normalize(head.path(), p.path, p.snap.cfg.proxy.encoded_slashes)
            .map_err(|e| refuse(Failure::path(e), false))?;
        ctx.normalized = true;
        p.path.as_str()
    };
    let matched = normalize::route_path(path, p.route_path);
    let (index, route) = find_route(p.snap, &head, matched).map_err(|m| {
        let f = match m {
            Miss::NotFound => Failure::NOT_FOUND,
            Miss::MethodNotAllowed => Failure::METHOD,
        };
        refuse(f, head.keep_alive)
    })?;
    ctx.route = Some(index);
    check_head(p.snap, route, &head, p.cors_lines).map_err(|(f, keep)| refuse(f, keep))?;
    // Whose limits: the peer, or behind a trusted proxy the client it
    // names (already worked out for the anomaly detector, else only for a
    // route with limits).
    let source = match ctx.client {
        Some(client) => client,
        None if p.trusted && !route.rate_limits.is_empty() => {
            rate_limit::client_source(p.peer.ip(), head.headers, &p.snap.trusted_proxies)
        }
        None => p.peer.ip(),
    };
    let snap = p.snap;
    let limits = |caller, lines: &mut Vec<u8>, by: &mut bool| {
        charge_limits(w, snap, index, (source, caller), lines, by)
            .map_err(|f| refuse(f, head.keep_alive))
    };
    if !ctx.charged {
        ctx.charged = true;
        limits(None, p.limit_lines, &mut ctx.by_source)?;
    }
    let caller =
        check_caller(w, p.snap, index, &head, p.subject, p.token).map_err(|e| match e {
            AuthError::Lookup(endpoint) => Refused {
                lookup: Some(endpoint),
                ..refuse(auth::introspect::UNAVAILABLE, head.keep_alive)
            },
            AuthError::Refused(f) => refuse(f, head.keep_alive),
        })?;
    ctx.identity = caller.identity();
    let identified = Some((ctx.identity, p.subject.as_str()));
    limits(identified, p.limit_lines, &mut ctx.by_source)?;
    let query = head.target.split_once('?').map_or("", |(_, q)| q);
    if !route.params.is_empty() {
        // The path as the upstream gets it, `;` parameters included.
        validation::params::check(&route.params, path, query, p.problem)
            .map_err(|f| refuse(f, head.keep_alive))?;
    }
    if route.waf != WafMode::Off {
        let skip = &p.snap.cfg.waf.skip_headers;
        if let Some(hit) = waf::scan_head(path, query, head.headers, skip) {
            let counted = !p.trusted && !ctx.on_behalf;
            waf_hit(w, p.peer, counted, index, route.waf, &hit)
                .map_err(|f| refuse(f, head.keep_alive))?;
        }
    }
    let caller_id = proxy::request::Caller {
        who: caller.identity(),
        subject: p.subject,
    };
    proxy::request::write_upstream_head(
        p.up_head,
        &head,
        path,
        p.peer,
        caller_id,
        p.snap,
        p.request_id,
    );
    let mut plan = plan_of(index, route, &head);
    plan.on_behalf = ctx.on_behalf;
    Ok(Admitted::new(plan, head.len, caller))
}

/// The request's id: a trusted proxy's `x-request-id` when it sent a sane
/// one (1–128 of `A-Z a-z 0-9 - _ . :`), else a new one of this worker's.
fn request_id(w: &Worker, trusted: bool, head: &RequestHead<'_, '_>, out: &mut String) {
    let kept = trusted
        .then(|| head.single("x-request-id").ok().flatten())
        .flatten()
        .filter(|v| {
            (1..=128).contains(&v.len())
                && v.iter()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
        });
    match kept.and_then(|v| std::str::from_utf8(v).ok()) {
        Some(id) => {
            out.clear();
            out.push_str(id);
        }
        None => w.next_request_id(out),
    }
}

/// The route's checks of the head itself: CORS (a preflight ends here),
/// header names, the declared body size. The failure and whether the
/// connection may stay open.
fn check_head(
    snap: &Snapshot,
    route: &RouteSettings,
    head: &RequestHead<'_, '_>,
    cors_lines: &mut Vec<u8>,
) -> Result<(), (Failure, bool)> {
    if let Some(policy) = &route.cors {
        cors::judge(policy, head, cors_lines).map_err(|f| (f, head.keep_alive))?;
    }
    if snap.cfg.proxy.underscores_in_headers == Underscores::Reject
        && head.headers.iter().any(|h| h.name.contains('_'))
    {
        return Err((Failure::HEADER_NAME, head.keep_alive));
    }
    if matches!(head.framing, Framing::Length(n) if n > route.max_body_bytes) {
        return Err((Failure::BODY_TOO_LARGE, false));
    }
    // A refused body stays unread: close.
    validation::content_type(route, head).map_err(|f| (f, false))?;
    Ok(())
}

/// The route for a request; a CORS preflight is routed by the method it
/// asks about, to a route with a CORS policy (else as the OPTIONS it is).
fn find_route<'s>(
    snap: &'s Snapshot,
    head: &RequestHead<'_, '_>,
    path: &str,
) -> Result<(usize, &'s RouteSettings), Miss> {
    if let Some(asked) = cors::preflight_method(head)
        && let Ok(found) = snap.routes.find(head.host, path, asked)
        && found.1.cors.is_some()
    {
        return Ok(found);
    }
    snap.routes.find(head.host, path, head.method)
}

/// A head that did not parse: refused, with what its request line says
/// kept for the log.
fn unparsed(p: HeadParts<'_>, e: HttpError) -> Refused {
    let (method, target) = request_line_words(p.pending);
    p.method.clear();
    p.method.push_str(method);
    auth::redact_query(target, &p.snap.cfg.auth.key_header, p.target);
    Refused {
        failure: Failure::http(e),
        keep: false,
        head_len: 0,
        lookup: None,
    }
}

/// Charges route `index`'s rate limits for `source`: those that need no
/// identity while `caller` is unknown, those keyed by consumer once it is.
fn charge_limits(
    w: &Worker,
    snap: &Snapshot,
    index: usize,
    (source, caller): (IpAddr, Option<(Identity, &str)>),
    lines: &mut Vec<u8>,
    by_source: &mut bool,
) -> Result<(), Failure> {
    let settings = &snap.cfg.rate_limit;
    let route_limits = &snap.cfg.routes[index].rate_limits;
    if route_limits.is_empty() {
        return Ok(());
    }
    let (phase, consumer) = match caller {
        None => (Phase::Anonymous, None),
        Some((Identity::Consumer(i), _)) => (
            Phase::Identified,
            Some(Consumer::Key(snap.keys.consumer(i).id.as_str())),
        ),
        Some((Identity::Token(t), subject)) if !subject.is_empty() => (
            Phase::Identified,
            Some(Consumer::Subject {
                issuer: snap.token_issuer_name(t.issuer),
                subject,
            }),
        ),
        Some(_) => (Phase::Identified, None),
    };
    let who = rate_limit::Caller {
        source: rate_limit::source_key(source, settings.ipv6_prefix),
        consumer,
        route: index,
    };
    let link = w.shared.limits.link.as_ref().filter(|_| settings.shared);
    let mut tally = w.tally.borrow_mut();
    let mut meter = Meter {
        buckets: &w.shared.limits.buckets,
        link,
        leases: &mut w.leases.borrow_mut(),
        refused_by_source: false,
        decisions: &mut tally.limits,
    };
    let charged = rate_limit::charge(&mut meter, settings, route_limits, phase, &who, lines);
    *by_source = meter.refused_by_source;
    charged
}

/// What the proxy needs to know of an admitted request.
fn plan_of(index: usize, route: &RouteSettings, head: &RequestHead<'_, '_>) -> Plan {
    Plan {
        route: index,
        upstream: route.upstream,
        framing: head.framing,
        keep_alive: head.keep_alive,
        expect_continue: head.expect_continue,
        max_body: route.max_body_bytes,
        head_request: head.method == "HEAD",
        retryable: head.is_idempotent() && !head.framing.has_body(),
        http10: head.minor == 0,
        // Read only where the WAF will read the body.
        body_kind: match route.waf {
            WafMode::Off => BodyKind::Other,
            _ => body_kind(head),
        },
        streaming_body: false,
        on_behalf: false,
    }
}

/// The body's media type as the WAF reads bodies.
fn body_kind(head: &RequestHead<'_, '_>) -> BodyKind {
    match validation::media_type(head) {
        Err(_) => BodyKind::Repeated,
        Ok(Some(m)) if validation::is_json(m) => BodyKind::Json,
        Ok(Some(m)) if m.eq_ignore_ascii_case("application/x-www-form-urlencoded") => {
            BodyKind::Form
        }
        Ok(_) => BodyKind::Other,
    }
}

/// A WAF detection: logged with what and where, counted toward the
/// source's escalation when `counted` (never for a trusted proxy's, nor
/// for a browser's request on another site's behalf), and refused on a
/// route that blocks.
fn waf_hit(
    w: &Worker,
    peer: SocketAddr,
    counted: bool,
    route: usize,
    mode: WafMode,
    hit: &waf::Hit,
) -> Result<(), Failure> {
    let source = addr::canonical(peer.ip());
    let blocked = mode == WafMode::Block;
    tracing::warn!(
        "waf: {hit} from {source} on routes[{route}]{}",
        if blocked {
            ", blocked"
        } else {
            " (detect only)"
        }
    );
    if counted {
        w.shared.events.report(Event::Attack { source });
    }
    if blocked {
        Err(hit.attack.failure())
    } else {
        Ok(())
    }
}

/// The one exit after admission: a response for what failed before any
/// byte was sent, and whether the connection stays open.
async fn finish(
    w: &Worker,
    c: &mut Conn,
    a: &Admitted,
    ctx: &mut Ctx,
    outcome: Result<Done, Abort>,
) -> bool {
    let client_keep = a.keep_alive && !w.stopping();
    match outcome {
        Ok(done) => {
            ctx.status = done.status;
            ctx.upstream = done.upstream;
            ctx.upstream_time = done.upstream_time;
            ctx.bytes = done.bytes;
            ctx.bytes_in += c.body.received;
            client_keep && done.client_reusable
        }
        Err(Abort::Respond(f, addr)) => {
            let keep = client_keep && !a.framing.has_body();
            let cors = std::mem::take(&mut c.cors_lines);
            c.send_failure_with(f, keep, &[&cors]).await;
            c.cors_lines = cors;
            ctx.failed(f, addr);
            keep
        }
        Err(Abort::Close(f, addr)) => {
            ctx.failed(f, addr);
            false
        }
    }
}
