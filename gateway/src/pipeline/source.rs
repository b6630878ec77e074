//! Where a request comes from, as the head stages judge it before any
//! other: a source serving a verdict in userspace gets its answer first,
//! and a request a browser sent for another site's page is marked so its
//! refusals never count against the source.

use std::net::IpAddr;

use crate::{
    addr,
    clock::{Clock, Monotonic},
    http::request::RequestHead,
    respond::Failure,
    snapshot::Snapshot,
    stages::rate_limit,
    worker::Worker,
};

/// The answer to a request from a source serving a verdict in userspace,
/// and the seconds left (for `Retry-After`), or `None`. Behind a trusted
/// proxy, the client it names (`client`, when already worked out): the
/// kernel cannot tell those apart; this can.
pub(super) fn verdict(
    w: &Worker,
    snap: &Snapshot,
    (peer, trusted): (IpAddr, bool),
    client: Option<IpAddr>,
    head: &RequestHead<'_, '_>,
) -> Option<(Failure, u64)> {
    if !w.shared.request_verdicts.any(&w.verdicts) {
        return None;
    }
    let who = match (trusted, client) {
        (false, _) => peer,
        (true, Some(client)) => client,
        (true, None) => rate_limit::client_source(peer, head.headers, &snap.trusted_proxies),
    };
    let source = addr::source_of(who, snap.cfg.rate_limit.ipv6_prefix);
    if snap.is_trusted_proxy(source) {
        return None;
    }
    let (reason, left_ns) = w
        .shared
        .request_verdicts
        .check(&w.verdicts, source, || Monotonic.now_ns())?;
    Some((
        crate::control::verdicts::failure(reason),
        left_ns.div_ceil(1_000_000_000),
    ))
}

/// Whether a browser sent the request for another site's page: a
/// cross-site `<img>`, form or fetch (`Sec-Fetch-Site: cross-site`), or a
/// sibling subdomain's (`same-site`). What such a request does, the page
/// chose, not the person whose address it comes from. Every mode counts
/// (`no-cors`, `navigate`, and `cors`, whose simple requests go out
/// without a preflight). A page cannot attach an API key or a bearer
/// token to a request without a preflight our CORS policy answers, so a
/// request carrying one is the sender's own doing: a scripted client that
/// adds the headers to its guesses has them counted all the same. A client
/// that is no browser may otherwise send the headers to keep its refusals
/// from counting; they are still refused, and its per-source rate limits
/// still hold.
pub(super) fn on_behalf(head: &RequestHead<'_, '_>, key_header: &str) -> bool {
    let site = matches!(
        head.single("sec-fetch-site"),
        Ok(Some(v)) if v.eq_ignore_ascii_case(b"cross-site") || v.eq_ignore_ascii_case(b"same-site")
    );
    let mode = matches!(
        head.single("sec-fetch-mode"),
        Ok(Some(v)) if [&b"cors"[..], b"no-cors", b"navigate", b"same-origin", b"websocket"]
            .iter()
            .any(|m| v.eq_ignore_ascii_case(m))
    );
    // Basic credentials a browser may attach by itself; a bearer token or
    // an API key it never does.
    let credential = head.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case(key_header)
            || (h.name.eq_ignore_ascii_case("authorization")
                && !h.value.trim_ascii_start().starts_with(b"Basic ")
                && !h.value.trim_ascii_start().starts_with(b"basic "))
    });
    site && mode && !credential
}
