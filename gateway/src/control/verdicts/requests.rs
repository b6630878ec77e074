//! Verdicts enforced request by request: the first step of the ladder (a
//! source's first offences), and where the kernel cannot take a verdict
//! (its map is full, or the source is the host's own). Every request from
//! the source is answered at once, in userspace, with 429 or 403
//! `verdict.<reason>` and `Retry-After`, and its connection closed: the
//! person behind it sees why, and nothing reaches the backend. A kernel
//! drop, silent, comes only after.
//!
//! The control thread changes a staged map and publishes a copy after each
//! tick (and at once for an operator's change); a worker checks one
//! atomic generation per request and takes the new copy only when it
//! moved, so requests never contend for a lock. Bounded to
//! [`MAX_ENTRIES`].

use std::{
    cell::RefCell,
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use gateway_common::{Verdict, VerdictReason, packet::verdict_live};

use crate::respond::{Failure, Hint};

/// Sources held at most.
pub const MAX_ENTRIES: usize = 262_144;

type Map = HashMap<IpAddr, Verdict>;

/// The verdicts the workers enforce request by request, keyed by source
/// (an IPv6 source as its prefix's base address).
#[derive(Debug, Default)]
pub struct RequestVerdicts {
    /// What the control thread changes.
    staged: Mutex<Map>,
    /// Changed since the last publish.
    dirty: AtomicBool,
    /// What the workers read, and its generation (bumped after it).
    published: Mutex<Arc<Map>>,
    generation: AtomicU64,
}

/// A worker's copy of the published verdicts.
#[derive(Debug, Default)]
pub struct View {
    generation: u64,
    map: Arc<Map>,
}

/// The answer to a request from a source under a verdict.
pub fn failure(reason: VerdictReason) -> Failure {
    let f = match reason {
        VerdictReason::RateLimit => Failure::client(429, "verdict.rate_limit"),
        VerdictReason::Abuse => Failure::client(403, "verdict.abuse"),
        VerdictReason::AuthFailures => Failure::client(403, "verdict.auth_failures"),
        VerdictReason::Policy => Failure::client(403, "verdict.policy"),
    };
    // Its `retry-after` says when the verdict ends.
    f.with_hint(Hint::LimitLines)
}

impl RequestVerdicts {
    /// The verdict `source` serves at `now_ns` (the clock read only when
    /// any is held), as of the last publish: its reason and the
    /// nanoseconds left. `view` is the calling worker's copy, refreshed
    /// when a newer one was published.
    pub fn check(
        &self,
        view: &RefCell<View>,
        source: IpAddr,
        now_ns: impl FnOnce() -> u64,
    ) -> Option<(VerdictReason, u64)> {
        if !self.any(view) {
            return None;
        }
        let view = view.borrow();
        let v = view.map.get(&source)?;
        let now = now_ns();
        verdict_live(v.expires_at_ns, now).then(|| {
            (
                VerdictReason::from_u32(v.reason).unwrap_or(VerdictReason::Policy),
                v.expires_at_ns - now,
            )
        })
    }

    /// Whether any verdict was published (one atomic load while nothing
    /// changed), refreshing `view` when a newer copy was.
    pub fn any(&self, view: &RefCell<View>) -> bool {
        let generation = self.generation.load(Ordering::Acquire);
        let mut view = view.borrow_mut();
        if view.generation != generation {
            view.map = self
                .published
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            view.generation = generation;
        }
        !view.map.is_empty()
    }

    fn staged(&self) -> std::sync::MutexGuard<'_, Map> {
        self.staged.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Places (or replaces) a verdict, served from the next publish; false
    /// when [`MAX_ENTRIES`] live ones are held already (expired ones are
    /// swept first).
    pub fn place(&self, source: IpAddr, v: Verdict, now_ns: u64) -> bool {
        let mut map = self.staged();
        if map.len() >= MAX_ENTRIES && !map.contains_key(&source) {
            map.retain(|_, v| verdict_live(v.expires_at_ns, now_ns));
            if map.len() >= MAX_ENTRIES {
                return false;
            }
        }
        map.insert(source, v);
        self.dirty.store(true, Ordering::Relaxed);
        true
    }

    /// Lifts `source`'s verdict from the next publish; whether it had one.
    pub fn lift(&self, source: IpAddr) -> bool {
        let had = self.staged().remove(&source).is_some();
        if had {
            self.dirty.store(true, Ordering::Relaxed);
        }
        had
    }

    /// Forgets verdicts that ended before `now_ns`; how many.
    pub fn sweep(&self, now_ns: u64) -> usize {
        let mut map = self.staged();
        let before = map.len();
        map.retain(|_, v| verdict_live(v.expires_at_ns, now_ns));
        if map.len() != before {
            self.dirty.store(true, Ordering::Relaxed);
        }
        before - map.len()
    }

    /// Hands the workers what changed since the last publish (one copy of
    /// the map, made only when something did).
    pub fn publish(&self) {
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return;
        }
        let copy = Arc::new(self.staged().clone());
        *self
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = copy;
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Every verdict held (live or not yet swept), published or not.
    pub fn list(&self) -> Vec<(IpAddr, Verdict)> {
        self.staged().iter().map(|(k, v)| (*k, *v)).collect()
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
        let view = RefCell::new(View::default());
        let ip: IpAddr = "198.18.0.9".parse().expect("ip");
        assert_eq!(r.check(&view, ip, || panic!("empty: no clock read")), None);
        assert!(r.place(ip, verdict(1_000, VerdictReason::Abuse), 0));
        assert_eq!(r.check(&view, ip, || 400), None, "not yet published");
        r.publish();
        assert_eq!(
            r.check(&view, ip, || 400),
            Some((VerdictReason::Abuse, 600))
        );
        let other = "198.18.0.10".parse().expect("ip");
        assert_eq!(r.check(&view, other, || 400), None);
        assert_eq!(r.check(&view, ip, || 1_000), None, "ended");
        assert_eq!(r.sweep(1_000), 1);
        assert!(r.list().is_empty());
        r.publish();
        assert_eq!(r.check(&view, ip, || panic!("empty again")), None);
        assert!(r.place(ip, verdict(5, VerdictReason::RateLimit), 0));
        assert!(r.lift(ip));
        assert!(!r.lift(ip));
        // A worker's copy moves only when something was published.
        let generation = r.generation.load(Ordering::Relaxed);
        r.publish();
        r.publish();
        assert_eq!(r.generation.load(Ordering::Relaxed), generation + 1);
        assert_eq!(failure(VerdictReason::RateLimit).status, 429);
        assert_eq!(failure(VerdictReason::Abuse).reason, "verdict.abuse");
    }
}
