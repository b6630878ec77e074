//! The kernel data plane: loads the XDP program, fills its maps from the
//! configuration, attaches it, and later writes verdicts and reads counters.
//!
//! Maps are filled before the program is attached, and nothing is pinned: a
//! failure at any step drops the whole object, so no half-configured program
//! or stale map is left behind. The attachment is a BPF link owned by this
//! process, so the kernel detaches it when the process exits, however it exits.

use std::{io, net::IpAddr};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, PerCpuHashMap, lpm_trie::Key},
    programs::{ProgramError, TestRun, TestRunOptions, Xdp, XdpMode},
};
use gateway_common::{
    CIDR_CAPACITY, Outcome, PROGRAM_NAME, PlainHttpAction, PortKey, PortKind, PortPolicy,
    SYN_EXEMPT_CAPACITY, SourceAddr, VERDICT_CAPACITY, Verdict, XdpConfig, map_names,
};
use ipnet::IpNet;

mod balance;
pub mod enforce;
pub mod listeners;
pub mod policy;
mod reflector;

pub use balance::Balancer;
pub use reflector::Reflector;

use crate::{
    addr::{mapped_prefix, source_addr},
    config::{AttachMode, Config, PlainHttpOnTls},
    xdp::policy::{Lists, syn_budget},
};

/// The XDP object built by `cargo xtask`, embedded in the binary.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway-ebpf.o"));

/// What went wrong with the kernel data plane, and whose fault it is.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    /// The process may not load BPF programs (needs root or CAP_BPF + CAP_NET_ADMIN).
    #[error(
        "no permission to load XDP programs (run as root or grant CAP_BPF and CAP_NET_ADMIN): {0}"
    )]
    NoPrivilege(String),
    /// The kernel lacks BPF or XDP support.
    #[error("this kernel cannot run the XDP program: {0}")]
    Unsupported(String),
    /// The configured interface does not exist.
    #[error("interface `{0}` does not exist (xdp.interface)")]
    UnknownInterface(String),
    /// Another XDP program already holds the interface.
    #[error(
        "interface `{0}` already has an XDP program attached (another gateway?): stop the process that holds it, or `ip link set dev {0} xdp off` if it was attached with ip"
    )]
    SlotTaken(String),
    /// Native mode was asked for on a driver without it.
    #[error("interface `{0}` has no native XDP support; set xdp.mode = \"skb\" or \"auto\"")]
    DriverModeUnsupported(String),
    /// A map has no room left.
    #[error("map {map} is full ({capacity} entries): {what}")]
    MapFull {
        /// Which map.
        map: &'static str,
        /// Its capacity.
        capacity: u32,
        /// What did not fit.
        what: String,
    },
    /// The kernel refused one facility with EPERM although the process
    /// loads XDP programs: a capability or policy this environment
    /// withholds (live-frames test runs want more than loading does).
    #[error(
        "the kernel refused {0} (EPERM) although this process loads XDP programs: a capability or policy this environment withholds"
    )]
    FacilityRefused(String),
    /// Anything else the kernel or loader refused (a bug on our side).
    #[error("{context}: {source}")]
    Kernel {
        /// What we were doing.
        context: String,
        /// The loader's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl XdpError {
    /// Whether the gateway should enforce its policy in userspace instead.
    pub fn falls_back_to_userspace(&self) -> bool {
        matches!(self, Self::NoPrivilege(_) | Self::Unsupported(_))
    }
}

/// The first OS error in an error's source chain.
fn os_error(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(code) = err
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
        {
            return Some(code);
        }
        cur = err.source();
    }
    None
}

/// Classifies a loader error by the OS error under it.
fn classify<E: std::error::Error + Send + Sync + 'static>(context: &str, e: E) -> XdpError {
    match os_error(&e) {
        Some(libc::EPERM | libc::EACCES) => XdpError::NoPrivilege(format!("{context}: {e}")),
        Some(libc::ENOSYS) => XdpError::Unsupported(format!("{context}: {e}")),
        _ => XdpError::Kernel {
            context: context.to_owned(),
            source: Box::new(e),
        },
    }
}

/// Counter values summed over CPUs, indexed by [`Outcome`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters(pub [u64; Outcome::COUNT as usize]);

impl Counters {
    /// One outcome's count.
    pub fn get(&self, o: Outcome) -> u64 {
        self.0[o as usize]
    }

    /// All packets dropped for any reason.
    pub fn dropped(&self) -> u64 {
        Outcome::ALL
            .iter()
            .filter(|o| o.name().starts_with("dropped"))
            .map(|o| self.get(*o))
            .sum()
    }
}

impl std::fmt::Display for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, o) in Outcome::ALL.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{}={}", o.name(), self.get(*o))?;
        }
        Ok(())
    }
}

/// The loaded (and possibly attached) XDP program with its maps.
pub struct DataPlane {
    ebpf: Ebpf,
    verdicts: HashMap<MapData, SourceAddr, Verdict>,
    deny: LpmTrie<MapData, [u8; 16], u8>,
    allow: LpmTrie<MapData, [u8; 16], u8>,
    syn_exempt: LpmTrie<MapData, [u8; 16], u8>,
    ports: HashMap<MapData, PortKey, PortPolicy>,
    config: Array<MapData, XdpConfig>,
    counters: PerCpuArray<MapData, u64>,
    attached: Option<(String, AttachMode)>,
    /// `rate_limit.ipv6_prefix` as a mask: an IPv6 verdict is keyed by
    /// its prefix, as the program looks it up.
    v6_mask: [u8; 16],
}

/// The object lacks a map or program it was built with (a build mismatch).
fn missing(kind: &str, name: &str) -> XdpError {
    XdpError::Kernel {
        context: format!("the XDP object has no {kind} {name}"),
        source: format!("missing {kind}").into(),
    }
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, XdpError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or_else(|| missing("map", name))?;
    T::try_from(map).map_err(|e| classify(&format!("opening map {name}"), e))
}

fn borrow_map<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<T, XdpError>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.map_mut(name).ok_or_else(|| missing("map", name))?;
    T::try_from(map).map_err(|e| classify(&format!("opening map {name}"), e))
}

fn map_err(map: &'static str, capacity: u32, what: String, e: aya::maps::MapError) -> XdpError {
    if matches!(os_error(&e), Some(libc::E2BIG | libc::ENOSPC)) {
        XdpError::MapFull {
            map,
            capacity,
            what,
        }
    } else {
        classify(&format!("writing {what} into {map}"), e)
    }
}

impl DataPlane {
    /// Loads the embedded object and verifies the program, attaching nothing.
    pub fn load() -> Result<Self, XdpError> {
        Self::load_object(OBJECT)
    }

    /// Loads an object and verifies its program, attaching nothing.
    pub fn load_object(object: &[u8]) -> Result<Self, XdpError> {
        let mut ebpf = EbpfLoader::new()
            .load(object)
            .map_err(|e| classify("loading the XDP object", e))?;
        let prog: &mut Xdp = program(&mut ebpf)?;
        prog.load()
            .map_err(|e| classify("verifying the XDP program", e))?;
        Ok(Self {
            verdicts: take(&mut ebpf, map_names::VERDICTS)?,
            deny: take(&mut ebpf, map_names::DENY)?,
            allow: take(&mut ebpf, map_names::ALLOW)?,
            syn_exempt: take(&mut ebpf, map_names::SYN_EXEMPT)?,
            ports: take(&mut ebpf, map_names::PORTS)?,
            config: take(&mut ebpf, map_names::CONFIG)?,
            counters: take(&mut ebpf, map_names::COUNTERS)?,
            ebpf,
            attached: None,
            v6_mask: [0xff; 16],
        })
    }

    /// The key the program looks `ip` up by.
    fn key(&self, ip: IpAddr) -> SourceAddr {
        let key = source_addr(ip);
        if crate::addr::canonical(ip).is_ipv6() {
            SourceAddr::from_v6(gateway_common::packet::masked_v6(key.octets, &self.v6_mask))
        } else {
            key
        }
    }

    /// Writes the configuration's ports, knobs and CIDR lists into the maps
    /// (the lists as a move from empty ones).
    /// Listeners are matched by address and port: another service on the
    /// same port at another address (a developer's server on
    /// `127.0.0.2:8080`) is never inspected.
    pub fn configure(&mut self, cfg: &Config) -> Result<(), XdpError> {
        let ip = cfg.https.ip();
        self.set_port(ip, cfg.https.port(), PortKind::Tls)?;
        if cfg.redirect_plain_http {
            // The 308 listener wins over `https_only`: it must see packets.
            self.set_port(ip, cfg.plain_http_port, PortKind::PlainHttp)?;
        } else if cfg.https_only {
            self.set_port(ip, cfg.plain_http_port, PortKind::PlainHttpDrop)?;
        }
        self.reconfigure(&Lists::default(), cfg)
    }

    /// Moves the maps from the `old` lists to `new`'s lists and knobs in
    /// place (a reload): the program stays attached and keeps
    /// its verdicts, SYN clocks and counters. New CIDRs go in before the
    /// knobs that switch a list on, stale ones leave after, so no packet
    /// meets a list switched on but still empty. The ports are listener
    /// settings, which a reload does not change.
    /// A failed insertion stops before the knobs change; removals are
    /// all tried, so a rollback puts back as much as it can.
    pub fn reconfigure(&mut self, old: &Lists, new: &Config) -> Result<(), XdpError> {
        let (o, n) = (old, &Lists::of(new));
        for net in beyond(&n.deny, &o.deny) {
            insert_cidr(&mut self.deny, map_names::DENY, CIDR_CAPACITY, net)?;
        }
        for net in beyond(&n.allow, &o.allow) {
            insert_cidr(&mut self.allow, map_names::ALLOW, CIDR_CAPACITY, net)?;
        }
        for net in beyond(&n.syn_exempt, &o.syn_exempt) {
            insert_cidr(
                &mut self.syn_exempt,
                map_names::SYN_EXEMPT,
                SYN_EXEMPT_CAPACITY,
                net,
            )?;
        }
        let knobs = knobs(new);
        self.config
            .set(0, knobs, 0)
            .map_err(|e| classify("writing the XDP configuration", e))?;
        self.v6_mask = knobs.v6_mask;
        let mut first = Ok(());
        for net in beyond(&o.deny, &n.deny) {
            first = first.and(remove_cidr(&mut self.deny, map_names::DENY, net));
        }
        for net in beyond(&o.allow, &n.allow) {
            first = first.and(remove_cidr(&mut self.allow, map_names::ALLOW, net));
        }
        for net in beyond(&o.syn_exempt, &n.syn_exempt) {
            first = first.and(remove_cidr(
                &mut self.syn_exempt,
                map_names::SYN_EXEMPT,
                net,
            ));
        }
        first
    }
}

/// The entries of `a` that `b` lacks (lists of up to 16,384 CIDRs: a set,
/// not a scan per entry).
fn beyond<'a>(a: &'a [IpNet], b: &'a [IpNet]) -> impl Iterator<Item = &'a IpNet> {
    let b: std::collections::HashSet<&IpNet> = b.iter().collect();
    a.iter().filter(move |n| !b.contains(n))
}

/// The program's knobs for `cfg`.
fn knobs(cfg: &Config) -> XdpConfig {
    let (syn_interval_ns, syn_tolerance_ns) = syn_budget(cfg.xdp.syn_rate, cfg.xdp.syn_burst);
    XdpConfig {
        syn_interval_ns,
        syn_tolerance_ns,
        plain_http_action: match cfg.xdp.plain_http_on_tls {
            PlainHttpOnTls::Pass => PlainHttpAction::Pass,
            PlainHttpOnTls::Drop => PlainHttpAction::Drop,
            PlainHttpOnTls::Reset => PlainHttpAction::Reset,
        } as u32,
        flags: if cfg.policy.allow.is_empty() {
            0
        } else {
            gateway_common::config_flags::HAS_ALLOW
        } | if cfg.policy.deny.is_empty() {
            0
        } else {
            gateway_common::config_flags::HAS_DENY
        } | if cfg.xdp.syn_budget == crate::config::SynBudget::PerCpu {
            gateway_common::config_flags::SYN_PER_CPU
        } else {
            0
        } | if Lists::of(cfg).syn_exempt.is_empty() {
            0
        } else {
            gateway_common::config_flags::HAS_SYN_EXEMPT
        },
        v6_mask: crate::addr::v6_mask(cfg.rate_limit.ipv6_prefix),
    }
}

impl DataPlane {
    /// Attaches the program to `interface`.
    /// `auto` tries native (driver) mode first and falls back to generic
    /// (skb) mode when the driver has none, so the mode in use is known.
    pub fn attach(&mut self, interface: &str, mode: AttachMode) -> Result<(), XdpError> {
        match mode {
            AttachMode::Auto => match self.attach_as(interface, AttachMode::Driver) {
                Err(XdpError::DriverModeUnsupported(_)) => {
                    self.attach_as(interface, AttachMode::Skb)
                }
                other => other,
            },
            m => self.attach_as(interface, m),
        }
    }

    fn attach_as(&mut self, interface: &str, mode: AttachMode) -> Result<(), XdpError> {
        let xdp_mode = if mode == AttachMode::Skb {
            XdpMode::Skb
        } else {
            XdpMode::Driver
        };
        let prog = program(&mut self.ebpf)?;
        match prog.attach(interface, xdp_mode) {
            Ok(_) => {
                self.attached = Some((interface.to_owned(), mode));
                Ok(())
            }
            Err(ProgramError::UnknownInterface { name }) => Err(XdpError::UnknownInterface(name)),
            Err(e) => Err(match os_error(&e) {
                Some(libc::EBUSY | libc::EEXIST) => XdpError::SlotTaken(interface.to_owned()),
                Some(libc::EOPNOTSUPP) if mode == AttachMode::Driver => {
                    XdpError::DriverModeUnsupported(interface.to_owned())
                }
                Some(libc::EOPNOTSUPP) => {
                    XdpError::Unsupported(format!("attaching to {interface}: {e}"))
                }
                _ => classify(&format!("attaching to {interface}"), e),
            }),
        }
    }

    /// The interface the program is attached to, if any.
    pub fn attached_to(&self) -> Option<&str> {
        self.attached.as_ref().map(|(i, _)| i.as_str())
    }

    /// The mode it was attached in (`driver` or `skb`), if attached.
    pub fn attached_mode(&self) -> Option<AttachMode> {
        self.attached.as_ref().map(|(_, m)| *m)
    }

    /// Places (or replaces) a verdict on a source address (an IPv6 one:
    /// on its prefix).
    pub fn set_verdict(&mut self, ip: IpAddr, verdict: Verdict) -> Result<(), XdpError> {
        let key = self.key(ip);
        self.verdicts.insert(key, verdict, 0).map_err(|e| {
            map_err(
                map_names::VERDICTS,
                VERDICT_CAPACITY,
                format!("verdict for {ip}"),
                e,
            )
        })
    }

    /// Every verdict in the map (live or not yet swept).
    pub fn verdicts(&self) -> Vec<(SourceAddr, Verdict)> {
        self.verdicts.iter().filter_map(Result::ok).collect()
    }

    /// Removes a source's verdict; whether it had one.
    pub fn remove_verdict(&mut self, ip: IpAddr) -> bool {
        let key = self.key(ip);
        self.verdicts.remove(&key).is_ok()
    }

    /// A source's SYN clock (GCRA theoretical arrival time, monotonic ns)
    /// in the shared map and, the latest over CPUs, in the per-CPU one.
    pub fn syn_clock(&self, ip: IpAddr) -> Option<u64> {
        // Keyed as the program keys it: an IPv6 source by its prefix.
        let key = self.key(ip);
        let shared = self
            .ebpf
            .map(map_names::SYN_TAT)
            .and_then(|m| HashMap::<&MapData, SourceAddr, u64>::try_from(m).ok())
            .and_then(|m| m.get(&key, 0).ok());
        let per_cpu = self
            .ebpf
            .map(map_names::SYN_TAT_PER_CPU)
            .and_then(|m| PerCpuHashMap::<&MapData, SourceAddr, u64>::try_from(m).ok())
            .and_then(|m| m.get(&key, 0).ok())
            .and_then(|v| v.iter().copied().max());
        shared.max(per_cpu)
    }

    /// Removes verdicts that expired before `now_ns`; returns how many.
    pub fn sweep_expired(&mut self, now_ns: u64) -> Result<usize, XdpError> {
        let expired: Vec<SourceAddr> = self
            .verdicts
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, v)| !gateway_common::packet::verdict_live(v.expires_at_ns, now_ns))
            .map(|(k, _)| k)
            .collect();
        for k in &expired {
            // Gone already (raced with another writer) is fine.
            let _ = self.verdicts.remove(k);
        }
        Ok(expired.len())
    }

    /// Counters summed over CPUs.
    pub fn counters(&self) -> Result<Counters, XdpError> {
        let mut out = Counters::default();
        for (i, slot) in out.0.iter_mut().enumerate() {
            let per_cpu = self
                .counters
                .get(&(i as u32), 0)
                .map_err(|e| classify("reading counters", e))?;
            *slot = per_cpu.iter().sum();
        }
        Ok(out)
    }

    /// Runs the program once on `frame` with `BPF_PROG_TEST_RUN`; returns the
    /// XDP action and the frame as the program left it.
    pub fn test_run(&mut self, frame: &[u8]) -> Result<(u32, Vec<u8>), XdpError> {
        let prog = program(&mut self.ebpf)?;
        let mut out = vec![0u8; frame.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        let res = prog
            .test_run(opts)
            .map_err(|e| classify("BPF_PROG_TEST_RUN", e))?;
        out.truncate(res.data_size_out as usize);
        Ok((res.return_value, out))
    }

    /// Runs the program `repeat` times on `frame` with `BPF_PROG_TEST_RUN`;
    /// returns the kernel's average time per run.
    pub fn time_run(&mut self, frame: &[u8], repeat: u32) -> Result<std::time::Duration, XdpError> {
        let prog = program(&mut self.ebpf)?;
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.repeat = repeat;
        let res = prog
            .test_run(opts)
            .map_err(|e| classify("BPF_PROG_TEST_RUN", e))?;
        Ok(res.duration)
    }

    /// The program's cumulative run time and run count (counted only while
    /// BPF run-time stats are enabled, see `aya::sys::enable_stats`).
    pub fn run_stats(&mut self) -> Result<(std::time::Duration, u64), XdpError> {
        let prog = program(&mut self.ebpf)?;
        prog.info()
            .map(|i| (i.run_time(), i.run_count()))
            .map_err(|e| classify("reading program info", e))
    }
}

fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp, XdpError> {
    named_program(ebpf, PROGRAM_NAME)
}

fn named_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp, XdpError> {
    program_as(ebpf, name)
}

fn program_as<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, XdpError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let p = ebpf
        .program_mut(name)
        .ok_or_else(|| missing("program", name))?;
    p.try_into()
        .map_err(|e| classify(&format!("opening program {name}"), e))
}

fn remove_cidr(
    trie: &mut LpmTrie<MapData, [u8; 16], u8>,
    name: &'static str,
    net: &IpNet,
) -> Result<(), XdpError> {
    let (bytes, len) = mapped_prefix(net);
    match trie.remove(&Key::new(len, bytes)) {
        // Already gone is what was wanted.
        Err(aya::maps::MapError::KeyNotFound) | Ok(()) => Ok(()),
        Err(e) => Err(classify(&format!("removing CIDR {net} from {name}"), e)),
    }
}

fn insert_cidr(
    trie: &mut LpmTrie<MapData, [u8; 16], u8>,
    name: &'static str,
    capacity: u32,
    net: &IpNet,
) -> Result<(), XdpError> {
    let (bytes, len) = mapped_prefix(net);
    trie.insert(&Key::new(len, bytes), 1, 0)
        .map_err(|e| map_err(name, capacity, format!("CIDR {net}"), e))
}
