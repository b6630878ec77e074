//! Source-address policy in userspace form: allow and deny CIDR sets, live
//! verdicts and the per-source SYN (connection) budget.
//!
//! The XDP program enforces the same rules from its maps; this form is what
//! the gateway enforces itself when XDP is unavailable, with the same order:
//! allow wins, then a live verdict drops, then deny drops, then the budget.

use std::{collections::HashMap, net::IpAddr};

use gateway_common::{SourceAddr, Verdict, VerdictReason, packet};
use ipnet::IpNet;

use crate::{
    addr::{CidrSet, source_addr, source_of},
    config::{Config, PolicySettings},
};

/// The CIDR lists a configuration writes into the kernel's tries.
#[derive(Debug, Clone, Default)]
pub struct Lists {
    /// `policy.allow`.
    pub allow: Vec<IpNet>,
    /// `policy.deny`.
    pub deny: Vec<IpNet>,
    /// Sources the SYN budget never counts: `proxy.trusted_proxies`, and
    /// loopback while `policy.exempt_loopback`.
    pub syn_exempt: Vec<IpNet>,
}

impl Lists {
    /// The lists of `cfg`.
    pub fn of(cfg: &Config) -> Self {
        let mut syn_exempt = cfg.proxy.trusted_proxies.clone();
        if cfg.policy.exempt_loopback {
            syn_exempt.extend(crate::addr::loopback_nets());
        }
        Self {
            allow: cfg.policy.allow.clone(),
            deny: cfg.policy.deny.clone(),
            syn_exempt,
        }
    }
}

/// Why a source was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// It holds a live verdict.
    Verdict(VerdictReason),
    /// It is in a denied CIDR.
    Denied,
    /// It opened connections faster than its budget.
    SynRate,
}

impl Refusal {
    /// Which limit refused, for the log line.
    pub fn describe(self, cfg: &Config) -> String {
        match self {
            Self::Verdict(r) => format!("a live verdict ({})", r.code()),
            Self::Denied => "policy.deny".into(),
            Self::SynRate => format!(
                "its SYN budget (xdp.syn_rate = {}/s, xdp.syn_burst = {})",
                cfg.xdp.syn_rate, cfg.xdp.syn_burst
            ),
        }
    }

    /// Stable reason code, the same words the XDP counters use.
    pub fn code(self) -> &'static str {
        match self {
            Self::Verdict(_) => "xdp.verdict",
            Self::Denied => "xdp.denied",
            Self::SynRate => "xdp.syn_rate",
        }
    }
}

/// The whole source policy, enforced in userspace.
#[derive(Debug, Clone)]
pub struct SourcePolicy {
    allow: CidrSet,
    deny: CidrSet,
    /// Sources the SYN budget never counts (trusted proxies, loopback).
    syn_exempt: CidrSet,
    /// Verdicts and SYN clocks, by source (an IPv6 source as its prefix).
    verdicts: HashMap<SourceAddr, Verdict>,
    tat: HashMap<SourceAddr, u64>,
    interval_ns: u64,
    tolerance_ns: u64,
    ipv6_prefix: u8,
}

/// Nanoseconds between admitted SYNs and the burst tolerance for a rate.
pub fn syn_budget(rate: u32, burst: u32) -> (u64, u64) {
    if rate == 0 {
        return (0, 0);
    }
    let interval = 1_000_000_000 / u64::from(rate);
    (interval, interval * u64::from(burst.saturating_sub(1)))
}

impl SourcePolicy {
    /// The policy a configuration describes.
    pub fn new(cfg: &Config) -> Self {
        let PolicySettings { allow, deny, .. } = &cfg.policy;
        let (interval_ns, tolerance_ns) = syn_budget(cfg.xdp.syn_rate, cfg.xdp.syn_burst);
        Self {
            allow: CidrSet::new(allow),
            deny: CidrSet::new(deny),
            syn_exempt: CidrSet::new(&Lists::of(cfg).syn_exempt),
            verdicts: HashMap::new(),
            tat: HashMap::new(),
            interval_ns,
            tolerance_ns,
            ipv6_prefix: cfg.rate_limit.ipv6_prefix,
        }
    }

    /// Takes up a reloaded configuration's lists and SYN budget, keeping
    /// the verdicts and SYN clocks held.
    pub fn reconfigure(&mut self, cfg: &Config) {
        let fresh = Self::new(cfg);
        self.allow = fresh.allow;
        self.deny = fresh.deny;
        self.syn_exempt = fresh.syn_exempt;
        self.interval_ns = fresh.interval_ns;
        self.tolerance_ns = fresh.tolerance_ns;
    }

    /// The key `ip` is held by (as the XDP program keys it).
    fn key(&self, ip: IpAddr) -> SourceAddr {
        source_addr(source_of(ip, self.ipv6_prefix))
    }

    /// Places (or replaces) a verdict.
    pub fn set_verdict(&mut self, ip: IpAddr, verdict: Verdict) {
        let key = self.key(ip);
        self.verdicts.insert(key, verdict);
    }

    /// Every verdict held (live or not yet swept).
    pub fn verdicts(&self) -> Vec<(SourceAddr, Verdict)> {
        self.verdicts.iter().map(|(k, v)| (*k, *v)).collect()
    }

    /// Removes a source's verdict; whether it had one.
    pub fn remove_verdict(&mut self, ip: IpAddr) -> bool {
        let key = self.key(ip);
        self.verdicts.remove(&key).is_some()
    }

    /// A source's SYN clock (monotonic ns), if it has one.
    pub fn syn_clock(&self, ip: IpAddr) -> Option<u64> {
        self.tat.get(&self.key(ip)).copied()
    }

    /// Removes expired verdicts and idle SYN state; returns how many verdicts went.
    pub fn sweep(&mut self, now_ns: u64) -> usize {
        let before = self.verdicts.len();
        self.verdicts
            .retain(|_, v| packet::verdict_live(v.expires_at_ns, now_ns));
        self.tat.retain(|_, tat| *tat > now_ns);
        before - self.verdicts.len()
    }

    /// Decides on a new connection from `ip` at `now_ns`.
    pub fn admit_connection(&mut self, ip: IpAddr, now_ns: u64) -> Result<(), Refusal> {
        let src = source_addr(ip);
        if self.allow.contains(&src) {
            return Ok(());
        }
        let key = self.key(ip);
        if let Some(v) = self.verdicts.get(&key)
            && packet::verdict_live(v.expires_at_ns, now_ns)
        {
            let reason = VerdictReason::from_u32(v.reason).unwrap_or(VerdictReason::Policy);
            return Err(Refusal::Verdict(reason));
        }
        if self.deny.contains(&src) {
            return Err(Refusal::Denied);
        }
        if self.interval_ns == 0 || self.syn_exempt.contains(&src) {
            return Ok(());
        }
        let tat = self.tat.entry(key).or_insert(now_ns);
        let before = (*tat).max(now_ns);
        if packet::gcra_admits(before, now_ns, self.tolerance_ns) {
            *tat = before + self.interval_ns;
            Ok(())
        } else {
            Err(Refusal::SynRate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> Config {
        let text = format!("[listen]\nhttps = \"127.0.0.1:8443\"\n{extra}");
        Config::parse(&text, "t.toml").expect("valid config")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn allow_wins_over_deny_and_verdicts() {
        let mut p = SourcePolicy::new(&cfg(
            "[policy]\nallow = [\"198.18.0.5/32\"]\ndeny = [\"198.18.0.0/16\"]\n",
        ));
        p.set_verdict(
            ip("198.18.0.5"),
            Verdict {
                expires_at_ns: 100,
                reason: 1,
                _pad: 0,
            },
        );
        assert_eq!(p.admit_connection(ip("198.18.0.5"), 0), Ok(()));
        assert_eq!(
            p.admit_connection(ip("198.18.0.6"), 0),
            Err(Refusal::Denied)
        );
    }

    #[test]
    fn expired_verdict_passes() {
        let mut p = SourcePolicy::new(&cfg(""));
        p.set_verdict(
            ip("2001:db8::7"),
            Verdict {
                expires_at_ns: 1000,
                reason: 2,
                _pad: 0,
            },
        );
        assert_eq!(
            p.admit_connection(ip("2001:db8::7"), 999),
            Err(Refusal::Verdict(VerdictReason::RateLimit))
        );
        assert_eq!(p.admit_connection(ip("2001:db8::7"), 1000), Ok(()));
        assert_eq!(p.sweep(1000), 1);
    }

    #[test]
    fn an_ipv6_verdict_and_budget_cover_the_prefix_and_proxies_are_exempt() {
        let mut p = SourcePolicy::new(&cfg(
            "[xdp]\nsyn_rate = 10\nsyn_burst = 2\n[proxy]\ntrusted_proxies = [\"198.18.5.0/24\"]\n",
        ));
        p.set_verdict(
            ip("2001:db8:9:9::"),
            Verdict {
                expires_at_ns: 100,
                reason: 3,
                _pad: 0,
            },
        );
        assert!(p.admit_connection(ip("2001:db8:9:9:1::5"), 0).is_err());
        assert!(p.admit_connection(ip("2001:db8:9:8::5"), 0).is_ok());
        // One budget for the whole /64.
        let mut q = SourcePolicy::new(&cfg("[xdp]\nsyn_rate = 10\nsyn_burst = 2\n"));
        assert!(q.admit_connection(ip("2001:db8::1"), 0).is_ok());
        assert!(q.admit_connection(ip("2001:db8::2"), 0).is_ok());
        assert_eq!(
            q.admit_connection(ip("2001:db8::3"), 0),
            Err(Refusal::SynRate)
        );
        // Trusted proxies and loopback never run out.
        assert!((0..10).all(|_| p.admit_connection(ip("198.18.5.9"), 0).is_ok()));
        assert!((0..10).all(|_| p.admit_connection(ip("127.0.0.1"), 0).is_ok()));
    }

    #[test]
    fn syn_budget_holds_rate_and_burst() {
        let mut p = SourcePolicy::new(&cfg("[xdp]\nsyn_rate = 10\nsyn_burst = 3\n"));
        let a = ip("198.18.0.9");
        let admitted = (0..10).filter(|_| p.admit_connection(a, 0).is_ok()).count();
        assert_eq!(admitted, 3);
        // 100 ms later one more slot is free, and another source is unaffected.
        assert!(p.admit_connection(a, 100_000_000).is_ok());
        assert!(p.admit_connection(a, 100_000_000).is_err());
        assert!(p.admit_connection(ip("198.18.0.10"), 100_000_000).is_ok());
    }
}
