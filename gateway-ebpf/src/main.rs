//! The gateway's XDP program.
//!
//! It owns the per-packet decisions that are cheaper in the kernel than in
//! userspace: sources with a live verdict, denied CIDRs, plain HTTP aimed at
//! TLS-only ports, and SYN floods. It holds no policy of its own: userspace
//! writes every list, verdict and knob into the maps. Anything it does not
//! understand passes untouched.
#![no_std]
#![no_main]
// The bpfel target has atomics but no `AtomicU64` methods (no CAS in its
// spec), so the map slot is updated through the intrinsics the methods use.
#![feature(core_intrinsics)]
#![expect(internal_features, reason = "atomic intrinsics on the bpfel target")]
// Map keys go by reference: by value, the copies pushed `gateway_xdp` past
// the 512 bytes of stack a BPF program has.
#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "see above: measured by the linker's stack check"
)]

use core::{
    intrinsics::{
        AtomicOrdering::{Relaxed, SeqCst},
        atomic_cxchg, atomic_xadd, atomic_xsub,
    },
    mem::size_of,
};

use aya_ebpf::{
    bindings::{BPF_NOEXIST, sk_action, xdp_action},
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns, bpf_xdp_adjust_tail},
    macros::{map, sk_reuseport, xdp},
    maps::{
        Array, HashMap, LruHashMap, LruPerCpuHashMap, PerCpuArray, ReusePortSockArray,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{SkReuseportContext, XdpContext},
};
use gateway_common::{
    ANY_V4, ANY_V6, CIDR_CAPACITY, MAX_WORKERS, Outcome, PORT_CAPACITY, PlainHttpAction, PortKey,
    PortKind, PortPolicy, SYN_EXEMPT_CAPACITY, SYN_TRACKED_SOURCES, SourceAddr, VERDICT_CAPACITY,
    Verdict, XdpConfig, config_flags,
    packet::{
        self, ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP,
        IPV6_FRAGMENT, IPV6_HLEN, MAX_EXT_HEADERS, Payload, SegmentInfo, TCP_HLEN, tcp_flags,
    },
};

#[map(name = "VERDICTS")]
static VERDICTS: HashMap<SourceAddr, Verdict> = HashMap::with_max_entries(VERDICT_CAPACITY, 0);

#[map(name = "DENY_CIDRS")]
static DENY_CIDRS: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(CIDR_CAPACITY, 0);

#[map(name = "ALLOW_CIDRS")]
static ALLOW_CIDRS: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(CIDR_CAPACITY, 0);

#[map(name = "SYN_EXEMPT_CIDRS")]
static SYN_EXEMPT_CIDRS: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(SYN_EXEMPT_CAPACITY, 0);

#[map(name = "PORTS")]
static PORTS: HashMap<PortKey, PortPolicy> = HashMap::with_max_entries(PORT_CAPACITY, 0);

#[map(name = "SYN_TAT")]
static SYN_TAT: LruHashMap<SourceAddr, u64> = LruHashMap::with_max_entries(SYN_TRACKED_SOURCES, 0);

#[map(name = "SYN_TAT_PER_CPU")]
static SYN_TAT_PER_CPU: LruPerCpuHashMap<SourceAddr, u64> =
    LruPerCpuHashMap::with_max_entries(SYN_TRACKED_SOURCES, 0);

#[map(name = "CONFIG")]
static CONFIG: Array<XdpConfig> = Array::with_max_entries(1, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Outcome::COUNT, 0);

#[map(name = "LISTENERS")]
static LISTENERS: ReusePortSockArray = ReusePortSockArray::with_max_entries(MAX_WORKERS, 0);

#[map(name = "BALANCE")]
static BALANCE: Array<u64> = Array::with_max_entries(2, 0);

/// Spreads new connections over the workers' SO_REUSEPORT listeners in
/// turn. The kernel's default picks by a hash of the 4-tuple, which leaves
/// one worker with noticeably more of a few dozen keep-alive connections
/// than another, and its clients with the worse tail latency.
#[sk_reuseport]
pub fn gateway_balance(ctx: SkReuseportContext) -> u32 {
    let workers = BALANCE.get(0).copied().unwrap_or(0);
    let Some(cursor) = BALANCE.get_ptr_mut(1) else {
        return sk_action::SK_PASS;
    };
    if workers == 0 {
        return sk_action::SK_PASS;
    }
    // SAFETY: an aligned u64 in an array map, only ever updated atomically.
    let turn = unsafe { atomic_xadd::<u64, u64, { SeqCst }>(cursor, 1) };
    // On failure (a worker's slot empty) the kernel falls back to its hash.
    let _ = LISTENERS.select_reuseport(&ctx, (turn % workers) as u32);
    sk_action::SK_PASS
}

#[xdp]
pub fn gateway_xdp(ctx: XdpContext) -> u32 {
    let (outcome, action) = match inspect(&ctx) {
        Ok(decision) => decision,
        Err(Malformed) => (Outcome::DroppedMalformed, xdp_action::XDP_DROP),
    };
    count(outcome);
    action
}

/// A header claimed more bytes than the frame holds.
struct Malformed;

type Decision = (Outcome, u32);

const PASS: u32 = xdp_action::XDP_PASS;
const DROP: u32 = xdp_action::XDP_DROP;

#[inline(always)]
fn count(outcome: Outcome) {
    if let Some(c) = COUNTERS.get_ptr_mut(outcome as u32) {
        // SAFETY: per-CPU slot, only this CPU touches it while we run.
        unsafe { *c += 1 };
    }
}

/// A pointer to `T` at `offset`, if the frame holds it.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, Malformed> {
    let start = ctx.data();
    if start + offset + size_of::<T>() > ctx.data_end() {
        return Err(Malformed);
    }
    Ok((start + offset) as *mut T)
}

#[inline(always)]
fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Result<T, Malformed> {
    // SAFETY: ptr_at checked the bounds; packet data is unaligned.
    Ok(unsafe { ptr_at::<T>(ctx, offset)?.read_unaligned() })
}

#[inline(always)]
fn write<T>(ctx: &XdpContext, offset: usize, value: T) -> Result<(), Malformed> {
    // SAFETY: ptr_at checked the bounds; packet data is unaligned.
    unsafe { ptr_at::<T>(ctx, offset)?.write_unaligned(value) };
    Ok(())
}

/// Where the IP header starts and which family it is, after at most one VLAN tag.
#[inline(always)]
fn parse_ethernet(ctx: &XdpContext) -> Result<Option<(usize, u16)>, Malformed> {
    let mut proto = u16::from_be(read::<u16>(ctx, 12)?);
    let mut l3 = ETH_HLEN;
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        proto = u16::from_be(read::<u16>(ctx, 16)?);
        l3 += 4;
    }
    Ok(match proto {
        ETH_P_IP | ETH_P_IPV6 => Some((l3, proto)),
        _ => None,
    })
}

/// The parts of an IP header the decisions need.
struct Ip {
    /// The source as sent (the allow and deny lists match it).
    src: SourceAddr,
    /// The source as verdicts and SYN clocks key it: an IPv6 source's
    /// prefix (`rate_limit.ipv6_prefix`), an IPv4 one whole.
    key: SourceAddr,
    /// Offset of the TCP header, when the packet carries the start of one.
    tcp: Option<usize>,
    /// Bytes after the IP header(s) according to the IP length fields.
    l4_len: usize,
    /// IPv6 extension headers went on past the ones walked.
    long_chain: bool,
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, l3: usize) -> Result<Ip, Malformed> {
    let vihl = read::<u8>(ctx, l3)?;
    let ihl = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return Err(Malformed);
    }
    let total = usize::from(u16::from_be(read::<u16>(ctx, l3 + 2)?));
    let frag = u16::from_be(read::<u16>(ctx, l3 + 6)?) & 0x1fff;
    let proto = read::<u8>(ctx, l3 + 9)?;
    let src = SourceAddr::from_v4(read::<[u8; 4]>(ctx, l3 + 12)?);
    // Later fragments carry no TCP header: source checks only.
    let tcp = (proto == IPPROTO_TCP && frag == 0).then_some(l3 + ihl);
    Ok(Ip {
        src,
        key: src,
        tcp,
        l4_len: total.saturating_sub(ihl),
        long_chain: false,
    })
}

/// The IPv6 header and up to [`MAX_EXT_HEADERS`] extension headers after
/// it (hop-by-hop, routing, fragment, destination options, AH): a TCP
/// header behind them is inspected like one right after the IPv6 header,
/// so they hide nothing from the SYN budget or the plain-HTTP check.
#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, l3: usize, cfg: &XdpConfig) -> Result<Ip, Malformed> {
    let payload = usize::from(u16::from_be(read::<u16>(ctx, l3 + 4)?));
    let mut next = read::<u8>(ctx, l3 + 6)?;
    let raw = read::<[u8; 16]>(ctx, l3 + 8)?;
    let mut ip = Ip {
        src: SourceAddr::from_v6(raw),
        key: SourceAddr::from_v6(packet::masked_v6(raw, &cfg.v6_mask)),
        tcp: None,
        l4_len: payload,
        long_chain: false,
    };
    let mut off = l3 + IPV6_HLEN;
    for _ in 0..MAX_EXT_HEADERS {
        if next == IPPROTO_TCP {
            ip.tcp = Some(off);
            return Ok(ip);
        }
        let [after, len_field] = read::<[u8; 2]>(ctx, off)?;
        let Some(len) = packet::ext_header_len(next, len_field) else {
            // Another upper layer: source checks only.
            return Ok(ip);
        };
        if next == IPV6_FRAGMENT && u16::from_be(read::<u16>(ctx, off + 2)?) & 0xfff8 != 0 {
            // A later fragment carries no TCP header.
            return Ok(ip);
        }
        next = after;
        off += len;
        ip.l4_len = ip.l4_len.saturating_sub(len);
    }
    if next == IPPROTO_TCP {
        ip.tcp = Some(off);
    } else {
        ip.long_chain = packet::ext_header_len(next, 0).is_some();
    }
    Ok(ip)
}

#[inline(always)]
fn inspect(ctx: &XdpContext) -> Result<Decision, Malformed> {
    let Some((l3, proto)) = parse_ethernet(ctx)? else {
        return Ok((Outcome::PassedNotInspected, PASS));
    };
    // Read in place: a copy of the knobs would cost 40 of the 512 bytes of
    // stack a BPF program has.
    let Some(cfg) = CONFIG.get(0) else {
        return Ok((Outcome::PassedNotInspected, PASS));
    };
    let ip = if proto == ETH_P_IP {
        parse_ipv4(ctx, l3)?
    } else {
        parse_ipv6(ctx, l3, cfg)?
    };

    if let Some(decision) = source_verdict(&ip, cfg) {
        return Ok(decision);
    }
    if ip.long_chain {
        return Ok((Outcome::DroppedExtHeaders, DROP));
    }
    match ip.tcp {
        Some(l4) => inspect_tcp(ctx, proto, l3, l4, &ip, cfg),
        None => Ok((Outcome::Passed, PASS)),
    }
}

/// Allow list, live verdicts and deny list, in that order: allow wins.
/// Empty lists are not looked up (the flags say which have entries).
#[inline(always)]
fn source_verdict(ip: &Ip, cfg: &XdpConfig) -> Option<Decision> {
    let key = Key::new(128, ip.src.octets);
    if cfg.flags & config_flags::HAS_ALLOW != 0 && ALLOW_CIDRS.get(&key).is_some() {
        return Some((Outcome::PassedAllowed, PASS));
    }
    // SAFETY: the map value is a plain Copy struct; the reference does not escape.
    if let Some(v) = unsafe { VERDICTS.get(&ip.key) } {
        // Verdicts last seconds: the coarse clock (one tick, a few ms) is
        // exact enough and cheaper than a precise read on every drop.
        // SAFETY: helper without preconditions.
        let now = unsafe { bpf_ktime_get_coarse_ns() };
        // An expired verdict is ignored; userspace sweeps it later.
        if packet::verdict_live(v.expires_at_ns, now) {
            return Some((Outcome::DroppedVerdict, DROP));
        }
    }
    if cfg.flags & config_flags::HAS_DENY != 0 && DENY_CIDRS.get(&key).is_some() {
        return Some((Outcome::DroppedDenied, DROP));
    }
    None
}

/// The policy of the gateway's listener at the packet's destination: one
/// on that address, else a wildcard one of its family. The destination is
/// read here, into the key, not kept: the stack is 512 bytes.
#[inline(always)]
fn listener(
    ctx: &XdpContext,
    proto: u16,
    l3: usize,
    port: u16,
) -> Result<Option<PortPolicy>, Malformed> {
    let mut key = PortKey {
        addr: if proto == ETH_P_IP {
            SourceAddr::from_v4(read::<[u8; 4]>(ctx, l3 + 16)?).octets
        } else {
            read::<[u8; 16]>(ctx, l3 + 24)?
        },
        port,
        _pad: 0,
    };
    // SAFETY: plain Copy values, copied out at once.
    if let Some(p) = unsafe { PORTS.get(&key) } {
        return Ok(Some(*p));
    }
    key.addr = if proto == ETH_P_IP { ANY_V4 } else { ANY_V6 };
    // SAFETY: as above.
    Ok(unsafe { PORTS.get(&key) }.copied())
}

#[inline(always)]
fn inspect_tcp(
    ctx: &XdpContext,
    proto: u16,
    l3: usize,
    l4: usize,
    ip: &Ip,
    cfg: &XdpConfig,
) -> Result<Decision, Malformed> {
    let dst_port = u16::from_be(read::<u16>(ctx, l4 + 2)?);
    let Some(port) = listener(ctx, proto, l3, dst_port)? else {
        // No listener of ours: another service's traffic, untouched.
        return Ok((Outcome::Passed, PASS));
    };
    if port.kind == PortKind::PlainHttpDrop as u32 {
        return Ok((Outcome::DroppedPlainHttp, DROP));
    }
    let flags = read::<u8>(ctx, l4 + 13)?;
    if flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN {
        if syn_exempt(&ip.src, cfg) {
            return Ok((Outcome::Passed, PASS));
        }
        // SAFETY: helper without preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        if !syn_budget(&ip.key, now, cfg) {
            return Ok((Outcome::DroppedSynRate, DROP));
        }
        return Ok((Outcome::Passed, PASS));
    }
    if port.kind != PortKind::Tls as u32 || cfg.plain_http_action == PlainHttpAction::Pass as u32 {
        return Ok((Outcome::Passed, PASS));
    }
    let doff = usize::from(read::<u8>(ctx, l4 + 12)? >> 4) * 4;
    if doff < TCP_HLEN {
        return Err(Malformed);
    }
    let payload_len = ip.l4_len.saturating_sub(doff);
    // Shorter segments pass: a real request line is longer, and a short
    // mid-stream segment of ciphertext must never be reset.
    if payload_len < packet::REQUEST_LINE_PROBE {
        return Ok((Outcome::Passed, PASS));
    }
    let probe = read::<[u8; packet::REQUEST_LINE_PROBE]>(ctx, l4 + doff)?;
    if packet::classify_segment(&probe) != Payload::HttpRequest {
        return Ok((Outcome::Passed, PASS));
    }
    if cfg.plain_http_action == PlainHttpAction::Reset as u32 {
        let seg = SegmentInfo {
            src_port: u16::from_be(read::<u16>(ctx, l4)?),
            dst_port,
            seq: u32::from_be(read::<u32>(ctx, l4 + 4)?),
            ack_seq: u32::from_be(read::<u32>(ctx, l4 + 8)?),
            flags,
            payload_len: payload_len as u32,
        };
        if reset(ctx, proto, l3, l4, &seg).is_ok() {
            return Ok((Outcome::ResetPlainHttp, xdp_action::XDP_TX));
        }
    }
    Ok((Outcome::DroppedPlainHttp, DROP))
}

/// Trusted proxies and (unless configured otherwise) loopback: a spoofed
/// flood with their address cannot drain a budget they never have.
#[inline(always)]
fn syn_exempt(src: &SourceAddr, cfg: &XdpConfig) -> bool {
    cfg.flags & config_flags::HAS_SYN_EXEMPT != 0
        && SYN_EXEMPT_CIDRS.get(&Key::new(128, src.octets)).is_some()
}

/// GCRA per source: each SYN claims the next slot `interval` after the last
/// one; a slot further ahead of now than the burst tolerance is refused and
/// given back. The slot is claimed with an atomic add on one map shared by
/// all CPUs, so the budget holds across CPUs: only resetting an idle
/// source's clock races, and that loses at most one slot per racing CPU.
#[inline(always)]
fn syn_budget(src: &SourceAddr, now: u64, cfg: &XdpConfig) -> bool {
    let interval = cfg.syn_interval_ns;
    if interval == 0 {
        return true;
    }
    if cfg.flags & config_flags::SYN_PER_CPU != 0 {
        return syn_budget_per_cpu(src, now, cfg);
    }
    let Some(slot) = SYN_TAT.get_ptr_mut(src) else {
        // First SYN seen from this source (or it was evicted): admit it.
        let _ = SYN_TAT.insert(src, now + interval, u64::from(BPF_NOEXIST));
        return true;
    };
    // SAFETY: the map value is an aligned u64 that lives as long as the map
    // entry, and every writer uses atomic operations on it.
    unsafe {
        // An aligned 64-bit load is single-copy atomic on BPF; LLVM has no
        // relaxed atomic load for the v3 ISA.
        let current = core::ptr::read_volatile(slot);
        if current < now {
            let _ = atomic_cxchg::<u64, { Relaxed }, { Relaxed }>(slot, current, now);
        }
        // SeqCst, not Relaxed: LLVM 22's BPF backend lowers a Relaxed
        // fetch-add to the non-fetching `lock +=` and then reads a stale
        // register (seen in `bpftool prog dump xlated`); SeqCst emits
        // `atomic64_fetch_add`, which the test suite checks via the budget.
        let before = atomic_xadd::<u64, u64, { SeqCst }>(slot, interval);
        if packet::gcra_admits(before, now, cfg.syn_tolerance_ns) {
            true
        } else {
            atomic_xsub::<u64, u64, { Relaxed }>(slot, interval);
            false
        }
    }
}

/// The same GCRA with one state per CPU: no atomics, no shared cache line,
/// but each CPU grants the full budget on its own.
#[inline(always)]
fn syn_budget_per_cpu(src: &SourceAddr, now: u64, cfg: &XdpConfig) -> bool {
    let Some(slot) = SYN_TAT_PER_CPU.get_ptr_mut(src) else {
        let _ = SYN_TAT_PER_CPU.insert(src, now + cfg.syn_interval_ns, u64::from(BPF_NOEXIST));
        return true;
    };
    // SAFETY: this CPU's own copy of the value; nothing else writes it while we run.
    unsafe {
        let before = (*slot).max(now);
        if packet::gcra_admits(before, now, cfg.syn_tolerance_ns) {
            *slot = before + cfg.syn_interval_ns;
            true
        } else {
            false
        }
    }
}

/// Turns the frame into a TCP RST back to its sender: swap MACs, rewrite the
/// IP and TCP headers, cut the payload. Only plain IPv4 headers (IHL 5) and
/// IPv6 without extension headers are rewritten; others are dropped instead
/// (`reset` fails, and its caller drops).
#[inline(always)]
fn reset(
    ctx: &XdpContext,
    proto: u16,
    l3: usize,
    l4: usize,
    seg: &SegmentInfo,
) -> Result<(), Malformed> {
    if proto == ETH_P_IP {
        if l4 != l3 + 20 {
            return Err(Malformed);
        }
        let local = read::<[u8; 4]>(ctx, l3 + 16)?;
        let peer = read::<[u8; 4]>(ctx, l3 + 12)?;
        let (iph, tcph) = packet::rst_v4(local, peer, seg);
        shrink_to(ctx, l4 + TCP_HLEN)?;
        swap_macs(ctx)?;
        write(ctx, l3, iph)?;
        write(ctx, l4, tcph)?;
    } else {
        // Behind extension headers: not rewritten (dropped instead).
        if l4 != l3 + IPV6_HLEN {
            return Err(Malformed);
        }
        let local = read::<[u8; 16]>(ctx, l3 + 24)?;
        let peer = read::<[u8; 16]>(ctx, l3 + 8)?;
        let (iph, tcph) = packet::rst_v6(local, peer, seg);
        shrink_to(ctx, l4 + TCP_HLEN)?;
        swap_macs(ctx)?;
        write(ctx, l3, iph)?;
        write(ctx, l4, tcph)?;
    }
    Ok(())
}

#[inline(always)]
fn shrink_to(ctx: &XdpContext, len: usize) -> Result<(), Malformed> {
    let have = ctx.data_end() - ctx.data();
    if have < len {
        return Err(Malformed);
    }
    let delta = -((have - len) as i32);
    // SAFETY: shrinking only; the pointers are re-read after this call.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
        return Err(Malformed);
    }
    Ok(())
}

#[inline(always)]
fn swap_macs(ctx: &XdpContext) -> Result<(), Malformed> {
    let dst = read::<[u8; 6]>(ctx, 0)?;
    let src = read::<[u8; 6]>(ctx, 6)?;
    write(ctx, 0, src)?;
    write(ctx, 6, dst)
}

/// Sends every frame back out of the interface it arrived on. Never
/// attached by the gateway: the testbed puts it on the far side of a veth
/// (veth delivers an XDP_TX only to a peer that runs XDP), and `bench xdp`
/// runs it with BPF_PROG_TEST_RUN in live-frames mode as a packet generator
/// whose frames reach the gateway's veth as XDP frames, the native path.
#[xdp]
pub fn gateway_xdp_tx(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program with a reachable panic path.
    unsafe { core::hint::unreachable_unchecked() }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
