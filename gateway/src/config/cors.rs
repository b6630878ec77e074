//! `[cors]` and each route's `cors`: which browser origins may call the
//! API, with what. Checked here so that a policy browsers would reject, or
//! one that opens credentials to everyone, never starts.

use super::*;

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct CorsFile {
    allow_origins: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    allow_methods: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    allow_headers: Vec<Spanned<String>>,
    #[serde(default)]
    expose_headers: Vec<Spanned<String>>,
    #[serde(default)]
    allow_credentials: Option<Spanned<bool>>,
    #[serde(default)]
    max_age_secs: Option<u64>,
}

/// A route's `cors`: `false` (none, whatever `[cors]` says) or its own policy.
#[derive(Debug, Clone)]
pub(super) enum RouteCors {
    Switch(bool),
    Policy(CorsFile),
}

/// By hand rather than `#[serde(untagged)]`: an untagged enum buffers the
/// value and loses the spans errors are located by.
impl<'de> Deserialize<'de> for RouteCors {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Either;
        impl<'de> serde::de::Visitor<'de> for Either {
            type Value = RouteCors;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false or a CORS policy table")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<RouteCors, E> {
                Ok(RouteCors::Switch(v))
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(self, m: M) -> Result<RouteCors, M::Error> {
                CorsFile::deserialize(serde::de::value::MapAccessDeserializer::new(m))
                    .map(RouteCors::Policy)
            }
        }
        d.deserialize_any(Either)
    }
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
        Some(suffix) if !suffix.is_empty() && !suffix.contains('*') => {
            if is_public_suffix(suffix) {
                return Err(format!(
                    "`{o}` covers every site under the public suffix `{suffix}`, which anyone can register: name your own domain (https://*.example.com)"
                ));
            }
            Ok(OriginRule::Subdomains {
                scheme,
                suffix: format!(".{suffix}"),
            })
        }
        Some(_) => Err(format!("`{o}`: write a pattern as https://*.example.com")),
        None if rest.contains('*') => Err(format!(
            "`{o}`: `*` only as the first label (https://*.example.com) or alone"
        )),
        None => Ok(OriginRule::Exact(lower)),
    }
}

/// Whether `host` (a pattern's suffix, maybe with a port) is itself a
/// public suffix on Mozilla's list (`com`, `co.uk`, `github.io`, ...), so
/// that `*.host` would cover domains strangers register.
fn is_public_suffix(host: &str) -> bool {
    let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
    let name = name.trim_end_matches('.');
    psl::suffix(name.as_bytes()).is_some_and(|s| s.is_known() && s.as_bytes() == name.as_bytes())
}

pub(super) fn cors_settings(
    c: &CorsFile,
    key: &str,
    invalid: &Invalid<'_>,
) -> Result<CorsSettings, ConfigError> {
    let at = |span: std::ops::Range<usize>, m: String| invalid(Some(span), key.into(), m);
    let mut origins = Vec::new();
    for o in c.allow_origins.get_ref() {
        origins.push(origin_rule(o.get_ref()).map_err(|m| at(o.span(), m))?);
    }
    if origins.is_empty() {
        return Err(at(
            c.allow_origins.span(),
            "allow_origins is empty: name at least one origin".into(),
        ));
    }
    let credentials = c.allow_credentials.as_ref().is_some_and(|b| *b.get_ref());
    if let Some(b) = c.allow_credentials.as_ref().filter(|_| credentials)
        && origins.contains(&OriginRule::Any)
    {
        return Err(at(
            b.span(),
            "allow_origins = [\"*\"] with allow_credentials = true would let any site act as the user: list the origins"
                .into(),
        ));
    }
    let methods = match &c.allow_methods {
        None => ["GET", "HEAD", "POST"].map(str::to_owned).to_vec(),
        Some(list) => {
            let mut out = Vec::new();
            for m in list {
                let text = m.get_ref();
                if text.is_empty() || !text.bytes().all(|b| b.is_ascii_uppercase()) {
                    return Err(at(
                        m.span(),
                        format!("`{text}` is not a method (use upper case, e.g. GET)"),
                    ));
                }
                out.push(text.clone());
            }
            out
        }
    };
    let names = |list: &[Spanned<String>]| {
        let mut out = Vec::new();
        for h in list {
            let text = h.get_ref();
            if text.is_empty()
                || !text
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
            {
                return Err(at(h.span(), format!("`{text}` is not a header name")));
            }
            out.push(text.to_ascii_lowercase());
        }
        Ok(out)
    };
    Ok(CorsSettings {
        origins,
        methods,
        headers: names(&c.allow_headers)?,
        expose: names(&c.expose_headers)?,
        credentials,
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
        // A pattern over a public suffix covers sites anyone can register.
        for public in [
            "https://*.com",
            "https://*.co.uk",
            "https://*.github.io",
            "http://*.com:8080",
        ] {
            let e = origin_rule(public).expect_err(public);
            assert!(e.contains("public suffix"), "{e}");
        }
        for own in ["https://*.example.com", "https://*.example.co.uk"] {
            assert!(origin_rule(own).is_ok(), "{own}");
        }
    }

    #[test]
    fn errors_name_the_line_of_the_offending_value() {
        let text = "[listen]\nhttps = \"127.0.0.1:8443\"\n\n[cors]\nallow_origins = [\n  \"https://app.example.com\",\n  \"https://*.com\",\n]\n";
        let e = Config::parse(text, "t.toml")
            .expect_err("refused")
            .to_string();
        assert!(e.starts_with("t.toml:7: cors: "), "{e}");
        let text = "[listen]\nhttps = \"127.0.0.1:8443\"\n\n[[upstreams]]\nname = \"b\"\nservers = [\"127.0.0.1:1\"]\n\n[[routes]]\npath_prefix = \"/\"\nupstream = \"b\"\nauth = \"none\"\ncors = { allow_origins = [\"https://a.example\"], allow_methods = [\"get\"] }\n";
        let e = Config::parse(text, "t.toml")
            .expect_err("refused")
            .to_string();
        assert!(e.starts_with("t.toml:12: routes[0].cors: "), "{e}");
        let text = "[listen]\nhttps = \"127.0.0.1:8443\"\n[cors]\nallow_origins = [\"*\"]\n\nallow_credentials = true\n";
        let e = Config::parse(text, "t.toml")
            .expect_err("refused")
            .to_string();
        assert!(e.starts_with("t.toml:6: cors: "), "{e}");
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
