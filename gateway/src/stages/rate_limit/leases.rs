//! A worker's requests taken ahead from the shared buckets for its
//! hottest keys.

use super::buckets::{Buckets, Charge};

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
    /// No lease holding requests expires before this (0: look), so a
    /// worker with nothing to give back pays one comparison.
    next_expiry: u64,
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
    pub(super) fn charge(
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
            self.next_expiry = self.next_expiry.min(now + LEASE_NS);
        }
        // Every trip to the shared buckets also gives back what expired
        // leases did not use (16 slots to look at).
        self.return_expired(buckets, now);
        (c, if c.allowed { taken } else { 0 })
    }

    /// Gives back what expired leases did not use.
    fn return_expired(&mut self, buckets: &Buckets, now: u64) {
        if now < self.next_expiry {
            return;
        }
        let mut next = u64::MAX;
        for l in &mut self.slots {
            if l.tokens > 0 && now >= l.until {
                buckets.refund(l.key, now, l.interval, u64::from(l.tokens));
                l.tokens = 0;
            } else if l.tokens > 0 {
                next = next.min(l.until);
            }
        }
        self.next_expiry = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::rate_limit::buckets::tests::{SEC, two_threads};

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
}
