//! `[response_headers]` and each route's `response_headers`: the security
//! headers every HTTPS response carries (gateway-made errors included),
//! and the upstream headers that fingerprint the backend, removed.

use super::*;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct HeadersFile {
    #[serde(default)]
    set: Option<Spanned<std::collections::BTreeMap<String, String>>>,
    #[serde(default)]
    remove: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    authenticated_cache_control: Option<Spanned<String>>,
}

/// Headers set on every response unless configured otherwise.
pub const DEFAULT_SET: [(&str, &str); 4] = [
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    (
        "content-security-policy",
        "default-src 'none'; frame-ancestors 'none'",
    ),
    ("referrer-policy", "no-referrer"),
];

/// Upstream headers that name the backend's software, removed by default.
pub const DEFAULT_REMOVE: [&str; 7] = [
    "server",
    "x-powered-by",
    "x-aspnet-version",
    "x-aspnetmvc-version",
    "x-runtime",
    "x-generator",
    "x-backend-server",
];

/// Validated `[response_headers]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderSettings {
    /// Lowercase name and value of each header set on every response
    /// (an upstream's own copy is replaced).
    pub set: Vec<(String, String)>,
    /// Lowercase names of upstream headers never passed on.
    pub remove: Vec<String>,
    /// `Cache-Control` of responses to authenticated requests (replacing
    /// the upstream's); `None`: the upstream's passes.
    pub authenticated_cache_control: Option<String>,
}

/// Fields the gateway writes itself or that frame the message: never
/// configurable.
const RESERVED: [&str; 10] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "trailer",
    "te",
    "proxy-connection",
    "date",
    "strict-transport-security",
];

/// A header name as RFC 9110 allows (a token), lowercased; reserved names
/// refused.
pub(super) fn header_name(name: &str) -> Result<String, String> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !ok {
        return Err(format!("`{name}` is not a header name"));
    }
    let lower = name.to_ascii_lowercase();
    if RESERVED.contains(&lower.as_str()) {
        return Err(format!(
            "`{name}` is written by the gateway itself (HSTS: proxy.hsts)"
        ));
    }
    Ok(lower)
}

/// A header value: visible ASCII, space and tab (a CR or LF would let the
/// file inject header lines).
pub(super) fn header_value(v: &str) -> Result<String, String> {
    match v
        .bytes()
        .find(|&b| !(b == b'\t' || (0x20..0x7f).contains(&b)))
    {
        Some(b) => Err(format!(
            "byte 0x{b:02x} is not allowed in a header value (visible ASCII, space and tab only)"
        )),
        None => Ok(v.trim().to_owned()),
    }
}

/// `name = value` pairs; an empty value removes the header (for a route:
/// one of the global ones).
pub(super) fn header_map(
    map: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<(String, String)>, String> {
    map.iter()
        .map(|(k, v)| Ok((header_name(k)?, header_value(v)?)))
        .collect()
}

pub(super) fn header_settings(
    h: &HeadersFile,
    invalid: &Invalid<'_>,
) -> Result<HeaderSettings, ConfigError> {
    let mut set: Vec<(String, String)> = DEFAULT_SET
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    if let Some(m) = &h.set {
        let given = header_map(m.get_ref())
            .map_err(|e| invalid(Some(m.span()), "response_headers.set".into(), e))?;
        merge(&mut set, &given);
    }
    let remove = match &h.remove {
        None => DEFAULT_REMOVE.iter().map(|s| (*s).to_owned()).collect(),
        Some(list) => list
            .get_ref()
            .iter()
            .map(|n| header_name(n))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(Some(list.span()), "response_headers.remove".into(), e))?,
    };
    let authenticated_cache_control = match &h.authenticated_cache_control {
        None => Some("no-store".to_owned()),
        Some(v) => {
            let v = header_value(v.get_ref()).map_err(|e| {
                invalid(
                    Some(v.span()),
                    "response_headers.authenticated_cache_control".into(),
                    e,
                )
            })?;
            (!v.is_empty()).then_some(v)
        }
    };
    Ok(HeaderSettings {
        set,
        remove,
        authenticated_cache_control,
    })
}

/// Applies `changes` to `set`: a value replaces or adds, an empty one removes.
pub fn merge(set: &mut Vec<(String, String)>, changes: &[(String, String)]) {
    for (name, value) in changes {
        set.retain(|(n, _)| n != name);
        if !value.is_empty() {
            set.push((name.clone(), value.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> Result<Config, String> {
        Config::parse(
            &format!("[listen]\nhttps = \"127.0.0.1:8443\"\n{extra}"),
            "t.toml",
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_set_the_security_headers_and_remove_fingerprints() {
        let c = parse("").expect("default");
        let h = &c.response_headers;
        assert!(h.set.contains(&("x-frame-options".into(), "DENY".into())));
        assert!(h.remove.contains(&"x-powered-by".into()));
        assert_eq!(h.authenticated_cache_control.as_deref(), Some("no-store"));
    }

    #[test]
    fn the_file_overrides_adds_and_removes() {
        let c = parse(
            "[response_headers]\nset = { \"X-Frame-Options\" = \"\", \"Permissions-Policy\" = \"geolocation=()\" }\nremove = [\"Server\"]\nauthenticated_cache_control = \"\"\n",
        )
        .expect("valid");
        let h = &c.response_headers;
        assert!(!h.set.iter().any(|(n, _)| n == "x-frame-options"));
        assert!(
            h.set
                .contains(&("permissions-policy".into(), "geolocation=()".into()))
        );
        assert_eq!(h.remove, vec!["server".to_owned()]);
        assert_eq!(h.authenticated_cache_control, None);
    }

    #[test]
    fn injection_and_reserved_names_are_config_errors() {
        let e = parse("[response_headers]\nset = { \"X-A\" = \"a\\r\\nSet-Cookie: x\" }\n")
            .expect_err("crlf");
        assert!(
            e.starts_with("t.toml:4: response_headers.set: byte 0x0d"),
            "{e}"
        );
        let e = parse("[response_headers]\nset = { \"Content-Length\" = \"1\" }\n")
            .expect_err("reserved");
        assert!(e.contains("is written by the gateway itself"), "{e}");
        let e = parse("[response_headers]\nset = { \"Bad Name\" = \"1\" }\n").expect_err("token");
        assert!(e.contains("`Bad Name` is not a header name"), "{e}");
    }
}
