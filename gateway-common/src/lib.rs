//! The contract between the XDP program (`gateway-ebpf`) and the gateway.
//!
//! Everything that crosses the kernel/user boundary is defined here once:
//! map names, map sizes, key and value layouts, reason codes and the
//! packet-classification helpers both sides compile. This crate owns no
//! policy; it only describes the shapes the policy travels in.
#![cfg_attr(not(test), no_std)]

pub mod packet;

use core::mem::size_of;

/// Names of the maps the XDP program exports. `#[map(name = ...)]` in the
/// kernel crate takes a literal, so a test checks the object exports each.
pub mod map_names {
    /// Source address → [`crate::Verdict`]. Written by userspace.
    pub const VERDICTS: &str = "VERDICTS";
    /// LPM trie of denied CIDRs (IPv4 mapped into IPv6).
    pub const DENY: &str = "DENY_CIDRS";
    /// LPM trie of allowed CIDRs; allow wins over deny and verdicts.
    pub const ALLOW: &str = "ALLOW_CIDRS";
    /// LPM trie of sources the SYN budget never counts (trusted proxies,
    /// loopback): a spoofed flood carrying their address must not drain
    /// the budget their real connections need.
    pub const SYN_EXEMPT: &str = "SYN_EXEMPT_CIDRS";
    /// A listener's destination address and TCP port ([`crate::PortKey`])
    /// → [`crate::PortPolicy`].
    pub const PORTS: &str = "PORTS";
    /// Source address → theoretical arrival time of the next SYN (GCRA),
    /// one entry shared by all CPUs.
    pub const SYN_TAT: &str = "SYN_TAT";
    /// The same, one entry per CPU (`xdp.syn_budget = "per_cpu"`).
    pub const SYN_TAT_PER_CPU: &str = "SYN_TAT_PER_CPU";
    /// Single-entry array holding [`crate::XdpConfig`].
    pub const CONFIG: &str = "CONFIG";
    /// Per-CPU counters indexed by [`crate::Outcome`].
    pub const COUNTERS: &str = "COUNTERS";
    /// The workers' listening sockets, by worker index (SO_REUSEPORT group).
    pub const LISTENERS: &str = "LISTENERS";
    /// `[workers, next]`: how many listeners, and the round-robin cursor.
    pub const BALANCE: &str = "BALANCE";
    /// Every map name, for the export check.
    pub const ALL: [&str; 11] = [
        VERDICTS,
        DENY,
        ALLOW,
        SYN_EXEMPT,
        PORTS,
        SYN_TAT,
        SYN_TAT_PER_CPU,
        CONFIG,
        COUNTERS,
        LISTENERS,
        BALANCE,
    ];
}

/// Name of the XDP program function in the object.
pub const PROGRAM_NAME: &str = "gateway_xdp";

/// Name of the SO_REUSEPORT program that spreads new connections over the
/// workers' listeners.
pub const BALANCE_PROGRAM_NAME: &str = "gateway_balance";

/// Most workers the listener balancer can spread connections over.
pub const MAX_WORKERS: u32 = 256;

/// Name of the reflector program (`XDP_TX` for every frame) in the same
/// object: a veth peer for tests and a frame generator for benchmarks.
pub const TX_PROGRAM_NAME: &str = "gateway_xdp_tx";

/// Capacity of the verdict map. Userspace reports a full map as an error.
pub const VERDICT_CAPACITY: u32 = 65_536;
/// Capacity of each CIDR trie.
pub const CIDR_CAPACITY: u32 = 16_384;
/// Capacity of the port policy map.
pub const PORT_CAPACITY: u32 = 64;
/// Capacity of the SYN-exempt trie (trusted proxies and loopback).
pub const SYN_EXEMPT_CAPACITY: u32 = 1024;
/// Sources tracked by the SYN limiter; least recently seen are evicted.
pub const SYN_TRACKED_SOURCES: u32 = 65_536;

/// A source address: IPv6 as is, IPv4 as an IPv4-mapped IPv6 address
/// (`::ffff:a.b.c.d`), so one map serves both families.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SourceAddr {
    /// Address bytes in network order.
    pub octets: [u8; 16],
}
const _: () = assert!(size_of::<SourceAddr>() == 16);

impl SourceAddr {
    /// The IPv4-mapped form of an IPv4 address.
    pub const fn from_v4(v4: [u8; 4]) -> Self {
        Self {
            octets: [
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
            ],
        }
    }

    /// An IPv6 address as is.
    pub const fn from_v6(octets: [u8; 16]) -> Self {
        Self { octets }
    }
}

/// Prefix-length offset of IPv4 CIDRs stored in the IPv6-keyed tries.
pub const V4_MAPPED_PREFIX: u32 = 96;

/// A live block on a source address, written by userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Verdict {
    /// `CLOCK_MONOTONIC` nanoseconds after which the verdict no longer applies.
    pub expires_at_ns: u64,
    /// Why the source is blocked: a [`VerdictReason`] value.
    pub reason: u32,
    /// Explicit padding; always zero.
    pub _pad: u32,
}
const _: () = assert!(size_of::<Verdict>() == 16);

/// Why a verdict was placed. Stable numbers: they are in maps and logs.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerdictReason {
    /// Placed by an operator or a policy file.
    Policy = 1,
    /// The source exceeded a rate limit.
    RateLimit = 2,
    /// The source sent abusive traffic (e.g. repeated protocol violations).
    Abuse = 3,
    /// The source failed authentication repeatedly.
    AuthFailures = 4,
}

impl VerdictReason {
    /// Decodes a reason stored in a map.
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Policy),
            2 => Some(Self::RateLimit),
            3 => Some(Self::Abuse),
            4 => Some(Self::AuthFailures),
            _ => None,
        }
    }

    /// Stable reason code for logs and metrics.
    pub const fn code(self) -> &'static str {
        match self {
            Self::Policy => "policy",
            Self::RateLimit => "rate_limit",
            Self::Abuse => "abuse",
            Self::AuthFailures => "auth_failures",
        }
    }
}

/// Key of [`map_names::PORTS`]: where a listener takes connections. The
/// address is IPv4-mapped for IPv4; a wildcard listener is keyed by
/// [`ANY_V4`] or [`ANY_V6`], looked up after the packet's own destination.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PortKey {
    /// Destination address bytes in network order.
    pub addr: [u8; 16],
    /// Destination TCP port.
    pub port: u16,
    /// Padding, always zero (part of the hash key).
    pub _pad: u16,
}
const _: () = assert!(size_of::<PortKey>() == 20);

/// A listener on every IPv4 address (`0.0.0.0`), IPv4-mapped.
pub const ANY_V4: [u8; 16] = SourceAddr::from_v4([0, 0, 0, 0]).octets;
/// A listener on every IPv6 address (`::`).
pub const ANY_V6: [u8; 16] = [0; 16];

/// What a listener's port carries.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PortPolicy {
    /// A [`PortKind`] value.
    pub kind: u32,
}
const _: () = assert!(size_of::<PortPolicy>() == 4);

/// Port kinds in [`PortPolicy::kind`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortKind {
    /// A TLS-only port: TCP payload must start with a TLS record.
    Tls = 1,
    /// A plain-HTTP port nobody serves: everything to it is dropped.
    PlainHttpDrop = 2,
    /// A plain-HTTP port the gateway answers (the 308 to HTTPS): SYNs are
    /// budgeted, nothing is dropped for what it carries.
    PlainHttp = 3,
}

/// What the XDP program does with plain HTTP sent to a TLS port.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlainHttpAction {
    /// Let it through (userspace deals with it).
    Pass = 0,
    /// Drop the segment; the client retransmits until it gives up.
    Drop = 1,
    /// Answer with a TCP RST built in XDP so the client fails at once.
    Reset = 2,
}

/// Global knobs of the XDP program, one entry in [`map_names::CONFIG`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct XdpConfig {
    /// Nanoseconds between admitted SYNs per source (1e9 / rate); 0 disables.
    pub syn_interval_ns: u64,
    /// Extra SYNs a source may send at once: (burst - 1) * interval.
    pub syn_tolerance_ns: u64,
    /// A [`PlainHttpAction`] value.
    pub plain_http_action: u32,
    /// [`config_flags`] bits.
    pub flags: u32,
    /// The mask an IPv6 source is keyed by in [`map_names::VERDICTS`] and
    /// the SYN clocks (`rate_limit.ipv6_prefix`: one host holds a `/64`).
    pub v6_mask: [u8; 16],
}

/// Bits of [`XdpConfig::flags`].
pub mod config_flags {
    /// The allow list has entries (else its lookup is skipped).
    pub const HAS_ALLOW: u32 = 1;
    /// The deny list has entries (else its lookup is skipped).
    pub const HAS_DENY: u32 = 2;
    /// Keep SYN budgets per CPU instead of shared (cheaper; a source spread
    /// over N CPUs gets up to N times its budget).
    pub const SYN_PER_CPU: u32 = 4;
    /// The SYN-exempt list has entries (else its lookup is skipped).
    pub const HAS_SYN_EXEMPT: u32 = 8;
}
const _: () = assert!(size_of::<XdpConfig>() == 40);

/// Every outcome the XDP program counts, as indices of [`map_names::COUNTERS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not IP/TCP or not understood: passed untouched.
    PassedNotInspected = 0,
    /// Inspected and passed.
    Passed = 1,
    /// Passed because the source is on the allow list.
    PassedAllowed = 2,
    /// Dropped: the source holds a live verdict.
    DroppedVerdict = 3,
    /// Dropped: the source is in a denied CIDR.
    DroppedDenied = 4,
    /// Dropped: plain HTTP to a TLS-only port, or to a plain port nobody serves.
    DroppedPlainHttp = 5,
    /// Answered with a TCP RST: plain HTTP to a TLS-only port.
    ResetPlainHttp = 6,
    /// Dropped: the source sent SYNs faster than its budget.
    DroppedSynRate = 7,
    /// Dropped: a truncated or malformed IP/TCP header.
    DroppedMalformed = 8,
    /// Dropped: an IPv6 packet whose extension headers go on past the
    /// few the program walks (where a TCP header would hide from the SYN
    /// budget and the plain-HTTP check).
    DroppedExtHeaders = 9,
}

impl Outcome {
    /// Number of counters.
    pub const COUNT: u32 = 10;

    /// All outcomes in index order.
    pub const ALL: [Outcome; Self::COUNT as usize] = [
        Self::PassedNotInspected,
        Self::Passed,
        Self::PassedAllowed,
        Self::DroppedVerdict,
        Self::DroppedDenied,
        Self::DroppedPlainHttp,
        Self::ResetPlainHttp,
        Self::DroppedSynRate,
        Self::DroppedMalformed,
        Self::DroppedExtHeaders,
    ];

    /// Stable metric name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::PassedNotInspected => "passed_not_inspected",
            Self::Passed => "passed",
            Self::PassedAllowed => "passed_allowed",
            Self::DroppedVerdict => "dropped_verdict",
            Self::DroppedDenied => "dropped_denied",
            Self::DroppedPlainHttp => "dropped_plain_http",
            Self::ResetPlainHttp => "reset_plain_http",
            Self::DroppedSynRate => "dropped_syn_rate",
            Self::DroppedMalformed => "dropped_malformed",
            Self::DroppedExtHeaders => "dropped_ext_headers",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is #[repr(C)], Copy, made only of integers and byte
    // arrays, with padding spelled out as fields, so every bit pattern is valid.
    unsafe impl aya::Pod for super::SourceAddr {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Verdict {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PortPolicy {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PortKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::XdpConfig {}
}
