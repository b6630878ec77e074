//! `gateway audit`: score a configuration against the OWASP API Security
//! Top 10 (2023); exit 1 when a finding reaches `--fail-on`.

use std::path::PathBuf;

use gateway::audit::{self, Severity};

pub(crate) fn audit(config: Option<&PathBuf>, fail_on: Severity, json: bool) -> Result<(), String> {
    // One read: the findings point at lines of the text that was checked.
    let (cfg, text) = match config {
        Some(p) => gateway::config::Config::load_with_text(p),
        None => gateway::config::Config::embedded()
            .map(|c| (c, gateway::config::EMBEDDED_DEFAULT.to_owned())),
    }
    .map_err(|e| e.to_string())?;
    let report = audit::audit(&cfg, &text, gateway::stages::auth::now());
    if json {
        println!("{}", report.json());
    } else {
        for f in &report.findings {
            println!("{f}");
        }
        let counts: Vec<String> = [
            Severity::Critical,
            Severity::High,
            Severity::Medium,
            Severity::Low,
            Severity::Info,
        ]
        .iter()
        .map(|s| format!("{} {}", report.count(*s), s.name().to_ascii_lowercase()))
        .collect();
        println!(
            "{}: score {}/100 ({})",
            cfg.source,
            report.score(),
            counts.join(", ")
        );
    }
    let failing = report
        .findings
        .iter()
        .filter(|f| f.severity >= fail_on)
        .count();
    if failing == 0 {
        return Ok(());
    }
    Err(format!(
        "{failing} findings at or above {} (--fail-on)",
        fail_on.name().to_ascii_lowercase()
    ))
}
