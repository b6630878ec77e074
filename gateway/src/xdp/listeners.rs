//! The listeners XDP guards, matched by address and port (`PORTS`), and
//! other processes' listening sockets, from `/proc/net/tcp` and `tcp6` (of
//! the gateway's network namespace): the plain-HTTP drop must not take a
//! port another service already serves at the gateway's address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use gateway_common::{ANY_V4, ANY_V6, PortKey, PortKind, PortPolicy, map_names};

use super::{DataPlane, XdpError, map_err};
use crate::addr::source_addr;

impl DataPlane {
    /// Unmarks a listener (both families for a wildcard `ip`).
    pub fn forget_port(&mut self, ip: IpAddr, port: u16) {
        for addr in listener_keys(ip) {
            let _ = self.ports.remove(&PortKey {
                addr,
                port,
                _pad: 0,
            });
        }
    }

    /// Marks a listener: `ip` and `port` (a wildcard `ip` covers every
    /// address of its family; `::` also IPv4, as a dual-stack socket does).
    pub fn set_port(&mut self, ip: IpAddr, port: u16, kind: PortKind) -> Result<(), XdpError> {
        for addr in listener_keys(ip) {
            let key = PortKey {
                addr,
                port,
                _pad: 0,
            };
            self.ports
                .insert(key, PortPolicy { kind: kind as u32 }, 0)
                .map_err(|e| {
                    map_err(
                        map_names::PORTS,
                        gateway_common::PORT_CAPACITY,
                        format!("listener {}", SocketAddr::new(ip, port)),
                        e,
                    )
                })?;
        }
        Ok(())
    }
}

/// The `PORTS` addresses a listener on `ip` is keyed by: a wildcard covers
/// every address of its family, `::` also IPv4 (a dual-stack socket).
fn listener_keys(ip: IpAddr) -> Vec<[u8; 16]> {
    match crate::addr::canonical(ip) {
        IpAddr::V4(v4) if v4.is_unspecified() => vec![ANY_V4],
        IpAddr::V6(v6) if v6.is_unspecified() => vec![ANY_V6, ANY_V4],
        other => vec![source_addr(other).octets],
    }
}

/// TCP state LISTEN in `/proc/net/tcp`.
const LISTEN: &str = "0A";

/// Whether a socket listens on `port` where a connection to `ip` would
/// reach it: on `ip` itself, on a wildcard address, or (for a wildcard
/// `ip`) on any address.
pub fn served(ip: IpAddr, port: u16) -> bool {
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|path| {
        std::fs::read_to_string(path).is_ok_and(|table| {
            table.lines().skip(1).filter_map(listening).any(|(a, p)| {
                p == port
                    && (a == ip
                        || a.is_unspecified()
                        || ip.is_unspecified()
                        || crate::addr::canonical(a) == crate::addr::canonical(ip))
            })
        })
    })
}

/// A LISTEN line's local address and port.
fn listening(line: &str) -> Option<(IpAddr, u16)> {
    let mut fields = line.split_whitespace();
    let local = fields.nth(1)?;
    let state = fields.nth(1)?;
    if state != LISTEN {
        return None;
    }
    let (addr, port) = local.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    // The kernel prints each 32-bit word of the address in host order.
    let words: Option<Vec<u32>> = (0..addr.len() / 8)
        .map(|i| u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok())
        .collect();
    let bytes: Vec<u8> = words?.into_iter().flat_map(u32::to_ne_bytes).collect();
    let ip = match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => return None,
    };
    Some((ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_is_found_at_its_address_and_port() {
        let l = std::net::TcpListener::bind("127.0.0.3:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        assert!(served("127.0.0.3".parse().expect("ip"), port));
        assert!(served("0.0.0.0".parse().expect("ip"), port));
        assert!(!served("127.0.0.4".parse().expect("ip"), port));
        drop(l);
        assert!(!served("127.0.0.3".parse().expect("ip"), port));
        assert_eq!(
            listening(
                "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000"
            ),
            Some(("127.0.0.1".parse().expect("ip"), 8080))
        );
    }
}
