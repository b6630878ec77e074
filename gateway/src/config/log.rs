//! `[log]`: the access log's format and output.

use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LogFile {
    #[serde(default = "yes")]
    pub(super) access: bool,
    #[serde(default)]
    format: crate::observe::access_log::Format,
    #[serde(default)]
    output: Option<Spanned<String>>,
}

impl Default for LogFile {
    fn default() -> Self {
        Self {
            access: true,
            format: Default::default(),
            output: None,
        }
    }
}

/// Validated `[log]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// One access-log line per request.
    pub access: bool,
    /// JSON or text lines.
    pub format: crate::observe::access_log::Format,
    /// stderr, stdout or a file.
    pub output: crate::observe::access_log::Output,
}

pub(super) fn log_settings(f: &LogFile, file: &str) -> LogSettings {
    use crate::observe::access_log::Output;
    let output = match f.output.as_ref().map(|o| o.get_ref().as_str()) {
        None | Some("stderr") => Output::Stderr,
        Some("stdout") => Output::Stdout,
        Some(path) => Output::File(relative_to(file, Path::new(path))),
    };
    LogSettings {
        access: f.access,
        format: f.format,
        output,
    }
}
