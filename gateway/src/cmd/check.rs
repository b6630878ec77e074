//! `gateway check`: validate a configuration and print what it enforces.

use gateway::{
    config::{Authenticator, Config, KeySource, RouteAuth},
    stages::auth::{api_key::KeyRing, introspect::Introspector},
    tls,
};

/// Loads what `run` loads before it serves (certificates, upstream TLS,
/// key files, issuers' key files and secrets, introspection secrets, the
/// admin token), with the same checks, so a file `check` passes `run` takes.
pub(crate) fn check(cfg: &Config) -> Result<(), String> {
    let certs = tls::certificates(cfg, false).map_err(|e| e.to_string())?;
    gateway::proxy::tls::client_configs(&cfg.upstreams)?;
    if !certs.is_empty() {
        tls::server_config(&cfg.tls, &certs, cfg.http2.enabled).map_err(|e| e.to_string())?;
    }
    let mut issuers = Vec::new();
    for (i, s) in cfg.auth.jwt.iter().enumerate() {
        match &s.source {
            KeySource::File(_) | KeySource::Secret(_) => {
                let keys = gateway::control::issuer_file_keys(i, s)?;
                let n = keys.len();
                let plural = if n == 1 { "" } else { "s" };
                issuers.push(format!("issuer {}: {n} key{plural} loaded", s.name));
            }
            KeySource::Url(_) | KeySource::Discovery => {
                gateway::fetch::Https::new(s.ca_file.as_deref())
                    .map_err(|e| format!("auth.jwt[{i}] ({}): {e}", s.name))?;
                issuers.push(format!("issuer {}: keys fetched at run", s.name));
            }
        }
    }
    Introspector::check(&cfg.auth.introspection)?;
    let admin_token = gateway::admin::read_token(&cfg.admin)?;
    println!("{}: ok", cfg.source);
    println!(
        "HTTPS listener: {} ({} workers)",
        cfg.https, cfg.runtime.workers
    );
    if cfg.tls.certificates.is_empty() {
        let cert = tls::state_dir().join("self-signed-cert.pem");
        if cert.is_file() {
            println!("certificate: self-signed, {}", cert.display());
        } else {
            println!(
                "certificate: self-signed, generated on first run as {}",
                cert.display()
            );
        }
    }
    for c in &cfg.tls.certificates {
        let names = if c.names.is_empty() {
            "(default)".to_owned()
        } else {
            c.names.join(", ")
        };
        println!("certificate {} for {names}", c.cert.display());
    }
    for o in &cfg.openapi {
        println!("OpenAPI {}: {}", o.file, o.title);
        println!(
            "  imported {} operations as routes: {}",
            o.routes.len(),
            o.routes.join(", ")
        );
        for s in &o.skipped {
            println!("  not imported or not validated: {s}");
        }
        if let Some(d) = &o.docs {
            println!("  document served at {d} (x-internal operations removed)");
        }
    }
    print_routes(cfg);
    for line in &issuers {
        println!("{line}");
    }
    for s in &cfg.auth.introspection {
        println!("introspection {}: client secret read", s.name);
    }
    if admin_token.is_some() {
        println!("admin token: read");
    }
    if let Some(path) = &cfg.auth.key_file {
        let keys =
            KeyRing::load_in_use(path, cfg.auth.allow_empty_key_file).map_err(|e| e.to_string())?;
        println!(
            "key file {}: {} consumers, {} keys",
            path.display(),
            keys.consumers().len(),
            keys.key_count()
        );
    }
    println!(
        "XDP: {} on {} (mode {})",
        if cfg.xdp.enabled {
            "enabled"
        } else {
            "disabled"
        },
        cfg.xdp.interface,
        cfg.xdp.mode
    );
    println!(
        "TLS port {}, plain HTTP port {} ({})",
        cfg.https.port(),
        cfg.plain_http_port,
        if cfg.redirect_plain_http {
            "308 to HTTPS"
        } else if cfg.https_only {
            "dropped"
        } else {
            "open"
        }
    );
    println!(
        "SYN rate per source: {}/s, burst {}",
        cfg.xdp.syn_rate, cfg.xdp.syn_burst
    );
    println!(
        "allow: {:?}",
        cfg.policy
            .allow
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    );
    println!(
        "deny: {:?}",
        cfg.policy
            .deny
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    );
    Ok(())
}

/// The route table as `check` prints it, public routes called out.
pub(crate) fn print_routes(cfg: &Config) {
    println!("routes (first match wins; by name, or position when unnamed):");
    for r in &cfg.routes {
        let path = match &r.path {
            gateway::config::PathMatch::Exact(p) => format!("path = {p}"),
            gateway::config::PathMatch::Prefix(p) => format!("prefix {p}"),
            t @ gateway::config::PathMatch::Template(_) => format!("path = {}", t.written()),
        };
        let methods = if r.methods.is_empty() {
            "any method".to_owned()
        } else {
            r.methods.join(",")
        };
        let auth = match &r.auth {
            RouteAuth::Public => "PUBLIC".to_owned(),
            RouteAuth::Required(list) => {
                let mut s = list
                    .iter()
                    .map(|a| match a {
                        Authenticator::ApiKey => "api_key".to_owned(),
                        Authenticator::Jwt(i) => format!("jwt:{}", cfg.auth.jwt[*i].name),
                        Authenticator::Introspect(i) => {
                            format!("introspect:{}", cfg.auth.introspection[*i].name)
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("|");
                if !r.roles.is_empty() {
                    s.push_str(&format!(" roles {}", r.roles.join("+")));
                }
                if !r.consumers.is_empty() {
                    s.push_str(&format!(" consumers {}", r.consumers.join(",")));
                }
                s
            }
        };
        let u = &cfg.upstreams[r.upstream];
        let servers: Vec<String> = u.servers.iter().map(ToString::to_string).collect();
        let limits: Vec<String> = r
            .rate_limits
            .iter()
            .map(|&i| {
                let l = &cfg.rate_limit.limits[i];
                format!(
                    "{} {}/{}s burst {} by {}",
                    l.name, l.count, l.window_secs, l.burst, l.key
                )
            })
            .collect();
        let limits = if limits.is_empty() {
            String::new()
        } else {
            format!(" limits [{}]", limits.join("; "))
        };
        println!(
            "  {}: host {} {path} {methods} auth {auth}{limits} -> {} [{}] max body {} B",
            r.name,
            r.host.as_deref().unwrap_or("*"),
            u.name,
            servers.join(", "),
            r.max_body_bytes
        );
        if let Some(o) = &r.origin {
            println!("    from {o}");
        }
        if r.serve.is_some() {
            println!("    answered by the gateway (API documentation)");
        }
        if !r.content_types.is_empty() {
            println!("    bodies: {}", r.content_types.join(", "));
        }
        if let Some(s) = &r.body_schema {
            let required = if s.required { ", required" } else { "" };
            println!("    body schema: {}{required}", s.source);
        }
        for p in &r.params {
            let at = match p.location {
                gateway::stages::validation::params::Location::Path => "path",
                gateway::stages::validation::params::Location::Query => "query",
            };
            let required = if p.required { ", required" } else { "" };
            println!("    {at} parameter {}{required}", p.name);
        }
    }
    if cfg.routes.is_empty() {
        println!("  (none: every request gets 404)");
    }
    let public: Vec<String> = cfg
        .routes
        .iter()
        .enumerate()
        .filter(|(_, r)| r.auth == RouteAuth::Public)
        .map(|(i, _)| format!("routes[{i}]"))
        .collect();
    if public.is_empty() {
        println!("public routes: none");
    } else {
        println!("public routes (auth = \"none\"): {}", public.join(", "));
    }
}
