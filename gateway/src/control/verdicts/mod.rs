//! The verdicts in force, wherever they are enforced: request by request
//! in the workers (a source's first offences, `requests`), then in the
//! kernel (the XDP verdict map, or the workers' accept check without XDP):
//! placed by escalation or by an operator, listed, removed, and explained
//! (`gateway why`). The control loop and the admin API share one book
//! behind a mutex; the request path reads only the request verdicts.
//!
//! An IPv6 source is its `/rate_limit.ipv6_prefix` here and in the
//! kernel (its base address is the key): rotating addresses inside a `/64`
//! escapes nothing.

mod requests;
mod shared;
mod shield;

pub use requests::{RequestVerdicts, View, failure};
pub use shared::Shout;
pub use shield::Shield;

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, mpsc::SyncSender},
};

use gateway_common::{Verdict, VerdictReason};
use serde_json::{Value, json};

use crate::{
    addr::{CidrSet, source_addr},
    clock::unix_ms,
    config::Config,
    control::escalate::{Escalation, Sentence},
    xdp::XdpError,
    xdp::enforce::Enforcement,
    xdp::policy::syn_budget,
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
    /// Where kernel verdicts are enforced.
    pub enforcement: Enforcement,
    /// The verdicts the workers enforce request by request.
    pub requests: Arc<RequestVerdicts>,
    /// The counters that earn verdicts.
    pub escalation: Escalation,
    notes: HashMap<IpAddr, Note>,
    allow: CidrSet,
    deny: CidrSet,
    syn_tolerance_ns: u64,
    syn_limited: bool,
    shield: Shield,
    /// Trusted proxies are configured: a kernel verdict is also enforced
    /// request by request, on the clients they forward.
    mirror: bool,
    outbox: Option<SyncSender<Shout>>,
    /// Verdicts placed here since start (for metrics).
    pub issued: u64,
    /// Verdicts the kernel's full map could not take, enforced request by
    /// request instead (for metrics).
    pub overflowed: u64,
    /// Verdicts not placed anywhere (both maps full, or a kernel error).
    pub not_placed: u64,
    /// What to log of request verdicts once [`Book::publish`] hands them to
    /// the workers: said earlier, a log line would claim a refusal that a
    /// request arriving meanwhile does not get.
    unannounced: Vec<String>,
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
    /// Where it is enforced: `request` (each request refused with an
    /// answer), `xdp`, or `accept` (connections refused without XDP).
    pub enforced: &'static str,
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
            "enforced": self.enforced,
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
    /// A loopback, the gateway's own address or a configured peer, with
    /// XDP enforcing.
    #[error(
        "{0} is a loopback, the gateway's own address, a trusted proxy or a configured peer (upstream, identity provider, Redis): XDP would cut the gateway off from it"
    )]
    Own(IpAddr),
    /// The map refused it.
    #[error(transparent)]
    Kernel(#[from] XdpError),
}

impl Book {
    /// A book over `enforcement` and the workers' `requests`, counting by
    /// `cfg`.
    pub fn new(enforcement: Enforcement, requests: Arc<RequestVerdicts>, cfg: &Config) -> Self {
        let (_, tolerance) = syn_budget(cfg.xdp.syn_rate, cfg.xdp.syn_burst);
        Self {
            enforcement,
            requests,
            escalation: Escalation::new(
                cfg.rate_limit.escalation,
                &cfg.policy.allow,
                cfg.rate_limit.ipv6_prefix,
            ),
            notes: HashMap::new(),
            allow: CidrSet::new(&cfg.policy.allow),
            deny: CidrSet::new(&cfg.policy.deny),
            syn_tolerance_ns: tolerance,
            syn_limited: cfg.xdp.syn_rate > 0,
            shield: Shield::of(cfg),
            mirror: !cfg.proxy.trusted_proxies.is_empty(),
            outbox: None,
            issued: 0,
            overflowed: 0,
            not_placed: 0,
            unannounced: Vec::new(),
        }
    }

    /// Takes up a reloaded configuration (`old` is the running one) and
    /// its shield (made beforehand: it may resolve names): the enforcement
    /// point's lists and SYN budget change in place, and the escalation
    /// counters start over only when their settings changed. Nothing
    /// changes when the kernel refuses.
    pub fn reconfigure(
        &mut self,
        old: &Config,
        new: &Config,
        shield: Shield,
    ) -> Result<(), XdpError> {
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
            self.escalation = Escalation::new(
                new.rate_limit.escalation,
                &new.policy.allow,
                new.rate_limit.ipv6_prefix,
            );
        }
        self.shield = shield;
        self.mirror = !new.proxy.trusted_proxies.is_empty();
        self.allow = CidrSet::new(&new.policy.allow);
        self.deny = CidrSet::new(&new.policy.deny);
        self.syn_tolerance_ns = tolerance;
        self.syn_limited = new.xdp.syn_rate > 0;
        Ok(())
    }

    /// Whether a kernel verdict on `source` would cut the gateway off
    /// from something (see [`Shield`]); without XDP, a verdict refuses
    /// only incoming connections and never cuts anything.
    fn shields(&self, source: IpAddr) -> bool {
        matches!(self.enforcement, Enforcement::Kernel(_)) && self.shield.covers(source)
    }

    fn verdict(reason: VerdictReason, secs: u64, now_ns: u64) -> Verdict {
        Verdict {
            expires_at_ns: now_ns.saturating_add(secs.saturating_mul(1_000_000_000)),
            reason: reason as u32,
            _pad: 0,
        }
    }

    fn noted(&mut self, source: IpAddr, why: String) {
        self.notes.insert(
            source,
            Note {
                placed_unix: unix_ms() / 1000,
                why,
            },
        );
    }

    fn put(
        &mut self,
        source: IpAddr,
        reason: VerdictReason,
        secs: u64,
        why: String,
        now_ns: u64,
    ) -> Result<(), XdpError> {
        let verdict = Self::verdict(reason, secs, now_ns);
        self.enforcement.set_verdict(source, verdict)?;
        self.mirrored(source, verdict, now_ns);
        self.issued += 1;
        self.tell(Shout::Placed {
            source,
            expires_unix_ms: unix_ms().saturating_add(secs.saturating_mul(1000)),
            reason: reason as u32,
            why: why.clone(),
        });
        self.noted(source, why);
        Ok(())
    }

    /// A kernel verdict also enforced request by request when trusted
    /// proxies are configured: the clients they forward reach the gateway
    /// from the proxy's address, which the kernel never drops. Best
    /// effort: the kernel verdict stands when that map is full.
    pub(super) fn mirrored(&self, source: IpAddr, verdict: Verdict, now_ns: u64) {
        if self.mirror && !self.requests.place(source, verdict, now_ns) {
            tracing::debug!(
                "{source}: the request verdicts are full; the kernel alone holds its verdict"
            );
        }
    }

    /// Places `s` to be enforced request by request; false when that map
    /// is full too.
    fn put_in_requests(&mut self, s: &Sentence, why: String, now_ns: u64) -> bool {
        let v = Self::verdict(s.reason, s.secs, now_ns);
        if !self.requests.place(s.source, v, now_ns) {
            return false;
        }
        self.issued += 1;
        self.noted(s.source, why);
        true
    }

    /// Places an earned verdict and says so once, with the reason and
    /// where it is enforced: request by request for a source's first
    /// offences (and for one the kernel must not or cannot take), in the
    /// kernel after. A verdict placed nowhere is taken back from the
    /// escalation's record, so nothing claims it is served.
    pub fn place(&mut self, s: &Sentence, now_ns: u64) {
        let why = format!("{}; offence {}", s.why, s.offence);
        let code = s.reason.code();
        let kernel = s.in_kernel && !self.shields(s.source);
        let at = match self.enforcement {
            Enforcement::Kernel(_) => "dropped in XDP",
            Enforcement::Userspace(_) => "refused at accept",
        };
        if !kernel {
            let because = if !s.in_kernel {
                format!(
                    "a source's first offences are refused with an answer; from offence {} it is {at}",
                    self.escalation.settings().kernel_after
                )
            } else {
                "a kernel verdict on a loopback, the host's own address, a trusted proxy or a configured peer would cut the gateway off from it".to_owned()
            };
            if self.put_in_requests(s, why.clone(), now_ns) {
                self.unannounced.push(format!(
                    "verdict: {} refused request by request for {}s ({code}: {why}): {because}",
                    s.source, s.secs,
                ));
            } else {
                self.unplaced(s, "the request verdicts are full");
            }
            return;
        }
        let mut placed = self.put(s.source, s.reason, s.secs, why.clone(), now_ns);
        if let Err(XdpError::MapFull { .. }) = placed {
            // Expired verdicts make room first.
            if self.enforcement.sweep(now_ns).is_ok_and(|n| n > 0) {
                placed = self.put(s.source, s.reason, s.secs, why.clone(), now_ns);
            }
        }
        match placed {
            Ok(()) => tracing::warn!("verdict: {} {at} for {}s ({code}: {why})", s.source, s.secs),
            Err(XdpError::MapFull { capacity, .. }) => {
                if self.put_in_requests(s, why.clone(), now_ns) {
                    self.overflowed += 1;
                    self.unannounced.push(format!(
                        "verdict: {} refused request by request for {}s ({code}: {why}): the kernel's verdict map is full ({capacity} entries)",
                        s.source, s.secs,
                    ));
                } else {
                    self.unplaced(
                        s,
                        "the kernel's verdict map and the request verdicts are full",
                    );
                }
            }
            Err(e) => self.unplaced(s, &e.to_string()),
        }
    }

    /// Hands the workers the request verdicts placed, lifted or swept since
    /// the last publish, then logs the ones placed: a line never runs ahead
    /// of the refusal it reports.
    pub fn publish(&mut self) {
        self.requests.publish();
        for line in self.unannounced.drain(..) {
            tracing::warn!("{line}");
        }
    }

    fn unplaced(&mut self, s: &Sentence, why: &str) {
        self.not_placed += 1;
        self.escalation.forget(s);
        tracing::error!(
            "verdict for {} not placed ({}: {}): {why}; its requests keep being refused one by one",
            s.source,
            s.reason.code(),
            s.why
        );
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
        // An IPv6 address stands for its prefix, as the kernel keys it.
        let source = self.escalation.source(source);
        if self.shields(source) {
            return Err(BookError::Own(source));
        }
        let why = if why.is_empty() {
            "placed by an operator"
        } else {
            why
        };
        self.put(source, VerdictReason::Policy, secs, why.to_owned(), now_ns)?;
        self.publish();
        tracing::warn!(
            "verdict: {source} for {secs}s (policy: {why}), placed through the admin API"
        );
        Ok(())
    }

    /// Lifts a source's verdict, wherever it is enforced; whether it had one.
    pub fn remove(&mut self, source: IpAddr) -> bool {
        let source = self.escalation.source(source);
        self.notes.remove(&source);
        let in_kernel = self.enforcement.remove_verdict(source);
        let in_requests = self.requests.lift(source);
        self.publish();
        self.tell(Shout::Lifted { source });
        if in_kernel || in_requests {
            tracing::warn!("verdict on {source} lifted through the admin API");
        }
        in_kernel || in_requests
    }

    /// The live verdicts at `now_ns`, soonest to end first.
    pub fn list(&self, now_ns: u64) -> Vec<Entry> {
        let kernel = match self.enforcement {
            Enforcement::Kernel(_) => "xdp",
            Enforcement::Userspace(_) => "accept",
        };
        let below = self.enforcement.verdicts();
        let held: std::collections::HashSet<IpAddr> = below.iter().map(|(s, _)| *s).collect();
        // A kernel verdict mirrored for proxied clients is listed once.
        let mut out: Vec<Entry> = below
            .into_iter()
            .map(|(source, v)| (source, v, kernel))
            .chain(
                self.requests
                    .list()
                    .into_iter()
                    .filter(|(source, _)| !held.contains(source))
                    .map(|(source, v)| (source, v, "request")),
            )
            .filter(|(_, v, _)| v.expires_at_ns > now_ns)
            .map(|(source, v, at)| self.entry(source, &v, now_ns, at))
            .collect();
        out.sort_by(|a, b| {
            a.expires_in_secs
                .cmp(&b.expires_in_secs)
                .then(a.source.cmp(&b.source))
        });
        out
    }

    fn entry(&self, source: IpAddr, v: &Verdict, now_ns: u64, enforced: &'static str) -> Entry {
        let note = self.notes.get(&source);
        Entry {
            source,
            reason: VerdictReason::from_u32(v.reason).map_or("unknown", VerdictReason::code),
            expires_in_secs: secs(v.expires_at_ns.saturating_sub(now_ns)),
            placed_unix: note.map(|n| n.placed_unix),
            why: note.map_or_else(String::new, |n| n.why.clone()),
            enforced,
        }
    }

    /// Removes verdicts no longer in force and forgets their notes.
    pub fn sweep(&mut self, now_ns: u64) -> Result<usize, XdpError> {
        let n = self.enforcement.sweep(now_ns)? + self.requests.sweep(now_ns);
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
        let key = self.escalation.source(source);
        let verdict = self.list(now_ns).into_iter().find(|e| e.source == key);
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
mod tests;
