//! Addresses as the gateway and its kernel maps count them: IPv4-mapped
//! IPv6 folded to IPv4, IPv6 sources by prefix, and CIDR sets with
//! longest-prefix membership. A leaf: the request path, the verdict books
//! and the XDP data plane all key sources the same way through it.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use gateway_common::SourceAddr;
use ipnet::IpNet;

/// An address as the kernel maps key it: IPv4 mapped into IPv6.
pub fn source_addr(ip: IpAddr) -> SourceAddr {
    match ip {
        IpAddr::V4(v4) => SourceAddr::from_v4(v4.octets()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SourceAddr::from_v4(v4.octets()),
            None => SourceAddr::from_v6(v6.octets()),
        },
    }
}

/// An address as the gateway counts it: IPv4-mapped IPv6 as the IPv4
/// address (one client, whichever socket family it came in on).
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The source a client counts as, for limits, escalation and verdicts:
/// an IPv4 address (also IPv4-mapped IPv6) as itself, an IPv6 address as
/// the base of its `/ipv6_prefix` (host bits zero): one host holds a whole
/// `/64`, and rotating addresses inside it must not make a new client.
pub fn source_of(ip: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let keep = u32::from(ipv6_prefix.min(128));
            let mask = u128::MAX.checked_shl(128 - keep).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
        v4 => v4,
    }
}

/// The loopback networks (the host's own traffic).
pub fn loopback_nets() -> [IpNet; 2] {
    [
        IpNet::V4(ipnet::Ipv4Net::new_assert(std::net::Ipv4Addr::LOCALHOST, 8).trunc()),
        IpNet::V6(ipnet::Ipv6Net::new_assert(
            std::net::Ipv6Addr::LOCALHOST,
            128,
        )),
    ]
}

/// The 16-byte mask the XDP program applies to an IPv6 source before it
/// looks the source up (see [`source_of`]).
pub fn v6_mask(ipv6_prefix: u8) -> [u8; 16] {
    let keep = u32::from(ipv6_prefix.min(128));
    u128::MAX.checked_shl(128 - keep).unwrap_or(0).to_be_bytes()
}

/// The address a map key stands for (IPv4-mapped as IPv4).
pub fn ip_of(addr: SourceAddr) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(addr.octets);
    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
}

/// A CIDR as (IPv6-mapped prefix bytes, prefix length), as the LPM tries key it.
pub fn mapped_prefix(net: &IpNet) -> ([u8; 16], u32) {
    match net {
        IpNet::V4(n) => (
            SourceAddr::from_v4(n.network().octets()).octets,
            gateway_common::V4_MAPPED_PREFIX + u32::from(n.prefix_len()),
        ),
        IpNet::V6(n) => (n.network().octets(), u32::from(n.prefix_len())),
    }
}

/// A set of CIDRs answering longest-prefix membership: one hash set per
/// prefix length present, so a lookup costs one probe per distinct length.
#[derive(Debug, Clone, Default)]
pub struct CidrSet {
    by_len: Vec<(u32, HashSet<u128>)>,
}

impl CidrSet {
    /// Builds the set.
    pub fn new(nets: &[IpNet]) -> Self {
        let mut map: HashMap<u32, HashSet<u128>> = HashMap::new();
        for n in nets {
            let (bytes, len) = mapped_prefix(n);
            map.entry(len)
                .or_default()
                .insert(u128::from_be_bytes(bytes));
        }
        let mut by_len: Vec<_> = map.into_iter().collect();
        by_len.sort_by_key(|e| std::cmp::Reverse(e.0));
        Self { by_len }
    }

    /// Whether any CIDR in the set shares an address with `addr/len` (a
    /// source keyed by its IPv6 prefix): one holding it, or one inside it.
    pub fn overlaps(&self, addr: &SourceAddr, len: u32) -> bool {
        let mask = |l: u32| u128::MAX.checked_shl(128 - l.min(128)).unwrap_or(0);
        let a = u128::from_be_bytes(addr.octets);
        self.by_len.iter().any(|(l, set)| {
            if *l <= len {
                set.contains(&(a & mask(*l)))
            } else {
                set.iter().any(|net| net & mask(len) == a & mask(len))
            }
        })
    }

    /// Whether any CIDR in the set contains `addr`.
    pub fn contains(&self, addr: &SourceAddr) -> bool {
        let a = u128::from_be_bytes(addr.octets);
        self.by_len.iter().any(|(len, set)| {
            let mask = if *len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            set.contains(&(a & mask))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn cidr_set_matches_both_families() {
        let nets: Vec<IpNet> = ["198.18.1.0/24", "2001:db8::/32", "0.0.0.0/0"]
            .iter()
            .map(|s| s.parse().expect("cidr"))
            .collect();
        let set = CidrSet::new(&nets[..2]);
        assert!(set.contains(&source_addr(ip("198.18.1.200"))));
        assert!(!set.contains(&source_addr(ip("198.18.2.1"))));
        assert!(set.contains(&source_addr(ip("2001:db8:1::5"))));
        assert!(!set.contains(&source_addr(ip("2001:db9::1"))));
        // An IPv4 /0 covers all of IPv4 and none of IPv6.
        let all4 = CidrSet::new(&nets[2..]);
        assert!(all4.contains(&source_addr(ip("203.0.113.9"))));
        assert!(!all4.contains(&source_addr(ip("2001:db8::1"))));
    }
}
