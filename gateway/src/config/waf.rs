//! `[waf]`: the WAF's default mode for routes, and the headers it never
//! scans besides its own list.

use super::*;
use crate::stages::waf::Mode;

/// `[waf]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct WafFile {
    mode: Mode,
    skip_headers: Vec<String>,
}

/// Validated `[waf]`.
#[derive(Debug, Clone, Default)]
pub struct WafSettings {
    /// The mode of a route that sets none.
    pub mode: Mode,
    /// Header names (lowercase) never scanned: the configured ones and the
    /// API key header (a credential, never judged or logged).
    pub skip_headers: Vec<String>,
}

pub(super) fn waf_settings(f: &WafFile, key_header: &str) -> WafSettings {
    let mut skip_headers: Vec<String> = f
        .skip_headers
        .iter()
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    skip_headers.push(key_header.to_ascii_lowercase());
    WafSettings {
        mode: f.mode,
        skip_headers,
    }
}
