//! `[admin]`: the operator's API (verdicts, `why`, live limits), on its own
//! listener: never the public port.

use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AdminFile {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default = "default_admin_listen")]
    listen: Spanned<SocketAddr>,
    #[serde(default)]
    token_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    hosts: Option<Spanned<Vec<String>>>,
}

impl Default for AdminFile {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: default_admin_listen(),
            token_file: None,
            hosts: None,
        }
    }
}

fn default_admin_listen() -> Spanned<SocketAddr> {
    Spanned::new(0..0, SocketAddr::from(([127, 0, 0, 1], DEFAULT_ADMIN_PORT)))
}

/// The admin API's port unless configured (Envoy's admin port).
pub const DEFAULT_ADMIN_PORT: u16 = 9901;

/// Validated `[admin]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSettings {
    /// Where it listens; `None`: no admin API.
    pub listen: Option<SocketAddr>,
    /// A file holding the bearer token every request must carry.
    pub token_file: Option<PathBuf>,
    /// DNS names a request's `Host` may carry besides addresses and
    /// `localhost` (lower-case): the names monitoring scrapes it by.
    pub hosts: Vec<String>,
}

pub(super) fn admin_settings(
    a: &AdminFile,
    file: &str,
    https: SocketAddr,
    plain_port: u16,
    invalid: &Invalid<'_>,
) -> Result<AdminSettings, ConfigError> {
    let token_file = a
        .token_file
        .as_ref()
        .map(|p| relative_to(file, p.get_ref()));
    let hosts = match &a.hosts {
        None => Vec::new(),
        Some(list) => {
            if token_file.is_none() && !list.get_ref().is_empty() {
                // A page that rebinds one of these names to the host could
                // otherwise call the API: only a token stops it then.
                return Err(invalid(
                    Some(list.span()),
                    "admin.hosts".into(),
                    "names in Host need admin.token_file: without a token, a web page that rebinds such a name to this host could call the API".into(),
                ));
            }
            let mut out = Vec::new();
            for h in list.get_ref() {
                let h = h.trim().to_ascii_lowercase();
                if h.is_empty()
                    || !h
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                {
                    return Err(invalid(
                        Some(list.span()),
                        "admin.hosts".into(),
                        format!("{h:?} is not a host name (letters, digits, '-' and '.', no port)"),
                    ));
                }
                out.push(h);
            }
            out
        }
    };
    if !a.enabled {
        return Ok(AdminSettings {
            listen: None,
            token_file,
            hosts,
        });
    }
    let listen = *a.listen.get_ref();
    let same_host =
        listen.ip() == https.ip() || listen.ip().is_unspecified() || https.ip().is_unspecified();
    if same_host
        && (listen.port() == https.port() || listen.port() == plain_port)
        && listen.port() != 0
    {
        return Err(invalid(
            Some(a.listen.span()),
            "admin.listen".into(),
            format!(
                "{listen} is a public port: the admin API needs its own (default 127.0.0.1:{DEFAULT_ADMIN_PORT})"
            ),
        ));
    }
    if !listen.ip().is_loopback() && token_file.is_none() {
        return Err(invalid(
            Some(a.listen.span()),
            "admin.listen".into(),
            format!(
                "{listen} is reachable from other hosts: give admin.token_file, or listen on loopback"
            ),
        ));
    }
    Ok(AdminSettings {
        listen: Some(listen),
        token_file,
        hosts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(admin: &str) -> Result<Config, String> {
        Config::parse(
            &format!(
                "[listen]\nhttps = \"127.0.0.1:8443\"\nplain_http_port = 8080\n[admin]\n{admin}"
            ),
            "t.toml",
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn the_admin_api_is_on_loopback_by_default_and_never_on_a_public_port() {
        let c = parse("").expect("default");
        assert_eq!(
            c.admin.listen,
            Some("127.0.0.1:9901".parse().expect("addr"))
        );
        assert_eq!(parse("enabled = false").expect("off").admin.listen, None);
        let e = parse("listen = \"127.0.0.1:8443\"").expect_err("public port");
        assert!(
            e.starts_with("t.toml:5: admin.listen: 127.0.0.1:8443 is a public port"),
            "{e}"
        );
        let e = parse("listen = \"0.0.0.0:8080\"").expect_err("plain port");
        assert!(e.contains("is a public port"), "{e}");
        let e = parse("listen = \"0.0.0.0:9901\"").expect_err("exposed");
        assert!(
            e.contains("give admin.token_file, or listen on loopback"),
            "{e}"
        );
        let c = parse("listen = \"0.0.0.0:9901\"\ntoken_file = \"admin.token\"").expect("token");
        assert_eq!(
            c.admin.token_file.as_deref(),
            Some(Path::new("admin.token"))
        );
    }

    #[test]
    fn host_names_need_the_token_and_are_names() {
        let e = parse("hosts = [\"gw1.internal\"]").expect_err("no token");
        assert!(
            e.contains("admin.hosts: names in Host need admin.token_file"),
            "{e}"
        );
        let e = parse("token_file = \"t\"\nhosts = [\"gw1:9901\"]").expect_err("port");
        assert!(e.contains("is not a host name"), "{e}");
        let c = parse("token_file = \"t\"\nhosts = [\"GW1.Internal\"]").expect("hosts");
        assert_eq!(c.admin.hosts, ["gw1.internal"]);
    }
}
