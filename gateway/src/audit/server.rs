//! Gateway-wide settings: TLS and plain HTTP, upstream hops, trusted
//! proxies, Redis, logs, headers, the WAF and the kernel side.

use std::net::IpAddr;

use super::{Add, Lines, Severity};
use crate::config::{Config, Underscores, WafMode};

/// TLS, plain HTTP, upstream hops, trusted proxies.
pub(super) fn transport(cfg: &Config, lines: &Lines<'_>, add: &mut Add<'_>) {
    let listen = lines.table("listen", 0);
    if !cfg.https_only && !cfg.redirect_plain_http {
        add(
            Severity::High,
            "tls.plain_http_open",
            "API8:2023",
            lines.key(listen, "https_only"),
            format!(
                "plain HTTP on port {} is neither dropped nor redirected",
                cfg.plain_http_port
            ),
            "keep `https_only = true` (dropped in the kernel) or set `redirect_plain_http = true`",
        );
    }
    if cfg.proxy.hsts.is_none() {
        add(
            Severity::Medium,
            "headers.no_hsts",
            "API8:2023",
            lines.key(lines.table("proxy", 0), "hsts"),
            "no Strict-Transport-Security: browsers may try plain HTTP first".into(),
            "set `[proxy] hsts = \"max-age=31536000; includeSubDomains\"` (the default)",
        );
    }
    for (i, u) in cfg.upstreams.iter().enumerate() {
        let line = lines.table("upstreams", i);
        for addr in u.servers.iter().filter(|_| u.tls.is_none()) {
            if !local(addr.ip()) {
                add(
                    Severity::Medium,
                    "upstream.plain_http",
                    "API8:2023",
                    lines.key(line, "servers"),
                    format!(
                        "upstream {}: plain HTTP to {addr} crosses the network",
                        u.name
                    ),
                    "encrypt the hop: `[upstreams.tls]` with the upstream's CA (`ca_file`) and name (`server_name`)",
                );
            }
        }
        if u.health_check.is_none() && u.servers.len() > 1 {
            add(
                Severity::Low,
                "upstream.no_health_check",
                "API8:2023",
                line,
                format!("upstream {}: no active health check", u.name),
                "add `[upstreams.health_check] path = \"/healthz\"` so a down server is out before a client meets it",
            );
        }
    }
    for net in &cfg.proxy.trusted_proxies {
        if net.prefix_len() < 8 {
            add(
                Severity::High,
                "proxy.trust_everyone",
                "API8:2023",
                lines.key(lines.table("proxy", 0), "trusted_proxies"),
                format!(
                    "proxy.trusted_proxies holds {net}: nearly any client may set its own address and request id"
                ),
                "list only the load balancers in front of the gateway",
            );
        }
    }
    if let Some(url) = &cfg.cluster.redis
        && !url.contains('@')
        && !url.contains("://127.")
        && !url.contains("://localhost")
        && !url.contains("://[::1]")
    {
        add(
            Severity::Medium,
            "cluster.redis_open",
            "API8:2023",
            lines.key(lines.table("cluster", 0), "redis"),
            "the shared Redis takes no password: anyone who reaches it can place verdicts or lift them".into(),
            "give Redis a password (`redis://:PASSWORD@host/`) and keep it on a private network",
        );
    }
}

fn local(ip: IpAddr) -> bool {
    ip.is_loopback()
}

/// Logs, limits, headers, the WAF and the kernel side.
pub(super) fn settings(cfg: &Config, lines: &Lines<'_>, add: &mut Add<'_>) {
    if !cfg.access_log {
        add(
            Severity::High,
            "log.off",
            "API9:2023",
            lines.key(lines.table("log", 0), "access"),
            "no access log: no record of who called what, when and from where".into(),
            "set `[log] access = true`",
        );
    }
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        (
            "content-security-policy",
            "default-src 'none'; frame-ancestors 'none'",
        ),
    ] {
        if !cfg
            .response_headers
            .set
            .iter()
            .any(|(n, v)| n == name && !v.is_empty())
        {
            add(
                Severity::Low,
                "headers.missing",
                "API8:2023",
                lines.table("response_headers", 0),
                format!("responses carry no `{name}`"),
                &format!("add `{name} = \"{value}\"` to `[response_headers] set`"),
            );
        }
    }
    if cfg.waf.mode == WafMode::Detect {
        add(
            Severity::Low,
            "waf.detect_only",
            "API8:2023",
            lines.key(lines.table("waf", 0), "mode"),
            "the WAF only logs what it detects".into(),
            "once its detections are understood, set `mode = \"block\"`",
        );
    }
    if cfg.proxy.underscores_in_headers == Underscores::Allow {
        add(
            Severity::Low,
            "proxy.underscores",
            "API8:2023",
            lines.key(lines.table("proxy", 0), "underscores_in_headers"),
            "header names with `_` reach the upstream: `x_user` may be read as `x-user` behind the gateway".into(),
            "keep `underscores_in_headers = \"drop\"` or `\"reject\"`",
        );
    }
    if cfg.xdp.syn_rate == 0 {
        add(
            Severity::Medium,
            "xdp.no_syn_limit",
            "API4:2023",
            lines.key(lines.table("xdp", 0), "syn_rate"),
            "no SYN rate limit per source".into(),
            "set `[xdp] syn_rate` (e.g. 200) and `syn_burst`",
        );
    }
    let e = &cfg.rate_limit.escalation;
    if e.rejections == 0 && e.auth_failures == 0 && e.attacks == 0 {
        add(
            Severity::Low,
            "rate_limit.no_escalation",
            "API4:2023",
            lines.table("rate_limit.escalation", 0),
            "offenders never earn a kernel verdict: every request they send still costs a TLS handshake".into(),
            "set `rejections`, `auth_failures` or `attacks` in `[rate_limit.escalation]`",
        );
    }
    if !cfg.anomaly.enabled {
        add(
            Severity::Low,
            "anomaly.off",
            "API9:2023",
            lines.table("anomaly", 0),
            "anomaly detection is off: a scan under every fixed limit goes unnoticed".into(),
            "set `[anomaly] enabled = true`",
        );
    }
    if cfg.limits.header_timeout_ms > 30_000 {
        add(
            Severity::Low,
            "limits.slow_headers",
            "API4:2023",
            lines.key(lines.table("limits", 0), "header_timeout_ms"),
            format!(
                "a client may take {} s to send its request head",
                cfg.limits.header_timeout_ms / 1000
            ),
            "keep `header_timeout_ms` at 10000 or below (slowloris)",
        );
    }
}
