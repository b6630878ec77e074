//! A WebSocket handshake every head stage let through: its place under
//! the tunnel caps (taken before the upstream is contacted), the upstream's
//! answer, and on its 101 the tunnel (`proxy::tunnel`), logged once when
//! it opens and once when it closes. Any other answer goes back as it is,
//! and the connection ends with it: nothing the client sent after the
//! handshake is ever read as a request.

use super::*;
use crate::{
    proxy::tunnel::{self, Bounds},
    session::conn::ClientIo,
    stages::rate_limit::Consumer,
};

/// The tunnel, if the upstream agrees to one.
pub(super) async fn forward(
    w: &Worker,
    c: &mut Conn,
    a: &Admitted,
    ctx: &mut Ctx,
) -> Result<Done, Abort> {
    c.consume(a.head_len());
    let Some(handshake) = a.websocket else {
        return Err(Abort::Respond(Failure::UPSTREAM_PROTOCOL, None));
    };
    if !matches!(c.io, ClientIo::H1(_)) {
        // HTTP/2 refuses `Upgrade` as a connection-specific field before
        // any stage sees it; this would be a bug.
        return Err(Abort::Respond(crate::stages::upgrade::HANDSHAKE, None));
    }
    let snap = c.snap_arc();
    let s = snap.cfg.websocket;
    // Two issuers' `alice` are two consumers.
    let consumer = match admit::consumer_of(&snap, a.identity(), &c.req.caller.subject) {
        Some(Consumer::Key(id)) => Some(format!("key\0{id}")),
        Some(Consumer::Subject { issuer, subject }) => Some(format!("{issuer}\0{subject}")),
        None => None,
    };
    let mut slot = w
        .shared
        .tunnels
        .admit(
            handshake.source,
            consumer.as_deref(),
            (s.max_per_source, s.max_per_consumer),
        )
        .map_err(|f| Abort::Respond(f, None))?;
    let mut done = proxy::forward(&w.upstreams, &w.shared.stopping, c, a).await?;
    let Some(up) = done.switched.take() else {
        return Ok(done);
    };
    slot.opened();
    (ctx.status, ctx.reason) = (101, "websocket.open");
    (ctx.upstream, ctx.upstream_time) = (done.upstream, done.upstream_time);
    record::log_line(w, c, ctx);
    let mut life = conn::ms(s.max_lifetime_ms);
    if let Some(exp) = a.expires() {
        let left = exp.saturating_sub(auth::now()).max(0) as u64;
        life = life.min(std::time::Duration::from_secs(left));
    }
    let bounds = Bounds {
        idle: conn::ms(s.idle_timeout_ms),
        until: Instant::now() + life,
        rate: s.bytes_per_second,
        buffer: s.buffer_bytes,
        max_message: s.max_message_bytes,
    };
    let early = c.pending().to_vec();
    c.consume(early.len());
    let ClientIo::H1(tls) = &mut c.io else {
        return Err(Abort::Close(Failure::UPSTREAM_PROTOCOL, done.upstream));
    };
    let ended = tunnel::run(tls, early, *up, bounds, &w.shared.stopping).await;
    slot.carried(ended.up, ended.down);
    ctx.reason = ended.reason;
    ctx.bytes_in += ended.up;
    Ok(Done {
        status: 101,
        upstream: done.upstream,
        upstream_time: done.upstream_time,
        bytes: ended.down,
        client_reusable: false,
        switched: None,
    })
}
