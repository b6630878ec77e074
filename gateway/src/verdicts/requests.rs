//! Verdicts enforced request by request: the first step of the ladder (a
//! source's first offences), and where the kernel cannot take a verdict
//! (its map is full, or the source is the host's own). Every request from
//! the source is answered at once, in userspace, with 429 or 403
//! `verdict.<reason>` and `Retry-After`, and its connection closed: the
//! person behind it sees why, and nothing reaches the backend. A kernel
//! drop, silent, comes only after.
//!
//! The workers read it on every request: one atomic load while it is
//! empty, a read lock otherwise. Bounded to [`MAX_ENTRIES`].

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        RwLock,
        atomic::{AtomicUsize, Ordering},
    },
};

use gateway_common::{Verdict, VerdictReason, packet::verdict_live};

use crate::respond::Failure;

/// Sources held at most.
pub const MAX_ENTRIES: usize = 262_144;

/// The verdicts the workers enforce request by request, keyed by source
/// (an IPv6 source as its prefix's base address).
#[derive(Debug, Default)]
pub struct RequestVerdicts {
    /// Entries held: a request skips the lock while it is zero.
    live: AtomicUsize,
    map: RwLock<HashMap<IpAddr, Verdict>>,
}

/// The answer to a request from a source under a verdict.
pub fn failure(reason: VerdictReason) -> Failure {
    match reason {
        VerdictReason::RateLimit => Failure::client(429, "verdict.rate_limit"),
        VerdictReason::Abuse => Failure::client(403, "verdict.abuse"),
        VerdictReason::AuthFailures => Failure::client(403, "verdict.auth_failures"),
        VerdictReason::Policy => Failure::client(403, "verdict.policy"),
    }
}

/// Whether a failure is a request verdict's answer.
pub fn is_verdict(f: Failure) -> bool {
    f.reason.starts_with("verdict.")
}

impl RequestVerdicts {
    /// Whether any verdict is held (one atomic load).
    pub fn any(&self) -> bool {
        self.live.load(Ordering::Relaxed) > 0
    }

    /// The verdict `source` serves at `now_ns` (read only when any is
    /// held): its reason and the nanoseconds left.
    pub fn check(
        &self,
        source: IpAddr,
        now_ns: impl FnOnce() -> u64,
    ) -> Option<(VerdictReason, u64)> {
        if self.live.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        let v = map.get(&source)?;
        let now = now_ns();
        verdict_live(v.expires_at_ns, now).then(|| {
            (
                VerdictReason::from_u32(v.reason).unwrap_or(VerdictReason::Policy),
                v.expires_at_ns - now,
            )
        })
    }

    /// Places (or replaces) a verdict; false when [`MAX_ENTRIES`] live
    /// ones are held already (expired ones are swept first).
    pub fn place(&self, source: IpAddr, v: Verdict, now_ns: u64) -> bool {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_ENTRIES && !map.contains_key(&source) {
            map.retain(|_, v| verdict_live(v.expires_at_ns, now_ns));
            if map.len() >= MAX_ENTRIES {
                return false;
            }
        }
        map.insert(source, v);
        self.live.store(map.len(), Ordering::Relaxed);
        true
    }

    /// Lifts `source`'s verdict; whether it had one.
    pub fn lift(&self, source: IpAddr) -> bool {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let had = map.remove(&source).is_some();
        self.live.store(map.len(), Ordering::Relaxed);
        had
    }

    /// Forgets verdicts that ended before `now_ns`; how many.
    pub fn sweep(&self, now_ns: u64) -> usize {
        if self.live.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let before = map.len();
        map.retain(|_, v| verdict_live(v.expires_at_ns, now_ns));
        self.live.store(map.len(), Ordering::Relaxed);
        before - map.len()
    }

    /// Every verdict held (live or not yet swept).
    pub fn list(&self) -> Vec<(IpAddr, Verdict)> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.iter().map(|(k, v)| (*k, *v)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(until: u64, reason: VerdictReason) -> Verdict {
        Verdict {
            expires_at_ns: until,
            reason: reason as u32,
            _pad: 0,
        }
    }

    #[test]
    fn a_verdict_is_served_until_it_ends_and_sweeps_away() {
        let r = RequestVerdicts::default();
        let ip: IpAddr = "198.18.0.9".parse().expect("ip");
        assert_eq!(r.check(ip, || panic!("empty: no clock read")), None);
        assert!(r.place(ip, verdict(1_000, VerdictReason::Abuse), 0));
        assert_eq!(r.check(ip, || 400), Some((VerdictReason::Abuse, 600)));
        assert_eq!(r.check("198.18.0.10".parse().expect("ip"), || 400), None);
        assert_eq!(r.check(ip, || 1_000), None, "ended");
        assert_eq!(r.sweep(1_000), 1);
        assert!(r.list().is_empty());
        assert!(r.place(ip, verdict(5, VerdictReason::RateLimit), 0));
        assert!(r.lift(ip));
        assert!(!r.lift(ip));
        assert_eq!(failure(VerdictReason::RateLimit).status, 429);
        assert_eq!(failure(VerdictReason::Abuse).reason, "verdict.abuse");
    }
}
