//! Response filters: headers the gateway adds to every HTTPS response.
//! Security headers and CORS will join HSTS here as their issues land.

use crate::config::Config;

/// Header lines (each ending in CRLF) added to every response, computed once.
#[derive(Debug, Clone, Default)]
pub struct ResponseFilters {
    lines: Vec<u8>,
}

impl ResponseFilters {
    /// The filters a configuration asks for.
    pub fn new(cfg: &Config) -> Self {
        let mut lines = Vec::new();
        if let Some(hsts) = &cfg.proxy.hsts {
            lines.extend_from_slice(b"strict-transport-security: ");
            lines.extend_from_slice(hsts.as_bytes());
            lines.extend_from_slice(b"\r\n");
        }
        Self { lines }
    }

    /// The header lines to append.
    pub fn lines(&self) -> &[u8] {
        &self.lines
    }

    /// Whether an upstream header is replaced by ours (and so not forwarded).
    pub fn overrides(&self, name: &str) -> bool {
        !self.lines.is_empty() && name.eq_ignore_ascii_case("strict-transport-security")
    }
}
