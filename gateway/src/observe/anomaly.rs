//! Anomaly detection: a source (or an API-key consumer) whose request
//! rate, or whose rate of 400, 401, 403 or 404 answers, jumps far above
//! its own moving baseline (or, for one with no history yet, the average
//! source's) is logged with the evidence and, where configured, earns a
//! verdict through the escalation of the rate-limit stage. This catches
//! what stays under every fixed limit: a scanner walking paths at a few
//! 404s a second from an address that used to make none.
//!
//! Workers count per subject into their own map (no lock) and hand it over
//! every second; the control thread sums a window, compares, and folds the
//! window into each subject's exponentially weighted baseline. An anomalous
//! window is not folded in, so an attacker cannot raise its own baseline.

use std::{collections::HashMap, fmt, net::IpAddr};

/// What the counts are kept by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    /// The client address.
    Source(IpAddr),
    /// An API-key consumer, by index in the key file.
    Consumer(u32),
}

/// The measures compared, in [`Counts::values`] order.
pub const MEASURES: [&str; 5] = ["requests", "400s", "401s", "403s", "404s"];

/// One subject's counts in a window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counts {
    /// Requests.
    pub requests: u32,
    /// 400, 401, 403 and 404 answers.
    pub errors: [u32; 4],
}

impl Counts {
    fn values(&self) -> [f64; 5] {
        let e = self.errors;
        [
            self.requests as f64,
            e[0] as f64,
            e[1] as f64,
            e[2] as f64,
            e[3] as f64,
        ]
    }

    fn add(&mut self, o: &Counts) {
        self.requests = self.requests.saturating_add(o.requests);
        for (a, b) in self.errors.iter_mut().zip(o.errors) {
            *a = a.saturating_add(b);
        }
    }
}

/// A batch of counts a worker hands over.
pub type Batch = HashMap<Subject, Counts>;

/// Subjects one worker counts at most per batch (others go uncounted that second).
const MAX_BATCH: usize = 65_536;
/// Subjects with a baseline at most.
const MAX_SUBJECTS: usize = 100_000;

/// A worker's counts since it last handed them over.
#[derive(Default)]
pub struct Traffic {
    batch: Batch,
}

impl Traffic {
    /// Counts one answered request.
    pub fn count(&mut self, source: IpAddr, consumer: Option<u32>, status: u16) {
        let class = match status {
            400 => Some(0),
            401 => Some(1),
            403 => Some(2),
            404 => Some(3),
            _ => None,
        };
        let subjects = [
            Some(Subject::Source(source)),
            consumer.map(Subject::Consumer),
        ];
        for s in subjects.into_iter().flatten() {
            if self.batch.len() >= MAX_BATCH && !self.batch.contains_key(&s) {
                continue;
            }
            let c = self.batch.entry(s).or_default();
            c.requests = c.requests.saturating_add(1);
            if let Some(i) = class {
                c.errors[i] = c.errors[i].saturating_add(1);
            }
        }
    }

    /// The counts so far, if any, leaving it empty.
    pub fn take(&mut self) -> Option<Batch> {
        (!self.batch.is_empty()).then(|| std::mem::take(&mut self.batch))
    }
}

/// `[anomaly]`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnomalySettings {
    /// Counting at all.
    pub enabled: bool,
    /// One window's length.
    pub window_secs: u64,
    /// The baseline's memory, in windows (its EWMA's span).
    pub baseline_windows: u32,
    /// How many times its baseline a rate must be.
    pub factor: f64,
    /// How many events a window must hold to count as one.
    pub min_events: u32,
    /// An anomalous source earns a verdict (reason `abuse`).
    pub escalate: bool,
}

impl Default for AnomalySettings {
    fn default() -> Self {
        Self {
            enabled: true,
            window_secs: 10,
            baseline_windows: 30,
            factor: 10.0,
            min_events: 20,
            escalate: false,
        }
    }
}

/// One anomaly, with its evidence.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// Who.
    pub subject: Subject,
    /// Which measure (`requests`, `404s`, ...).
    pub measure: &'static str,
    /// Its rate in the window, per second.
    pub rate: f64,
    /// The baseline it was held to, per second.
    pub baseline: f64,
    /// Whether that baseline is the subject's own (else the average subject's).
    pub own: bool,
    /// The events in the window.
    pub events: u32,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.subject {
            Subject::Source(ip) => write!(f, "source {ip}")?,
            Subject::Consumer(i) => write!(f, "consumer #{i}")?,
        }
        write!(
            f,
            ": {} {:.1}/s ({} in the window) against {} baseline of {:.2}/s",
            self.measure,
            self.rate,
            self.events,
            if self.own {
                "its"
            } else {
                "the average subject's"
            },
            self.baseline
        )
    }
}

#[derive(Debug, Clone, Copy)]
struct Baseline {
    rates: [f64; 5],
    windows: u32,
    /// When it was last updated (seconds).
    seen: u64,
}

/// Windows a subject needs before its own baseline counts.
const WARMUP: u32 = 2;
/// The lowest baseline a rate is held to, per second (no division by zero
/// for a subject that never had an error).
const FLOOR: f64 = 0.1;

/// The control thread's side: windows, baselines, findings.
pub struct Detector {
    settings: AnomalySettings,
    window: Batch,
    started: Option<u64>,
    baselines: HashMap<Subject, Baseline>,
    population: Option<[f64; 5]>,
}

impl Detector {
    /// A detector by `settings`.
    pub fn new(settings: AnomalySettings) -> Self {
        Self {
            settings,
            window: Batch::new(),
            started: None,
            baselines: HashMap::new(),
            population: None,
        }
    }

    /// Adds a worker's batch to the current window.
    pub fn observe(&mut self, batch: Batch, now_s: u64) {
        self.started.get_or_insert(now_s);
        for (s, c) in batch {
            self.window.entry(s).or_default().add(&c);
        }
    }

    /// Closes the window once it is `window_secs` old: the anomalies in it.
    pub fn tick(&mut self, now_s: u64) -> Vec<Finding> {
        let Some(started) = self.started else {
            return Vec::new();
        };
        let secs = self.settings.window_secs.max(1);
        if now_s < started + secs {
            return Vec::new();
        }
        // The window as it was, which may run a tick past `window_secs`.
        let secs = now_s - started;
        self.started = Some(now_s);
        let window = std::mem::take(&mut self.window);
        let alpha = 2.0 / (f64::from(self.settings.baseline_windows.max(1)) + 1.0);
        let mut findings = Vec::new();
        let mut sum = [0.0; 5];
        let mut ordinary = 0usize;
        for (subject, counts) in &window {
            let values = counts.values();
            let rates = values.map(|v| v / secs as f64);
            let own = self.baselines.get(subject).filter(|b| b.windows >= WARMUP);
            let base = own.map(|b| b.rates).or(self.population);
            let mut anomalous = false;
            if let Some(base) = base {
                for i in 0..5 {
                    let held = base[i].max(FLOOR);
                    if values[i] >= f64::from(self.settings.min_events)
                        && rates[i] > self.settings.factor * held
                    {
                        anomalous = true;
                        findings.push(Finding {
                            subject: *subject,
                            measure: MEASURES[i],
                            rate: rates[i],
                            baseline: base[i],
                            own: own.is_some(),
                            events: values[i] as u32,
                        });
                    }
                }
            }
            if anomalous {
                continue;
            }
            // Only ordinary subjects make the average newcomers are held to.
            ordinary += 1;
            for (s, r) in sum.iter_mut().zip(rates) {
                *s += r;
            }
            if self.baselines.len() >= MAX_SUBJECTS && !self.baselines.contains_key(subject) {
                // Full: forget subjects that have not been seen for long.
                let horizon = u64::from(self.settings.baseline_windows) * secs * 4;
                self.baselines
                    .retain(|_, b| now_s.saturating_sub(b.seen) <= horizon);
                if self.baselines.len() >= MAX_SUBJECTS {
                    continue;
                }
            }
            let b = self.baselines.entry(*subject).or_insert(Baseline {
                rates,
                windows: 0,
                seen: now_s,
            });
            for (br, r) in b.rates.iter_mut().zip(rates) {
                *br += alpha * (r - *br);
            }
            b.windows = b.windows.saturating_add(1);
            b.seen = now_s;
        }
        if ordinary > 0 {
            let mean = sum.map(|s| s / ordinary as f64);
            let p = self.population.get_or_insert(mean);
            for (pr, m) in p.iter_mut().zip(mean) {
                *pr += alpha * (m - *pr);
            }
        }
        findings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(source: &str, requests: u32, not_found: u32) -> Batch {
        let mut b = Batch::new();
        b.insert(
            Subject::Source(source.parse().expect("ip")),
            Counts {
                requests,
                errors: [0, 0, 0, not_found],
            },
        );
        b
    }

    fn settings() -> AnomalySettings {
        AnomalySettings {
            enabled: true,
            window_secs: 1,
            baseline_windows: 5,
            factor: 10.0,
            min_events: 10,
            escalate: true,
        }
    }

    #[test]
    fn a_scanner_under_every_limit_stands_out_from_its_baseline() {
        let mut d = Detector::new(settings());
        // A recorded baseline: 20 requests a second, a 404 now and then.
        for t in 0..6 {
            d.observe(batch("198.18.0.9", 20, u32::from(t % 3 == 0)), t);
            assert!(d.tick(t + 1).is_empty(), "window {t}");
        }
        // A quiet second (the control thread closes windows on its tick).
        assert!(d.tick(7).is_empty());
        // The same request rate, but 15 of them 404s: a scan.
        d.observe(batch("198.18.0.9", 20, 15), 7);
        let found = d.tick(8);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].measure, "404s");
        assert!(found[0].own);
        assert!(
            found[0]
                .to_string()
                .contains("404s 15.0/s (15 in the window) against its baseline")
        );
        // Not folded in: the same scan next window is still an anomaly.
        d.observe(batch("198.18.0.9", 20, 15), 8);
        assert_eq!(d.tick(9).len(), 1);
    }

    #[test]
    fn a_new_source_is_held_to_the_average_and_quiet_ones_pass() {
        let mut d = Detector::new(settings());
        for t in 0..4 {
            let mut b = batch("198.18.0.1", 30, 0);
            b.extend(batch("198.18.0.2", 25, 1));
            d.observe(b, t);
            assert!(d.tick(t + 1).is_empty());
        }
        // A newcomer hammering 404s is compared with the average source.
        d.observe(batch("198.18.0.66", 40, 40), 5);
        let found = d.tick(6);
        assert!(
            found.iter().any(|f| f.measure == "404s" && !f.own),
            "{found:?}"
        );
        // It did not raise the average: the next newcomer like it stands out too.
        d.observe(batch("198.18.0.67", 40, 40), 6);
        assert!(d.tick(7).iter().any(|f| f.measure == "404s"));
        // Below min_events nothing is ever an anomaly.
        d.observe(batch("198.18.0.77", 5, 5), 7);
        assert!(d.tick(8).is_empty());
    }
}
