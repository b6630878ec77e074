//! The life of a request, in the order it meets the stages:
//!
//! parse (`http::request`) → normalize the path (`route::normalize`) →
//! route (`route`) → [CORS, upgrade, limits, authentication,
//! authorization, parameters, WAF] (`admit`) → the upstream head
//! (`proxy::request`) → body (`body`) → proxy (`proxy`) → respond
//! (`respond`) → log (`record`). A WebSocket handshake goes from the
//! upstream head to `tunnel` instead of `body`.
//!
//! Every stage that judges the head runs synchronously in `admit_head`
//! (the head borrows the read buffer, which an `.await` would end), and
//! only an [`Admitted`] request, which only `admit_head` can make, reaches
//! `proxy::forward`. Every exit goes through one response and one log line.

mod admit;
mod body;
mod caller;
mod docs;
mod record;
mod source;
mod tunnel;

use admit::{admit_head, waf_hit};
use caller::introspect;
use record::record;

use std::{
    net::{IpAddr, SocketAddr},
    time::Instant,
};

use crate::{
    addr,
    config::WafMode,
    control::Event,
    http::Framing,
    observe::access_log::AccessRecord,
    proxy::{self, Admitted, BodyKind, Done},
    respond::{Abort, Failure},
    session::conn::{self, Conn},
    session::{self, Answer},
    snapshot::Snapshot,
    stages::{
        auth::{self, Identity},
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
    /// The path normalized (it is in the request's `paths` scratch).
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

/// What the head stages decided for a request they let through.
enum Next {
    /// On to the body and the upstream.
    Forward(Admitted),
    /// Answered by the gateway itself, never proxied: an allowed CORS
    /// preflight (204 and its CORS lines).
    Local(Local),
}

/// An answer the gateway gives itself (no body).
struct Local {
    status: u16,
    /// The access log's reason code.
    reason: &'static str,
    /// Whether the connection can carry another request.
    keep: bool,
    /// Bytes of the head.
    head_len: usize,
}

/// Handles the request whose head is at the start of the pending bytes.
/// Returns whether the connection stays open.
pub async fn handle_request(w: &Worker, c: &mut Conn) -> bool {
    let mut ctx = Ctx::new();
    c.req.note.request_id.clear();
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
        Ok(Next::Forward(mut a)) => {
            let outcome = match a.websocket {
                Some(_) => tunnel::forward(w, c, &a, &mut ctx).await,
                None => body::forward(w, c, &mut a).await,
            };
            finish(w, c, &a, &mut ctx, outcome).await
        }
        Ok(Next::Local(l)) => {
            c.consume(l.head_len);
            let keep = l.keep && !w.stopping();
            let _ = session::answer(c, Answer::Empty(l.status), keep, &[]).await;
            (ctx.status, ctx.reason) = (l.status, l.reason);
            keep
        }
        Err(r) => {
            c.consume(r.head_len);
            let keep = r.keep && !w.stopping();
            if !ctx.on_behalf {
                report(w, c, r.failure, ctx.by_source);
            }
            let _ = session::answer(c, Answer::Failure(r.failure), keep, &[]).await;
            ctx.failed(r.failure, None);
            keep
        }
    };
    record(w, c, &ctx);
    c.settle_body();
    keep
}

/// Logs a request refused before its head could reach the stages (an
/// HTTP/2 stream that cannot be read as an HTTP/1.1 request), answering
/// it when `answer` (else the caller resets the stream).
pub async fn refuse(w: &Worker, c: &mut Conn, f: Failure, answer: bool) {
    let mut ctx = Ctx::new();
    if answer {
        let _ = session::answer(c, Answer::Failure(f), false, &[]).await;
    }
    ctx.failed(f, None);
    record(w, c, &ctx);
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
            let _ = session::answer(c, Answer::Failure(f), keep, &[]).await;
            ctx.failed(f, addr);
            keep
        }
        Err(Abort::Close(f, addr)) => {
            ctx.failed(f, addr);
            false
        }
    }
}
