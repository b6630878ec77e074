//! `gateway verdicts`, `why`, `limits` and `reload`: ask a running gateway's admin API.

use gateway::admin::client::{self, AdminClient};

use crate::{AdminArgs, VerdictsCmd, load};

pub(crate) fn admin_client(a: &AdminArgs) -> Result<AdminClient, String> {
    AdminClient::new(&load(a.config.as_ref())?, a.admin)
}

pub(crate) fn print_lines(
    json: bool,
    v: &serde_json::Value,
    lines: impl FnOnce(&serde_json::Value) -> Vec<String>,
) {
    if json {
        println!("{v}");
    } else {
        for l in lines(v) {
            println!("{l}");
        }
    }
}

/// `gateway verdicts list|add|remove`.
pub(crate) fn verdicts(cmd: VerdictsCmd, a: &AdminArgs) -> Result<(), String> {
    let c = admin_client(a)?;
    match cmd {
        VerdictsCmd::List => {
            let v = c.ok("GET", "/verdicts", None)?;
            print_lines(a.json, &v, client::verdict_lines);
        }
        VerdictsCmd::Add { address, secs, why } => {
            let body = serde_json::json!({"source": address.to_string(), "secs": secs, "why": why});
            let v = c.ok("POST", "/verdicts", Some(&body))?;
            print_lines(a.json, &v, |_| {
                vec![format!("verdict on {address} for {secs}s placed")]
            });
        }
        VerdictsCmd::Remove { address } => {
            let v = c.ok("DELETE", &format!("/verdicts/{address}"), None)?;
            print_lines(a.json, &v, |_| vec![format!("verdict on {address} lifted")]);
        }
    }
    Ok(())
}

/// `gateway reload`.
pub(crate) fn reload(a: &AdminArgs) -> Result<(), String> {
    let v = admin_client(a)?
        .ok("POST", "/reload", Some(&serde_json::json!({})))
        .map_err(|e| format!("reload refused: {e}"))?;
    print_lines(a.json, &v, |v| {
        let mut lines = vec![format!(
            "reloaded {}",
            v["reloaded"].as_str().unwrap_or("?")
        )];
        if let Some(changes) = v["changes"].as_array() {
            lines.extend(
                changes
                    .iter()
                    .filter_map(|c| c.as_str())
                    .map(|c| format!("  {c}")),
            );
        }
        lines
    });
    Ok(())
}

/// `gateway why ADDRESS`.
pub(crate) fn why(address: std::net::IpAddr, a: &AdminArgs) -> Result<(), String> {
    let v = admin_client(a)?.ok("GET", &format!("/why/{address}"), None)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    print_lines(a.json, &v, |v| client::why_lines(v, now));
    Ok(())
}

/// Whose limits `gateway limits` shows besides the source's.
pub(crate) struct Who<'a> {
    /// An API key's consumer id.
    pub consumer: Option<&'a str>,
    /// A token's issuer name.
    pub issuer: Option<&'a str>,
    /// A token's subject.
    pub subject: Option<&'a str>,
}

/// `gateway limits --source ADDRESS`.
pub(crate) fn limits(
    source: std::net::IpAddr,
    who: &Who<'_>,
    route: Option<&str>,
    a: &AdminArgs,
) -> Result<(), String> {
    let mut path = format!("/limits?source={source}");
    for (name, value) in [
        ("consumer", who.consumer),
        ("issuer", who.issuer),
        ("subject", who.subject),
    ] {
        let Some(v) = value else { continue };
        if !v
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"&=%#?".contains(&b))
        {
            return Err(format!("{name} `{v}`: printable ASCII without & = % # ?"));
        }
        path.push_str(&format!("&{name}={v}"));
    }
    if let Some(r) = route {
        // A route name is letters, digits, `_`, `-` and `.`.
        if r.is_empty()
            || !r
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
        {
            return Err(format!(
                "route `{r}`: a route's name (letters, digits, _ - .) or its position"
            ));
        }
        path.push_str(&format!("&route={r}"));
    }
    let v = admin_client(a)?.ok("GET", &path, None)?;
    print_lines(a.json, &v, client::limit_lines);
    Ok(())
}
