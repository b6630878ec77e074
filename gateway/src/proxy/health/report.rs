//! What the breaker and health state show: the admin API's JSON and the
//! Prometheus families.

use std::{
    fmt::Write as _,
    sync::{Arc, atomic::Ordering::Relaxed},
};

use serde_json::{Value, json};

use super::UpstreamHealth;

impl UpstreamHealth {
    /// The state as the admin API shows it.
    pub fn json(&self, now_ns: u64) -> Value {
        let checked = self.check().is_some();
        json!({
            "name": self.name,
            "requests_in_flight": self.requests.0.load(Relaxed),
            "max_requests": self.max_requests.load(Relaxed),
            "connects_in_progress": self.connects.0.load(Relaxed),
            "max_connects": self.max_connects.load(Relaxed),
            "uploads_in_flight": self.uploads.0.load(Relaxed),
            "max_uploads": self.max_uploads.load(Relaxed),
            "overflow_requests": self.overflow_requests.load(Relaxed),
            "overflow_connects": self.overflow_connects.load(Relaxed),
            "overflow_uploads": self.overflow_uploads.load(Relaxed),
            "health_check": checked,
            "servers": self.servers.iter().map(|s| {
                let until = s.ejected_until_ns.load(Relaxed);
                json!({
                    "address": s.addr.to_string(),
                    "healthy": !s.checked_down.load(Relaxed),
                    "ejected_ms_left": until.saturating_sub(now_ns) / 1_000_000,
                    "ejections": s.ejections.load(Relaxed),
                    "failures_in_row": s.failures_in_row.load(Relaxed),
                    "checks_passed": s.checks_passed.load(Relaxed),
                    "checks_failed": s.checks_failed.load(Relaxed),
                })
            }).collect::<Vec<_>>(),
        })
    }
}

/// Appends the health and circuit-breaker families to a Prometheus text
/// exposition.
pub fn render_metrics(all: &[Arc<UpstreamHealth>], now_ns: u64, out: &mut String) {
    let family = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    family(
        out,
        "gateway_upstream_server_healthy",
        "gauge",
        "1 when the server takes requests: its active check passes and it is not ejected.",
    );
    for u in all {
        for (i, s) in u.servers.iter().enumerate() {
            let up = u.usable(i, || now_ns);
            let _ = writeln!(
                out,
                "gateway_upstream_server_healthy{{upstream=\"{}\",server=\"{}\"}} {}",
                u.name,
                s.addr,
                u8::from(up)
            );
        }
    }
    family(
        out,
        "gateway_upstream_ejections_total",
        "counter",
        "Times a server was ejected after consecutive 5xx answers or failed connects.",
    );
    for u in all {
        for s in &u.servers {
            let _ = writeln!(
                out,
                "gateway_upstream_ejections_total{{upstream=\"{}\",server=\"{}\"}} {}",
                u.name,
                s.addr,
                s.ejections.load(Relaxed)
            );
        }
    }
    family(
        out,
        "gateway_upstream_health_checks_total",
        "counter",
        "Active health checks by result.",
    );
    for u in all {
        for s in &u.servers {
            for (result, n) in [
                ("pass", s.checks_passed.load(Relaxed)),
                ("fail", s.checks_failed.load(Relaxed)),
            ] {
                let _ = writeln!(
                    out,
                    "gateway_upstream_health_checks_total{{upstream=\"{}\",server=\"{}\",result=\"{result}\"}} {n}",
                    u.name, s.addr
                );
            }
        }
    }
    family(
        out,
        "gateway_upstream_active",
        "gauge",
        "Requests in flight, uploads streaming and connects in progress, across workers (the circuit breaker's gauges).",
    );
    for u in all {
        for (kind, n) in [
            ("requests", u.requests.0.load(Relaxed)),
            ("connects", u.connects.0.load(Relaxed)),
            ("uploads", u.uploads.0.load(Relaxed)),
        ] {
            let _ = writeln!(
                out,
                "gateway_upstream_active{{upstream=\"{}\",kind=\"{kind}\"}} {n}",
                u.name
            );
        }
    }
    family(
        out,
        "gateway_upstream_overflow_total",
        "counter",
        "Requests answered 503 because a circuit-breaker limit was reached (at max_connects: once the connects in progress stalled, or after waiting the connect timeout).",
    );
    for u in all {
        for (limit, n) in [
            ("max_requests", u.overflow_requests.load(Relaxed)),
            ("max_connects", u.overflow_connects.load(Relaxed)),
            ("max_uploads", u.overflow_uploads.load(Relaxed)),
        ] {
            let _ = writeln!(
                out,
                "gateway_upstream_overflow_total{{upstream=\"{}\",limit=\"{limit}\"}} {n}",
                u.name
            );
        }
    }
}
