//! The verdicts in force, wherever they are enforced (the XDP verdict map,
//! or the workers' accept check without XDP): placed by escalation or by an
//! operator, listed, removed, and explained (`gateway why`). The control
//! loop and the admin API share one book behind a mutex; the request path
//! never touches it.

use std::{collections::HashMap, net::IpAddr, sync::mpsc::SyncSender};

use gateway_common::{Verdict, VerdictReason};
use serde_json::{Value, json};

use crate::{
    clock::unix_ms,
    cluster::Shout,
    config::Config,
    enforce::Enforcement,
    escalate::{Escalation, Sentence},
    policy::{CidrSet, source_addr, syn_budget},
    xdp::XdpError,
};

/// Longest verdict an operator may place (a year).
pub const MAX_SECS: u64 = 365 * 86_400;

/// What the book remembers of a verdict beyond the map's expiry and reason.
#[derive(Debug, Clone)]
struct Note {
    placed_unix: u64,
    why: String,
}

/// The book.
pub struct Book {
    /// Where verdicts are enforced.
    pub enforcement: Enforcement,
    /// The counters that earn verdicts.
    pub escalation: Escalation,
    notes: HashMap<IpAddr, Note>,
    allow: CidrSet,
    deny: CidrSet,
    syn_tolerance_ns: u64,
    syn_limited: bool,
    own: IpAddr,
    outbox: Option<SyncSender<Shout>>,
    /// Verdicts placed here since start (for metrics).
    pub issued: u64,
}

fn secs(ns: u64) -> u64 {
    ns.div_ceil(1_000_000_000)
}

/// A live verdict, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The source.
    pub source: IpAddr,
    /// Why, as stored in the map.
    pub reason: &'static str,
    /// Seconds until it ends.
    pub expires_in_secs: u64,
    /// Unix seconds when it was placed, if this gateway placed it.
    pub placed_unix: Option<u64>,
    /// What earned it.
    pub why: String,
}

impl Entry {
    /// The JSON the admin API answers with.
    pub fn json(&self) -> Value {
        json!({
            "source": self.source.to_string(),
            "reason": self.reason,
            "expires_in_secs": self.expires_in_secs,
            "placed_unix": self.placed_unix,
            "why": self.why,
        })
    }
}

/// An operator's request the book refuses.
#[derive(Debug, thiserror::Error)]
pub enum BookError {
    /// A verdict of no length or over a year.
    #[error("secs must be 1 to {MAX_SECS}")]
    Length,
    /// The source is on the allow list: the kernel would let it through.
    #[error("{0} is in policy.allow, which wins over verdicts")]
    Allowed(IpAddr),
    /// A loopback or the gateway's own address, with XDP enforcing.
    #[error(
        "{0} is a loopback or the gateway's own address: XDP would drop the host's own traffic"
    )]
    Own(IpAddr),
    /// The map refused it.
    #[error(transparent)]
    Kernel(#[from] XdpError),
}

impl Book {
    /// A book over `enforcement`, counting by `cfg`.
    pub fn new(enforcement: Enforcement, cfg: &Config) -> Self {
        let (_, tolerance) = syn_budget(cfg.xdp.syn_rate, cfg.xdp.syn_burst);
        Self {
            enforcement,
            escalation: Escalation::new(cfg.rate_limit.escalation, &cfg.policy.allow),
            notes: HashMap::new(),
            allow: CidrSet::new(&cfg.policy.allow),
            deny: CidrSet::new(&cfg.policy.deny),
            syn_tolerance_ns: tolerance,
            syn_limited: cfg.xdp.syn_rate > 0,
            own: cfg.https.ip(),
            outbox: None,
            issued: 0,
        }
    }

    /// Takes up a reloaded configuration (`old` is the running one): the
    /// enforcement point's lists and SYN budget change in place, and the
    /// escalation counters start over only when their settings changed.
    /// Nothing changes when the kernel refuses.
    pub fn reconfigure(&mut self, old: &Config, new: &Config) -> Result<(), XdpError> {
        if let Err(e) = self.enforcement.reconfigure(old, new) {
            // Put back what went in, so the maps say what the running
            // configuration says.
            if let Err(back) = self.enforcement.reconfigure(new, old) {
                tracing::error!("restoring the XDP maps after a failed reload: {back}");
            }
            return Err(e);
        }
        let (_, tolerance) = syn_budget(new.xdp.syn_rate, new.xdp.syn_burst);
        if old.rate_limit.escalation != new.rate_limit.escalation
            || old.policy.allow != new.policy.allow
        {
            self.escalation = Escalation::new(new.rate_limit.escalation, &new.policy.allow);
        }
        self.allow = CidrSet::new(&new.policy.allow);
        self.deny = CidrSet::new(&new.policy.deny);
        self.syn_tolerance_ns = tolerance;
        self.syn_limited = new.xdp.syn_rate > 0;
        Ok(())
    }

    /// From now on, verdicts placed or lifted here are also sent to the
    /// other gateways through `outbox`.
    pub fn share(&mut self, outbox: SyncSender<Shout>) {
        self.outbox = Some(outbox);
    }

    fn tell(&self, s: Shout) {
        if let Some(o) = &self.outbox
            && o.try_send(s).is_err()
        {
            tracing::warn!("the cluster queue is full: a verdict change was not shared");
        }
    }

    /// A verdict another gateway placed, `left_ms` from now.
    pub fn apply_shared(
        &mut self,
        source: IpAddr,
        left_ms: u64,
        reason: u32,
        why: &str,
        from: &str,
        now_ns: u64,
    ) {
        if self.shields(source) || self.allow.contains(&source_addr(source)) {
            return;
        }
        let reason = VerdictReason::from_u32(reason).unwrap_or(VerdictReason::Policy);
        let verdict = Verdict {
            expires_at_ns: now_ns.saturating_add(left_ms.saturating_mul(1_000_000)),
            reason: reason as u32,
            _pad: 0,
        };
        match self.enforcement.set_verdict(source, verdict) {
            Ok(()) => {
                self.notes.insert(
                    source,
                    Note {
                        placed_unix: unix_ms() / 1000,
                        why: format!("{why} (from gateway {from})"),
                    },
                );
                tracing::warn!(
                    "verdict: {source} for {}s ({}: {why}), shared by gateway {from}",
                    left_ms.div_ceil(1000),
                    reason.code()
                );
            }
            Err(e) => tracing::error!("shared verdict for {source} not placed: {e}"),
        }
    }

    /// A verdict another gateway lifted.
    pub fn lift_shared(&mut self, source: IpAddr, from: &str) {
        self.notes.remove(&source);
        if self.enforcement.remove_verdict(source) {
            tracing::warn!("verdict on {source} lifted by gateway {from}");
        }
    }

    /// Whether a kernel verdict on `source` would cut the host's own
    /// traffic: XDP drops every packet from a sentenced address, so one on
    /// a loopback address (or the gateway's own) would also drop the
    /// gateway's upstream replies and every local connection.
    fn shields(&self, source: IpAddr) -> bool {
        let source = crate::policy::canonical(source);
        matches!(self.enforcement, Enforcement::Kernel(_))
            && (source.is_loopback() || source == self.own)
    }

    fn put(
        &mut self,
        source: IpAddr,
        reason: VerdictReason,
        secs: u64,
        why: String,
        now_ns: u64,
    ) -> Result<(), XdpError> {
        let verdict = Verdict {
            expires_at_ns: now_ns.saturating_add(secs.saturating_mul(1_000_000_000)),
            reason: reason as u32,
            _pad: 0,
        };
        self.enforcement.set_verdict(source, verdict)?;
        self.issued += 1;
        self.tell(Shout::Placed {
            source,
            expires_unix_ms: unix_ms().saturating_add(secs.saturating_mul(1000)),
            reason: reason as u32,
            why: why.clone(),
        });
        self.notes.insert(
            source,
            Note {
                placed_unix: unix_ms() / 1000,
                why,
            },
        );
        Ok(())
    }

    /// Places an earned verdict and says so once, with the reason.
    pub fn place(&mut self, s: &Sentence, now_ns: u64) {
        let at = match self.enforcement {
            Enforcement::Kernel(_) => "dropped in XDP",
            Enforcement::Userspace(_) => "refused at accept",
        };
        if self.shields(s.source) {
            tracing::warn!(
                "no verdict on {} ({}: {}): a kernel verdict on a loopback or the gateway's own address would cut the host's own traffic; its requests keep being refused",
                s.source,
                s.reason.code(),
                s.why
            );
            return;
        }
        let why = format!("{}; offence {}", s.why, s.offence);
        match self.put(s.source, s.reason, s.secs, why.clone(), now_ns) {
            Ok(()) => tracing::warn!(
                "verdict: {} {at} for {}s ({}: {why})",
                s.source,
                s.secs,
                s.reason.code(),
            ),
            Err(e) => tracing::error!("verdict for {} not placed: {e}", s.source),
        }
    }

    /// An operator's verdict on `source` for `secs`.
    pub fn add(
        &mut self,
        source: IpAddr,
        secs: u64,
        why: &str,
        now_ns: u64,
    ) -> Result<(), BookError> {
        if secs == 0 || secs > MAX_SECS {
            return Err(BookError::Length);
        }
        if self.allow.contains(&source_addr(source)) {
            return Err(BookError::Allowed(source));
        }
        if self.shields(source) {
            return Err(BookError::Own(source));
        }
        let why = if why.is_empty() {
            "placed by an operator"
        } else {
            why
        };
        self.put(source, VerdictReason::Policy, secs, why.to_owned(), now_ns)?;
        tracing::warn!(
            "verdict: {source} for {secs}s (policy: {why}), placed through the admin API"
        );
        Ok(())
    }

    /// Lifts a source's verdict; whether it had one.
    pub fn remove(&mut self, source: IpAddr) -> bool {
        self.notes.remove(&source);
        let had = self.enforcement.remove_verdict(source);
        self.tell(Shout::Lifted { source });
        if had {
            tracing::warn!("verdict on {source} lifted through the admin API");
        }
        had
    }

    /// The live verdicts at `now_ns`, soonest to end first.
    pub fn list(&self, now_ns: u64) -> Vec<Entry> {
        let mut out: Vec<Entry> = self
            .enforcement
            .verdicts()
            .into_iter()
            .filter(|(_, v)| v.expires_at_ns > now_ns)
            .map(|(source, v)| self.entry(source, &v, now_ns))
            .collect();
        out.sort_by(|a, b| {
            a.expires_in_secs
                .cmp(&b.expires_in_secs)
                .then(a.source.cmp(&b.source))
        });
        out
    }

    fn entry(&self, source: IpAddr, v: &Verdict, now_ns: u64) -> Entry {
        let note = self.notes.get(&source);
        Entry {
            source,
            reason: VerdictReason::from_u32(v.reason).map_or("unknown", VerdictReason::code),
            expires_in_secs: secs(v.expires_at_ns.saturating_sub(now_ns)),
            placed_unix: note.map(|n| n.placed_unix),
            why: note.map_or_else(String::new, |n| n.why.clone()),
        }
    }

    /// Forgets the notes of verdicts no longer in force.
    pub fn sweep(&mut self, now_ns: u64) -> Result<usize, XdpError> {
        let n = self.enforcement.sweep(now_ns)?;
        if !self.notes.is_empty() {
            let live: std::collections::HashSet<IpAddr> =
                self.list(now_ns).into_iter().map(|e| e.source).collect();
            self.notes.retain(|ip, _| live.contains(ip));
        }
        Ok(n)
    }

    /// Whether `source` is dropped and by what (the same order the XDP
    /// program checks in: allow, verdict, deny, SYN budget), with the
    /// counters that could earn it a verdict.
    pub fn why(&self, source: IpAddr, now_ns: u64) -> Value {
        let addr = source_addr(source);
        let allowed = self.allow.contains(&addr);
        let verdict = self
            .enforcement
            .verdicts()
            .into_iter()
            .find(|(ip, v)| *ip == source && v.expires_at_ns > now_ns)
            .map(|(ip, v)| self.entry(ip, &v, now_ns));
        let denied = self.deny.contains(&addr);
        let clock = self.enforcement.syn_clock(source);
        let ahead = clock.map_or(0, |t| t.saturating_sub(now_ns));
        let over_syn = self.syn_limited && ahead > self.syn_tolerance_ns;
        let by = if allowed {
            None
        } else if verdict.is_some() {
            Some("verdict")
        } else if denied {
            Some("policy.deny")
        } else if over_syn {
            Some("syn_budget")
        } else {
            None
        };
        let (rejections, auth_failures, attacks, offences) =
            self.escalation.counts(source, now_ns / 1_000_000_000);
        let e = self.escalation.settings();
        json!({
            "source": source.to_string(),
            "enforced_in": self.enforcement.place(),
            "dropped": by.is_some(),
            "by": by,
            "allowed": allowed,
            "denied": denied,
            "verdict": verdict.as_ref().map(Entry::json),
            "syn_budget": {
                "limited": self.syn_limited,
                "over": over_syn,
                "clock_ahead_ms": ahead / 1_000_000,
                "tolerance_ms": self.syn_tolerance_ns / 1_000_000,
            },
            "escalation": {
                "rejections": rejections,
                "rejections_threshold": e.rejections,
                "auth_failures": auth_failures,
                "auth_failures_threshold": e.auth_failures,
                "attacks": attacks,
                "attacks_threshold": e.attacks,
                "window_secs": e.window_secs,
                "offences": offences,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    use crate::policy::SourcePolicy;

    fn book(extra: &str) -> Book {
        let cfg = Config::parse(
            &format!("[listen]\nhttps = \"127.0.0.1:8443\"\n{extra}"),
            "t.toml",
        )
        .expect("config");
        let policy = Arc::new(Mutex::new(SourcePolicy::new(&cfg)));
        Book::new(Enforcement::Userspace(policy), &cfg)
    }

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn an_operator_adds_lists_and_lifts_a_verdict() {
        let mut b = book("");
        let ip: IpAddr = "198.18.0.2".parse().expect("ip");
        b.add(ip, 60, "scanner", 10 * SEC).expect("added");
        let list = b.list(10 * SEC);
        assert_eq!(list.len(), 1);
        assert_eq!((list[0].reason, list[0].expires_in_secs), ("policy", 60));
        assert_eq!(list[0].why, "scanner");
        let why = b.why(ip, 20 * SEC);
        assert_eq!(why["dropped"], true);
        assert_eq!(why["by"], "verdict");
        assert_eq!(why["verdict"]["expires_in_secs"], 50);
        assert!(b.remove(ip));
        assert!(!b.remove(ip));
        assert!(b.list(10 * SEC).is_empty());
        assert_eq!(b.why(ip, 20 * SEC)["dropped"], false);
        // Expired verdicts are not listed.
        b.add(ip, 1, "", 10 * SEC).expect("added");
        assert!(b.list(12 * SEC).is_empty());
    }

    #[test]
    fn bad_lengths_and_allowed_sources_are_refused() {
        let mut b = book("[policy]\nallow = [\"10.0.0.0/8\"]\ndeny = [\"192.0.2.0/24\"]\n");
        let ip: IpAddr = "198.18.0.2".parse().expect("ip");
        assert!(matches!(b.add(ip, 0, "", 0), Err(BookError::Length)));
        assert!(matches!(
            b.add(ip, MAX_SECS + 1, "", 0),
            Err(BookError::Length)
        ));
        let allowed: IpAddr = "10.1.2.3".parse().expect("ip");
        assert!(matches!(
            b.add(allowed, 5, "", 0),
            Err(BookError::Allowed(_))
        ));
        assert_eq!(b.why(allowed, 0)["allowed"], true);
        let denied: IpAddr = "192.0.2.9".parse().expect("ip");
        assert_eq!(b.why(denied, 0)["by"], "policy.deny");
    }
}
