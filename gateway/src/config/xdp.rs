//! The kernel side's settings: `[xdp]` and the source `[policy]`.

use super::*;

/// A CIDR as written in the file, with errors that say what is wrong
/// (ipnet alone says "invalid IP address syntax" for `10.0.0.0/33` too).
#[derive(Debug, Clone, Copy)]
pub(super) struct Cidr(pub(super) IpNet);

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_cidr(&text)
            .map(Cidr)
            .map_err(serde::de::Error::custom)
    }
}

/// Parses `a.b.c.d/n`, `x::y/n`, or a bare address (a host route).
pub(super) fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let (addr, len) = match text.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (text, None),
    };
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("`{addr}` is not an IP address"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => match l.parse::<u8>() {
            Ok(n) if n <= max => n,
            _ => return Err(format!("prefix length `{l}` must be 0 to {max} for {ip}")),
        },
    };
    IpNet::new(ip, len).map_err(|e| e.to_string())
}
pub(super) fn yes() -> bool {
    true
}

/// How the XDP program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// Native if the driver supports it, generic otherwise.
    #[default]
    Auto,
    /// Native (driver) XDP only.
    Driver,
    /// Generic (skb) XDP.
    Skb,
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Driver => "driver",
            Self::Skb => "skb",
        })
    }
}

/// Where the kernel keeps SYN budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SynBudget {
    /// One budget per source shared by all CPUs (exact).
    #[default]
    Shared,
    /// One budget per source and CPU (cheaper; up to N× on N CPUs).
    PerCpu,
}

/// What happens to plain HTTP sent to the TLS port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PlainHttpOnTls {
    /// Answer with a TCP RST so the client fails at once.
    #[default]
    Reset,
    /// Drop silently.
    Drop,
    /// Let it reach the gateway.
    Pass,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct XdpFile {
    #[serde(default = "yes")]
    pub(super) enabled: bool,
    #[serde(default = "auto")]
    pub(super) interface: Spanned<String>,
    #[serde(default)]
    pub(super) mode: AttachMode,
    #[serde(default)]
    pub(super) plain_http_on_tls: PlainHttpOnTls,
    #[serde(default)]
    pub(super) syn_budget: SynBudget,
    #[serde(default = "default_syn_rate")]
    pub(super) syn_rate: u32,
    #[serde(default)]
    pub(super) syn_burst: Option<Spanned<u32>>,
    #[serde(default = "default_sweep_ms")]
    pub(super) sweep_interval_ms: u64,
    #[serde(default = "default_stats_secs")]
    pub(super) stats_interval_secs: u64,
}

impl Default for XdpFile {
    fn default() -> Self {
        Self {
            enabled: true,
            interface: Spanned::new(0..0, "auto".into()),
            mode: AttachMode::Auto,
            plain_http_on_tls: PlainHttpOnTls::Reset,
            syn_budget: SynBudget::Shared,
            syn_rate: default_syn_rate(),
            syn_burst: None,
            sweep_interval_ms: default_sweep_ms(),
            stats_interval_secs: default_stats_secs(),
        }
    }
}

pub(super) fn auto() -> Spanned<String> {
    Spanned::new(0..0, "auto".into())
}
/// 1000 SYNs a second per source, with twice that at once: one address
/// (a load generator, a NAT'd office) can open 2000 connections in a
/// moment, while a flood from it is cut to 1000 a second. README explains
/// the choice next to HAProxy's and nginx's defaults.
pub(super) fn default_syn_rate() -> u32 {
    1000
}
pub(super) fn default_sweep_ms() -> u64 {
    1000
}
pub(super) fn default_stats_secs() -> u64 {
    10
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PolicyFile {
    #[serde(default)]
    pub(super) allow: Option<Spanned<Vec<Cidr>>>,
    #[serde(default)]
    pub(super) deny: Option<Spanned<Vec<Cidr>>>,
    #[serde(default = "yes")]
    pub(super) exempt_loopback: bool,
}

impl Default for PolicyFile {
    fn default() -> Self {
        Self {
            allow: None,
            deny: None,
            exempt_loopback: true,
        }
    }
}

/// Validated `[xdp]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdpSettings {
    /// Attach XDP at all.
    pub enabled: bool,
    /// The interface to attach to (resolved from `auto`).
    pub interface: String,
    /// Attach mode.
    pub mode: AttachMode,
    /// Plain HTTP on the TLS port.
    pub plain_http_on_tls: PlainHttpOnTls,
    /// Where SYN budgets are kept in the kernel.
    pub syn_budget: SynBudget,
    /// SYNs per second per source; 0 disables the limit.
    pub syn_rate: u32,
    /// SYNs a source may send at once.
    pub syn_burst: u32,
    /// How often expired verdicts are removed.
    pub sweep_interval_ms: u64,
    /// How often counters are logged (0: only at exit).
    pub stats_interval_secs: u64,
}

/// Validated `[policy]` section (prefixes normalised to their network).
#[derive(Debug, Clone, Default)]
pub struct PolicySettings {
    /// CIDRs always let through.
    pub allow: Vec<IpNet>,
    /// CIDRs always dropped.
    pub deny: Vec<IpNet>,
    /// Loopback sources (the host itself: a load test, a sidecar) are
    /// never counted by the SYN budget or the per-source connection cap.
    pub exempt_loopback: bool,
}

/// The interface that carries `ip`: `lo` for loopback, else the one holding it.
pub(super) fn interface_for(ip: IpAddr) -> Result<String, String> {
    if ip.is_loopback() {
        return Ok("lo".into());
    }
    if ip.is_unspecified() {
        return Err(format!(
            "`auto` cannot pick one interface for {ip}: name the interface to protect"
        ));
    }
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| format!("listing interfaces: {e}"))?;
    for a in addrs {
        let Some(sa) = a.address else { continue };
        let found = match ip {
            IpAddr::V4(v4) => sa.as_sockaddr_in().is_some_and(|s| s.ip() == v4),
            IpAddr::V6(v6) => sa.as_sockaddr_in6().is_some_and(|s| s.ip() == v6),
        };
        if found {
            return Ok(a.interface_name);
        }
    }
    Err(format!(
        "no interface holds {ip}: name the interface to protect"
    ))
}

/// `[xdp]`, validated; `auto` resolves to the interface holding `https_ip`.
pub(super) fn xdp_settings(
    xdp: &XdpFile,
    https_ip: IpAddr,
    invalid: &Invalid<'_>,
) -> Result<XdpSettings, ConfigError> {
    let interface = if xdp.interface.get_ref() == "auto" {
        interface_for(https_ip)
            .map_err(|m| invalid(Some(xdp.interface.span()), "xdp.interface".into(), m))?
    } else {
        xdp.interface.get_ref().clone()
    };
    if interface.is_empty() || interface.len() >= libc::IFNAMSIZ {
        return Err(invalid(
            Some(xdp.interface.span()),
            "xdp.interface".into(),
            format!("`{interface}` is not an interface name"),
        ));
    }
    let syn_burst = match &xdp.syn_burst {
        Some(b) if *b.get_ref() == 0 => {
            return Err(invalid(
                Some(b.span()),
                "xdp.syn_burst".into(),
                "must be at least 1".into(),
            ));
        }
        Some(b) => *b.get_ref(),
        None => xdp.syn_rate.saturating_mul(2).max(1),
    };
    Ok(XdpSettings {
        enabled: xdp.enabled,
        interface,
        mode: xdp.mode,
        plain_http_on_tls: xdp.plain_http_on_tls,
        syn_budget: xdp.syn_budget,
        syn_rate: xdp.syn_rate,
        syn_burst,
        sweep_interval_ms: xdp.sweep_interval_ms.max(10),
        stats_interval_secs: xdp.stats_interval_secs,
    })
}

/// `[policy]`, validated: each list fits the kernel's trie; host bits are dropped.
pub(super) fn policy_settings(
    policy: &PolicyFile,
    invalid: &Invalid<'_>,
) -> Result<PolicySettings, ConfigError> {
    let mut lists = [Vec::new(), Vec::new()];
    for (i, (key, list)) in [
        ("policy.allow", &policy.allow),
        ("policy.deny", &policy.deny),
    ]
    .into_iter()
    .enumerate()
    {
        let Some(list) = list else { continue };
        if list.get_ref().len() > gateway_common::CIDR_CAPACITY as usize {
            return Err(invalid(
                Some(list.span()),
                key.into(),
                format!(
                    "{} CIDRs, more than the kernel's trie holds ({})",
                    list.get_ref().len(),
                    gateway_common::CIDR_CAPACITY
                ),
            ));
        }
        lists[i] = list.get_ref().iter().map(|c| c.0.trunc()).collect();
    }
    let [allow, deny] = lists;
    Ok(PolicySettings {
        allow,
        deny,
        exempt_loopback: policy.exempt_loopback,
    })
}
