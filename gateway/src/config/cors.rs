//! `[cors]` and each route's `cors`: which browser origins may call the
//! API, with what. Checked here so that a policy browsers would reject, or
//! one that opens credentials to everyone, never starts.

use super::*;

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct CorsFile {
    allow_origins: Vec<String>,
    #[serde(default)]
    allow_methods: Option<Vec<String>>,
    #[serde(default)]
    allow_headers: Vec<String>,
    #[serde(default)]
    expose_headers: Vec<String>,
    #[serde(default)]
    allow_credentials: bool,
    #[serde(default)]
    max_age_secs: Option<u64>,
}

/// A route's `cors`: `false` (none, whatever `[cors]` says) or its own policy.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub(super) enum RouteCors {
    Switch(bool),
    Policy(CorsFile),
}

/// An allowed origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginRule {
    /// Any origin (`*`; never with credentials).
    Any,
    /// Exactly this `scheme://host[:port]`, lowercase.
    Exact(String),
    /// `scheme://` then one or more labels, then this `.suffix[:port]`
    /// (from `https://*.example.com`): never the bare suffix, and never a
    /// host that merely ends with its text.
    Subdomains {
        /// `https://`.
        scheme: String,
        /// `.example.com` (with the port, if any).
        suffix: String,
    },
}

impl OriginRule {
    /// Whether `origin` (as the browser sent it) is allowed.
    pub fn allows(&self, origin: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(o) => o.eq_ignore_ascii_case(origin),
            Self::Subdomains { scheme, suffix } => {
                let origin = origin.to_ascii_lowercase();
                let Some(host) = origin.strip_prefix(scheme.as_str()) else {
                    return false;
                };
                let Some(labels) = host.strip_suffix(suffix.as_str()) else {
                    return false;
                };
                !labels.is_empty()
                    && labels.split('.').all(|l| {
                        !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    })
            }
        }
    }
}

/// A validated CORS policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsSettings {
    /// Allowed origins.
    pub origins: Vec<OriginRule>,
    /// Allowed methods (upper case).
    pub methods: Vec<String>,
    /// Allowed request headers (lowercase).
    pub headers: Vec<String>,
    /// Response headers scripts may read (lowercase).
    pub expose: Vec<String>,
    /// Whether credentials (cookies, Authorization) may be sent.
    pub credentials: bool,
    /// How long a browser may cache a preflight.
    pub max_age_secs: u64,
}

fn origin_rule(o: &str) -> Result<OriginRule, String> {
    if o == "*" {
        return Ok(OriginRule::Any);
    }
    if o.eq_ignore_ascii_case("null") {
        return Err(
            "`null` is the origin of sandboxed documents and local files, which anyone can make: list real origins"
                .into(),
        );
    }
    let lower = o.to_ascii_lowercase();
    let (scheme, rest) = match lower.split_once("://") {
        Some((s, r)) if s == "https" || s == "http" => (format!("{s}://"), r.to_owned()),
        _ => {
            return Err(format!(
                "`{o}`: an origin is scheme://host[:port], e.g. https://app.example.com"
            ));
        }
    };
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return Err(format!(
            "`{o}`: an origin has no path, query or user (scheme://host[:port])"
        ));
    }
    match rest.strip_prefix("*.") {
        Some(suffix) if !suffix.is_empty() && !suffix.contains('*') => Ok(OriginRule::Subdomains {
            scheme,
            suffix: format!(".{suffix}"),
        }),
        Some(_) => Err(format!("`{o}`: write a pattern as https://*.example.com")),
        None if rest.contains('*') => Err(format!(
            "`{o}`: `*` only as the first label (https://*.example.com) or alone"
        )),
        None => Ok(OriginRule::Exact(lower)),
    }
}

pub(super) fn cors_settings(
    c: &CorsFile,
    key: &str,
    invalid: &Invalid<'_>,
) -> Result<CorsSettings, ConfigError> {
    let err = |m: String| invalid(None, key.into(), m);
    let origins = c
        .allow_origins
        .iter()
        .map(|o| origin_rule(o))
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    if origins.is_empty() {
        return Err(err(
            "allow_origins is empty: name at least one origin".into()
        ));
    }
    if c.allow_credentials && origins.contains(&OriginRule::Any) {
        return Err(err(
            "allow_origins = [\"*\"] with allow_credentials = true would let any site act as the user: list the origins"
                .into(),
        ));
    }
    let methods = match &c.allow_methods {
        None => ["GET", "HEAD", "POST"].map(str::to_owned).to_vec(),
        Some(m) => m
            .iter()
            .map(|m| {
                if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) {
                    Ok(m.clone())
                } else {
                    Err(format!("`{m}` is not a method (use upper case, e.g. GET)"))
                }
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?,
    };
    let names = |list: &[String]| {
        list.iter()
            .map(|h| {
                if !h.is_empty()
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
                {
                    Ok(h.to_ascii_lowercase())
                } else {
                    Err(format!("`{h}` is not a header name"))
                }
            })
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(CorsSettings {
        origins,
        methods,
        headers: names(&c.allow_headers).map_err(err)?,
        expose: names(&c.expose_headers).map_err(err)?,
        credentials: c.allow_credentials,
        max_age_secs: c.max_age_secs.unwrap_or(600).min(86_400),
    })
}

/// Each route's policy: its own, none, or the global one.
pub(super) fn route_cors(
    i: usize,
    route: Option<&RouteCors>,
    global: Option<&CorsSettings>,
    invalid: &Invalid<'_>,
) -> Result<Option<CorsSettings>, ConfigError> {
    match route {
        None | Some(RouteCors::Switch(true)) => Ok(global.cloned()),
        Some(RouteCors::Switch(false)) => Ok(None),
        Some(RouteCors::Policy(p)) => {
            cors_settings(p, &format!("routes[{i}].cors"), invalid).map(Some)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_subdomains_only() {
        let r = origin_rule("https://*.example.com").expect("pattern");
        assert!(r.allows("https://app.example.com"));
        assert!(r.allows("https://a.b.example.com"));
        assert!(r.allows("HTTPS://App.Example.com"));
        for bad in [
            "https://example.com",
            "https://example.com.evil.com",
            "https://evilexample.com",
            "http://app.example.com",
            "https://.example.com",
            "https://app.example.com:8443",
            "https://a_b.example.com",
            "null",
        ] {
            assert!(!r.allows(bad), "{bad}");
        }
        let exact = origin_rule("https://app.example.com").expect("exact");
        assert!(exact.allows("https://app.example.com"));
        assert!(!exact.allows("https://app.example.com.evil.com"));
        assert!(origin_rule("null").is_err());
        assert!(origin_rule("https://app.example.com/").is_err());
        assert!(origin_rule("https://app.*.com").is_err());
        assert!(origin_rule("app.example.com").is_err());
    }

    #[test]
    fn any_origin_with_credentials_is_a_config_error() {
        let e = Config::parse(
            "[listen]\nhttps = \"127.0.0.1:8443\"\n[cors]\nallow_origins = [\"*\"]\nallow_credentials = true\n",
            "t.toml",
        )
        .expect_err("refused")
        .to_string();
        assert!(
            e.contains("cors: allow_origins = [\"*\"] with allow_credentials"),
            "{e}"
        );
    }
}
