//! `[waf]`: the WAF's default mode for routes, and the headers it never
//! scans besides its own list.

use super::*;

/// What a route's WAF does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WafMode {
    /// Nothing is scanned.
    #[default]
    Off,
    /// Detections are logged and counted, the request goes on.
    Detect,
    /// Detections are logged and counted, and the request gets 403.
    Block,
}

/// `[waf]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct WafFile {
    mode: WafMode,
    skip_headers: Vec<String>,
    max_body_bytes: Option<Spanned<u64>>,
}

/// What a WAF route reads and scans of a body by default: scanning costs
/// up to half a second of a core per MiB of hostile text (libinjection's
/// SQL tokenizer on runs of operators), so a request may not ask for much
/// more. ModSecurity's like limit (`SecRequestBodyNoFilesLimit`) is 128 KiB.
pub const DEFAULT_WAF_BODY: u64 = 1024 * 1024;

/// Validated `[waf]`.
#[derive(Debug, Clone, Default)]
pub struct WafSettings {
    /// The mode of a route that sets none.
    pub mode: WafMode,
    /// Header names (lowercase) never scanned: the configured ones and the
    /// API key header (a credential, never judged or logged).
    pub skip_headers: Vec<String>,
    /// The largest body a WAF route reads whole and scans: a larger one
    /// is refused by a blocking route, streamed unscanned by a detecting one.
    pub max_body_bytes: u64,
}

pub(super) fn waf_settings(
    f: &WafFile,
    key_header: &str,
    invalid: &Invalid<'_>,
) -> Result<WafSettings, ConfigError> {
    let mut skip_headers: Vec<String> = f
        .skip_headers
        .iter()
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    skip_headers.push(key_header.to_ascii_lowercase());
    let max_body_bytes = match &f.max_body_bytes {
        None => DEFAULT_WAF_BODY,
        Some(n) if (1024..=MAX_VALIDATED_BODY).contains(n.get_ref()) => *n.get_ref(),
        Some(n) => {
            return Err(invalid(
                Some(n.span()),
                "waf.max_body_bytes".into(),
                format!(
                    "{}: give 1024 to {MAX_VALIDATED_BODY} (bodies are read whole to be scanned)",
                    n.get_ref()
                ),
            ));
        }
    };
    Ok(WafSettings {
        mode: f.mode,
        skip_headers,
        max_body_bytes,
    })
}
