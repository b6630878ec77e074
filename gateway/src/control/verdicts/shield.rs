//! Addresses no kernel verdict may take: XDP drops every packet from a
//! sentenced address, replies included, so a verdict on the host's own
//! addresses, a loopback, an upstream server, an identity provider,
//! Redis or a trusted proxy would cut the gateway off from it (or drop
//! everyone behind the proxy). Such a source is refused request by request
//! instead. Built at start and at each reload, off the request path: URL
//! hosts given by name are resolved then.

use std::{
    collections::HashSet,
    net::{IpAddr, ToSocketAddrs},
};

use crate::{
    addr::{CidrSet, canonical, source_addr, source_of},
    config::{Config, KeySource},
};

/// The shielded addresses of one configuration.
#[derive(Debug, Default)]
pub struct Shield {
    /// The host's own addresses and every configured peer's, as sources
    /// (IPv6 per prefix, as verdicts are keyed).
    addrs: HashSet<IpAddr>,
    trusted: CidrSet,
    ipv6_prefix: u8,
}

impl Shield {
    /// What `cfg` names: the listen address (every local address when it
    /// is a wildcard), upstream servers, JWKS, discovery and introspection
    /// hosts, Redis, and the trusted proxies.
    pub fn of(cfg: &Config) -> Self {
        let prefix = cfg.rate_limit.ipv6_prefix;
        let mut addrs = HashSet::new();
        let mut add = |ip: IpAddr| {
            addrs.insert(source_of(ip, prefix));
        };
        let listen = cfg.https.ip();
        if listen.is_unspecified() {
            match nix::ifaddrs::getifaddrs() {
                Ok(list) => {
                    for a in list {
                        let Some(sa) = a.address else { continue };
                        if let Some(v4) = sa.as_sockaddr_in() {
                            add(IpAddr::V4(v4.ip()));
                        } else if let Some(v6) = sa.as_sockaddr_in6() {
                            add(IpAddr::V6(v6.ip()));
                        }
                    }
                }
                Err(e) => tracing::warn!("listing the host's addresses to shield them: {e}"),
            }
        } else {
            add(listen);
        }
        for u in &cfg.upstreams {
            for s in &u.servers {
                add(s.ip());
            }
        }
        let mut urls: Vec<&str> = cfg
            .auth
            .introspection
            .iter()
            .map(|i| i.url.as_str())
            .collect();
        for j in &cfg.auth.jwt {
            match &j.source {
                KeySource::Url(u) => urls.push(u),
                KeySource::Discovery => urls.push(&j.issuer),
                KeySource::File(_) | KeySource::Secret(_) => {}
            }
        }
        urls.extend(cfg.cluster.redis.as_deref());
        for url in urls {
            for ip in resolve(url) {
                add(ip);
            }
        }
        Self {
            addrs,
            trusted: CidrSet::new(&cfg.proxy.trusted_proxies),
            ipv6_prefix: prefix,
        }
    }

    /// Whether a kernel verdict on `source` would cut the gateway off from
    /// something it needs (or drop everyone behind a trusted proxy).
    /// An IPv6 source stands for its whole prefix: covered when anything
    /// shielded lies inside it (`::1` in `::/64`, a trusted /128 in the
    /// client's /64).
    pub fn covers(&self, source: IpAddr) -> bool {
        let source = canonical(source);
        let keyed = source_of(source, self.ipv6_prefix);
        let len = match source {
            IpAddr::V6(_) => u32::from(self.ipv6_prefix.min(128)),
            IpAddr::V4(_) => 128,
        };
        source.is_loopback()
            || source_of(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), self.ipv6_prefix) == keyed
            || self.addrs.contains(&keyed)
            || self.trusted.overlaps(&source_addr(keyed), len)
    }
}

/// The addresses of a URL's host (`scheme://[user@]host[:port]/...`); a
/// name that does not resolve now is logged and shields nothing.
fn resolve(url: &str) -> Vec<IpAddr> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Vec::new();
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let default_port = match scheme {
        "https" => 443,
        "redis" => 6379,
        _ => 80,
    };
    let (host, port) = match hostport.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((h, rest)) => (h, rest.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => return Vec::new(),
        },
        None => match hostport.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().ok()),
            None => (hostport, None),
        },
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        return vec![ip];
    }
    match (host, port.unwrap_or(default_port)).to_socket_addrs() {
        Ok(found) => found.map(|a| a.ip()).collect(),
        Err(e) => {
            tracing::warn!("resolving {host} to shield it from verdicts: {e}");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_peers_and_own_addresses_are_shielded() {
        let cfg = Config::parse(
            "[listen]\nhttps = \"0.0.0.0:8443\"\n[xdp]\ninterface = \"lo\"\n\
             [proxy]\ntrusted_proxies = [\"10.9.0.0/16\", \"2001:db8:9::5/128\"]\n\
             [[upstreams]]\nname = \"b\"\nservers = [\"198.18.5.5:80\", \"[2001:db8:5::5]:80\"]\n\
             [cluster]\nredis = \"redis://:pw@198.18.6.6:6379/0\"\n",
            "t.toml",
        )
        .expect("config");
        let s = Shield::of(&cfg);
        let ip = |t: &str| t.parse::<IpAddr>().expect("ip");
        for shielded in [
            "198.18.5.5",
            "2001:db8:5::77",
            "198.18.6.6",
            "10.9.3.4",
            "127.0.0.5",
            "::1",
            // Sources keyed by their /64: the prefix holding ::1, and
            // the one holding a trusted /128, whichever address names it.
            "::",
            "2001:db8:9::",
            "2001:db8:9::77",
        ] {
            assert!(s.covers(ip(shielded)), "{shielded}");
        }
        assert!(!s.covers(ip("198.18.7.7")));
        assert!(!s.covers(ip("2001:db8:a::1")));
        assert_eq!(
            resolve("https://[2001:db8::1]:8443/x"),
            vec![ip("2001:db8::1")]
        );
        assert_eq!(resolve("https://user@198.18.0.1/x"), vec![ip("198.18.0.1")]);
    }
}
