//! Rate limits: GCRA (the generic cell rate algorithm, as in ATM and
//! Redis-cell) over one table of buckets every worker shares.
//!
//! A bucket is 16 bytes: the hash of its key (limit, source, consumer,
//! route) and its theoretical arrival time, changed together by one
//! 16-byte compare-and-swap. So a limit holds across workers with no lock:
//! a client whose connections land on different workers gets the rate it
//! would get on one. For a key one worker charges very often, [`Leases`]
//! take a few requests per exchange (charged before use: never an excess).
//!
//! Memory is the table, fixed at start (`rate_limit.table_entries`). A key
//! lives in one of [`PROBES`] slots after its hash; a bucket back at rest
//! (its arrival time passed) is free for another key, which loses nothing.
//! When all the slots of a key are busy with live buckets, the most rested
//! one is taken over: its key starts afresh, which can admit that key at
//! most one more burst. That only happens when the table holds more live
//! keys than it has room for; the takeovers are counted.
//!
//! Limits keyed by source only run before authentication (an attacker
//! without credentials is counted before any token is verified); limits
//! with `consumer` in their key run after it.
//!
//! `buckets` is the shared table, `leases` a worker's requests taken ahead;
//! this file is the stage: whose limit, which limits, and the answer.

mod buckets;
pub mod cluster_link;
mod leases;

pub use buckets::{Buckets, Charge, PROBES};
pub use leases::{LEASE, Leases};

use std::net::IpAddr;

use crate::{
    addr::{CidrSet, source_addr},
    config::{LimitSettings, RateLimitSettings},
    observe::metrics::LimitCounts,
    respond::{Failure, Hint},
};
use cluster_link::Link;

/// The limiter's state every worker shares: the buckets and, when limits
/// are counted across gateways, the link to the cluster's sync thread.
pub struct Limiter {
    /// The buckets (lock-free).
    pub buckets: Buckets,
    /// Where admitted requests go when limits are shared through Redis.
    pub link: Option<Link>,
}

/// Over a limit.
pub const EXCEEDED: Failure =
    Failure::client(429, "rate_limit.exceeded").with_hint(Hint::LimitLines);

/// Which of a route's limits a phase charges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Before authentication: limits that need no identity.
    Anonymous,
    /// After authentication: limits keyed by consumer.
    Identified,
}

/// Who a request is, as limits count it.
pub struct Caller<'a> {
    /// The source address, masked to its counting prefix.
    pub source: [u8; 16],
    /// The consumer or token subject; none for an anonymous caller
    /// (counted by source instead).
    pub consumer: Option<Consumer<'a>>,
    /// The route, by index.
    pub route: usize,
}

/// A caller a consumer-keyed limit counts, in the namespace of the
/// credential that proved it: an API key's consumer `alice` and a JWT
/// whose `sub` is `alice` are different callers (else a partner issuer's
/// token with `sub=alice` would spend the key holder's limit), and so are
/// the same subject from two issuers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consumer<'a> {
    /// A consumer of the key file, by id.
    Key(&'a str),
    /// A token's subject, with the name of the issuer or introspection
    /// endpoint that vouched for it.
    Subject {
        /// `auth.jwt[].name` or `auth.introspection[].name`.
        issuer: &'a str,
        /// The subject.
        subject: &'a str,
    },
}

impl<'a> Consumer<'a> {
    /// The bucket key's parts: the kind, the issuer, the id.
    fn parts(self) -> [&'a [u8]; 3] {
        match self {
            Self::Key(id) => [b"k", b"", id.as_bytes()],
            Self::Subject { issuer, subject } => [b"s", issuer.as_bytes(), subject.as_bytes()],
        }
    }
}

/// The counting form of a source: IPv4 (also IPv4-mapped IPv6) per
/// address, IPv6 per `/prefix`.
pub fn source_key(ip: IpAddr, ipv6_prefix: u8) -> [u8; 16] {
    match crate::addr::source_of(ip, ipv6_prefix) {
        IpAddr::V4(v4) => std::net::Ipv4Addr::to_ipv6_mapped(&v4).octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The address a request is counted by: the TCP peer or, when the peer is
/// a trusted proxy, the nearest `X-Forwarded-For` address that is not one.
/// The list is read right to left: each proxy appends the address it saw,
/// so whatever a client wrote itself is further left and never wins over
/// what a trusted proxy saw. An entry that does not parse stops the walk
/// at the last trusted hop.
pub fn client_source(peer: IpAddr, headers: &[httparse::Header<'_>], trusted: &CidrSet) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.contains(&source_addr(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let mut hop = peer;
    let forwarded = headers
        .iter()
        .rev()
        .filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"));
    for h in forwarded {
        let Ok(list) = std::str::from_utf8(h.value) else {
            return hop;
        };
        for item in list.rsplit(',').map(str::trim).filter(|i| !i.is_empty()) {
            let Some(ip) = forwarded_ip(item) else {
                return hop;
            };
            if !is_trusted(ip) {
                return ip;
            }
            hop = ip;
        }
    }
    hop
}

/// An `X-Forwarded-For` entry: an address, `v4:port` or `[v6]:port`.
fn forwarded_ip(item: &str) -> Option<IpAddr> {
    if let Ok(ip) = item.parse() {
        return Some(ip);
    }
    if let Some(rest) = item.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    item.rsplit_once(':')?
        .0
        .parse::<std::net::Ipv4Addr>()
        .ok()
        .map(IpAddr::V4)
}

/// Where a worker counts: the shared buckets, the cluster's queue when
/// limits are shared through Redis, and the worker's own leases.
pub struct Meter<'a> {
    /// The buckets all workers share.
    pub buckets: &'a Buckets,
    /// Admitted requests go here when limits are shared.
    pub link: Option<&'a Link>,
    /// This worker's leases.
    pub leases: &'a mut Leases,
    /// Set when a refusal came from a limit that counts the source (only
    /// those say anything about the address, so only they escalate).
    pub refused_by_source: bool,
    /// Every decision, by limit, for the metrics.
    pub decisions: &'a mut LimitCounts,
}

impl Limiter {
    /// A meter over these buckets for one worker's decisions: `leases` and
    /// `decisions` are the worker's own; the cluster link counts only
    /// when `settings.shared`.
    pub fn meter<'a>(
        &'a self,
        settings: &RateLimitSettings,
        leases: &'a mut Leases,
        decisions: &'a mut LimitCounts,
    ) -> Meter<'a> {
        Meter {
            buckets: &self.buckets,
            link: self.link.as_ref().filter(|_| settings.shared),
            leases,
            refused_by_source: false,
            decisions,
        }
    }
}

/// Charges the limits of `route_limits` that belong to `phase`. The
/// strictest wins: a refusal is the one to wait longest for, and writes
/// its `RateLimit-Policy`, `RateLimit` and `Retry-After` lines to
/// `lines`; a pass writes the tightest limit's lines when
/// `rate_limit.headers` asks for them.
pub fn charge(
    meter: &mut Meter<'_>,
    settings: &RateLimitSettings,
    route_limits: &[usize],
    phase: Phase,
    who: &Caller<'_>,
    lines: &mut Vec<u8>,
) -> Result<(), Failure> {
    let Meter {
        buckets,
        link,
        leases,
        refused_by_source,
        decisions,
    } = meter;
    let (buckets, link) = (*buckets, *link);
    let now = buckets.now_ns();
    let mut refused: Option<(&LimitSettings, Charge)> = None;
    let mut tightest: Option<(&LimitSettings, Charge)> = None;
    for &i in route_limits {
        let limit = &settings.limits[i];
        if (phase == Phase::Identified) != limit.key.needs_identity() {
            continue;
        }
        if link.is_some_and(Link::refuses) {
            return Err(cluster_link::UNAVAILABLE);
        }
        let key = bucket_key(buckets, limit, who);
        let (c, taken) = leases.charge(buckets, key, now, limit.interval_ns(), limit.burst);
        decisions.record(i, c.allowed);
        if let Some(l) = link
            && taken > 0
        {
            l.admitted(key, limit.interval_ns(), taken);
        }
        if !c.allowed {
            // An anonymous caller of a consumer limit is counted by source.
            *refused_by_source |=
                limit.key.source || (limit.key.consumer && who.consumer.is_none());
            if refused.is_none_or(|(_, r)| r.retry_ns < c.retry_ns) {
                refused = Some((limit, c));
            }
        } else if tightest.is_none_or(|(_, t)| t.remaining > c.remaining) {
            tightest = Some((limit, c));
        }
    }
    if let Some((limit, c)) = refused {
        write_lines(lines, limit, &c);
        return Err(EXCEEDED);
    }
    if settings.headers
        && let Some((limit, c)) = tightest
    {
        write_lines(lines, limit, &c);
    }
    Ok(())
}

/// The bucket of `limit` for `who`.
fn bucket_key(buckets: &Buckets, limit: &LimitSettings, who: &Caller<'_>) -> u64 {
    // An anonymous caller of a consumer-keyed limit is counted by source.
    let by_source = limit.key.source || (limit.key.consumer && who.consumer.is_none());
    let route = who.route.to_le_bytes();
    let [kind, issuer, id] = match who.consumer {
        Some(c) if limit.key.consumer => c.parts(),
        _ => [b"" as &[u8]; 3],
    };
    let parts: [&[u8]; 5] = [
        if by_source { &who.source } else { b"" },
        kind,
        issuer,
        id,
        if limit.key.route { &route } else { b"" },
    ];
    buckets.key(&limit.name, &parts)
}

/// Each limit's state for `who`, as the admin API shows it: (limit index,
/// what a request would get now).
pub fn live(
    buckets: &Buckets,
    settings: &RateLimitSettings,
    who: &Caller<'_>,
) -> Vec<(usize, Charge)> {
    let now = buckets.now_ns();
    settings
        .limits
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let key = bucket_key(buckets, l, who);
            (i, buckets.peek(key, now, l.interval_ns(), l.burst))
        })
        .collect()
}

/// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers),
/// and `Retry-After` on a refusal; seconds round up.
fn write_lines(out: &mut Vec<u8>, limit: &LimitSettings, c: &Charge) {
    use std::io::Write as _;
    let secs = |ns: u64| ns.div_ceil(1_000_000_000);
    out.clear();
    let _ = write!(
        out,
        "ratelimit-policy: \"{}\";q={};w={}\r\nratelimit: \"{}\";r={};t={}\r\n",
        limit.name,
        limit.count,
        limit.window_secs,
        limit.name,
        c.remaining,
        secs(if c.allowed { c.reset_ns } else { c.retry_ns })
    );
    if !c.allowed {
        let _ = write!(out, "retry-after: {}\r\n", secs(c.retry_ns).max(1));
    }
}

/// The body of the `forwarded_for` fuzz target: `data` is a peer address
/// byte and `X-Forwarded-For` lines. Whatever they hold, the address
/// charged is the peer or one written in the lines, and a peer that is not
/// a trusted proxy is always charged itself.
/// Whether a forwarded address was taken (for the unit tests' count).
pub fn fuzz_forwarded_for(data: &[u8]) -> bool {
    let Some((&first, rest)) = data.split_first() else {
        return false;
    };
    let trusted = CidrSet::new(&["10.0.0.0/8".parse().expect("literal net")]);
    let peer = IpAddr::from([if first % 2 == 0 { 10 } else { 198 }, 18, 0, first]);
    let lines: Vec<&[u8]> = rest.split(|&b| b == b'\n').collect();
    let headers: Vec<httparse::Header<'_>> = lines
        .iter()
        .map(|v| httparse::Header {
            name: "X-Forwarded-For",
            value: v,
        })
        .collect();
    let got = client_source(peer, &headers, &trusted);
    if !trusted.contains(&source_addr(peer)) {
        assert_eq!(got, peer);
    } else if got != peer {
        let written: Vec<IpAddr> = lines
            .iter()
            .filter_map(|l| std::str::from_utf8(l).ok())
            .flat_map(|l| l.split(','))
            .filter_map(|i| forwarded_ip(i.trim()))
            .collect();
        assert!(written.contains(&got), "{got} is not among {written:?}");
    }
    got != peer
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LimitKey;

    #[test]
    fn the_forwarded_for_fuzz_body_holds_on_mutated_seeds() {
        let seeds: &[&[u8]] = &[
            b"\x02198.18.0.7, 10.0.0.3\n[2001:db8::1]:443",
            b"\x011.2.3.4",
            b"\x04junk, 10.1.1.1,,  ,198.18.0.9:80\n::ffff:198.18.0.1",
        ];
        let forwarded = crate::http::fuzz::mutated(seeds)
            .iter()
            .filter(|input| fuzz_forwarded_for(input))
            .count();
        assert!(forwarded >= 20, "only {forwarded} took a forwarded address");
    }

    #[test]
    fn a_forged_forwarded_for_never_changes_whose_limit_is_charged() {
        let header = |v: &'static str| httparse::Header {
            name: "X-Forwarded-For",
            value: v.as_bytes(),
        };
        let proxies = CidrSet::new(&["10.0.0.0/8".parse().expect("net")]);
        let peer: IpAddr = "198.18.0.5".parse().expect("ip");
        let proxy: IpAddr = "10.1.1.1".parse().expect("ip");
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        // Not from a trusted proxy: the header is ignored.
        assert_eq!(client_source(peer, &[header("1.2.3.4")], &proxies), peer);
        // From one: the nearest untrusted hop, whatever the client wrote.
        let spoofed = [header("1.2.3.4, 198.18.0.7, 10.2.2.2")];
        assert_eq!(client_source(proxy, &spoofed, &proxies), ip("198.18.0.7"));
        let split = [header("1.2.3.4"), header("[2001:db8::5]:443, 10.0.0.9")];
        assert_eq!(client_source(proxy, &split, &proxies), ip("2001:db8::5"));
        assert_eq!(
            client_source(proxy, &[header("198.18.0.7:5555")], &proxies),
            ip("198.18.0.7")
        );
        // Garbage stops at the last trusted hop; no header is the proxy itself.
        assert_eq!(
            client_source(proxy, &[header("junk, 10.3.3.3")], &proxies),
            ip("10.3.3.3")
        );
        assert_eq!(client_source(proxy, &[], &proxies), proxy);
    }

    #[test]
    fn sources_count_ipv4_mapped_as_ipv4_and_ipv6_per_prefix() {
        let v4: IpAddr = "198.18.0.7".parse().expect("ip");
        let mapped: IpAddr = "::ffff:198.18.0.7".parse().expect("ip");
        assert_eq!(source_key(v4, 64), source_key(mapped, 64));
        let a: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(source_key(a, 64), source_key(b, 64));
        assert_ne!(source_key(a, 64), source_key(c, 64));
        assert_ne!(source_key(a, 128), source_key(b, 128));
        assert_eq!(source_key(a, 48), source_key(c, 48));
    }

    fn local<'a>(
        b: &'a Buckets,
        leases: &'a mut Leases,
        decisions: &'a mut LimitCounts,
    ) -> Meter<'a> {
        Meter {
            buckets: b,
            link: None,
            leases,
            refused_by_source: false,
            decisions,
        }
    }

    fn settings(headers: bool) -> RateLimitSettings {
        let limit = |name: &str, key: LimitKey, count, burst| LimitSettings {
            name: name.into(),
            key,
            count,
            window_secs: 1,
            burst,
        };
        let source = LimitKey {
            source: true,
            ..LimitKey::default()
        };
        let consumer = LimitKey {
            consumer: true,
            ..LimitKey::default()
        };
        RateLimitSettings {
            limits: vec![limit("ip", source, 10, 3), limit("user", consumer, 1, 1)],
            ipv6_prefix: 64,
            headers,
            table_entries: 1024,
            escalation: Default::default(),
            shared: false,
        }
    }

    #[test]
    fn the_phase_picks_the_limits_and_the_refusal_says_when() {
        let b = Buckets::new(1024);
        let s = settings(false);
        let who = Caller {
            source: source_key("198.18.0.9".parse().expect("ip"), 64),
            consumer: Some(Consumer::Key("alice")),
            route: 0,
        };
        let mut counts = LimitCounts::default();
        let mut ask = |limits: &[usize], phase, lines: &mut Vec<u8>| {
            charge(
                &mut local(&b, &mut Leases::default(), &mut counts),
                &s,
                limits,
                phase,
                &who,
                lines,
            )
        };
        let mut lines = Vec::new();
        for _ in 0..3 {
            assert!(ask(&[0, 1], Phase::Anonymous, &mut lines).is_ok());
        }
        assert!(lines.is_empty(), "headers off: nothing on a pass");
        assert_eq!(ask(&[0, 1], Phase::Anonymous, &mut lines), Err(EXCEEDED));
        let text = String::from_utf8(lines.clone()).expect("ascii");
        assert!(
            text.contains("ratelimit-policy: \"ip\";q=10;w=1\r\n"),
            "{text}"
        );
        assert!(text.contains("ratelimit: \"ip\";r=0;t=1\r\n"), "{text}");
        assert!(text.contains("retry-after: 1\r\n"), "{text}");
        // The consumer limit is its own phase.
        assert!(ask(&[0, 1], Phase::Identified, &mut lines).is_ok());
        assert_eq!(ask(&[0, 1], Phase::Identified, &mut lines), Err(EXCEEDED));
        // Every decision counted for the metrics, by limit.
        assert_eq!(counts.0, vec![[3, 1], [1, 1]]);
    }

    #[test]
    fn a_subject_never_spends_a_key_holders_limit() {
        let b = Buckets::new(1024);
        let s = settings(false);
        let source = source_key("198.18.0.9".parse().expect("ip"), 64);
        let key = |consumer| {
            bucket_key(
                &b,
                &s.limits[1],
                &Caller {
                    source,
                    consumer: Some(consumer),
                    route: 0,
                },
            )
        };
        let alice = key(Consumer::Key("alice"));
        let partner = key(Consumer::Subject {
            issuer: "partner",
            subject: "alice",
        });
        let own = key(Consumer::Subject {
            issuer: "own",
            subject: "alice",
        });
        assert_ne!(alice, partner);
        assert_ne!(partner, own);
        // No concatenation makes two callers one.
        assert_ne!(
            key(Consumer::Subject {
                issuer: "a",
                subject: "bc"
            }),
            key(Consumer::Subject {
                issuer: "ab",
                subject: "c"
            })
        );
    }

    #[test]
    fn passes_carry_the_tightest_limit_when_asked() {
        let b = Buckets::new(1024);
        let s = settings(true);
        let who = Caller {
            source: source_key("198.18.0.9".parse().expect("ip"), 64),
            consumer: None,
            route: 3,
        };
        let ask = |limits: &[usize], phase, lines: &mut Vec<u8>| {
            charge(
                &mut local(&b, &mut Leases::default(), &mut LimitCounts::default()),
                &s,
                limits,
                phase,
                &who,
                lines,
            )
        };
        let mut lines = Vec::new();
        assert!(ask(&[0], Phase::Anonymous, &mut lines).is_ok());
        let text = String::from_utf8(lines).expect("ascii");
        assert_eq!(
            text,
            "ratelimit-policy: \"ip\";q=10;w=1\r\nratelimit: \"ip\";r=2;t=1\r\n"
        );
    }
}
