//! `gateway top`: the live figures of a running gateway for an operator at
//! a console, read from its `/metrics` twice and shown as rates and
//! percentiles over the interval between.

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

/// One scrape: every sample by its name with labels, as written.
#[derive(Debug, Default, Clone)]
pub struct Sample(BTreeMap<String, f64>);

impl Sample {
    /// Reads the Prometheus text `/metrics` serves (comments skipped).
    pub fn parse(text: &str) -> Self {
        let mut m = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            if let Some((key, value)) = line.rsplit_once(' ')
                && let Ok(v) = value.parse::<f64>()
            {
                m.insert(key.to_owned(), v);
            }
        }
        Self(m)
    }

    /// Every sample of metric `name`, with its label text (`{...}` or empty).
    fn of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = (&'a str, f64)> + 'a {
        self.0.iter().filter_map(move |(k, v)| {
            let rest = k.strip_prefix(name)?;
            (rest.is_empty() || rest.starts_with('{')).then_some((rest, *v))
        })
    }

    fn sum(&self, name: &str) -> f64 {
        self.of(name).map(|(_, v)| v).sum()
    }
}

/// The value of label `key` in `{a="1",b="2"}`.
fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    let start = labels.find(&format!("{key}=\""))? + key.len() + 2;
    let end = labels[start..].find('"')? + start;
    Some(&labels[start..end])
}

/// Quantile `q` of a histogram's growth between two scrapes, summed over
/// routes, interpolated within its bucket (as Prometheus' `histogram_quantile`).
fn quantile(before: &Sample, after: &Sample, name: &str, q: f64) -> Option<f64> {
    let bucket = format!("{name}_bucket");
    let mut by_le: BTreeMap<u64, f64> = BTreeMap::new();
    for (labels, v) in after.of(&bucket) {
        let le = label(labels, "le")?;
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().ok()?
        };
        let was = before
            .0
            .get(&format!("{bucket}{labels}"))
            .copied()
            .unwrap_or(0.0);
        *by_le.entry(le.to_bits()).or_default() += v - was;
    }
    let mut buckets: Vec<(f64, f64)> = by_le
        .into_iter()
        .map(|(b, n)| (f64::from_bits(b), n))
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for (le, n) in buckets {
        if n >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let within = (rank - lower.1) / (n - lower.1).max(f64::MIN_POSITIVE);
            return Some(lower.0 + (le - lower.0) * within);
        }
        lower = (le, n);
    }
    None
}

/// The frame for the interval between two scrapes `secs` apart.
pub fn frame(before: &Sample, after: &Sample, secs: f64, source: &str) -> String {
    let rate = |name: &str| (after.sum(name) - before.sum(name)).max(0.0) / secs;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "gateway top: {source}, every {secs:.1}s (Ctrl-C quits)\n"
    );
    let _ = writeln!(
        out,
        "requests/s   {:>10.1}    open connections {:>6}",
        rate("gateway_requests_total"),
        after.sum("gateway_connections_open")
    );
    let mut classes = [0.0f64; 6];
    for (labels, v) in after.of("gateway_requests_total") {
        let was = before
            .0
            .get(&format!("gateway_requests_total{labels}"))
            .copied()
            .unwrap_or(0.0);
        let code: usize = label(labels, "code")
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        classes[(code / 100).min(5)] += (v - was).max(0.0) / secs;
    }
    let _ = writeln!(
        out,
        "status/s     2xx {:>8.1}  3xx {:>6.1}  4xx {:>6.1}  5xx {:>6.1}",
        classes[2], classes[3], classes[4], classes[5]
    );
    for (what, name) in [
        ("latency", "gateway_request_duration_seconds"),
        ("upstream", "gateway_upstream_duration_seconds"),
    ] {
        let ms = |q| {
            quantile(before, after, name, q)
                .map_or("-".to_owned(), |s| format!("{:.2} ms", s * 1e3))
        };
        let _ = writeln!(out, "{what:<12} p50 {:>10}  p99 {:>10}", ms(0.5), ms(0.99));
    }
    let handshakes = rate("gateway_tls_handshakes_total");
    let resumed = rate("gateway_tls_resumptions_total");
    let _ = writeln!(
        out,
        "TLS          handshakes/s {handshakes:>8.1}  resumed {:>5.1}%  failed/s {:>6.1}",
        if handshakes > 0.0 {
            resumed * 100.0 / handshakes
        } else {
            0.0
        },
        rate("gateway_tls_handshake_failures_total")
    );
    let _ = writeln!(out, "\nrejections/s");
    let mut reasons: Vec<(String, f64)> = after
        .of("gateway_rejections_total")
        .filter_map(|(labels, v)| {
            let was = before
                .0
                .get(&format!("gateway_rejections_total{labels}"))
                .copied()
                .unwrap_or(0.0);
            Some((
                label(labels, "reason")?.to_owned(),
                (v - was).max(0.0) / secs,
            ))
        })
        .filter(|(_, r)| *r > 0.0)
        .collect();
    reasons.sort_by(|a, b| b.1.total_cmp(&a.1));
    if reasons.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for (reason, r) in reasons.iter().take(10) {
        let _ = writeln!(out, "  {reason:<32} {r:>10.1}");
    }
    let xdp: Vec<(String, f64)> = after
        .of("gateway_xdp_packets_total")
        .filter_map(|(labels, v)| {
            let o = label(labels, "outcome")?;
            let was = before
                .0
                .get(&format!("gateway_xdp_packets_total{labels}"))
                .copied()
                .unwrap_or(0.0);
            o.starts_with("dropped")
                .then(|| (o.to_owned(), (v - was).max(0.0) / secs))
        })
        .collect();
    if xdp.is_empty() {
        let _ = writeln!(out, "\nXDP drops/s  (not attached)");
    } else {
        let _ = writeln!(out, "\nXDP drops/s");
        for (o, r) in &xdp {
            let _ = writeln!(out, "  {o:<32} {r:>10.1}");
        }
    }
    let _ = writeln!(
        out,
        "\nverdicts live {}  issued {}   access log dropped {}",
        after.sum("gateway_verdicts_live"),
        after.sum("gateway_verdicts_issued_total"),
        after.sum("gateway_access_log_dropped_total")
    );
    out
}

/// How long to wait between scrapes.
pub fn interval(secs: f64) -> Duration {
    Duration::from_secs_f64(secs.clamp(0.2, 3600.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_shows_rates_percentiles_and_reasons_over_the_interval() {
        let before = Sample::parse(
            "gateway_requests_total{route=\"0\",code=\"200\"} 100\n\
             gateway_request_duration_seconds_bucket{route=\"0\",le=\"0.001\"} 50\n\
             gateway_request_duration_seconds_bucket{route=\"0\",le=\"0.01\"} 100\n\
             gateway_request_duration_seconds_bucket{route=\"0\",le=\"+Inf\"} 100\n",
        );
        let after = Sample::parse(
            "# TYPE gateway_requests_total counter\n\
             gateway_requests_total{route=\"0\",code=\"200\"} 300\n\
             gateway_requests_total{route=\"0\",code=\"429\"} 20\n\
             gateway_rejections_total{reason=\"rate_limit.exceeded\"} 20\n\
             gateway_request_duration_seconds_bucket{route=\"0\",le=\"0.001\"} 250\n\
             gateway_request_duration_seconds_bucket{route=\"0\",le=\"0.01\"} 320\n\
             gateway_request_duration_seconds_bucket{route=\"0\",le=\"+Inf\"} 320\n\
             gateway_connections_open 64\n\
             gateway_xdp_packets_total{outcome=\"dropped_verdict\"} 500\n",
        );
        let f = frame(&before, &after, 2.0, "127.0.0.1:9901");
        assert!(f.contains("requests/s        110.0"), "{f}");
        assert!(
            f.contains("2xx    100.0") && f.contains("4xx   10.0"),
            "{f}"
        );
        // 220 new requests: 200 under 1 ms, 20 between 1 and 10 ms.
        assert!(f.contains("p50    0.55 ms"), "{f}");
        assert!(f.contains("rate_limit.exceeded"), "{f}");
        assert!(f.contains("dropped_verdict"), "{f}");
        assert!(f.contains("open connections     64"), "{f}");
    }
}
