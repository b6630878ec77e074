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

use std::{
    hash::{BuildHasher, Hasher},
    net::IpAddr,
    sync::atomic::{AtomicU64, Ordering},
    time::Instant,
};

use portable_atomic::AtomicU128;

use crate::{
    cluster::{self, Link},
    config::{LimitSettings, RateLimitSettings},
    policy::{CidrSet, source_addr},
    respond::Failure,
};

/// Slots a key may occupy: its hash's slot and the next ones.
pub const PROBES: usize = 8;

/// Over a limit.
pub const EXCEEDED: Failure = Failure::client(429, "rate_limit.exceeded");

/// The shared buckets.
pub struct Buckets {
    slots: Box<[AtomicU128]>,
    mask: usize,
    /// SipHash keys: random per process, or shared by the gateways of a
    /// cluster (so their buckets have the same names in Redis).
    keys: (u64, u64),
    epoch: Instant,
    takeovers: AtomicU64,
}

/// One charge's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge {
    /// Whether the request is within the limit (and was counted).
    pub allowed: bool,
    /// Requests that would still pass right now.
    pub remaining: u64,
    /// Nanoseconds until the bucket is at rest (full burst again).
    pub reset_ns: u64,
    /// Refused: nanoseconds until one request would pass.
    pub retry_ns: u64,
}

const fn pack(tag: u64, tat: u64) -> u128 {
    ((tag as u128) << 64) | tat as u128
}

const fn unpack(v: u128) -> (u64, u64) {
    ((v >> 64) as u64, v as u64)
}

impl Buckets {
    /// A table of `entries` buckets (a power of two) whose keys are
    /// hashed with a random secret.
    pub fn new(entries: usize) -> Self {
        let mut seed = [0u8; 16];
        // Without the OS's randomness, std's per-process keys still differ.
        if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed).is_err() {
            let h = std::hash::RandomState::new().hash_one(entries);
            seed[..8].copy_from_slice(&h.to_le_bytes());
        }
        Self::with_seed(entries, seed)
    }

    /// A table whose keys are hashed with `seed`: gateways with the same
    /// seed name the same buckets alike.
    pub fn with_seed(entries: usize, seed: [u8; 16]) -> Self {
        let entries = entries.next_power_of_two().max(PROBES);
        let half = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&seed[i..i + 8]);
            u64::from_le_bytes(b)
        };
        Self {
            slots: (0..entries).map(|_| AtomicU128::new(0)).collect(),
            mask: entries - 1,
            keys: (half(0), half(8)),
            epoch: Instant::now(),
            takeovers: AtomicU64::new(0),
        }
    }

    /// Nanoseconds on the table's clock.
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// The key of the limit named `limit` for these parts. Keyed SipHash
    /// with a secret, so a client cannot pick keys that collide.
    pub fn key(&self, limit: &str, parts: &[&[u8]]) -> u64 {
        let mut h = siphasher::sip::SipHasher13::new_with_keys(self.keys.0, self.keys.1);
        h.write_usize(limit.len());
        h.write(limit.as_bytes());
        for p in parts {
            h.write_usize(p.len());
            h.write(p);
        }
        // 0 marks an empty slot.
        h.finish().max(1)
    }

    /// Buckets taken over from a live key so far.
    pub fn takeovers(&self) -> u64 {
        self.takeovers.load(Ordering::Relaxed)
    }

    /// Buckets not at rest at `now`.
    pub fn live(&self, now: u64) -> usize {
        self.slots
            .iter()
            .filter(|s| {
                let (tag, tat) = unpack(s.load(Ordering::Relaxed));
                tag != 0 && tat > now
            })
            .count()
    }

    /// What charging `key` at `now` would answer, without charging.
    pub fn peek(&self, key: u64, now: u64, interval: u64, burst: u64) -> Charge {
        let tau = interval.saturating_mul(burst);
        let start = key as usize & self.mask;
        let tat = (0..PROBES)
            .map(|i| unpack(self.slots[(start + i) & self.mask].load(Ordering::Acquire)))
            .find(|&(tag, _)| tag == key)
            .map_or(0, |(_, tat)| tat);
        let base = tat.max(now);
        let next = base.saturating_add(interval);
        let allowed = next - now <= tau;
        Charge {
            allowed,
            // Counting the request it describes.
            remaining: if allowed {
                (tau - (next - now)) / interval + 1
            } else {
                0
            },
            reset_ns: base - now,
            retry_ns: if allowed { 0 } else { next - now - tau },
        }
    }

    /// Gives back `n` requests charged to `key` but never used (a lease's
    /// rest): its arrival time moves back, never before `now`.
    pub fn refund(&self, key: u64, now: u64, interval: u64, n: u64) {
        let start = key as usize & self.mask;
        for i in 0..PROBES {
            let slot = &self.slots[(start + i) & self.mask];
            let mut cur = slot.load(Ordering::Acquire);
            while unpack(cur).0 == key {
                let tat = unpack(cur).1;
                if tat <= now {
                    return;
                }
                let back = tat.saturating_sub(interval.saturating_mul(n)).max(now);
                match slot.compare_exchange(
                    cur,
                    pack(key, back),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => return,
                    Err(actual) => cur = actual,
                }
            }
        }
    }

    /// Moves `key`'s arrival time to at least `tat` (what the cluster
    /// admitted elsewhere); a key not in the table gets a bucket.
    pub fn raise(&self, key: u64, tat: u64, now: u64) {
        let start = key as usize & self.mask;
        loop {
            let mut target = None;
            for i in 0..PROBES {
                let at = (start + i) & self.mask;
                let cur = self.slots[at].load(Ordering::Acquire);
                let (tag, slot_tat) = unpack(cur);
                if tag == key {
                    target = Some((at, cur, slot_tat));
                    break;
                }
                if target.is_none() && (tag == 0 || slot_tat <= now) {
                    target = Some((at, cur, 0));
                }
            }
            // Every slot holds another live key: the cluster's word waits
            // for the next sync rather than evicting one.
            let Some((at, cur, old)) = target else {
                return;
            };
            if tat <= old || tat <= now {
                return;
            }
            if self.slots[at]
                .compare_exchange(cur, pack(key, tat), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return;
            }
        }
    }

    /// Charges one request to `key`: allowed when the bucket can take it
    /// (`burst` at once, then one per `interval` nanoseconds).
    pub fn charge(&self, key: u64, now: u64, interval: u64, burst: u64) -> Charge {
        self.charge_n(key, now, interval, burst, 1)
    }

    /// Charges `n` requests at once (all or none).
    pub fn charge_n(&self, key: u64, now: u64, interval: u64, burst: u64, n: u64) -> Charge {
        let tau = interval.saturating_mul(burst);
        let cost = interval.saturating_mul(n);
        let start = key as usize & self.mask;
        loop {
            // The key's own bucket first, wherever it is in the window.
            let mut free = None;
            let mut rested: Option<(usize, u128)> = None;
            let mut found = None;
            for i in 0..PROBES {
                let at = (start + i) & self.mask;
                let cur = self.slots[at].load(Ordering::Acquire);
                let (tag, tat) = unpack(cur);
                if tag == key {
                    found = Some((at, cur));
                    break;
                }
                if tag == 0 || tat <= now {
                    free.get_or_insert((at, cur));
                } else if rested.is_none_or(|(_, r)| unpack(r).1 > tat) {
                    rested = Some((at, cur));
                }
            }
            let (at, cur) = match (found, free, rested) {
                (Some(f), _, _) | (None, Some(f), _) | (None, None, Some(f)) => f,
                (None, None, None) => unreachable!("PROBES > 0"),
            };
            let keep = found.is_some() || free.is_some();
            if let Some(c) = self.settle(at, cur, key, now, (interval, cost), tau, keep) {
                return c;
            }
        }
    }

    /// Charges `key` in slot `at`, last seen holding `cur` (another key's
    /// bucket when `cur`'s tag differs: at rest, or taken over unless
    /// `keep`). `None` when the slot went to another key meanwhile.
    #[allow(clippy::too_many_arguments)]
    fn settle(
        &self,
        at: usize,
        mut cur: u128,
        key: u64,
        now: u64,
        (interval, cost): (u64, u64),
        tau: u64,
        keep: bool,
    ) -> Option<Charge> {
        loop {
            let (tag, seen_tat) = unpack(cur);
            // Another key's bucket holds nothing worth keeping.
            let tat = if tag == key { seen_tat } else { 0 };
            let base = tat.max(now);
            let next = base.saturating_add(cost);
            if next - now > tau {
                // Refused: nothing changes, so nothing to write.
                return Some(Charge {
                    allowed: false,
                    remaining: 0,
                    reset_ns: base - now,
                    retry_ns: next - now - tau,
                });
            }
            match self.slots[at].compare_exchange(
                cur,
                pack(key, next),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    if !keep {
                        self.takeovers.fetch_add(1, Ordering::Relaxed);
                    }
                    return Some(Charge {
                        allowed: true,
                        remaining: (tau - (next - now)) / interval,
                        reset_ns: next - now,
                        retry_ns: 0,
                    });
                }
                // Another worker charged the same key: judge again from
                // what it wrote (the failed exchange read it already).
                Err(actual) if unpack(actual).0 == key => cur = actual,
                // The slot changed hands: look for the key again.
                Err(_) => return None,
            }
        }
    }
}

/// Requests a worker takes at once for a key it charges very often.
pub const LEASE: u32 = 4;
/// A key is hot for a worker that charged it this recently (10,000 a second).
const HOT_NS: u64 = 100_000;
/// How long a lease's requests stay with the worker before going back.
const LEASE_NS: u64 = 1_000_000;
/// Leases a worker holds at most (one per key slot).
const LEASE_SLOTS: usize = 16;

/// A worker's requests taken ahead from the shared buckets, for the keys
/// it charges more than 10,000 times a second: one compare-and-swap then
/// takes [`LEASE`] requests, and the next ones are decided here with no
/// shared memory touched, so two workers hammering one key do not trade
/// its cache line on every request. Requests are charged to the shared
/// bucket before they are used, so a lease never admits more than the
/// limit; what a lease did not use goes back after 1 ms, so it holds back
/// at most `LEASE - 1` requests from other workers for that long (until
/// this worker next touches the shared buckets). Only limits of at least
/// 4,000 requests a second and a burst of 16 or more lease.
#[derive(Debug, Default)]
pub struct Leases {
    slots: [Lease; LEASE_SLOTS],
}

#[derive(Debug, Default, Clone, Copy)]
struct Lease {
    key: u64,
    tokens: u32,
    last: u64,
    until: u64,
    interval: u64,
    remaining: u64,
    /// When the bucket was due at rest, as of the lease.
    rest_at: u64,
}

impl Leases {
    /// One request on `key`, from a lease or from the shared bucket;
    /// `taken` says how many were charged to the shared bucket now.
    fn charge(
        &mut self,
        buckets: &Buckets,
        key: u64,
        now: u64,
        interval: u64,
        burst: u64,
    ) -> (Charge, u32) {
        let lease = &mut self.slots[key as usize % LEASE_SLOTS];
        if lease.key == key && lease.tokens > 0 && now < lease.until {
            lease.tokens -= 1;
            lease.last = now;
            let c = Charge {
                allowed: true,
                remaining: lease.remaining + u64::from(lease.tokens),
                reset_ns: lease.rest_at.saturating_sub(now),
                retry_ns: 0,
            };
            return (c, 0);
        }
        // Only fast limits lease: what a lease holds must be worth no more
        // than its 1 ms, and a small part of the burst.
        let hot = lease.key == key
            && now.saturating_sub(lease.last) < HOT_NS
            && interval.saturating_mul(u64::from(LEASE)) <= LEASE_NS
            && burst >= 4 * u64::from(LEASE);
        if lease.tokens > 0 {
            // Expired, or another key's: give its rest back.
            buckets.refund(lease.key, now, lease.interval, u64::from(lease.tokens));
            lease.tokens = 0;
        }
        let mut taken = if hot { LEASE } else { 1 };
        let mut c = buckets.charge_n(key, now, interval, burst, u64::from(taken));
        if !c.allowed && taken > 1 {
            taken = 1;
            c = buckets.charge(key, now, interval, burst);
        }
        *lease = Lease {
            key,
            tokens: if c.allowed { taken - 1 } else { 0 },
            last: now,
            until: now + LEASE_NS,
            interval,
            remaining: c.remaining,
            rest_at: now + c.reset_ns,
        };
        if c.allowed && taken > 1 {
            c.remaining += u64::from(taken - 1);
        }
        // Every trip to the shared buckets also gives back what expired
        // leases did not use (16 slots to look at).
        self.return_expired(buckets, now);
        (c, if c.allowed { taken } else { 0 })
    }

    /// Gives back what expired leases did not use.
    fn return_expired(&mut self, buckets: &Buckets, now: u64) {
        for l in &mut self.slots {
            if l.tokens > 0 && now >= l.until {
                buckets.refund(l.key, now, l.interval, u64::from(l.tokens));
                l.tokens = 0;
            }
        }
    }
}

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
    /// The consumer id or token subject; none for an anonymous caller
    /// (counted by source instead).
    pub consumer: Option<&'a str>,
    /// The route, by index.
    pub route: usize,
}

/// The counting form of a source: IPv4 (also IPv4-mapped IPv6) per
/// address, IPv6 per `/prefix`.
pub fn source_key(ip: IpAddr, ipv6_prefix: u8) -> [u8; 16] {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => std::net::Ipv4Addr::to_ipv6_mapped(&v4).octets(),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let keep = u32::from(ipv6_prefix.min(128));
            let mask = u128::MAX.checked_shl(128 - keep).unwrap_or(0);
            (bits & mask).to_be_bytes()
        }
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
            return Err(cluster::UNAVAILABLE);
        }
        let key = bucket_key(buckets, limit, who);
        let (c, taken) = leases.charge(buckets, key, now, limit.interval_ns(), limit.burst);
        if let Some(l) = link {
            for _ in 0..taken {
                l.admitted(key, limit.interval_ns());
            }
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
    let consumer = who.consumer.map(str::as_bytes);
    // An anonymous caller of a consumer-keyed limit is counted by source.
    let by_source = limit.key.source || (limit.key.consumer && consumer.is_none());
    let route = who.route.to_le_bytes();
    let parts: [&[u8]; 3] = [
        if by_source { &who.source } else { b"" },
        if limit.key.consumer {
            consumer.unwrap_or(b"")
        } else {
            b""
        },
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LimitKey;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let b = Buckets::new(1024);
        let key = b.key("a", &[b"k"]);
        // 10/s, burst 5: five at once, then one per 100 ms.
        let interval = SEC / 10;
        let t0 = 5 * SEC;
        let passed = (0..8)
            .filter(|_| b.charge(key, t0, interval, 5).allowed)
            .count();
        assert_eq!(passed, 5);
        let refused = b.charge(key, t0, interval, 5);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_ns, interval);
        assert!(!b.charge(key, t0 + interval - 1, interval, 5).allowed);
        let c = b.charge(key, t0 + interval, interval, 5);
        assert!(c.allowed);
        assert_eq!(c.remaining, 0);
        // At rest again after the whole burst's worth of time.
        let rested = b.charge(key, t0 + 10 * interval, interval, 5);
        assert_eq!((rested.allowed, rested.remaining), (true, 4));
    }

    #[test]
    fn keys_do_not_share_a_bucket() {
        let b = Buckets::new(1024);
        let (k1, k2) = (b.key("a", &[b"a"]), b.key("a", &[b"b"]));
        assert_ne!(k1, k2);
        assert_ne!(b.key("a", &[b"ab", b""]), b.key("a", &[b"a", b"b"]));
        assert!(b.charge(k1, SEC, SEC, 1).allowed);
        assert!(!b.charge(k1, SEC, SEC, 1).allowed);
        assert!(b.charge(k2, SEC, SEC, 1).allowed);
    }

    #[test]
    fn many_keys_stay_within_the_table() {
        let b = Buckets::new(1024);
        let now = SEC;
        for i in 0..100_000u32 {
            b.charge(b.key("a", &[&i.to_le_bytes()]), now, SEC, 10);
        }
        assert!(b.live(now) <= 1024);
        assert!(b.takeovers() > 0);
        // Buckets at rest are reused without a takeover (64 keys: eight
        // of them in one probe window is all but impossible).
        let later = now + 100 * SEC;
        let before = b.takeovers();
        for i in 0..64u32 {
            b.charge(b.key("b", &[&i.to_le_bytes()]), later, SEC, 10);
        }
        assert_eq!(b.takeovers(), before);
    }

    /// Requests two threads get through, each charging `key` 10,000
    /// times through `charge` (its own state made by `state`).
    fn two_threads<S: 'static>(
        b: &std::sync::Arc<Buckets>,
        state: fn() -> S,
        charge: fn(&mut S, &Buckets) -> bool,
    ) -> usize {
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    let mut st = state();
                    (0..10_000).filter(|_| charge(&mut st, &b)).count()
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().expect("thread")).sum()
    }

    #[test]
    fn two_threads_charging_one_key_get_exactly_the_burst() {
        let b = std::sync::Arc::new(Buckets::with_seed(1024, [1; 16]));
        let passed = two_threads(
            &b,
            || (),
            |_, b| b.charge(b.key("a", &[b"shared"]), SEC, SEC, 1000).allowed,
        );
        assert_eq!(passed, 1000);
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
    fn leases_never_admit_past_the_limit_and_give_back_what_they_hold() {
        let b = std::sync::Arc::new(Buckets::with_seed(1024, [2; 16]));
        let now = SEC;
        let passed = two_threads(&b, Leases::default, |leases, b| {
            let key = b.key("a", &[b"hot"]);
            leases.charge(b, key, SEC, 1000, 1000).0.allowed
        });
        let held = 2 * (LEASE as usize - 1);
        assert!((1000 - held..=1000).contains(&passed), "{passed}");
        // A lease's unused requests go back once it expires.
        let key = b.key("a", &[b"warm"]);
        let mut leases = Leases::default();
        // 1,000,000/s with a burst of 100: fast enough to lease. The
        // interval is 1 µs, so the times below stay within it.
        let (us, burst) = (1_000, 100);
        let (first, taken) = leases.charge(&b, key, now, us, burst);
        assert_eq!((first.allowed, taken), (true, 1));
        let (second, taken) = leases.charge(&b, key, now + 10, us, burst);
        assert_eq!((second.allowed, taken), (true, LEASE));
        let left = |t| b.peek(key, t, us, burst).remaining;
        assert_eq!(left(now + 10), burst - 1 - u64::from(LEASE));
        // What a lease holds goes back when it expires.
        assert!(leases.slots.iter().any(|l| l.tokens == LEASE - 1));
        leases.return_expired(&b, now + 10 + LEASE_NS);
        assert!(leases.slots.iter().all(|l| l.tokens == 0));
        // A refund moves the bucket back by what was not used.
        let k = b.key("a", &[b"refund"]);
        assert!(b.charge_n(k, now, us, burst, 10).allowed);
        b.refund(k, now, us, 4);
        assert_eq!(b.peek(k, now, us, burst).remaining, burst - 6);
        // A slow limit never leases: each request is one exchange.
        let slow = b.key("a", &[b"slow"]);
        for i in 0..5 {
            assert_eq!(leases.charge(&b, slow, now + i, SEC, 10).1, 1);
        }
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

    fn local<'a>(b: &'a Buckets, leases: &'a mut Leases) -> Meter<'a> {
        Meter {
            buckets: b,
            link: None,
            leases,
            refused_by_source: false,
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
            consumer: Some("alice"),
            route: 0,
        };
        let mut lines = Vec::new();
        for _ in 0..3 {
            assert!(
                charge(
                    &mut local(&b, &mut Leases::default()),
                    &s,
                    &[0, 1],
                    Phase::Anonymous,
                    &who,
                    &mut lines
                )
                .is_ok()
            );
        }
        assert!(lines.is_empty(), "headers off: nothing on a pass");
        assert_eq!(
            charge(
                &mut local(&b, &mut Leases::default()),
                &s,
                &[0, 1],
                Phase::Anonymous,
                &who,
                &mut lines
            ),
            Err(EXCEEDED)
        );
        let text = String::from_utf8(lines.clone()).expect("ascii");
        assert!(
            text.contains("ratelimit-policy: \"ip\";q=10;w=1\r\n"),
            "{text}"
        );
        assert!(text.contains("ratelimit: \"ip\";r=0;t=1\r\n"), "{text}");
        assert!(text.contains("retry-after: 1\r\n"), "{text}");
        // The consumer limit is its own phase.
        assert!(
            charge(
                &mut local(&b, &mut Leases::default()),
                &s,
                &[0, 1],
                Phase::Identified,
                &who,
                &mut lines
            )
            .is_ok()
        );
        assert_eq!(
            charge(
                &mut local(&b, &mut Leases::default()),
                &s,
                &[0, 1],
                Phase::Identified,
                &who,
                &mut lines
            ),
            Err(EXCEEDED)
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
        let mut lines = Vec::new();
        assert!(
            charge(
                &mut local(&b, &mut Leases::default()),
                &s,
                &[0],
                Phase::Anonymous,
                &who,
                &mut lines
            )
            .is_ok()
        );
        let text = String::from_utf8(lines).expect("ascii");
        assert_eq!(
            text,
            "ratelimit-policy: \"ip\";q=10;w=1\r\nratelimit: \"ip\";r=2;t=1\r\n"
        );
    }
}
