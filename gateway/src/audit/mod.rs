//! `gateway audit`: scores a configuration against the OWASP API Security
//! Top 10 (2023) and the practices of the API-security guides the gateway
//! follows. Each finding names its severity, the OWASP category, the line
//! of the file it is about, what is wrong and the fix. It reads the files
//! the configuration names (key file, certificates, secrets) but changes
//! nothing and talks to no one.

mod files;
mod jwt;
mod routes;
mod server;

use std::fmt;

use crate::config::Config;

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Severity {
    /// Worth knowing.
    Info,
    /// A hardening step missed.
    Low,
    /// A gap an attacker can use with effort.
    Medium,
    /// A gap an attacker can use directly.
    High,
    /// Exploitable now (an expired certificate, a secret anyone can read).
    Critical,
}

impl Severity {
    /// Upper-case name, as printed.
    pub fn name(self) -> &'static str {
        match self {
            Self::Info => "INFO",
            Self::Low => "LOW",
            Self::Medium => "MEDIUM",
            Self::High => "HIGH",
            Self::Critical => "CRITICAL",
        }
    }

    /// Points it takes off the score of 100.
    fn weight(self) -> u32 {
        match self {
            Self::Info => 0,
            Self::Low => 1,
            Self::Medium => 4,
            Self::High => 10,
            Self::Critical => 25,
        }
    }
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// How much it matters.
    pub severity: Severity,
    /// Stable id, e.g. `route.public_write`.
    pub id: &'static str,
    /// The OWASP API Security Top 10 (2023) category, e.g. `API2:2023`.
    pub owasp: &'static str,
    /// The file and line it is about (`None`: the configuration as a whole).
    pub at: Option<(String, usize)>,
    /// What is wrong.
    pub what: String,
    /// How to fix it.
    pub fix: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = match &self.at {
            Some((file, line)) => format!("{file}:{line}"),
            None => "-".to_owned(),
        };
        write!(
            f,
            "{:<8} {} {at}: {} [{}]\n         fix: {}",
            self.severity.name(),
            self.owasp,
            self.what,
            self.id,
            self.fix
        )
    }
}

/// The result: findings (most severe first) and the score.
#[derive(Debug)]
pub struct Report {
    /// Every finding.
    pub findings: Vec<Finding>,
}

impl Report {
    /// 100 less each finding's weight, at least 0.
    pub fn score(&self) -> u32 {
        100u32.saturating_sub(self.findings.iter().map(|f| f.severity.weight()).sum())
    }

    /// The most severe finding's severity.
    pub fn worst(&self) -> Option<Severity> {
        self.findings.iter().map(|f| f.severity).max()
    }

    /// How many findings of `s`.
    pub fn count(&self, s: Severity) -> usize {
        self.findings.iter().filter(|f| f.severity == s).count()
    }

    /// The report as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "score": self.score(),
            "findings": self.findings.iter().map(|f| serde_json::json!({
                "severity": f.severity.name().to_ascii_lowercase(),
                "id": f.id,
                "owasp": f.owasp,
                "file": f.at.as_ref().map(|a| a.0.clone()),
                "line": f.at.as_ref().map(|a| a.1),
                "what": f.what,
                "fix": f.fix,
            })).collect::<Vec<_>>(),
        })
    }
}

/// Finds the lines of tables and keys in the configuration's text.
pub(crate) struct Lines<'a> {
    file: String,
    text: &'a str,
}

impl Lines<'_> {
    /// The line of the `n`-th `[[name]]` (0-based), or of `[name]`.
    pub(crate) fn table(&self, name: &str, n: usize) -> Option<usize> {
        let array = format!("[[{name}]]");
        let single = format!("[{name}]");
        self.text
            .lines()
            .enumerate()
            .filter(|(_, l)| {
                let t = l.trim_start();
                t.starts_with(&array) || t.starts_with(&single)
            })
            .nth(n)
            .map(|(i, _)| i + 1)
    }

    /// The line of `key = ...` inside the table starting at `table_line`
    /// (else the table's line).
    pub(crate) fn key(&self, table_line: Option<usize>, key: &str) -> Option<usize> {
        let start = table_line?;
        for (i, l) in self.text.lines().enumerate().skip(start) {
            let t = l.trim_start();
            if t.starts_with('[') {
                break;
            }
            if t.strip_prefix(key)
                .is_some_and(|r| r.trim_start().starts_with('='))
            {
                return Some(i + 1);
            }
        }
        Some(start)
    }

    fn at(&self, line: Option<usize>) -> Option<(String, usize)> {
        line.map(|l| (self.file.clone(), l))
    }
}

/// Audits `cfg`, whose file reads `text` (the embedded default's for it);
/// `now` in Unix seconds.
pub fn audit(cfg: &Config, text: &str, now: i64) -> Report {
    let lines = Lines {
        file: cfg.source.clone(),
        text,
    };
    let mut out = Vec::new();
    let mut add = |severity, id, owasp, at: Option<usize>, what: String, fix: &str| {
        out.push(Finding {
            severity,
            id,
            owasp,
            at: lines.at(at),
            what,
            fix: fix.to_owned(),
        })
    };
    routes::check(cfg, &lines, &mut add);
    routes::shadowing(cfg, &lines, &mut add);
    jwt::check(cfg, &lines, &mut add);
    server::transport(cfg, &lines, &mut add);
    server::settings(cfg, &lines, &mut add);
    let mut findings = out;
    findings.extend(files::check(cfg, now));
    findings.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.id.cmp(b.id)));
    Report { findings }
}

/// Records one finding: severity, id, OWASP category, line, what, fix.
type Add<'a> = dyn FnMut(Severity, &'static str, &'static str, Option<usize>, String, &str) + 'a;

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "[listen]\nhttps = \"127.0.0.1:8443\"\n[xdp]\nenabled = false\n\
        [[upstreams]]\nname = \"u\"\nservers = [\"127.0.0.1:9000\"]\n";

    fn ids(text: &str) -> Vec<&'static str> {
        let cfg = Config::parse(text, "t.toml").expect("valid");
        audit(&cfg, text, 0).findings.iter().map(|f| f.id).collect()
    }

    #[test]
    fn a_public_write_route_without_limits_is_high() {
        let text =
            format!("{BASE}[[routes]]\npath_prefix = \"/\"\nupstream = \"u\"\nauth = \"none\"\n");
        let cfg = Config::parse(&text, "t.toml").expect("valid");
        let r = audit(&cfg, &text, 0);
        let f = r
            .findings
            .iter()
            .find(|f| f.id == "route.public_write")
            .expect("found");
        assert_eq!(f.severity, Severity::High);
        assert_eq!(f.at, Some(("t.toml".into(), 11)));
        assert!(
            r.findings
                .iter()
                .any(|f| f.id == "route.no_rate_limit" && f.severity == Severity::High)
        );
        assert!(r.score() < 100);
        assert_eq!(r.worst(), Some(Severity::High));
    }

    #[test]
    fn plain_http_left_open_and_trusting_everyone_are_found() {
        let text = "[listen]\nhttps = \"127.0.0.1:8443\"\nhttps_only = false\n\
            [proxy]\ntrusted_proxies = [\"0.0.0.0/0\"]\n[xdp]\nenabled = false\n";
        let found = ids(text);
        assert!(found.contains(&"tls.plain_http_open"), "{found:?}");
        assert!(found.contains(&"proxy.trust_everyone"), "{found:?}");
    }

    #[test]
    fn remote_plain_upstreams_are_found_and_lines_point_at_servers() {
        let text = "[listen]\nhttps = \"127.0.0.1:8443\"\n[xdp]\nenabled = false\n\
             [[upstreams]]\nname = \"u\"\nservers = [\"198.18.0.5:80\"]\n";
        let cfg = Config::parse(text, "t.toml").expect("valid");
        let r = audit(&cfg, text, 0);
        let f = r
            .findings
            .iter()
            .find(|f| f.id == "upstream.plain_http")
            .expect("found");
        assert_eq!(f.at, Some(("t.toml".into(), 7)));
    }
}
