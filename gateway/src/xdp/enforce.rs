//! Where the source policy is enforced: in the kernel by the XDP program
//! when it can be loaded, otherwise by the gateway itself.
//!
//! Falling back is reserved for "cannot" (no privilege, no kernel support);
//! a configuration mistake (unknown interface, occupied slot, full map) is an
//! error the operator must see, never a silent downgrade.

use std::{
    net::IpAddr,
    sync::{Arc, Mutex},
};

use gateway_common::Verdict;

use crate::{
    addr::ip_of,
    config::{Config, PlainHttpOnTls},
    xdp::policy::SourcePolicy,
    xdp::{Counters, DataPlane, XdpError},
};

/// The active enforcement point.
pub enum Enforcement {
    /// The XDP program, attached.
    Kernel(Box<DataPlane>),
    /// The gateway's own checks, consulted at accept time by every worker.
    Userspace(Arc<Mutex<SourcePolicy>>),
}

impl Enforcement {
    /// Loads, configures and attaches XDP, or falls back to userspace after
    /// one warning line when the kernel side cannot run here.
    pub fn start(cfg: &Config) -> Result<Self, XdpError> {
        if !cfg.xdp.enabled {
            tracing::info!("XDP disabled (xdp.enabled = false): enforcing the policy in userspace");
            return Ok(Self::Userspace(Arc::new(Mutex::new(SourcePolicy::new(
                cfg,
            )))));
        }
        let kernel = DataPlane::load().and_then(|mut dp| {
            dp.configure(cfg)?;
            let (ip, plain) = (cfg.https.ip(), cfg.plain_http_port);
            if cfg.https_only
                && !cfg.redirect_plain_http
                && crate::xdp::listeners::served(ip, plain)
            {
                // Before the attach: no packet meets the drop.
                dp.forget_port(ip, plain);
                tracing::warn!(
                    "plain HTTP port {plain}: another process listens there; it is not dropped (https_only), its service stays reachable"
                );
            }
            dp.attach(&cfg.xdp.interface, cfg.xdp.mode)?;
            Ok(dp)
        });
        match kernel {
            Ok(dp) => Ok(Self::Kernel(Box::new(dp))),
            Err(e) if e.falls_back_to_userspace() => {
                tracing::warn!("XDP unavailable, enforcing the same policy in userspace: {e}");
                Ok(Self::Userspace(Arc::new(Mutex::new(SourcePolicy::new(
                    cfg,
                )))))
            }
            Err(e) => Err(e),
        }
    }

    /// Takes up a reloaded configuration's lists and SYN budget in place:
    /// the XDP program stays attached, verdicts and counters stay.
    pub fn reconfigure(&mut self, old: &Config, new: &Config) -> Result<(), XdpError> {
        match self {
            Self::Kernel(dp) => dp.reconfigure(&crate::xdp::policy::Lists::of(old), new),
            Self::Userspace(p) => {
                if let Ok(mut p) = p.lock() {
                    p.reconfigure(new);
                }
                Ok(())
            }
        }
    }

    /// Places a verdict on a source.
    pub fn set_verdict(&mut self, ip: IpAddr, verdict: Verdict) -> Result<(), XdpError> {
        match self {
            Self::Kernel(dp) => dp.set_verdict(ip, verdict),
            Self::Userspace(p) => {
                if let Ok(mut p) = p.lock() {
                    p.set_verdict(ip, verdict);
                }
                Ok(())
            }
        }
    }

    /// Every verdict held, live or not yet swept.
    pub fn verdicts(&self) -> Vec<(IpAddr, Verdict)> {
        let list = match self {
            Self::Kernel(dp) => dp.verdicts(),
            Self::Userspace(p) => p.lock().map_or_else(|_| Vec::new(), |p| p.verdicts()),
        };
        list.into_iter().map(|(k, v)| (ip_of(k), v)).collect()
    }

    /// Removes a source's verdict; whether it had one.
    pub fn remove_verdict(&mut self, ip: IpAddr) -> bool {
        match self {
            Self::Kernel(dp) => dp.remove_verdict(ip),
            Self::Userspace(p) => p.lock().is_ok_and(|mut p| p.remove_verdict(ip)),
        }
    }

    /// A source's SYN clock (monotonic ns), wherever the budget is kept.
    pub fn syn_clock(&self, ip: IpAddr) -> Option<u64> {
        match self {
            Self::Kernel(dp) => dp.syn_clock(ip),
            Self::Userspace(p) => p.lock().ok().and_then(|p| p.syn_clock(ip)),
        }
    }

    /// Where sources are checked, in a word.
    pub fn place(&self) -> &'static str {
        match self {
            Self::Kernel(_) => "xdp",
            Self::Userspace(_) => "userspace",
        }
    }

    /// Removes expired verdicts.
    pub fn sweep(&mut self, now_ns: u64) -> Result<usize, XdpError> {
        match self {
            Self::Kernel(dp) => dp.sweep_expired(now_ns),
            Self::Userspace(p) => Ok(p.lock().map_or(0, |mut p| p.sweep(now_ns))),
        }
    }

    /// The policy the workers must check at accept, when the kernel does not.
    pub fn userspace_policy(&self) -> Option<Arc<Mutex<SourcePolicy>>> {
        match self {
            Self::Kernel(_) => None,
            Self::Userspace(p) => Some(p.clone()),
        }
    }

    /// Kernel counters, when the kernel enforces.
    pub fn counters(&self) -> Option<Result<Counters, XdpError>> {
        match self {
            Self::Kernel(dp) => Some(dp.counters()),
            Self::Userspace(_) => None,
        }
    }

    /// Human lines saying what is enforced and where.
    pub fn describe(&self, cfg: &Config) -> Vec<String> {
        let mut lines = vec![match self {
            Self::Kernel(dp) => format!(
                "XDP attached to {} in {} mode (xdp.mode = {}): policy enforced in the kernel",
                dp.attached_to().unwrap_or("?"),
                dp.attached_mode()
                    .map_or_else(|| "?".to_owned(), |m| m.to_string()),
                cfg.xdp.mode
            ),
            Self::Userspace(_) => "policy enforced in userspace (no XDP)".to_owned(),
        }];
        let on_tls = match cfg.xdp.plain_http_on_tls {
            PlainHttpOnTls::Reset => "answered with a TCP RST",
            PlainHttpOnTls::Drop => "dropped",
            PlainHttpOnTls::Pass => "passed to the gateway",
        };
        lines.push(format!(
            "TLS port {}: plain HTTP {on_tls}",
            cfg.https.port()
        ));
        if cfg.redirect_plain_http {
            lines.push(format!(
                "plain HTTP port {}: answered with 308 to HTTPS (redirect_plain_http wins over https_only)",
                cfg.plain_http_port
            ));
        } else if cfg.https_only {
            lines.push(format!(
                "plain HTTP port {}: dropped (https_only)",
                cfg.plain_http_port
            ));
        }
        if cfg.xdp.syn_rate > 0 {
            let exempt = match (
                cfg.policy.exempt_loopback,
                cfg.proxy.trusted_proxies.is_empty(),
            ) {
                (true, true) => " (loopback exempt: a load test from this host is never cut)",
                (true, false) => " (loopback and trusted proxies exempt)",
                (false, false) => " (trusted proxies exempt)",
                (false, true) => "",
            };
            lines.push(format!(
                "SYN rate per source: {}/s, burst {}{exempt}; an IPv6 source is its /{}",
                cfg.xdp.syn_rate, cfg.xdp.syn_burst, cfg.rate_limit.ipv6_prefix
            ));
        } else {
            lines.push("SYN rate per source: unlimited".to_owned());
        }
        let list = |nets: &[ipnet::IpNet]| {
            if nets.is_empty() {
                "none".to_owned()
            } else {
                nets.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        lines.push(format!(
            "allow (wins over everything): {}",
            list(&cfg.policy.allow)
        ));
        lines.push(format!("deny: {}", list(&cfg.policy.deny)));
        lines
    }
}
