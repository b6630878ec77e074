//! Per route: authentication, authorization, limits, validation, CORS.

use super::{Add, Lines, Severity};
use crate::{
    config::{Config, OriginRule, RouteAuth},
    stages::waf::Mode,
};

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
        if r.waf == Mode::Off && cfg.waf.mode == Mode::Off {
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
