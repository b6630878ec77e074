//! Routing: the path is normalized first (`normalize`), then the first
//! route whose host, path and method match decides the request's plan.
//! Routes are compiled once per snapshot into [`Route`]s: everything a
//! request on a route needs, in one place.

mod fuzz;
pub mod normalize;

pub use fuzz::fuzz_path_query;

use crate::{
    config::{PathMatch, RouteSettings, Segment},
    filters::Headers,
    stages::authz::Rule,
};

/// One route, compiled: what the file says of it, validated, with its
/// authorization rule as bits and its response headers as lines.
#[derive(Debug, Clone)]
pub struct Route {
    /// Its position in the table (the metrics' and the limits' key).
    pub index: usize,
    /// Matcher, auth, limits, validation, WAF mode, CORS, upstream, and
    /// its `name` for logs and metric labels.
    pub settings: RouteSettings,
    /// Who may call it, as role, scope and claim bits.
    pub rule: Rule,
    /// Its response headers: the global ones with its changes.
    pub headers: Headers,
}

/// A request's paths as routing leaves them (per-request scratch).
#[derive(Debug, Default)]
pub struct Paths {
    /// The normalized path every check and the route see.
    pub normalized: String,
    /// The path routes match on: the normalized one without `;`
    /// parameters (filled only when it has any).
    pub routed: String,
}

/// Why no route took a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// No route matches host and path.
    NotFound,
    /// A route matches host and path, but not the method.
    MethodNotAllowed,
}

/// Methods a route without `methods` does not take.
const EXPLICIT_ONLY: [&str; 2] = ["TRACE", "CONNECT"];

/// The compiled route table.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
}

/// `Host` without its port, e.g. `api.example.com:8443` → `api.example.com`,
/// `[::1]:8443` → `[::1]`.
pub fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// Segment-aware prefix match: `/api` takes `/api` and `/api/...` but not
/// `/apix`; `/` takes every path. (Prefixes are stored without a trailing
/// slash, so `/api/` in the file means the same as `/api`.)
fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        // Every origin-form path; not `*` (OPTIONS *).
        return path.starts_with('/');
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// `/users/{id}` takes `/users/42`: as many segments, literals equal,
/// parameters non-empty.
fn template_matches(template: &[Segment], path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    let mut parts = rest.split('/');
    template.iter().all(|seg| match (seg, parts.next()) {
        (Segment::Literal(l), Some(p)) => l == p,
        (Segment::Param(_), Some(p)) => !p.is_empty(),
        (_, None) => false,
    }) && parts.next().is_none()
}

impl std::ops::Index<usize> for RouteTable {
    type Output = Route;

    /// Route `i`, an index this table handed out (a request keeps its
    /// snapshot, so the index stays valid).
    fn index(&self, i: usize) -> &Route {
        &self.routes[i]
    }
}

impl RouteTable {
    /// A table of compiled routes, in the order they are tried.
    pub fn new(routes: Vec<Route>) -> Self {
        debug_assert!(routes.iter().enumerate().all(|(i, r)| r.index == i));
        Self { routes }
    }

    /// Every route, in order.
    pub fn iter(&self) -> std::slice::Iter<'_, Route> {
        self.routes.iter()
    }

    /// The route for a request.
    pub fn find(&self, host: &str, path: &str, method: &str) -> Result<&Route, Miss> {
        let i = first_match(self.routes.iter().map(|r| &r.settings), host, path, method)?;
        Ok(&self.routes[i])
    }
}

/// The position of the first of `routes` that takes a request (what
/// [`RouteTable::find`] does, for a configuration not compiled into a
/// snapshot, e.g. by the audit).
pub fn first_match<'r>(
    routes: impl IntoIterator<Item = &'r RouteSettings>,
    host: &str,
    path: &str,
    method: &str,
) -> Result<usize, Miss> {
    let host = host_without_port(host);
    let mut miss = Miss::NotFound;
    for (i, r) in routes.into_iter().enumerate() {
        if r.host
            .as_deref()
            .is_some_and(|h| !h.eq_ignore_ascii_case(host))
        {
            continue;
        }
        let path_ok = match &r.path {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => prefix_matches(p, path),
            PathMatch::Template(t) => template_matches(t, path),
        };
        if !path_ok {
            continue;
        }
        let allowed = if r.methods.is_empty() {
            // TRACE echoes the request (cookies, tokens) back: a route
            // takes it, or CONNECT, only when it names it.
            !EXPLICIT_ONLY.contains(&method)
        } else {
            r.methods.iter().any(|m| m == method)
        };
        if !allowed {
            miss = Miss::MethodNotAllowed;
            continue;
        }
        return Ok(i);
    }
    Err(miss)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn table() -> RouteTable {
        let cfg = Config::parse(
            r#"
[listen]
https = "127.0.0.1:8443"
[[upstreams]]
name = "a"
servers = ["127.0.0.1:1"]
[[upstreams]]
name = "b"
servers = ["127.0.0.1:2"]
[[routes]]
host = "API.example.com"
path = "/exact"
upstream = "b"
auth = "none"
[[routes]]
path_prefix = "/write"
methods = ["POST", "PUT"]
upstream = "b"
auth = "none"
[[routes]]
path_prefix = "/"
upstream = "a"
auth = "none"
"#,
            "t.toml",
        )
        .expect("valid");
        compiled(&cfg)
    }

    /// The table a snapshot compiles (authorization and headers left out:
    /// matching reads neither).
    fn compiled(cfg: &Config) -> RouteTable {
        RouteTable::new(
            cfg.routes
                .iter()
                .enumerate()
                .map(|(index, settings)| Route {
                    index,
                    settings: settings.clone(),
                    rule: Rule::default(),
                    headers: Headers::default(),
                })
                .collect(),
        )
    }

    #[test]
    fn matches_host_path_and_method_in_order() {
        let t = table();
        assert_eq!(
            t.find("api.example.com:8443", "/exact", "GET")
                .map(|r| r.settings.upstream),
            Ok(1)
        );
        assert_eq!(
            t.find("other", "/exact", "GET")
                .map(|r| r.settings.upstream),
            Ok(0)
        );
        assert_eq!(
            t.find("x", "/write/1", "POST").map(|r| r.settings.upstream),
            Ok(1)
        );
        // /write with GET falls through to the catch-all.
        assert_eq!(
            t.find("x", "/write/1", "GET").map(|r| r.settings.upstream),
            Ok(0)
        );
    }

    #[test]
    fn method_mismatch_is_405_when_nothing_else_matches() {
        let cfg = Config::parse(
            "[listen]\nhttps = \"127.0.0.1:8443\"\n[[upstreams]]\nname = \"a\"\nservers = [\"127.0.0.1:1\"]\n[[routes]]\npath_prefix = \"/\"\nmethods = [\"GET\"]\nupstream = \"a\"\nauth = \"none\"\n",
            "t.toml",
        )
        .expect("valid");
        let t = compiled(&cfg);
        assert_eq!(
            t.find("x", "/", "DELETE").err(),
            Some(Miss::MethodNotAllowed)
        );
    }

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/"));
        assert!(prefix_matches("/api", "/api/v1/x"));
        assert!(!prefix_matches("/api", "/apix"));
        assert!(!prefix_matches("/api", "/ap"));
        assert!(prefix_matches("/", "/anything"));
    }

    #[test]
    fn templates_match_whole_segments() {
        let t = [
            Segment::Literal("users".into()),
            Segment::Param("id".into()),
            Segment::Literal("orders".into()),
        ];
        assert!(template_matches(&t, "/users/42/orders"));
        assert!(template_matches(&t, "/users/a%20b/orders"));
        for miss in [
            "/users//orders",
            "/users/42",
            "/users/42/orders/",
            "/users/42/orders/1",
            "/user/42/orders",
            "users/42/orders",
        ] {
            assert!(!template_matches(&t, miss), "{miss}");
        }
    }

    #[test]
    fn strips_ports() {
        assert_eq!(host_without_port("a.b:1"), "a.b");
        assert_eq!(host_without_port("[::1]:8443"), "[::1]");
        assert_eq!(host_without_port("[::1]"), "[::1]");
        assert_eq!(host_without_port("a.b"), "a.b");
    }
}
