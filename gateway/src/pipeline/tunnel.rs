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
    stages::rate_limit,
};

/// The tunnel, if the upstream agrees to one.
pub(super) async fn forward(
    w: &Worker,
    c: &mut Conn,
    a: &Admitted,
    ctx: &mut Ctx,
) -> Result<Done, Abort> {
    c.consume(a.head_len());
    let snap = c.snap_arc();
    let s = snap.cfg.websocket;
    // Behind a trusted proxy, the client it names; loopback as the
    // connection cap counts it.
    let source = match (c.trusted, ctx.client) {
        (false, _) => Some(addr::canonical(c.peer.ip())),
        (true, client) => client.map(addr::canonical),
    }
    .filter(|ip| !(snap.cfg.policy.exempt_loopback && ip.is_loopback()))
    .map(|ip| rate_limit::source_key(ip, snap.cfg.rate_limit.ipv6_prefix));
    let consumer = match a.identity() {
        Identity::Anonymous => None,
        Identity::Consumer(i) => Some(snap.keys.consumer(i).id.as_str()),
        Identity::Token(_) => Some(c.req.caller.subject.as_str()).filter(|s| !s.is_empty()),
    };
    let _slot = w
        .shared
        .tunnels
        .admit(source, consumer, (s.max_per_source, s.max_per_consumer))
        .map_err(|f| Abort::Respond(f, None))?;
    let mut done = proxy::forward(&w.upstreams, &w.shared.stopping, c, a).await?;
    let Some(up) = done.switched.take() else {
        return Ok(done);
    };
    (ctx.status, ctx.reason) = (101, "websocket.open");
    (ctx.upstream, ctx.upstream_time) = (done.upstream, done.upstream_time);
    record::log_line(w, c, ctx);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut life = conn::ms(s.max_lifetime_ms);
    if let Some(exp) = a.token_expiry {
        life = life.min(std::time::Duration::from_secs(
            exp.saturating_sub(now).max(0) as u64,
        ));
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
        // HTTP/2 refuses `Upgrade` as a connection-specific field.
        return Err(Abort::Close(Failure::UPSTREAM_PROTOCOL, done.upstream));
    };
    let counts = &w.shared.tunnels;
    counts
        .open
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    counts
        .opened
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let ended = tunnel::run(tls, early, *up, bounds, &w.shared.stopping).await;
    counts
        .open
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    counts
        .bytes_up
        .fetch_add(ended.up, std::sync::atomic::Ordering::Relaxed);
    counts
        .bytes_down
        .fetch_add(ended.down, std::sync::atomic::Ordering::Relaxed);
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
