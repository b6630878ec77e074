//! Metrics in the Prometheus text format, served by the admin listener at
//! `/metrics`, and latency distributions as `.hgrm` files.
//!
//! Each worker records into its own [`Tally`] on the request path: plain
//! integers and HDR histograms in a `RefCell`, no atomic and no lock. Every
//! 500 ms it adds its tally into its own slot of [`Board`] (a mutex only it
//! and a scrape ever take) and starts afresh; a scrape merges the slots.
//! So a figure is at most half a second old.
//!
//! One file on purpose: a new metric touches the tally, its merge, its
//! reset and the exposition table, which are read side by side here.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    sync::Mutex,
};

use hdrhistogram::Histogram;

/// Latency is recorded in microseconds up to this (100 s), two significant digits.
const MAX_US: u64 = 100_000_000;

/// Prometheus bucket bounds, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 2).expect("constant bounds hdrhistogram accepts")
}

/// What one worker counted since it last published (or, in [`Board`],
/// since start).
#[derive(Clone, Default)]
pub struct Tally {
    /// Requests by (route, status); route `u32::MAX`: none matched.
    pub requests: BTreeMap<(u32, u16), u64>,
    /// Refusals and failures by reason code.
    pub reasons: HashMap<&'static str, u64>,
    /// Total latency per route (`None`: requests no route took).
    pub latency: BTreeMap<u32, Histogram<u64>>,
    /// Upstream latency (to the response head) per route.
    pub upstream: BTreeMap<u32, Histogram<u64>>,
    /// TLS handshakes completed, and how many resumed a session.
    pub handshakes: u64,
    /// See `handshakes`.
    pub resumed: u64,
    /// Handshakes that failed or timed out.
    pub handshake_failures: u64,
    /// Connections whose client chose HTTP/2.
    pub h2_connections: u64,
    /// HTTP/2 streams accepted (each a request).
    pub h2_streams: u64,
    /// HTTP/2 connections closed for abuse (ENHANCE_YOUR_CALM: too many
    /// resets, a flood) or for breaking the protocol.
    pub h2_abuse: u64,
    /// Open client connections (a gauge: the last published value).
    pub open: u64,
    /// Request-body bytes held (a gauge: the last published value).
    pub body_memory: u64,
    /// Connections closed at accept: their source held its
    /// `limits.max_connections_per_source`.
    pub per_source_refusals: u64,
    /// Rate-limit decisions by limit.
    pub limits: LimitCounts,
    /// Upstream servers as this worker's pools see them (replaced, not
    /// added, at each publish; summed over workers at a scrape).
    pub upstreams: Vec<ServerFigures>,
}

/// Rate-limit decisions by limit index: `[allowed, limited]`.
#[derive(Clone, Debug, Default)]
pub struct LimitCounts(pub Vec<[u64; 2]>);

impl LimitCounts {
    /// Counts one decision of limit `i`.
    pub fn record(&mut self, i: usize, allowed: bool) {
        self.slot(i)[usize::from(!allowed)] += 1;
    }

    /// Adds `other`'s counts into these.
    pub fn add(&mut self, other: &LimitCounts) {
        for (i, [allowed, limited]) in other.0.iter().enumerate() {
            let slot = self.slot(i);
            slot[0] += allowed;
            slot[1] += limited;
        }
    }

    fn slot(&mut self, i: usize) -> &mut [u64; 2] {
        if self.0.len() <= i {
            self.0.resize(i + 1, [0; 2]);
        }
        &mut self.0[i]
    }
}

/// One upstream server's pool and health, from one worker or summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerFigures {
    /// Upstream index.
    pub upstream: u32,
    /// Server index within it.
    pub server: u32,
    /// Idle pooled connections.
    pub idle: u64,
    /// Requests in flight.
    pub in_flight: u64,
    /// Workers whose pool has it marked down.
    pub down: u64,
    /// Connections opened since start.
    pub connects: u64,
    /// Requests sent on a pooled connection since start.
    pub reuses: u64,
    /// Connects refused or timed out since start.
    pub failures: u64,
}

impl Tally {
    /// Counts one finished request.
    pub fn request(
        &mut self,
        route: Option<usize>,
        status: u16,
        reason: &'static str,
        total_us: u64,
        upstream_us: Option<u64>,
    ) {
        let r = route.map_or(u32::MAX, |r| r as u32);
        *self.requests.entry((r, status)).or_default() += 1;
        if reason != "-" {
            *self.reasons.entry(reason).or_default() += 1;
        }
        self.latency
            .entry(r)
            .or_insert_with(histogram)
            .saturating_record(total_us.clamp(1, MAX_US));
        if let Some(u) = upstream_us {
            self.upstream
                .entry(r)
                .or_insert_with(histogram)
                .saturating_record(u.clamp(1, MAX_US));
        }
    }

    /// Adds `other` into this one (gauges take `other`'s value).
    pub fn add(&mut self, other: &Tally) {
        for (k, v) in &other.requests {
            *self.requests.entry(*k).or_default() += v;
        }
        for (k, v) in &other.reasons {
            *self.reasons.entry(k).or_default() += v;
        }
        for (into, from) in [
            (&mut self.latency, &other.latency),
            (&mut self.upstream, &other.upstream),
        ] {
            for (k, h) in from {
                let _ = into.entry(*k).or_insert_with(histogram).add(h);
            }
        }
        self.handshakes += other.handshakes;
        self.resumed += other.resumed;
        self.handshake_failures += other.handshake_failures;
        self.h2_connections += other.h2_connections;
        self.h2_streams += other.h2_streams;
        self.h2_abuse += other.h2_abuse;
        self.per_source_refusals += other.per_source_refusals;
        self.limits.add(&other.limits);
        for f in &other.upstreams {
            match self
                .upstreams
                .iter_mut()
                .find(|m| (m.upstream, m.server) == (f.upstream, f.server))
            {
                Some(m) => {
                    m.idle += f.idle;
                    m.in_flight += f.in_flight;
                    m.down += f.down;
                    m.connects += f.connects;
                    m.reuses += f.reuses;
                    m.failures += f.failures;
                }
                None => self.upstreams.push(*f),
            }
        }
    }

    /// Empties it, keeping its allocations.
    pub fn clear(&mut self) {
        self.requests.values_mut().for_each(|v| *v = 0);
        self.reasons.values_mut().for_each(|v| *v = 0);
        self.latency.values_mut().for_each(Histogram::reset);
        self.upstream.values_mut().for_each(Histogram::reset);
        self.handshakes = 0;
        self.resumed = 0;
        self.handshake_failures = 0;
        self.h2_connections = 0;
        self.h2_streams = 0;
        self.h2_abuse = 0;
        self.per_source_refusals = 0;
        self.limits.0.iter_mut().for_each(|c| *c = [0; 2]);
        self.upstreams.clear();
    }
}

/// The workers' published tallies, one slot each.
pub struct Board {
    slots: Vec<Mutex<Tally>>,
}

impl Board {
    /// Slots for `workers` workers.
    pub fn new(workers: usize) -> Self {
        Self {
            slots: (0..workers).map(|_| Mutex::new(Tally::default())).collect(),
        }
    }

    /// Worker `i` adds what it counted; `open` is its open connections now,
    /// `body_memory` the body bytes it holds now, `local.upstreams` its
    /// pools now.
    pub fn publish(&self, i: usize, local: &mut Tally, open: u64, body_memory: u64) {
        let upstreams = std::mem::take(&mut local.upstreams);
        if let Some(Ok(mut slot)) = self.slots.get(i).map(Mutex::lock) {
            slot.add(local);
            slot.open = open;
            slot.body_memory = body_memory;
            slot.upstreams = upstreams;
        }
        local.clear();
    }

    /// Every worker's tally merged.
    pub fn merged(&self) -> Tally {
        let mut all = Tally::default();
        for slot in &self.slots {
            if let Ok(t) = slot.lock() {
                all.add(&t);
                all.open += t.open;
                all.body_memory += t.body_memory;
            }
        }
        all
    }
}

/// Figures from outside the workers, for one scrape.
#[derive(Default)]
pub struct Extra {
    /// Access-log lines written and dropped.
    pub log_written: u64,
    /// See `log_written`.
    pub log_dropped: u64,
    /// Verdicts in force now.
    pub verdicts_live: u64,
    /// Verdicts placed since start.
    pub verdicts_issued: u64,
    /// Verdicts the kernel's full map could not take (enforced request by
    /// request instead).
    pub verdicts_overflowed: u64,
    /// Verdicts placed nowhere.
    pub verdicts_not_placed: u64,
    /// XDP counters by outcome name, when XDP is attached.
    pub xdp: Vec<(&'static str, u64)>,
}

/// What the indices in a [`Tally`] stand for, from the config.
#[derive(Default)]
pub struct Names {
    /// Route labels by route index.
    pub routes: Vec<String>,
    /// Rate-limit names by limit index.
    pub limits: Vec<String>,
    /// Upstream names, and each one's server addresses, by index.
    pub upstreams: Vec<(String, Vec<String>)>,
}

/// Renders the Prometheus text exposition (format 0.0.4).
pub fn render(t: &Tally, x: &Extra, names: &Names) -> String {
    let mut out = String::with_capacity(8192);
    let route = |r: u32| {
        names
            .routes
            .get(r as usize)
            .cloned()
            .unwrap_or_else(|| "none".into())
    };
    let _ = writeln!(
        out,
        "# HELP gateway_requests_total Requests answered, by route and status.\n# TYPE gateway_requests_total counter"
    );
    for ((r, code), n) in &t.requests {
        let _ = writeln!(
            out,
            "gateway_requests_total{{route=\"{}\",code=\"{code}\"}} {n}",
            route(*r)
        );
    }
    let _ = writeln!(
        out,
        "# HELP gateway_rejections_total Requests refused or failed, by reason code.\n# TYPE gateway_rejections_total counter"
    );
    let mut reasons: Vec<_> = t.reasons.iter().collect();
    reasons.sort();
    for (reason, n) in reasons {
        let _ = writeln!(out, "gateway_rejections_total{{reason=\"{reason}\"}} {n}");
    }
    for (name, help, map) in [
        (
            "gateway_request_duration_seconds",
            "From the whole request head to the end of the response.",
            &t.latency,
        ),
        (
            "gateway_upstream_duration_seconds",
            "From the request sent upstream to the response head.",
            &t.upstream,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (r, h) in map {
            let label = route(*r);
            for b in BUCKETS {
                let le_us = (b * 1e6) as u64;
                let n = h.count_between(0, le_us);
                let _ = writeln!(out, "{name}_bucket{{route=\"{label}\",le=\"{b}\"}} {n}");
            }
            let _ = writeln!(
                out,
                "{name}_bucket{{route=\"{label}\",le=\"+Inf\"}} {}",
                h.len()
            );
            let sum = h.mean() * h.len() as f64 / 1e6;
            let _ = writeln!(out, "{name}_sum{{route=\"{label}\"}} {sum}");
            let _ = writeln!(out, "{name}_count{{route=\"{label}\"}} {}", h.len());
        }
    }
    let gauges_and_counters: [(&str, &str, &str, u64); 15] = [
        (
            "gateway_connections_open",
            "gauge",
            "Client connections open.",
            t.open,
        ),
        (
            "gateway_connections_refused_per_source_total",
            "counter",
            "Connections closed at accept: their source held limits.max_connections_per_source.",
            t.per_source_refusals,
        ),
        (
            "gateway_body_memory_bytes",
            "gauge",
            "Request-body bytes held in memory (limits.body_memory_per_worker per worker).",
            t.body_memory,
        ),
        (
            "gateway_tls_handshakes_total",
            "counter",
            "TLS handshakes completed.",
            t.handshakes,
        ),
        (
            "gateway_tls_resumptions_total",
            "counter",
            "TLS handshakes that resumed a session.",
            t.resumed,
        ),
        (
            "gateway_tls_handshake_failures_total",
            "counter",
            "TLS handshakes that failed or timed out.",
            t.handshake_failures,
        ),
        (
            "gateway_http2_connections_total",
            "counter",
            "Client connections that chose HTTP/2 in ALPN.",
            t.h2_connections,
        ),
        (
            "gateway_http2_streams_total",
            "counter",
            "HTTP/2 streams accepted (each one request).",
            t.h2_streams,
        ),
        (
            "gateway_http2_abuse_total",
            "counter",
            "HTTP/2 connections closed for abuse (resets, floods) or protocol errors.",
            t.h2_abuse,
        ),
        (
            "gateway_access_log_lines_total",
            "counter",
            "Access-log lines written.",
            x.log_written,
        ),
        (
            "gateway_access_log_dropped_total",
            "counter",
            "Access-log lines dropped (output too slow).",
            x.log_dropped,
        ),
        (
            "gateway_verdicts_live",
            "gauge",
            "Verdicts in force.",
            x.verdicts_live,
        ),
        (
            "gateway_verdicts_issued_total",
            "counter",
            "Verdicts placed since start.",
            x.verdicts_issued,
        ),
        (
            "gateway_verdicts_overflowed_total",
            "counter",
            "Verdicts the kernel's full verdict map could not take, enforced request by request instead.",
            x.verdicts_overflowed,
        ),
        (
            "gateway_verdicts_not_placed_total",
            "counter",
            "Verdicts placed nowhere (every map full, or a kernel error).",
            x.verdicts_not_placed,
        ),
    ];
    for (name, kind, help, v) in gauges_and_counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
        );
    }
    render_limits(&mut out, t, names);
    render_upstreams(&mut out, t, names);
    if !x.xdp.is_empty() {
        let _ = writeln!(
            out,
            "# HELP gateway_xdp_packets_total Packets the XDP program saw, by outcome (per-CPU counters summed).\n# TYPE gateway_xdp_packets_total counter"
        );
        for (outcome, n) in &x.xdp {
            let _ = writeln!(
                out,
                "gateway_xdp_packets_total{{outcome=\"{outcome}\"}} {n}"
            );
        }
    }
    out
}

/// A label value as the text format wants it: `\`, `"` and newlines escaped.
fn label(v: &str) -> std::borrow::Cow<'_, str> {
    if v.contains(['\\', '"', '\n']) {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
            .into()
    } else {
        v.into()
    }
}

fn render_limits(out: &mut String, t: &Tally, names: &Names) {
    let _ = writeln!(
        out,
        "# HELP gateway_rate_limit_decisions_total Rate-limit checks, by limit and decision.\n# TYPE gateway_rate_limit_decisions_total counter"
    );
    for (i, counts) in t.limits.0.iter().enumerate() {
        let Some(name) = names.limits.get(i) else {
            continue;
        };
        for (decision, n) in ["allowed", "limited"].iter().zip(counts) {
            let _ = writeln!(
                out,
                "gateway_rate_limit_decisions_total{{limit=\"{name}\",decision=\"{decision}\"}} {n}"
            );
        }
    }
}

fn render_upstreams(out: &mut String, t: &Tally, names: &Names) {
    type Field = fn(&ServerFigures) -> u64;
    let series: [(&str, &str, &str, Field); 6] = [
        (
            "gateway_upstream_server_up",
            "gauge",
            "1 while no worker has the server marked down.",
            |f| u64::from(f.down == 0),
        ),
        (
            "gateway_upstream_connections_idle",
            "gauge",
            "Idle pooled connections to the server.",
            |f| f.idle,
        ),
        (
            "gateway_upstream_requests_in_flight",
            "gauge",
            "Requests in flight to the server.",
            |f| f.in_flight,
        ),
        (
            "gateway_upstream_connects_total",
            "counter",
            "Connections opened to the server.",
            |f| f.connects,
        ),
        (
            "gateway_upstream_reuses_total",
            "counter",
            "Requests sent on a pooled connection.",
            |f| f.reuses,
        ),
        (
            "gateway_upstream_connect_failures_total",
            "counter",
            "Connects refused or timed out.",
            |f| f.failures,
        ),
    ];
    let mut figures = t.upstreams.clone();
    figures.sort_by_key(|f| (f.upstream, f.server));
    for (name, kind, help, value) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for f in &figures {
            let Some((upstream, servers)) = names.upstreams.get(f.upstream as usize) else {
                continue;
            };
            let server = servers.get(f.server as usize).map_or("?", String::as_str);
            let _ = writeln!(
                out,
                "{name}{{upstream=\"{}\",server=\"{}\"}} {}",
                label(upstream),
                label(server),
                value(f)
            );
        }
    }
}

/// A latency distribution as a `.hgrm` percentile table (HdrHistogram's
/// own text format, in milliseconds), for `HistogramLogAnalyzer` or a plot.
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut out = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    let mut total = 0;
    for v in h.iter_quantiles(5) {
        let q = v.quantile_iterated_to();
        total += v.count_since_last_iteration();
        let inv = if q < 1.0 {
            format!("{:.2}", 1.0 / (1.0 - q))
        } else {
            "inf".into()
        };
        let _ = writeln!(
            out,
            "{:>12.3} {:>14.12} {:>10} {:>14}",
            v.value_iterated_to() as f64 / 1000.0,
            q,
            total,
            inv
        );
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]\n#[Max     = {:>12.3}, Total count    = {:>12}]",
        h.mean() / 1000.0,
        h.stdev() / 1000.0,
        h.max() as f64 / 1000.0,
        h.len()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_merge_and_render_as_prometheus_text() {
        let board = Board::new(2);
        let mut a = Tally::default();
        let mut b = Tally::default();
        a.request(Some(0), 200, "-", 800, Some(300));
        a.request(Some(0), 200, "-", 3_000, Some(1_000));
        b.request(Some(0), 401, "auth.missing", 90, None);
        b.request(None, 404, "route.not_found", 50, None);
        a.handshakes = 2;
        a.resumed = 1;
        board.publish(0, &mut a, 3, 0);
        board.publish(1, &mut b, 1, 0);
        assert!(
            a.requests.values().all(|v| *v == 0),
            "the local tally starts afresh"
        );
        let t = board.merged();
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(label("backend"), "backend");
        let names = Names {
            routes: vec!["api".to_owned()],
            ..Names::default()
        };
        let text = render(&t, &Extra::default(), &names);
        for line in [
            "gateway_requests_total{route=\"api\",code=\"200\"} 2",
            "gateway_requests_total{route=\"api\",code=\"401\"} 1",
            "gateway_requests_total{route=\"none\",code=\"404\"} 1",
            "gateway_rejections_total{reason=\"auth.missing\"} 1",
            "gateway_request_duration_seconds_bucket{route=\"api\",le=\"0.001\"} 2",
            "gateway_request_duration_seconds_bucket{route=\"api\",le=\"0.005\"} 3",
            "gateway_request_duration_seconds_count{route=\"api\"} 3",
            "gateway_upstream_duration_seconds_count{route=\"api\"} 2",
            "gateway_connections_open 4",
            "gateway_tls_resumptions_total 1",
        ] {
            assert!(text.contains(line), "no {line} in\n{text}");
        }
        let hgrm = hgrm(&t.latency[&0]);
        assert!(hgrm.contains("Total count    =            3"), "{hgrm}");
    }
}
