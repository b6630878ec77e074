//! Configuration: one TOML file parsed into plain typed structs, then
//! validated once into the runtime form the rest of the gateway uses.
//!
//! Every error names where it is: `file:line: key: what is wrong`.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

/// The configuration used when no file is given: HTTPS on 127.0.0.1:8443,
/// XDP on the loopback interface. Works on a fresh machine.
pub const EMBEDDED_DEFAULT: &str = include_str!("default.toml");

/// A configuration error, located in its file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A key is missing, unknown, mistyped or has a bad value.
    #[error("{file}:{line}: {key}: {message}")]
    Invalid {
        /// The file (or `<embedded default>`).
        file: String,
        /// 1-based line of the offending key or value.
        line: usize,
        /// Dotted key path, e.g. `policy.deny[2]`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    listen: ListenFile,
    #[serde(default)]
    xdp: XdpFile,
    #[serde(default)]
    policy: PolicyFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenFile {
    https: SocketAddr,
    #[serde(default = "default_plain_port")]
    plain_http_port: u16,
    #[serde(default = "yes")]
    https_only: bool,
}

fn default_plain_port() -> u16 {
    80
}
fn yes() -> bool {
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
struct XdpFile {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default = "auto")]
    interface: Spanned<String>,
    #[serde(default)]
    mode: AttachMode,
    #[serde(default)]
    plain_http_on_tls: PlainHttpOnTls,
    #[serde(default = "default_syn_rate")]
    syn_rate: u32,
    #[serde(default)]
    syn_burst: Option<Spanned<u32>>,
    #[serde(default = "default_sweep_ms")]
    sweep_interval_ms: u64,
    #[serde(default = "default_stats_secs")]
    stats_interval_secs: u64,
}

impl Default for XdpFile {
    fn default() -> Self {
        Self {
            enabled: true,
            interface: Spanned::new(0..0, "auto".into()),
            mode: AttachMode::Auto,
            plain_http_on_tls: PlainHttpOnTls::Reset,
            syn_rate: default_syn_rate(),
            syn_burst: None,
            sweep_interval_ms: default_sweep_ms(),
            stats_interval_secs: default_stats_secs(),
        }
    }
}

fn auto() -> Spanned<String> {
    Spanned::new(0..0, "auto".into())
}
fn default_syn_rate() -> u32 {
    200
}
fn default_sweep_ms() -> u64 {
    1000
}
fn default_stats_secs() -> u64 {
    10
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    allow: Option<Spanned<Vec<IpNet>>>,
    #[serde(default)]
    deny: Option<Spanned<Vec<IpNet>>>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it came from, for messages.
    pub source: String,
    /// The HTTPS listen address.
    pub https: SocketAddr,
    /// The port plain-HTTP clients try.
    pub plain_http_port: u16,
    /// Whether plain HTTP is refused (dropped in the kernel).
    pub https_only: bool,
    /// Kernel data plane settings.
    pub xdp: XdpSettings,
    /// Source address policy.
    pub policy: PolicySettings,
}

/// Validated `[xdp]` section.
#[derive(Debug, Clone)]
pub struct XdpSettings {
    /// Attach XDP at all.
    pub enabled: bool,
    /// The interface to attach to (resolved from `auto`).
    pub interface: String,
    /// Attach mode.
    pub mode: AttachMode,
    /// Plain HTTP on the TLS port.
    pub plain_http_on_tls: PlainHttpOnTls,
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
}

impl Config {
    /// Loads and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The embedded default.
    pub fn embedded() -> Result<Self, ConfigError> {
        Self::parse(EMBEDDED_DEFAULT, "<embedded default>")
    }

    /// Parses and validates `text`, naming it `file` in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        let invalid = |span: Option<std::ops::Range<usize>>, key: String, message: String| {
            ConfigError::Invalid {
                file: file.to_owned(),
                line: span.map_or(1, |s| line_of(text, s.start)),
                key: if key.is_empty() || key == "." {
                    "(top level)".into()
                } else {
                    key
                },
                message,
            }
        };
        let de = toml::Deserializer::parse(text)
            .map_err(|e| invalid(e.span(), String::new(), e.message().to_owned()))?;
        let raw: File = serde_path_to_error::deserialize(de).map_err(|e| {
            // Spanned<T> wraps the value in a private field; keep the key clean.
            let key = e
                .path()
                .to_string()
                .replace(".$__serde_spanned_private_value", "");
            let inner = e.into_inner();
            invalid(inner.span(), key, inner.message().to_owned())
        })?;

        let xdp = &raw.xdp;
        let interface = if xdp.interface.get_ref() == "auto" {
            interface_for(raw.listen.https.ip())
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
            None => xdp.syn_rate.max(1),
        };
        if raw.listen.plain_http_port == raw.listen.https.port() {
            return Err(invalid(
                None,
                "listen.plain_http_port".into(),
                "must differ from the HTTPS port".into(),
            ));
        }
        let mut lists = [Vec::new(), Vec::new()];
        for (i, (key, list)) in [
            ("policy.allow", &raw.policy.allow),
            ("policy.deny", &raw.policy.deny),
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
            lists[i] = list.get_ref().iter().map(IpNet::trunc).collect();
        }
        let [allow, deny] = lists;
        Ok(Config {
            source: file.to_owned(),
            https: raw.listen.https,
            plain_http_port: raw.listen.plain_http_port,
            https_only: raw.listen.https_only,
            xdp: XdpSettings {
                enabled: xdp.enabled,
                interface,
                mode: xdp.mode,
                plain_http_on_tls: xdp.plain_http_on_tls,
                syn_rate: xdp.syn_rate,
                syn_burst,
                sweep_interval_ms: xdp.sweep_interval_ms.max(10),
                stats_interval_secs: xdp.stats_interval_secs,
            },
            policy: PolicySettings { allow, deny },
        })
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The interface that carries `ip`: `lo` for loopback, else the one holding it.
fn interface_for(ip: IpAddr) -> Result<String, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        match Config::parse(text, "t.toml") {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::embedded().expect("embedded default");
        assert_eq!(c.https.to_string(), "127.0.0.1:8443");
        assert_eq!(c.xdp.interface, "lo");
        assert!(c.https_only);
    }

    #[test]
    fn bad_cidr_names_line_and_key() {
        let e = err(
            "[listen]\nhttps = \"127.0.0.1:8443\"\n[policy]\ndeny = [\"10.0.0.0/8\", \"10.1.2.300/24\"]\n",
        );
        assert!(e.starts_with("t.toml:4: policy.deny[1]: "), "{e}");
    }

    #[test]
    fn unknown_key_is_refused() {
        let e = err("[listen]\nhttps = \"127.0.0.1:8443\"\n\n[xdp]\nmodee = \"skb\"\n");
        assert!(e.starts_with("t.toml:5: xdp"), "{e}");
        assert!(e.contains("modee"), "{e}");
    }

    #[test]
    fn bad_mode_is_refused() {
        let e = err("[listen]\nhttps = \"127.0.0.1:8443\"\n[xdp]\nmode = \"turbo\"\n");
        assert!(e.starts_with("t.toml:4: xdp.mode: "), "{e}");
    }

    #[test]
    fn zero_burst_is_refused() {
        let e = err("[listen]\nhttps = \"127.0.0.1:8443\"\n[xdp]\nsyn_burst = 0\n");
        assert_eq!(e, "t.toml:4: xdp.syn_burst: must be at least 1");
    }

    #[test]
    fn auto_interface_needs_a_concrete_address() {
        let e = err("[listen]\nhttps = \"0.0.0.0:8443\"\n");
        assert!(e.contains("xdp.interface: `auto` cannot pick"), "{e}");
    }

    #[test]
    fn missing_listen_is_reported() {
        let e = err("[xdp]\nmode = \"skb\"\n");
        assert!(e.contains("missing field `listen`"), "{e}");
    }

    #[test]
    fn too_many_cidrs_are_refused() {
        let many: Vec<String> = (0..=gateway_common::CIDR_CAPACITY)
            .map(|i| format!("\"10.{}.{}.0/24\"", i / 256, i % 256))
            .collect();
        let e = err(&format!(
            "[listen]\nhttps = \"127.0.0.1:8443\"\n[policy]\nallow = [{}]\n",
            many.join(",")
        ));
        assert!(
            e.starts_with("t.toml:4: policy.allow: 16385 CIDRs, more than"),
            "{e}"
        );
    }

    #[test]
    fn cidrs_are_normalised() {
        let c = Config::parse(
            "[listen]\nhttps = \"127.0.0.1:8443\"\n[policy]\nallow = [\"198.18.0.7/24\"]\n",
            "t.toml",
        )
        .expect("valid");
        assert_eq!(c.policy.allow[0].to_string(), "198.18.0.0/24");
    }
}
