//! Escalation: a source that keeps hitting a rate limit, or keeps failing
//! authentication, earns a verdict: from then on the XDP program drops its
//! packets before any TLS handshake (or, without XDP, the workers refuse
//! its connections at accept). Userspace decides with what it knows of
//! the requests; the kernel enforces at line rate.
//!
//! Counting is per source in fixed windows of
//! `rate_limit.escalation.window_secs` (an IPv6 source is its
//! `/rate_limit.ipv6_prefix`: addresses rotated inside one `/64` are one
//! source); a verdict lasts `ban_secs`, doubled for each earlier offence
//! of the same source, up to `max_ban_secs`. The first offences
//! (`kernel_after`) are refused request by request, with an answer that
//! says why; later ones go to the kernel. Sources in `policy.allow` are
//! never sentenced (the kernel lets them through whatever the verdict map
//! says). Memory is bounded: at most [`MAX_SOURCES`] sources are counted
//! and remembered.

use std::{collections::HashMap, net::IpAddr};

use gateway_common::VerdictReason;
use ipnet::IpNet;

use crate::{
    addr::{CidrSet, source_addr, source_of},
    config::EscalationSettings,
};

/// Sources counted (and offenders remembered) at most.
pub const MAX_SOURCES: usize = 100_000;

/// What a source did, as escalation counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offence {
    /// A request refused with 429.
    RateLimited,
    /// A request refused with 401.
    AuthFailed,
    /// A request in which the WAF detected an attack (blocked or not), or
    /// an HTTP/2 connection closed for abuse (resets, floods).
    Attack,
}

/// A verdict to place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sentence {
    /// The source (an IPv6 source as its prefix's base address).
    pub source: IpAddr,
    /// The reason stored in the verdict map.
    pub reason: VerdictReason,
    /// How long it lasts.
    pub secs: u64,
    /// Which offence of this source it is (1 for the first).
    pub offence: u32,
    /// What earned it, for the log line.
    pub why: String,
    /// Enforced in the kernel (`kernel_after` reached), or request by
    /// request.
    pub in_kernel: bool,
}

#[derive(Debug, Default, Clone, Copy)]
struct Window {
    start: u64,
    rejections: u32,
    auth_failures: u32,
    attacks: u32,
}

/// The counters and the record of earlier offences.
pub struct Escalation {
    settings: EscalationSettings,
    allow: CidrSet,
    ipv6_prefix: u8,
    windows: HashMap<IpAddr, Window>,
    /// Per offender: offences so far and when the last verdict ends.
    offenders: HashMap<IpAddr, (u32, u64)>,
}

impl Escalation {
    /// Counting by `settings`, IPv6 sources per `/ipv6_prefix`, never
    /// sentencing `allow`.
    pub fn new(settings: EscalationSettings, allow: &[IpNet], ipv6_prefix: u8) -> Self {
        Self {
            settings,
            allow: CidrSet::new(allow),
            ipv6_prefix,
            windows: HashMap::new(),
            offenders: HashMap::new(),
        }
    }

    /// The source `ip` counts as.
    pub fn source(&self, ip: IpAddr) -> IpAddr {
        source_of(ip, self.ipv6_prefix)
    }

    /// Counts one offence of `source` at `now` (seconds); a sentence when
    /// it crosses a threshold.
    pub fn record(&mut self, source: IpAddr, what: Offence, now: u64) -> Option<Sentence> {
        let source = self.source(source);
        let s = self.settings;
        let threshold = match what {
            Offence::RateLimited => s.rejections,
            Offence::AuthFailed => s.auth_failures,
            Offence::Attack => s.attacks,
        };
        if threshold == 0 || self.allow.contains(&source_addr(source)) {
            return None;
        }
        // Requests already in flight when its verdict was placed do not
        // count towards the next one.
        if self
            .offenders
            .get(&source)
            .is_some_and(|&(_, until)| until > now)
        {
            return None;
        }
        if self.windows.len() >= MAX_SOURCES && !self.windows.contains_key(&source) {
            self.windows
                .retain(|_, w| now.saturating_sub(w.start) < s.window_secs);
            if self.windows.len() >= MAX_SOURCES {
                self.windows.clear();
            }
        }
        let w = self.windows.entry(source).or_default();
        if now.saturating_sub(w.start) >= s.window_secs {
            *w = Window {
                start: now,
                ..Window::default()
            };
        }
        let (n, label, reason) = match what {
            Offence::RateLimited => {
                w.rejections += 1;
                (
                    w.rejections,
                    "requests over a rate limit",
                    VerdictReason::RateLimit,
                )
            }
            Offence::AuthFailed => {
                w.auth_failures += 1;
                (
                    w.auth_failures,
                    "failed authentications",
                    VerdictReason::AuthFailures,
                )
            }
            Offence::Attack => {
                w.attacks += 1;
                (
                    w.attacks,
                    "attacks (WAF detections, HTTP/2 abuse)",
                    VerdictReason::Abuse,
                )
            }
        };
        if n < threshold {
            return None;
        }
        self.windows.remove(&source);
        Some(self.sentence(
            source,
            reason,
            format!("{n} {label} in {}s", s.window_secs),
            now,
        ))
    }

    /// A verdict for an anomaly the detector found in `source`'s traffic
    /// (`why` says what), unless it is allowed or already serving one.
    pub fn anomaly(&mut self, source: IpAddr, why: String, now: u64) -> Option<Sentence> {
        let source = self.source(source);
        if self.allow.contains(&source_addr(source))
            || self
                .offenders
                .get(&source)
                .is_some_and(|&(_, until)| until > now)
        {
            return None;
        }
        Some(self.sentence(source, VerdictReason::Abuse, why, now))
    }

    /// What is counted against `source` at `now`: 429s, 401s and WAF
    /// detections in the current window, and its offences so far.
    pub fn counts(&self, source: IpAddr, now: u64) -> (u32, u32, u32, u32) {
        let source = self.source(source);
        let (r, a, w) = self
            .windows
            .get(&source)
            .filter(|w| now.saturating_sub(w.start) < self.settings.window_secs)
            .map_or((0, 0, 0), |w| (w.rejections, w.auth_failures, w.attacks));
        let offences = self.offenders.get(&source).map_or(0, |o| o.0);
        (r, a, w, offences)
    }

    /// The settings it counts by.
    pub fn settings(&self) -> EscalationSettings {
        self.settings
    }

    /// Takes back `s`, which could not be placed anywhere: the source is
    /// not serving it, and its offence does not count.
    pub fn forget(&mut self, s: &Sentence) {
        if let Some(entry) = self.offenders.get_mut(&s.source) {
            entry.0 = entry.0.saturating_sub(1);
            entry.1 = 0;
            if entry.0 == 0 {
                self.offenders.remove(&s.source);
            }
        }
    }

    fn sentence(
        &mut self,
        source: IpAddr,
        reason: VerdictReason,
        why: String,
        now: u64,
    ) -> Sentence {
        let s = self.settings;
        if self.offenders.len() >= MAX_SOURCES && !self.offenders.contains_key(&source) {
            // Forget offenders whose last verdict ended long ago.
            self.offenders
                .retain(|_, (_, until)| until.saturating_add(s.max_ban_secs) > now);
            if self.offenders.len() >= MAX_SOURCES {
                self.offenders.clear();
            }
        }
        let entry = self.offenders.entry(source).or_insert((0, 0));
        entry.0 = entry.0.saturating_add(1);
        let doublings = (entry.0 - 1).min(32);
        let secs = s
            .ban_secs
            .saturating_mul(1u64 << doublings)
            .min(s.max_ban_secs);
        entry.1 = now + secs;
        Sentence {
            source,
            reason,
            secs,
            offence: entry.0,
            why,
            in_kernel: entry.0 >= s.kernel_after,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> EscalationSettings {
        EscalationSettings {
            rejections: 3,
            auth_failures: 2,
            attacks: 2,
            window_secs: 10,
            ban_secs: 60,
            max_ban_secs: 200,
            kernel_after: 2,
        }
    }

    #[test]
    fn a_threshold_in_a_window_earns_a_growing_verdict() {
        let mut e = Escalation::new(settings(), &[], 64);
        let ip: IpAddr = "198.18.0.2".parse().expect("ip");
        assert_eq!(e.record(ip, Offence::RateLimited, 100), None);
        assert_eq!(e.record(ip, Offence::RateLimited, 101), None);
        let first = e.record(ip, Offence::RateLimited, 102).expect("sentenced");
        assert_eq!((first.secs, first.offence), (60, 1));
        assert!(
            !first.in_kernel,
            "the first offence is refused in userspace"
        );
        assert_eq!(first.reason, VerdictReason::RateLimit);
        assert_eq!(first.why, "3 requests over a rate limit in 10s");
        // Nothing counts while the verdict holds.
        assert!((0..10).all(|_| e.record(ip, Offence::RateLimited, 150).is_none()));
        // Then counting starts over; a second and third offence double, capped.
        for _ in 0..2 {
            assert_eq!(e.record(ip, Offence::RateLimited, 200), None);
        }
        let second = e.record(ip, Offence::RateLimited, 200).expect("again");
        assert_eq!((second.secs, second.in_kernel), (120, true));
        for _ in 0..2 {
            e.record(ip, Offence::RateLimited, 400);
        }
        assert_eq!(
            e.record(ip, Offence::RateLimited, 400).map(|s| s.secs),
            Some(200)
        );
    }

    #[test]
    fn a_window_that_ended_counts_afresh() {
        let mut e = Escalation::new(settings(), &[], 64);
        let ip: IpAddr = "2001:db8::7".parse().expect("ip");
        assert_eq!(e.record(ip, Offence::AuthFailed, 0), None);
        assert_eq!(e.record(ip, Offence::AuthFailed, 10), None);
        let s = e.record(ip, Offence::AuthFailed, 11).expect("sentenced");
        assert_eq!(s.reason, VerdictReason::AuthFailures);
        assert_eq!(s.why, "2 failed authentications in 10s");
    }

    #[test]
    fn waf_detections_earn_an_abuse_verdict() {
        let mut e = Escalation::new(settings(), &[], 64);
        let ip: IpAddr = "198.18.0.9".parse().expect("ip");
        assert_eq!(e.record(ip, Offence::Attack, 0), None);
        assert_eq!(e.counts(ip, 1), (0, 0, 1, 0));
        let s = e.record(ip, Offence::Attack, 1).expect("sentenced");
        assert_eq!(s.reason, VerdictReason::Abuse);
        assert_eq!(s.why, "2 attacks (WAF detections, HTTP/2 abuse) in 10s");
    }

    #[test]
    fn allowed_sources_and_zero_thresholds_are_never_sentenced() {
        let allow: IpNet = "198.18.0.0/24".parse().expect("net");
        let mut e = Escalation::new(settings(), &[allow], 64);
        let ip: IpAddr = "198.18.0.9".parse().expect("ip");
        assert!((0..10).all(|_| e.record(ip, Offence::RateLimited, 1).is_none()));
        let mut off = settings();
        off.rejections = 0;
        let mut e = Escalation::new(off, &[], 64);
        assert!((0..10).all(|_| e.record(ip, Offence::RateLimited, 1).is_none()));
    }

    #[test]
    fn an_ipv6_source_is_its_prefix_and_rotating_inside_it_changes_nothing() {
        let mut e = Escalation::new(settings(), &[], 64);
        let a: IpAddr = "2001:db8:1:2::7".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        assert_eq!(e.record(a, Offence::Attack, 0), None);
        let s = e.record(b, Offence::Attack, 1).expect("one source");
        assert_eq!(s.source, "2001:db8:1:2::".parse::<IpAddr>().expect("ip"));
        // Another /64 is another source.
        let c: IpAddr = "2001:db8:1:3::7".parse().expect("ip");
        assert_eq!(e.record(c, Offence::Attack, 1), None);
    }

    #[test]
    fn a_sentence_not_placed_is_forgotten() {
        let mut e = Escalation::new(settings(), &[], 64);
        let ip: IpAddr = "198.18.0.4".parse().expect("ip");
        e.record(ip, Offence::Attack, 0);
        let s = e.record(ip, Offence::Attack, 0).expect("sentenced");
        e.forget(&s);
        assert_eq!(e.counts(ip, 0).3, 0, "no offence recorded");
        // Not serving it: the next offences count, and it is a first one.
        e.record(ip, Offence::Attack, 1);
        let again = e.record(ip, Offence::Attack, 1).expect("sentenced again");
        assert_eq!(again.offence, 1);
    }

    #[test]
    fn memory_stays_bounded_under_many_sources() {
        let mut e = Escalation::new(settings(), &[], 64);
        for i in 0..(MAX_SOURCES as u32 + 5_000) {
            let ip = IpAddr::from(i.to_be_bytes());
            e.record(ip, Offence::RateLimited, u64::from(i / 1000));
        }
        assert!(e.windows.len() <= MAX_SOURCES);
    }
}
