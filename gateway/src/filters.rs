//! Response filters: the headers the gateway adds to every HTTPS response
//! (HSTS and the security headers of `[response_headers]`, with each
//! route's changes), and the upstream headers it never passes on (its own
//! names, which it replaces, and the fingerprinting ones). Compiled once
//! per snapshot; a response only looks them up.

use crate::config::{Config, RouteSettings, merge};

/// One set of added lines and dropped names.
#[derive(Debug, Clone, Default)]
pub struct Headers {
    /// Header lines, each ending in CRLF.
    lines: Vec<u8>,
    /// Lowercase names of upstream fields not passed on.
    dropped: Vec<String>,
    /// `cache-control: ...\r\n` for responses to authenticated requests.
    private: Vec<u8>,
    /// The route has a CORS policy: the upstream's `Access-Control-*`
    /// fields are not passed on (the gateway's answer is the only one).
    cors: bool,
}

impl Headers {
    /// A route's headers: the global ones with its changes.
    pub fn of_route(cfg: &Config, route: &RouteSettings) -> Self {
        Self::new(cfg, &route.response_headers, route.cors.is_some())
    }

    fn new(cfg: &Config, changes: &[(String, String)], cors: bool) -> Self {
        let h = &cfg.response_headers;
        let mut set = h.set.clone();
        merge(&mut set, changes);
        let mut lines = Vec::new();
        let mut dropped = h.remove.clone();
        if let Some(hsts) = &cfg.proxy.hsts {
            lines.extend_from_slice(b"strict-transport-security: ");
            lines.extend_from_slice(hsts.as_bytes());
            lines.extend_from_slice(b"\r\n");
            dropped.push("strict-transport-security".into());
        }
        for (name, value) in &set {
            lines.extend_from_slice(name.as_bytes());
            lines.extend_from_slice(b": ");
            lines.extend_from_slice(value.as_bytes());
            lines.extend_from_slice(b"\r\n");
            dropped.push(name.clone());
        }
        let private = h
            .authenticated_cache_control
            .as_ref()
            .map(|v| format!("cache-control: {v}\r\n").into_bytes())
            .unwrap_or_default();
        Self {
            lines,
            dropped,
            private,
            cors,
        }
    }

    /// The lines to add; `authenticated` adds the private `Cache-Control`.
    pub fn lines(&self, authenticated: bool) -> [&[u8]; 2] {
        [&self.lines, if authenticated { &self.private } else { b"" }]
    }

    /// Whether an upstream field is not passed on.
    pub fn drops(&self, name: &str, authenticated: bool) -> bool {
        self.dropped.iter().any(|d| d.eq_ignore_ascii_case(name))
            || (self.cors
                && name.len() > 15
                && name.as_bytes()[..15].eq_ignore_ascii_case(b"access-control-"))
            || (authenticated
                && !self.private.is_empty()
                && name.eq_ignore_ascii_case("cache-control"))
    }
}

/// The headers of a snapshot's own answers (each route's are in its
/// compiled [`crate::route::Route`]).
#[derive(Debug, Clone, Default)]
pub struct ResponseFilters {
    /// The global lines plus `cache-control: no-store`, for the gateway's
    /// own answers (errors, preflights): never worth caching.
    own: Vec<u8>,
    /// The same without HSTS, for the plain-HTTP listener's redirects:
    /// RFC 6797 §7.2 keeps `Strict-Transport-Security` off plain HTTP.
    plain: Vec<u8>,
}

impl ResponseFilters {
    /// The filters a configuration asks for.
    pub fn new(cfg: &Config) -> Self {
        let global = Headers::new(cfg, &[], false);
        let mut own = global.lines;
        own.extend_from_slice(b"cache-control: no-store\r\n");
        let plain = own
            .split_inclusive(|&b| b == b'\n')
            .filter(|l| !l.starts_with(b"strict-transport-security:"))
            .flatten()
            .copied()
            .collect();
        Self { own, plain }
    }

    /// The lines of a response the gateway makes itself.
    pub fn lines(&self) -> &[u8] {
        &self.own
    }

    /// The lines of a plain-HTTP answer (no HSTS).
    pub fn plain_lines(&self) -> &[u8] {
        &self.plain
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_change_the_global_set_and_the_upstreams_copies_are_dropped() {
        let cfg = Config::parse(
            "[listen]\nhttps = \"127.0.0.1:8443\"\n[[upstreams]]\nname = \"u\"\nservers = [\"127.0.0.1:1\"]\n\
             [[routes]]\npath_prefix = \"/docs\"\nupstream = \"u\"\nauth = \"none\"\nresponse_headers = { \"X-Frame-Options\" = \"\", \"Content-Security-Policy\" = \"default-src 'self'\" }\n\
             [[routes]]\nupstream = \"u\"\nauth = \"none\"\n",
            "t.toml",
        )
        .expect("config");
        let f = ResponseFilters::new(&cfg);
        let routes: Vec<Headers> = cfg
            .routes
            .iter()
            .map(|r| Headers::of_route(&cfg, r))
            .collect();
        let text = |h: &Headers, auth| {
            h.lines(auth)
                .iter()
                .map(|l| String::from_utf8_lossy(l).into_owned())
                .collect::<String>()
        };
        let docs = text(&routes[0], false);
        assert!(!docs.contains("x-frame-options"), "{docs}");
        assert!(
            docs.contains("content-security-policy: default-src 'self'\r\n"),
            "{docs}"
        );
        let api = text(&routes[1], true);
        assert!(api.contains("x-frame-options: DENY\r\n"), "{api}");
        assert!(api.contains("cache-control: no-store\r\n"), "{api}");
        assert!(api.contains("strict-transport-security: "), "{api}");
        assert!(routes[1].drops("Server", false));
        assert!(routes[1].drops("X-Frame-Options", false));
        assert!(!routes[1].drops("Cache-Control", false));
        assert!(routes[1].drops("Cache-Control", true));
        let own = String::from_utf8_lossy(f.lines()).into_owned();
        assert!(
            own.contains("cache-control: no-store\r\n") && own.contains("nosniff"),
            "{own}"
        );
        let plain = String::from_utf8_lossy(f.plain_lines()).into_owned();
        assert_eq!(
            plain,
            own.replace(
                &format!(
                    "strict-transport-security: {}\r\n",
                    cfg.proxy.hsts.as_deref().unwrap_or("")
                ),
                ""
            )
        );
        assert!(!plain.contains("strict-transport-security"), "{plain}");
    }
}
