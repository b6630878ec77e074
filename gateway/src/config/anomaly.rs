//! `[anomaly]`: sudden rises of a source's (or consumer's) requests or
//! error answers against its moving baseline. Read straight into
//! [`AnomalySettings`], then checked.

use super::*;
use crate::observe::anomaly::AnomalySettings;

pub(super) fn anomaly_settings(
    f: &AnomalySettings,
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
        min_events: f.min_events.max(1),
        ..*f
    })
}
