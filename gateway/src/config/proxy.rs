//! `[proxy]`: which peers' forwarding headers are believed, HSTS, and how
//! odd header names and encoded slashes are treated.

use super::*;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct ProxyFile {
    #[serde(default)]
    trusted_proxies: Option<Spanned<Vec<Cidr>>>,
    #[serde(default)]
    hsts: Option<Spanned<String>>,
    #[serde(default)]
    underscores_in_headers: Underscores,
    #[serde(default)]
    encoded_slashes: EncodedSlashes,
}

/// What happens to `%2F`, `%5C` and `%3B` in a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EncodedSlashes {
    /// 400 `path.encoded_separator`.
    #[default]
    Reject,
    /// Forwarded still encoded; never treated as a separator by the gateway.
    Keep,
}

/// What happens to request header names with an underscore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Underscores {
    /// Not forwarded (nginx's `underscores_in_headers off`).
    #[default]
    Drop,
    /// The request is refused with 400 `http.header_name`.
    Reject,
    /// Forwarded like any other field.
    Allow,
}
/// Validated `[proxy]`.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// Peers whose X-Forwarded-For / Forwarded are kept and extended.
    pub trusted_proxies: Vec<IpNet>,
    /// Strict-Transport-Security value; `None` disables it.
    pub hsts: Option<String>,
    /// Header names with `_`: dropped, refused or forwarded.
    pub underscores_in_headers: Underscores,
    /// `%2F`, `%5C` and `%3B` in paths: refused or kept encoded.
    pub encoded_slashes: EncodedSlashes,
}

pub(super) fn proxy_settings(
    p: &ProxyFile,
    invalid: &Invalid<'_>,
) -> Result<ProxySettings, ConfigError> {
    Ok(ProxySettings {
        trusted_proxies: trusted_proxies(p.trusted_proxies.as_ref(), invalid)?,
        hsts: hsts(p.hsts.as_ref(), invalid)?,
        underscores_in_headers: p.underscores_in_headers,
        encoded_slashes: p.encoded_slashes,
    })
}

/// `proxy.trusted_proxies`: the kernel exempts each from the SYN budget
/// (beside the two loopback networks), in a trie of fixed size.
fn trusted_proxies(
    list: Option<&Spanned<Vec<Cidr>>>,
    invalid: &Invalid<'_>,
) -> Result<Vec<IpNet>, ConfigError> {
    let Some(list) = list else {
        return Ok(Vec::new());
    };
    let most = gateway_common::SYN_EXEMPT_CAPACITY as usize - 2;
    if list.get_ref().len() > most {
        return Err(invalid(
            Some(list.span()),
            "proxy.trusted_proxies".into(),
            format!(
                "{} CIDRs, more than the kernel's SYN exemption holds ({most}); name the proxies' networks instead of each address",
                list.get_ref().len()
            ),
        ));
    }
    Ok(list.get_ref().iter().map(|c| c.0.trunc()).collect())
}

/// `proxy.hsts`: it goes into every response head, so a CR or LF in it
/// would let the file inject header lines.
fn hsts(h: Option<&Spanned<String>>, invalid: &Invalid<'_>) -> Result<Option<String>, ConfigError> {
    Ok(match h {
        Some(h) if h.get_ref().is_empty() => None,
        Some(h) => {
            // It goes into every response head: a CR or LF would let
            // the file inject header lines.
            let v = h.get_ref();
            if let Some(b) = v
                .bytes()
                .find(|&b| !(b == b'\t' || (0x20..0x7f).contains(&b)))
            {
                return Err(invalid(
                    Some(h.span()),
                    "proxy.hsts".into(),
                    format!(
                        "byte 0x{b:02x} is not allowed in a header value (visible ASCII, space and tab only)"
                    ),
                ));
            }
            Some(v.trim().to_owned())
        }
        None => Some("max-age=31536000; includeSubDomains".into()),
    })
}
