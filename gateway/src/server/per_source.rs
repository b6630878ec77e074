//! Open connections per source address, across workers
//! (`limits.max_connections_per_source`): without a cap, two addresses
//! holding idle TLS connections fill every worker's connection cap and
//! every new client's handshake is refused. IPv6 sources count per
//! `rate_limit.ipv6_prefix` (one host holds a whole `/64`).
//!
//! One map behind a mutex, touched once at accept and once at close: the
//! request path never sees it.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

use crate::{
    addr::{CidrSet, canonical, source_addr},
    config::Config,
    stages::rate_limit::source_key,
};

/// The open connections of each counted source.
#[derive(Debug, Default)]
pub struct SourceConns {
    open: Mutex<HashMap<[u8; 16], u32>>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverCap {
    /// The cap it met.
    pub cap: u32,
}

/// One counted connection, given back when dropped.
#[derive(Debug)]
pub struct Open {
    conns: Arc<SourceConns>,
    key: [u8; 16],
}

impl Drop for Open {
    fn drop(&mut self) {
        let mut open = self.conns.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

impl SourceConns {
    /// Counts a new connection from `peer` by `cfg` (`trusted`: its
    /// trusted proxies): `Ok(None)` when the source is not counted (no
    /// cap, a trusted proxy, loopback when exempt), `Ok(Some(open))` while
    /// it stays under the cap, `Err` over it.
    pub fn admit(
        self: &Arc<Self>,
        peer: IpAddr,
        cfg: &Config,
        trusted: &CidrSet,
    ) -> Result<Option<Open>, OverCap> {
        let cap = cfg.limits.max_connections_per_source;
        let peer = canonical(peer);
        if cap == 0
            || (cfg.policy.exempt_loopback && peer.is_loopback())
            || trusted.contains(&source_addr(peer))
        {
            return Ok(None);
        }
        let key = source_key(peer, cfg.rate_limit.ipv6_prefix);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(key).or_insert(0);
        if *n >= cap {
            return Err(OverCap { cap });
        }
        *n += 1;
        Ok(Some(Open {
            conns: self.clone(),
            key,
        }))
    }

    /// Sources holding connections now (for metrics).
    pub fn sources(&self) -> usize {
        self.open.lock().map_or(0, |o| o.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> (Config, CidrSet) {
        let cfg = Config::parse(
            &format!(
                "[listen]\nhttps = \"127.0.0.1:8443\"\n[limits]\nmax_connections_per_source = 2\n{extra}"
            ),
            "t.toml",
        )
        .expect("config");
        let trusted = CidrSet::new(&cfg.proxy.trusted_proxies);
        (cfg, trusted)
    }

    #[test]
    fn a_source_holds_at_most_its_cap_and_gets_them_back() {
        let (c, t) = cfg("[proxy]\ntrusted_proxies = [\"10.0.0.0/8\"]\n");
        let conns = Arc::new(SourceConns::default());
        let ip = |t: &str| t.parse::<IpAddr>().expect("ip");
        let a = conns.admit(ip("198.18.0.1"), &c, &t).expect("first");
        let b = conns
            .admit(ip("::ffff:198.18.0.1"), &c, &t)
            .expect("second, mapped");
        assert_eq!(
            conns.admit(ip("198.18.0.1"), &c, &t).err(),
            Some(OverCap { cap: 2 })
        );
        // Another source, a trusted proxy and loopback are not held to it.
        assert!(conns.admit(ip("198.18.0.2"), &c, &t).is_ok());
        for _ in 0..5 {
            assert!(
                conns
                    .admit(ip("10.1.1.1"), &c, &t)
                    .expect("proxy")
                    .is_none()
            );
            assert!(
                conns
                    .admit(ip("127.0.0.1"), &c, &t)
                    .expect("loopback")
                    .is_none()
            );
        }
        // One /64 is one source.
        let _c = conns.admit(ip("2001:db8::1"), &c, &t).expect("v6");
        let _d = conns.admit(ip("2001:db8::2"), &c, &t).expect("v6");
        assert!(conns.admit(ip("2001:db8::ffff"), &c, &t).is_err());
        drop(a);
        assert!(conns.admit(ip("198.18.0.1"), &c, &t).is_ok());
        drop(b);
        // Loopback counts when the operator says so.
        let (strict, none) = cfg("[policy]\nexempt_loopback = false\n");
        let _l1 = conns.admit(ip("127.0.0.1"), &strict, &none).expect("one");
        let _l2 = conns.admit(ip("127.0.0.1"), &strict, &none).expect("two");
        assert!(conns.admit(ip("127.0.0.1"), &strict, &none).is_err());
    }
}
