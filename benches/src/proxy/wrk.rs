//! The closed loop: wrk over TLS keep-alive, its figures and latency
//! distribution read back through a Lua `done` hook.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use hdrhistogram::Histogram;

/// Prints the totals, the headline percentiles, and 1,000-odd points of the
/// distribution (every 0.1 % to p99.9, then the tail) for [`rebuild`].
pub const LUA: &str = r#"
done = function(summary, latency, requests)
  io.write(string.format("RESULT requests=%d duration_us=%d errors=%d\n", summary.requests, summary.duration,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout))
  for _, p in pairs({50, 90, 99, 99.9, 99.99}) do
    io.write(string.format("PCT %g %d\n", p, latency:percentile(p)))
  end
  for i = 1, 999 do
    io.write(string.format("DIST %g %d\n", i / 10, latency:percentile(i / 10)))
  end
  for _, p in pairs({99.95, 99.99, 99.995, 99.999, 100}) do
    io.write(string.format("DIST %g %d\n", p, latency:percentile(p)))
  end
end
"#;

/// What wrk asks one system for.
pub struct Target {
    /// The URL.
    pub url: String,
    /// Extra request headers (`Name: value`).
    pub headers: Vec<String>,
    /// The wrk script: GET, or the JSON POST.
    pub lua: PathBuf,
}

/// How wrk runs.
pub struct Shape {
    /// wrk threads.
    pub threads: u32,
    /// Connections.
    pub connections: u32,
    /// Seconds.
    pub duration: u64,
    /// CPU list wrk is pinned to.
    pub cpus: Option<String>,
}

/// One wrk run's figures.
pub struct Run {
    /// Requests per second.
    pub rps: f64,
    /// Headline percentiles by name ("50", "99", "99.9"), in µs.
    pub pct: BTreeMap<String, f64>,
    /// The distribution, rebuilt from wrk's percentile points.
    pub hist: Histogram<u64>,
    /// Requests answered.
    pub requests: u64,
    /// Failed requests.
    pub errors: u64,
}

/// The wrk command for `target`, as run and as reported.
pub fn command(shape: &Shape, target: &Target) -> Command {
    let mut cmd = crate::cpu::pinned(shape.cpus.as_deref(), "wrk");
    cmd.args(["-t", &shape.threads.to_string()])
        .args(["-c", &shape.connections.to_string()])
        .args([
            "-d",
            &format!("{}s", shape.duration),
            "--timeout",
            "5s",
            "-s",
        ])
        .arg(&target.lua)
        .args(target.headers.iter().flat_map(|h| ["-H", h.as_str()]))
        .arg(&target.url);
    cmd
}

/// A command as a shell line, for the report.
pub fn shell_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| {
            let a = a.to_string_lossy();
            if a.contains(' ') {
                format!("'{a}'")
            } else {
                a.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs wrk once.
pub fn run(shape: &Shape, target: &Target) -> Result<Run> {
    let out = command(shape, target)
        .output()
        .context("running wrk (apt-get install wrk)")?;
    if !out.status.success() {
        bail!("wrk failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    parse(&String::from_utf8_lossy(&out.stdout))
}

/// Reads the `done` hook's lines.
fn parse(text: &str) -> Result<Run> {
    let mut requests = 0u64;
    let mut duration_us = 1u64;
    let mut errors = 0u64;
    let mut pct = BTreeMap::new();
    let mut points = Vec::new();
    for line in text.lines() {
        if let Some(r) = line.strip_prefix("RESULT ") {
            for kv in r.split_whitespace() {
                let (k, v) = kv.split_once('=').unwrap_or(("", "0"));
                let v: u64 = v.parse().unwrap_or(0);
                match k {
                    "requests" => requests = v,
                    "duration_us" => duration_us = v.max(1),
                    "errors" => errors = v,
                    _ => {}
                }
            }
        } else if let Some((k, v)) = pair(line, "PCT ") {
            pct.insert(k.to_owned(), v);
        } else if let Some((k, v)) = pair(line, "DIST ")
            && let Ok(p) = k.parse::<f64>()
        {
            points.push((p, v));
        }
    }
    if points.is_empty() {
        bail!("wrk printed no distribution (is the Lua hook loaded?): {text}");
    }
    Ok(Run {
        rps: requests as f64 * 1e6 / duration_us as f64,
        pct,
        hist: rebuild(&points, requests)?,
        requests,
        errors,
    })
}

fn pair<'a>(line: &'a str, prefix: &str) -> Option<(&'a str, f64)> {
    let mut it = line.strip_prefix(prefix)?.split_whitespace();
    Some((it.next()?, it.next()?.parse().ok()?))
}

/// An HdrHistogram from (percentile, µs) points: each point gets the
/// requests between it and the point before (rounded cumulatively, so
/// nothing is lost to rounding), and the last point, the maximum, at
/// least one.
pub fn rebuild(points: &[(f64, f64)], total: u64) -> Result<Histogram<u64>> {
    let mut h = crate::openloop::histogram()?;
    let mut recorded = 0u64;
    for (i, &(p, v)) in points.iter().enumerate() {
        let upto = if i + 1 == points.len() {
            total
        } else {
            ((p / 100.0 * total as f64).round() as u64).min(total.saturating_sub(1))
        };
        let count = upto.saturating_sub(recorded);
        recorded += count;
        if count > 0 {
            h.record_n((v as u64).max(1), count)
                .context("latency beyond the histogram's range")?;
        }
    }
    Ok(h)
}

/// Writes `hist` as a `.hgrm` file.
pub fn write_hgrm(path: &Path, hist: &Histogram<u64>) -> Result<()> {
    std::fs::write(path, gateway::observe::metrics::hgrm(hist))
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_distribution_is_rebuilt_from_wrks_points() {
        let mut text = String::from("RESULT requests=1000 duration_us=1000000 errors=0\n");
        text.push_str("PCT 99 900\n");
        for i in 1..=999 {
            text.push_str(&format!("DIST {} {}\n", i as f64 / 10.0, i));
        }
        text.push_str("DIST 100 5000\n");
        let r = parse(&text).expect("test setup");
        assert_eq!(r.rps, 1000.0);
        assert_eq!(r.pct["99"], 900.0);
        assert!((r.hist.len() as i64 - 1000).abs() <= 2, "{}", r.hist.len());
        let p50 = r.hist.value_at_quantile(0.5);
        assert!((495..=505).contains(&p50), "{p50}");
        assert!(r.hist.max() >= 4990, "{}", r.hist.max());
    }

    #[test]
    fn a_short_run_keeps_every_request_and_its_maximum() {
        let points: Vec<(f64, f64)> = (1..=999)
            .map(|i| (f64::from(i) / 10.0, f64::from(i)))
            .chain([(99.999, 2000.0), (100.0, 9000.0)])
            .collect();
        let h = rebuild(&points, 120).expect("rebuild");
        assert_eq!(h.len(), 120);
        assert!(h.max() >= 8990, "{}", h.max());
    }

    #[test]
    fn output_without_the_hook_is_an_error() {
        assert!(parse("Running 1s test\n").is_err());
    }
}
