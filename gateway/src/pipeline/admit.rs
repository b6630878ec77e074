//! The head stages, in order ([`admit_head`]): parse, note what the log
//! needs, the source's verdict, path normalization, routing, the route's
//! checks of the head (CORS, header names, declared size, media type),
//! limits before and after authentication, authentication and
//! authorization, parameters and the WAF; then the upstream head. Only an
//! admitted request reaches the body and the upstream.

use std::net::{IpAddr, SocketAddr};

use super::{Ctx, Local, Next, Refused, caller::check_caller, record::request_line_words, source};
use crate::{
    addr,
    config::{Underscores, WafMode},
    control::Event,
    http::{Framing, HttpError, MAX_HEADERS, request::RequestHead},
    proxy::{self, Admitted, BodyKind, Plan},
    respond::Failure,
    route::{Miss, Route, normalize},
    session::conn::{Conn, HeadParts},
    session::h1,
    snapshot::Snapshot,
    stages::{
        auth::{self, AuthError, Identity},
        cors,
        rate_limit::{self, Consumer, Phase},
        upgrade::{self, Upgrade},
        validation, waf,
    },
    worker::Worker,
};

/// Runs every stage that judges the head, in order.
pub(super) fn admit_head(w: &Worker, c: &mut Conn, ctx: &mut Ctx) -> Result<Next, Refused> {
    let mut p = c.head_parts();
    p.req.extras.clear();
    let mut hdrs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let head = match h1::parse_head(p.snap, p.pending, &mut hdrs) {
        Ok(head) => head,
        Err(e) => return Err(unparsed(p, e)),
    };
    take_note(w, &mut p, ctx, &head);
    // A refused request with a body leaves the body unread: close. So does
    // a refused upgrade: what the client sent after it (frames, perhaps
    // made to look like a request) is never read as HTTP.
    let refuse = |failure, keep: bool| Refused {
        failure,
        keep: keep && !head.framing.has_body() && !head.upgrade,
        head_len: head.len,
        lookup: None,
    };
    // A source serving a verdict in userspace is answered before any stage.
    if let Some(f) = source_verdict(w, &mut p, ctx, &head) {
        return Err(refuse(f, false));
    }
    let paths = &mut p.req.paths;
    let path =
        normalized(&mut paths.normalized, p.snap, ctx, &head).map_err(|f| refuse(f, false))?;
    let route = find_route(
        p.snap,
        &head,
        normalize::route_path(path, &mut paths.routed),
    )
    .map_err(|m| refuse(missed(m), head.keep_alive))?;
    ctx.route = Some(route.index);
    let cors = check_head(p.snap, route, &head, &mut p.req.extras.cors_lines)
        .map_err(|(f, keep)| refuse(f, keep))?;
    let upgrade = upgrade::judge(&route.settings, &head).map_err(|f| refuse(f, false))?;
    if cors == cors::Allowed::Preflight {
        return Ok(Next::Local(Local {
            status: 204,
            reason: cors::PREFLIGHT,
            keep: head.keep_alive && !head.framing.has_body(),
            head_len: head.len,
        }));
    }
    let peer = (p.peer, p.trusted);
    let source = limit_source(p.snap, peer, ctx, route, &head);
    let limits = |caller, lines: &mut Vec<u8>, by: &mut bool| {
        charge_limits(w, p.snap, route, (source, caller), lines, by)
            .map_err(|f| refuse(f, head.keep_alive))
    };
    if !ctx.charged {
        ctx.charged = true;
        limits(None, &mut p.req.extras.limit_lines, &mut ctx.by_source)?;
    }
    let caller = check_caller(w, p.snap, route, &head, &mut p.req.caller).map_err(|e| match e {
        AuthError::Lookup(endpoint) => Refused {
            lookup: Some(endpoint),
            ..refuse(auth::introspect::UNAVAILABLE, head.keep_alive)
        },
        AuthError::Refused(f) => refuse(f, head.keep_alive),
    })?;
    ctx.identity = caller.identity();
    limits(
        Some((ctx.identity, p.req.caller.subject.as_str())),
        &mut p.req.extras.limit_lines,
        &mut ctx.by_source,
    )?;
    check_content(
        w,
        p.snap,
        peer,
        &mut p.req.extras.problem,
        ctx,
        route,
        path,
        &head,
    )
    .map_err(|f| refuse(f, head.keep_alive))?;
    let who = proxy::request::Caller {
        who: caller.identity(),
        subject: &p.req.caller.subject,
    };
    let (wire, note) = (&mut p.req.wire, &p.req.note);
    proxy::request::write_upstream_head(
        &mut wire.up_head,
        &head,
        path,
        p.peer,
        who,
        p.snap,
        &note.request_id,
    );
    let mut plan = plan_of(route, &head);
    plan.on_behalf = ctx.on_behalf;
    if let Upgrade::WebSocket(accept) = upgrade {
        proxy::request::ask_upgrade(&mut wire.up_head);
        // Unless the upstream switches, the connection ends with its answer.
        plan.websocket = Some(proxy::WebSocket {
            accept,
            source: tunnel_source(p.snap, peer, &head),
        });
        plan.keep_alive = false;
    }
    Ok(Next::Forward(Admitted::new(plan, head.len, caller)))
}

/// The consumer limits and caps count: an API-key consumer, or a token's
/// subject with the issuer that vouched for it (two issuers' `alice` are
/// two people).
pub(super) fn consumer_of<'s>(
    snap: &'s Snapshot,
    who: Identity,
    subject: &'s str,
) -> Option<Consumer<'s>> {
    match who {
        Identity::Consumer(i) => Some(Consumer::Key(snap.keys.consumer(i).id.as_str())),
        Identity::Token(t) if !subject.is_empty() => Some(Consumer::Subject {
            issuer: snap.token_issuer_name(t.issuer),
            subject,
        }),
        Identity::Token(_) | Identity::Anonymous => None,
    }
}

/// The source a tunnel counts against `[websocket] max_per_source`, as
/// the connection cap counts sources: behind a trusted proxy the client
/// it names, never a trusted proxy itself, loopback unless
/// `policy.exempt_loopback = false`.
fn tunnel_source(
    snap: &Snapshot,
    (peer, trusted): (SocketAddr, bool),
    head: &RequestHead<'_, '_>,
) -> Option<[u8; 16]> {
    let ip = match trusted {
        true => rate_limit::client_source(peer.ip(), head.headers, &snap.trusted_proxies),
        false => peer.ip(),
    };
    let ip = addr::canonical(ip);
    if (snap.cfg.policy.exempt_loopback && ip.is_loopback()) || snap.is_trusted_proxy(ip) {
        return None;
    }
    Some(rate_limit::source_key(ip, snap.cfg.rate_limit.ipv6_prefix))
}

/// No route: 404, or 405 where a route exists for another method.
fn missed(m: Miss) -> Failure {
    match m {
        Miss::NotFound => Failure::NOT_FOUND,
        Miss::MethodNotAllowed => Failure::METHOD,
    }
}

/// What the log and the later stages need to know of any parsed request,
/// whatever becomes of it: method, target (credentials redacted), size,
/// whether a browser sent it for another site, its id, and behind a
/// trusted proxy the client it names (which the anomaly detector counts).
fn take_note(w: &Worker, p: &mut HeadParts<'_>, ctx: &mut Ctx, head: &RequestHead<'_, '_>) {
    let note = &mut p.req.note;
    note.method.clear();
    note.method.push_str(head.method);
    auth::redact_query(head.target, &p.snap.cfg.auth.key_header, &mut note.target);
    ctx.bytes_in = head.len as u64;
    ctx.on_behalf = source::on_behalf(head, &p.snap.cfg.auth.key_header);
    request_id(w, p.trusted, head, &mut note.request_id);
    if p.trusted && p.snap.cfg.anomaly.enabled {
        let client = rate_limit::client_source(p.peer.ip(), head.headers, &p.snap.trusted_proxies);
        ctx.client = Some(client);
    }
}

/// The verdict the source serves in userspace, if any, with its
/// `retry-after` line written.
fn source_verdict(
    w: &Worker,
    p: &mut HeadParts<'_>,
    ctx: &Ctx,
    head: &RequestHead<'_, '_>,
) -> Option<Failure> {
    let (f, secs) = source::verdict(w, p.snap, (p.peer.ip(), p.trusted), ctx.client, head)?;
    use std::io::Write as _;
    let _ = write!(p.req.extras.limit_lines, "retry-after: {secs}\r\n");
    Some(f)
}

/// The path every check and the route see: normalized into `scratch`
/// before anything else judges it (`*` as itself).
fn normalized<'s>(
    scratch: &'s mut String,
    snap: &Snapshot,
    ctx: &mut Ctx,
    head: &RequestHead<'_, '_>,
) -> Result<&'s str, Failure> {
    if head.target == "*" {
        return Ok("*");
    }
    normalize::normalize(head.path(), scratch, snap.cfg.proxy.encoded_slashes)
        .map_err(normalize::PathError::failure)?;
    ctx.normalized = true;
    Ok(scratch.as_str())
}

/// Whose limits: the peer, or behind a trusted proxy the client it names
/// (already worked out for the anomaly detector, else only for a route
/// with limits).
fn limit_source(
    snap: &Snapshot,
    (peer, trusted): (SocketAddr, bool),
    ctx: &Ctx,
    route: &Route,
    head: &RequestHead<'_, '_>,
) -> IpAddr {
    match ctx.client {
        Some(client) => client,
        None if trusted && !route.settings.rate_limits.is_empty() => {
            rate_limit::client_source(peer.ip(), head.headers, &snap.trusted_proxies)
        }
        None => peer.ip(),
    }
}

/// What the request carries, judged once its caller is known: declared
/// query and path parameters, then the WAF's scan of path, query, headers
/// and cookies.
#[allow(clippy::too_many_arguments)] // the head stages' disjoint borrows
fn check_content(
    w: &Worker,
    snap: &Snapshot,
    (peer, trusted): (SocketAddr, bool),
    problem: &mut String,
    ctx: &Ctx,
    route: &Route,
    path: &str,
    head: &RequestHead<'_, '_>,
) -> Result<(), Failure> {
    let (name, route) = (&route.settings.name, &route.settings);
    let query = head.target.split_once('?').map_or("", |(_, q)| q);
    if !route.params.is_empty() {
        // The path as the upstream gets it, `;` parameters included.
        validation::params::check(&route.params, path, query, problem)?;
    }
    if route.waf != WafMode::Off {
        let skip = &snap.cfg.waf.skip_headers;
        if let Some(hit) = waf::scan_head(path, query, head.headers, skip) {
            let counted = !trusted && !ctx.on_behalf;
            waf_hit(w, peer, counted, name, route.waf, &hit)?;
        }
    }
    Ok(())
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

/// The route's checks of the head itself: CORS (an allowed preflight is
/// answered at once), header names, the declared body size, the media
/// type. A refusal comes with whether the connection may stay open.
fn check_head(
    snap: &Snapshot,
    route: &Route,
    head: &RequestHead<'_, '_>,
    cors_lines: &mut Vec<u8>,
) -> Result<cors::Allowed, (Failure, bool)> {
    let route = &route.settings;
    if let Some(policy) = &route.cors
        && cors::judge(policy, head, cors_lines).map_err(|f| (f, head.keep_alive))?
            == cors::Allowed::Preflight
    {
        return Ok(cors::Allowed::Preflight);
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
    Ok(cors::Allowed::Request)
}

/// The route for a request; a CORS preflight is routed by the method it
/// asks about, to a route with a CORS policy (else as the OPTIONS it is).
fn find_route<'s>(
    snap: &'s Snapshot,
    head: &RequestHead<'_, '_>,
    path: &str,
) -> Result<&'s Route, Miss> {
    if let Some(asked) = cors::preflight_method(head)
        && let Ok(found) = snap.routes.find(head.host, path, asked)
        && found.settings.cors.is_some()
    {
        return Ok(found);
    }
    snap.routes.find(head.host, path, head.method)
}

/// A head that did not parse: refused, with what its request line says
/// kept for the log.
fn unparsed(p: HeadParts<'_>, e: HttpError) -> Refused {
    let (method, target) = request_line_words(p.pending);
    let note = &mut p.req.note;
    note.method.clear();
    note.method.push_str(method);
    auth::redact_query(target, &p.snap.cfg.auth.key_header, &mut note.target);
    Refused {
        failure: Failure::http(e),
        keep: false,
        head_len: 0,
        lookup: None,
    }
}

/// Charges the route's rate limits for `source`: those that need no
/// identity while `caller` is unknown, those keyed by consumer once it is.
fn charge_limits(
    w: &Worker,
    snap: &Snapshot,
    route: &Route,
    (source, caller): (IpAddr, Option<(Identity, &str)>),
    lines: &mut Vec<u8>,
    by_source: &mut bool,
) -> Result<(), Failure> {
    let settings = &snap.cfg.rate_limit;
    let route_limits = &route.settings.rate_limits;
    if route_limits.is_empty() {
        return Ok(());
    }
    let (phase, consumer) = match caller {
        None => (Phase::Anonymous, None),
        Some((who, subject)) => (Phase::Identified, consumer_of(snap, who, subject)),
    };
    let who = rate_limit::Caller {
        source: rate_limit::source_key(source, settings.ipv6_prefix),
        consumer,
        route: route.index,
    };
    let (mut tally, mut leases) = (w.tally.borrow_mut(), w.leases.borrow_mut());
    let mut meter = w
        .shared
        .limits
        .meter(settings, &mut leases, &mut tally.limits);
    let charged = rate_limit::charge(&mut meter, settings, route_limits, phase, &who, lines);
    *by_source = meter.refused_by_source;
    charged
}

/// What the proxy needs to know of an admitted request.
fn plan_of(route: &Route, head: &RequestHead<'_, '_>) -> Plan {
    let (index, route) = (route.index, &route.settings);
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
        websocket: None,
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
pub(super) fn waf_hit(
    w: &Worker,
    peer: SocketAddr,
    counted: bool,
    route: &str,
    mode: WafMode,
    hit: &waf::Hit,
) -> Result<(), Failure> {
    let source = addr::canonical(peer.ip());
    let blocked = mode == WafMode::Block;
    tracing::warn!(
        "waf: {hit} from {source} on route {route}{}",
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
