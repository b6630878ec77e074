//! Per route: authentication, authorization, limits, validation, CORS.

use super::{Add, Lines, Severity};
use crate::config::{Config, OriginRule, RouteAuth, WafMode};

const WRITES: [&str; 4] = ["POST", "PUT", "PATCH", "DELETE"];

fn writes(methods: &[String]) -> bool {
    methods.is_empty() || methods.iter().any(|m| WRITES.contains(&m.as_str()))
}

/// Authentication, authorization, limits and validation per route.
pub(super) fn check(cfg: &Config, lines: &Lines<'_>, add: &mut Add<'_>) {
    let imported = cfg.routes.iter().filter(|r| r.origin.is_some()).count();
    for (i, r) in cfg.routes.iter().enumerate() {
        let (name, line) = match &r.origin {
            Some(op) => (op.clone(), lines.table("openapi", 0)),
            None => (
                format!("routes[{}]", i - imported),
                lines.table("routes", i - imported),
            ),
        };
        if r.serve.is_some() {
            continue; // the gateway's own document, no upstream behind it
        }
        let public = matches!(r.auth, RouteAuth::Public);
        if public && writes(&r.methods) {
            add(
                Severity::High,
                "route.public_write",
                "API2:2023",
                lines.key(line, "auth"),
                format!(
                    "{name} takes writes ({}) from anyone: no authentication",
                    method_list(&r.methods)
                ),
                "require a credential (`auth = [\"api_key\"]` or a JWT issuer), or limit `methods` to GET and HEAD",
            );
        } else if public {
            add(
                Severity::Info,
                "route.public",
                "API2:2023",
                lines.key(line, "auth"),
                format!("{name} is public (auth = \"none\")"),
                "nothing, if it is meant for anyone; else require a credential",
            );
        }
        if r.rate_limits.is_empty() {
            add(
                if public {
                    Severity::High
                } else {
                    Severity::Medium
                },
                "route.no_rate_limit",
                "API4:2023",
                line,
                format!(
                    "{name} has no rate limit{}",
                    if public { " and is public" } else { "" }
                ),
                "add `rate_limits = [...]` naming a `[[rate_limit.limits]]` (per source for public routes, per consumer for the others)",
            );
        }
        if !public
            && writes(&r.methods)
            && r.roles.is_empty()
            && r.scopes.is_empty()
            && r.consumers.is_empty()
            && r.claims.is_empty()
        {
            add(
                Severity::Medium,
                "route.no_authorization",
                "API5:2023",
                line,
                format!(
                    "{name}: any authenticated caller may write ({})",
                    method_list(&r.methods)
                ),
                "add `roles`, `scopes`, `consumers` or `claims` the caller must hold",
            );
        }
        if writes(&r.methods) && r.body_schema.is_none() {
            add(
                Severity::Medium,
                "route.no_schema",
                "API3:2023",
                line,
                format!("{name}: request bodies reach the upstream unvalidated"),
                "give the route a JSON schema (`body_schema`, or import its OpenAPI document), so unknown or mistyped properties are refused",
            );
        }
        if r.max_body_bytes > 10 << 20 {
            add(
                Severity::Low,
                "route.large_body",
                "API4:2023",
                lines.key(line, "max_body_bytes"),
                format!("{name} accepts bodies of {} MiB", r.max_body_bytes >> 20),
                "lower `max_body_bytes` to what the API needs",
            );
        }
        if r.methods.is_empty() {
            add(
                Severity::Low,
                "route.any_method",
                "API9:2023",
                line,
                format!("{name} passes every method to the upstream"),
                "list the methods the API serves in `methods`",
            );
        }
        if r.waf == WafMode::Off && cfg.waf.mode == WafMode::Off {
            add(
                Severity::Medium,
                "route.no_waf",
                "API8:2023",
                line,
                format!("{name}: the WAF does not look at it"),
                "set `[waf] mode = \"block\"` (or `\"detect\"` first, to see what it would block)",
            );
        }
        if let Some(cors) = &r.cors {
            cors_check(&name, cors, line, add);
        }
    }
}

/// Methods a route limited to some methods leaves to the routes after it.
const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// A route limited to some methods whose path a later, weaker route also
/// matches: a request with another method falls through to that route
/// (`/admin` GET-only with roles, then a public `/`: `POST /admin` is
/// public). Routing is first match by host, path and method, so this is
/// the configuration's meaning, not a bug: say so.
pub(super) fn shadowing(cfg: &Config, lines: &Lines<'_>, add: &mut Add<'_>) {
    let imported = cfg.routes.iter().filter(|r| r.origin.is_some()).count();
    let name = |i: usize| match &cfg.routes[i].origin {
        Some(op) => op.clone(),
        None => format!("routes[{}]", i - imported),
    };
    for (i, r) in cfg.routes.iter().enumerate() {
        if r.methods.is_empty() || r.serve.is_some() {
            continue;
        }
        let path = sample_path(&r.path);
        let host = r.host.as_deref().unwrap_or("");
        let mut fallen = Vec::new();
        let mut to = None;
        for m in METHODS
            .iter()
            .filter(|m| !r.methods.iter().any(|x| x == *m))
        {
            if let Ok(j) = crate::route::first_match(&cfg.routes, host, &path, m)
                && j > i
                && weaker_than(&cfg.routes[j], r)
            {
                fallen.push(*m);
                to.get_or_insert(j);
            }
        }
        let Some(j) = to else { continue };
        let line = match &r.origin {
            Some(_) => lines.table("openapi", 0),
            None => lines.table("routes", i - imported),
        };
        add(
            Severity::High,
            "route.method_shadowing",
            "API5:2023",
            lines.key(line, "methods"),
            format!(
                "{}: {} on its path {path} fall through to {}, which asks less ({})",
                name(i),
                fallen.join(", "),
                name(j),
                strength(&cfg.routes[j])
            ),
            "give the route every method its path serves (and 405 the rest with a route of its own), or move the weaker route's path away from it",
        );
    }
}

/// A request path the route matches.
fn sample_path(p: &crate::config::PathMatch) -> String {
    use crate::config::{PathMatch, Segment};
    match p {
        PathMatch::Exact(p) | PathMatch::Prefix(p) => p.clone(),
        PathMatch::Template(segs) => segs
            .iter()
            .map(|s| match s {
                Segment::Literal(l) => format!("/{l}"),
                Segment::Param(_) => "/x".into(),
            })
            .collect(),
    }
}

/// Whether `b` lets in callers `a` would refuse: public where `a` asks for
/// a credential, or no authorization where `a` has some.
fn weaker_than(b: &crate::config::RouteSettings, a: &crate::config::RouteSettings) -> bool {
    let rules = |r: &crate::config::RouteSettings| {
        !(r.roles.is_empty()
            && r.scopes.is_empty()
            && r.consumers.is_empty()
            && r.claims.is_empty())
    };
    let public = |r: &crate::config::RouteSettings| matches!(r.auth, RouteAuth::Public);
    (public(b) && !public(a)) || (rules(a) && !rules(b))
}

fn strength(r: &crate::config::RouteSettings) -> &'static str {
    if matches!(r.auth, RouteAuth::Public) {
        "public"
    } else {
        "any authenticated caller"
    }
}

fn method_list(methods: &[String]) -> String {
    if methods.is_empty() {
        "every method".into()
    } else {
        methods.join(", ")
    }
}

fn cors_check(
    name: &str,
    cors: &crate::config::CorsSettings,
    line: Option<usize>,
    add: &mut Add<'_>,
) {
    if cors.origins.iter().any(|o| matches!(o, OriginRule::Any)) {
        add(
            Severity::Medium,
            "cors.any_origin",
            "API8:2023",
            line,
            format!("{name}: CORS allows any origin (`*`)"),
            "list the origins that may call the API from a browser",
        );
    }
    if cors.credentials
        && cors
            .origins
            .iter()
            .any(|o| matches!(o, OriginRule::Subdomains { .. }))
    {
        add(
            Severity::Low,
            "cors.credentials_wildcard",
            "API8:2023",
            line,
            format!("{name}: credentialed CORS for every subdomain"),
            "a takeover of any subdomain reads the API as the user: list exact origins",
        );
    }
}
