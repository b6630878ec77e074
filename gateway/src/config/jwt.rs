//! `[[auth.jwt]]` issuers: `iss` and `aud` always set, the algorithms
//! named (`none` never), one key source that fits them (RFC 8725).

use super::*;

/// One `[[auth.jwt]]` issuer as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct JwtFile {
    pub(super) name: Spanned<String>,
    pub(super) issuer: Spanned<String>,
    pub(super) audiences: Spanned<Vec<String>>,
    pub(super) algorithms: Spanned<Vec<String>>,
    #[serde(default = "default_leeway")]
    pub(super) leeway_secs: u64,
    #[serde(default = "yes")]
    pub(super) require_exp: bool,
    #[serde(default = "default_roles_claim")]
    pub(super) roles_claim: String,
    #[serde(default = "default_scopes_claim")]
    pub(super) scopes_claim: String,
    #[serde(default)]
    pub(super) jwks_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) jwks_url: Option<String>,
    #[serde(default)]
    pub(super) discovery: bool,
    #[serde(default)]
    pub(super) secret_file: Option<PathBuf>,
    #[serde(default = "default_refresh")]
    pub(super) refresh_secs: u64,
    #[serde(default)]
    pub(super) ca_file: Option<PathBuf>,
    #[serde(default = "default_max_token")]
    pub(super) max_token_bytes: usize,
    #[serde(default = "yes")]
    pub(super) cache: bool,
}

pub(super) fn default_leeway() -> u64 {
    30
}
pub(super) fn default_roles_claim() -> String {
    "roles".into()
}
pub(super) fn default_scopes_claim() -> String {
    "scope".into()
}
pub(super) fn default_refresh() -> u64 {
    300
}
pub(super) fn default_max_token() -> usize {
    8192
}

/// Where an issuer's verification keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A JWKS file (re-read when it changes).
    File(PathBuf),
    /// A JWKS URL over HTTPS.
    Url(String),
    /// OIDC discovery: `issuer` + `/.well-known/openid-configuration` → `jwks_uri`.
    Discovery,
    /// An HMAC secret in a file (at least 32 bytes, RFC 8725 §3.5).
    Secret(PathBuf),
}

/// A validated `[[auth.jwt]]` issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSettings {
    /// Its name (routes say `jwt:NAME`).
    pub name: String,
    /// The `iss` a token must carry.
    pub issuer: String,
    /// `aud` must contain one of these.
    pub audiences: Vec<String>,
    /// Algorithms accepted (each key pins its own as well).
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway_secs: u64,
    /// Whether a token without `exp` is refused.
    pub require_exp: bool,
    /// Dotted path of the roles claim (string or array), e.g. `realm_access.roles`.
    pub roles_claim: Vec<String>,
    /// Dotted path of the scopes claim (space-separated string or array).
    pub scopes_claim: Vec<String>,
    /// Where the keys come from.
    pub source: KeySource,
    /// How often keys are fetched again (URL and discovery).
    pub refresh_secs: u64,
    /// CA certificates (PEM) to trust when fetching keys; default: the system's.
    pub ca_file: Option<PathBuf>,
    /// Longest token accepted, checked before any decoding.
    pub max_token_bytes: usize,
    /// Whether workers cache verified tokens (off only to measure).
    pub cache: bool,
}

/// One `[[auth.jwt]]` issuer, validated: `iss` and `aud` always set, the
/// algorithms named, one key source that fits them (RFC 8725).
pub(super) fn jwt_settings(
    i: usize,
    j: &JwtFile,
    file: &str,
    invalid: &Invalid<'_>,
) -> Result<JwtSettings, ConfigError> {
    let at = |k: &str| format!("auth.jwt[{i}].{k}");
    let name = j.name.get_ref();
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
    {
        return Err(invalid(
            Some(j.name.span()),
            at("name"),
            format!("`{name}` is not a name"),
        ));
    }
    if j.issuer.get_ref().is_empty() {
        return Err(invalid(
            Some(j.issuer.span()),
            at("issuer"),
            "must not be empty".into(),
        ));
    }
    if j.audiences.get_ref().is_empty() {
        return Err(invalid(
            Some(j.audiences.span()),
            at("audiences"),
            "name at least one audience: a token for another service must not pass".into(),
        ));
    }
    let algorithms = jwt_algorithms(j.algorithms.get_ref())
        .map_err(|m| invalid(Some(j.algorithms.span()), at("algorithms"), m))?;
    let source = jwt_key_source(j, &algorithms, file)
        .map_err(|(k, m)| invalid(Some(j.name.span()), at(k), m))?;
    let relative = |p: &PathBuf| relative_to(file, p);
    Ok(JwtSettings {
        name: name.clone(),
        issuer: j.issuer.get_ref().clone(),
        audiences: j.audiences.get_ref().clone(),
        algorithms,
        leeway_secs: j.leeway_secs,
        require_exp: j.require_exp,
        roles_claim: j.roles_claim.split('.').map(str::to_owned).collect(),
        scopes_claim: j.scopes_claim.split('.').map(str::to_owned).collect(),
        source,
        refresh_secs: j.refresh_secs.max(10),
        ca_file: j.ca_file.as_ref().map(relative),
        max_token_bytes: j.max_token_bytes.clamp(256, 64 * 1024),
        cache: j.cache,
    })
}

/// A JWS `alg` name exactly as RFC 7518 spells it; anything else (`none`
/// in any spelling included) is no algorithm.
pub fn jwt_algorithm(name: &str) -> Option<jsonwebtoken::Algorithm> {
    use jsonwebtoken::Algorithm as A;
    Some(match name {
        "HS256" => A::HS256,
        "HS384" => A::HS384,
        "HS512" => A::HS512,
        "RS256" => A::RS256,
        "RS384" => A::RS384,
        "RS512" => A::RS512,
        "PS256" => A::PS256,
        "PS384" => A::PS384,
        "PS512" => A::PS512,
        "ES256" => A::ES256,
        "ES384" => A::ES384,
        "EdDSA" => A::EdDSA,
        _ => return None,
    })
}

pub(super) fn jwt_algorithms(names: &[String]) -> Result<Vec<jsonwebtoken::Algorithm>, String> {
    let mut out = Vec::new();
    for a in names {
        out.push(match jwt_algorithm(a) {
            Some(alg) => alg,
            None if a.eq_ignore_ascii_case("none") => {
                return Err("`none` is never accepted".into());
            }
            None => {
                return Err(format!(
                    "`{a}` is not supported (HS256/384/512, RS256/384/512, PS256/384/512, ES256/384, EdDSA)"
                ));
            }
        });
    }
    if out.is_empty() {
        return Err("name at least one".into());
    }
    Ok(out)
}

/// The one key source an issuer names, checked against its algorithms.
pub(super) fn jwt_key_source(
    j: &JwtFile,
    algorithms: &[jsonwebtoken::Algorithm],
    file: &str,
) -> Result<KeySource, (&'static str, String)> {
    use jsonwebtoken::Algorithm as A;
    let hmac = algorithms
        .iter()
        .filter(|a| matches!(a, A::HS256 | A::HS384 | A::HS512))
        .count();
    let given = [
        j.jwks_file.is_some(),
        j.jwks_url.is_some(),
        j.discovery,
        j.secret_file.is_some(),
    ];
    if given.iter().filter(|s| **s).count() != 1 {
        return Err((
            "jwks_file",
            "give exactly one of jwks_file, jwks_url, discovery = true, secret_file".into(),
        ));
    }
    if let Some(p) = &j.secret_file {
        if hmac != algorithms.len() {
            return Err((
                "algorithms",
                "a secret_file issuer takes HS256/384/512 only".into(),
            ));
        }
        return Ok(KeySource::Secret(relative_to(file, p)));
    }
    if hmac > 0 {
        return Err((
            "algorithms",
            "HS* needs secret_file: public keys never verify HMAC (no RS/HS confusion)".into(),
        ));
    }
    match (&j.jwks_file, &j.jwks_url) {
        (Some(p), _) => Ok(KeySource::File(relative_to(file, p))),
        (None, Some(u)) if u.starts_with("https://") => Ok(KeySource::Url(u.clone())),
        (None, Some(u)) => Err(("jwks_url", format!("`{u}` is not https://"))),
        (None, None) if j.issuer.get_ref().starts_with("https://") => Ok(KeySource::Discovery),
        (None, None) => Err(("issuer", "discovery needs an https:// issuer".into())),
    }
}
