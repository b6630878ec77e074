//! Errors located in their file (`file:line: key: what is wrong`, for the
//! configuration and the key file alike), and paths relative to the file
//! that names them.

use super::*;

/// Builds a [`ConfigError::Invalid`] from a span, a key and a message.
pub(super) type Invalid<'a> =
    dyn Fn(Option<std::ops::Range<usize>>, String, String) -> ConfigError + 'a;

/// Makes errors located in `text`: `file:line: key: message`.
pub(crate) fn located<'a>(
    text: &'a str,
    file: &'a str,
) -> impl Fn(Option<std::ops::Range<usize>>, String, String) -> ConfigError + 'a {
    move |span, key, message| ConfigError::Invalid {
        file: file.to_owned(),
        line: span.map_or(1, |s| line_of(text, s.start)),
        key: if key.is_empty() || key == "." {
            "(top level)".into()
        } else {
            key
        },
        message,
    }
}

/// Parses TOML into `T`, every error located in the file.
pub(crate) fn parse_toml<T: serde::de::DeserializeOwned>(
    text: &str,
    file: &str,
) -> Result<T, ConfigError> {
    let invalid = located(text, file);
    let de = toml::Deserializer::parse(text)
        .map_err(|e| invalid(e.span(), String::new(), e.message().to_owned()))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        // Spanned<T> wraps the value in a private field; keep the key clean.
        let key = e
            .path()
            .to_string()
            .replace(".$__serde_spanned_private_value", "");
        let inner = e.into_inner();
        invalid(inner.span(), key, inner.message().to_owned())
    })
}

pub(super) fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// A path from the configuration, relative to the file it is written in.
pub(super) fn relative_to(file: &str, p: &Path) -> PathBuf {
    match Path::new(file).parent() {
        Some(dir) if p.is_relative() && !file.starts_with('<') => dir.join(p),
        _ => p.to_owned(),
    }
}
