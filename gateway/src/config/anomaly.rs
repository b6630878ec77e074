//! `[anomaly]`: sudden rises of a source's (or consumer's) requests or
//! error answers against its moving baseline.

use super::*;
use crate::observe::anomaly::AnomalySettings;

/// `[anomaly]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct AnomalyFile {
    enabled: bool,
    window_secs: u64,
    baseline_windows: u32,
    factor: f64,
    min_events: u32,
    escalate: bool,
}

impl Default for AnomalyFile {
    fn default() -> Self {
        let d = AnomalySettings::default();
        Self {
            enabled: d.enabled,
            window_secs: d.window_secs,
            baseline_windows: d.baseline_windows,
            factor: d.factor,
            min_events: d.min_events,
            escalate: d.escalate,
        }
    }
}

pub(super) fn anomaly_settings(
    f: &AnomalyFile,
    invalid: &Invalid<'_>,
) -> Result<AnomalySettings, ConfigError> {
    if f.window_secs == 0 || f.baseline_windows == 0 || f.factor <= 1.0 || !f.factor.is_finite() {
        return Err(invalid(
            None,
            "anomaly".into(),
            "window_secs and baseline_windows must be at least 1, factor above 1".into(),
        ));
    }
    Ok(AnomalySettings {
        enabled: f.enabled,
        window_secs: f.window_secs,
        baseline_windows: f.baseline_windows,
        factor: f.factor,
        min_events: f.min_events.max(1),
        escalate: f.escalate,
    })
}
