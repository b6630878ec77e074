//! The bucket table all workers share: GCRA state per key, 16 bytes a
//! bucket, changed by one 16-byte compare-and-swap.
//!
//! Memory is the table, fixed at start (`rate_limit.table_entries`). A key
//! lives in one of [`PROBES`] slots after its hash; a bucket back at rest
//! (its arrival time passed) is free for another key, which loses nothing.
//! When all the slots of a key are busy with live buckets, the most rested
//! one is taken over: its key starts afresh, which can admit that key at
//! most one more burst. That only happens when the table holds more live
//! keys than it has room for; the takeovers are counted.

use std::{
    hash::{BuildHasher, Hasher},
    sync::atomic::{AtomicU64, Ordering},
    time::Instant,
};

use portable_atomic::AtomicU128;

/// Slots a key may occupy: its hash's slot and the next ones.
pub const PROBES: usize = 8;

/// A key's probe window as seen once: (slot, value) of its own bucket, of
/// the first slot at rest, and of the most rested live bucket.
#[derive(Default)]
struct Place {
    found: Option<(usize, u128)>,
    free: Option<(usize, u128)>,
    rested: Option<(usize, u128)>,
}

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
        let tat = self
            .place(key, now)
            .found
            .map_or(0, |(_, cur)| unpack(cur).1);
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
        let Some((at, mut cur)) = self.place(key, now).found else {
            return;
        };
        while unpack(cur).0 == key {
            let tat = unpack(cur).1;
            if tat <= now {
                return;
            }
            let back = tat.saturating_sub(interval.saturating_mul(n)).max(now);
            match self.slots[at].compare_exchange(
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

    /// Moves `key`'s arrival time to at least `tat` (what the cluster
    /// admitted elsewhere); a key not in the table gets a bucket.
    pub fn raise(&self, key: u64, tat: u64, now: u64) {
        loop {
            let place = self.place(key, now);
            // Every slot holds another live key: the cluster's word waits
            // for the next sync rather than evicting one.
            let Some((at, cur)) = place.found.or(place.free) else {
                return;
            };
            let old = if unpack(cur).0 == key {
                unpack(cur).1
            } else {
                0
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

    /// Where `key` stands in its probe window at `now`.
    fn place(&self, key: u64, now: u64) -> Place {
        let start = key as usize & self.mask;
        let mut place = Place::default();
        for i in 0..PROBES {
            let at = (start + i) & self.mask;
            let cur = self.slots[at].load(Ordering::Acquire);
            let (tag, tat) = unpack(cur);
            if tag == key {
                place.found = Some((at, cur));
                break;
            }
            if tag == 0 || tat <= now {
                place.free.get_or_insert((at, cur));
            } else if place.rested.is_none_or(|(_, r)| unpack(r).1 > tat) {
                place.rested = Some((at, cur));
            }
        }
        place
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
        loop {
            let Place {
                found,
                free,
                rested,
            } = self.place(key, now);
            let Some((at, cur)) = found.or(free).or(rested) else {
                unreachable!("PROBES > 0: some slot is found, free or rested");
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(crate) const SEC: u64 = 1_000_000_000;

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
    pub(crate) fn two_threads<S: 'static>(
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
}
