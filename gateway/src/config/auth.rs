//! `[auth]` and each route's `auth`, `roles`, `scopes`, `claims`: API keys,
//! JWT issuers and introspection endpoints, validated so a route can only be
//! public by saying so and an issuer only with `iss`, `aud` and pinned
//! algorithms (RFC 8725).

use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuthFile {
    #[serde(default)]
    pub(super) key_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pub(super) allow_empty_key_file: bool,
    #[serde(default = "default_key_header")]
    pub(super) key_header: Spanned<String>,
    #[serde(default = "default_consumer_header")]
    pub(super) consumer_header: Spanned<String>,
    #[serde(default = "default_roles_header")]
    pub(super) roles_header: Spanned<String>,
    #[serde(default = "default_subject_header")]
    pub(super) subject_header: Spanned<String>,
    #[serde(default)]
    pub(super) jwt: Vec<JwtFile>,
    #[serde(default)]
    pub(super) introspection: Vec<IntrospectionFile>,
}

/// One `[[auth.introspection]]` endpoint as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IntrospectionFile {
    pub(super) name: Spanned<String>,
    pub(super) url: Spanned<String>,
    pub(super) client_id: String,
    pub(super) client_secret_file: PathBuf,
    #[serde(default)]
    pub(super) ca_file: Option<PathBuf>,
    #[serde(default = "default_max_cache")]
    pub(super) max_cache_secs: u64,
    #[serde(default = "default_inactive_cache")]
    pub(super) inactive_cache_secs: u64,
    #[serde(default = "default_roles_claim")]
    pub(super) roles_claim: String,
    #[serde(default = "default_scopes_claim")]
    pub(super) scopes_claim: String,
    #[serde(default)]
    pub(super) issuer: Option<String>,
    #[serde(default)]
    pub(super) audiences: Vec<String>,
    #[serde(default)]
    pub(super) client_ids: Vec<String>,
    #[serde(default = "default_lookups_per_source")]
    pub(super) lookups_per_source: u32,
}

/// Cache misses one source may send to the endpoint a second (twice that
/// at once): random tokens from one address never fill the lookup queue.
pub(super) fn default_lookups_per_source() -> u32 {
    20
}

pub(super) fn default_max_cache() -> u64 {
    300
}
pub(super) fn default_inactive_cache() -> u64 {
    10
}

impl Default for AuthFile {
    fn default() -> Self {
        Self {
            key_file: None,
            allow_empty_key_file: false,
            key_header: default_key_header(),
            consumer_header: default_consumer_header(),
            roles_header: default_roles_header(),
            subject_header: default_subject_header(),
            jwt: Vec::new(),
            introspection: Vec::new(),
        }
    }
}

pub(super) fn default_subject_header() -> Spanned<String> {
    Spanned::new(0..0, "x-auth-subject".into())
}

/// A claim rule as written: one value or several (any of them).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum ClaimValues {
    One(String),
    Many(Vec<String>),
}

pub(super) fn default_key_header() -> Spanned<String> {
    Spanned::new(0..0, "x-api-key".into())
}
pub(super) fn default_consumer_header() -> Spanned<String> {
    Spanned::new(0..0, "x-consumer-id".into())
}
pub(super) fn default_roles_header() -> Spanned<String> {
    Spanned::new(0..0, "x-consumer-roles".into())
}

/// A route's `auth` as written: `"none"` or a list of authenticators.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum AuthList {
    One(String),
    Many(Vec<String>),
}

/// How a route authenticates callers. Public is written out in the file
/// (`auth = "none"`), never implied by a missing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteAuth {
    /// Anyone, unauthenticated.
    Public,
    /// A caller proven by one of these.
    Required(Vec<Authenticator>),
}

/// A way a caller proves who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authenticator {
    /// An API key from the key file, in `auth.key_header`.
    ApiKey,
    /// A bearer token from `auth.jwt[i]`.
    Jwt(usize),
    /// An opaque bearer token checked at `auth.introspection[i]`.
    Introspect(usize),
}

/// A validated `[[auth.introspection]]` endpoint (RFC 7662).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntrospectionSettings {
    /// Its name (routes say `introspect:NAME`).
    pub name: String,
    /// The endpoint (https).
    pub url: String,
    /// The gateway's client id there.
    pub client_id: String,
    /// The file holding the gateway's client secret.
    pub client_secret_file: PathBuf,
    /// CA certificates (PEM) to trust; default: the system's.
    pub ca_file: Option<PathBuf>,
    /// Longest an active answer is cached (and never past the token's `exp`).
    pub max_cache_secs: u64,
    /// How long an inactive answer is cached.
    pub inactive_cache_secs: u64,
    /// Dotted path of the roles member of the answer.
    pub roles_claim: Vec<String>,
    /// Dotted path of the scopes member of the answer.
    pub scopes_claim: Vec<String>,
    /// The `iss` an active answer must carry, if set.
    pub issuer: Option<String>,
    /// The `aud` values of which an active answer must carry one, if any.
    pub audiences: Vec<String>,
    /// The `client_id` values of which an active answer must carry one, if
    /// any (the clients whose tokens this API takes).
    pub client_ids: Vec<String>,
    /// Cache misses a second one source may send here (twice at once);
    /// beyond, 429 `token.lookup_rate`. 0: no limit.
    pub lookups_per_source: u32,
}

impl RouteAuth {
    /// The JWT issuers (by index) a route accepts.
    pub fn issuers(&self) -> impl Iterator<Item = usize> + '_ {
        let list: &[Authenticator] = match self {
            Self::Public => &[],
            Self::Required(list) => list,
        };
        list.iter().filter_map(|a| match a {
            Authenticator::Jwt(i) => Some(*i),
            Authenticator::ApiKey | Authenticator::Introspect(_) => None,
        })
    }
}

/// Validated `[auth]`.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// The consumers and their key hashes (re-read when it changes).
    pub key_file: Option<PathBuf>,
    /// A key file with no key at all is taken (it revokes every key);
    /// otherwise it is refused like a broken one.
    pub allow_empty_key_file: bool,
    /// Request header holding the API key (lower case).
    pub key_header: String,
    /// Header the upstream gets the consumer id in (lower case).
    pub consumer_header: String,
    /// Header the upstream gets the consumer's roles in (lower case).
    pub roles_header: String,
    /// Header the upstream gets a token's subject in (lower case).
    pub subject_header: String,
    /// JWT issuers, by index.
    pub jwt: Vec<JwtSettings>,
    /// Introspection endpoints, by index.
    pub introspection: Vec<IntrospectionSettings>,
}

/// A route's `auth`, required on every route: a public route says so.
/// What a route's `auth` may name.
pub(super) struct AuthContext<'a> {
    pub(super) has_keys: bool,
    pub(super) issuers: &'a [&'a str],
    pub(super) endpoints: &'a [&'a str],
}

/// `[auth]`, validated: header names are tokens, stored lower case; a
/// relative key file is relative to the configuration file.
pub(super) fn auth_settings(
    a: &AuthFile,
    file: &str,
    invalid: &Invalid<'_>,
) -> Result<AuthSettings, ConfigError> {
    let header = |h: &Spanned<String>, key: &str| {
        let v = h.get_ref();
        if v.is_empty()
            || !v
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
        {
            return Err(invalid(
                Some(h.span()),
                key.into(),
                format!("`{v}` is not a header name"),
            ));
        }
        Ok(v.to_ascii_lowercase())
    };
    let key_file = a.key_file.as_ref().map(|p| {
        let p = p.get_ref();
        match Path::new(file).parent() {
            Some(dir) if p.is_relative() && !file.starts_with('<') => dir.join(p),
            _ => p.clone(),
        }
    });
    let mut jwt: Vec<JwtSettings> = Vec::new();
    for (i, j) in a.jwt.iter().enumerate() {
        let settings = jwt_settings(i, j, file, invalid)?;
        if jwt.iter().any(|x| x.name == settings.name) {
            return Err(invalid(
                Some(j.name.span()),
                format!("auth.jwt[{i}].name"),
                format!("issuer `{}` is defined twice", settings.name),
            ));
        }
        jwt.push(settings);
    }
    let mut introspection = Vec::new();
    for (i, e) in a.introspection.iter().enumerate() {
        let at = |k: &str| format!("auth.introspection[{i}].{k}");
        if !e.url.get_ref().starts_with("https://") {
            return Err(invalid(
                Some(e.url.span()),
                at("url"),
                format!("`{}` is not https://", e.url.get_ref()),
            ));
        }
        let name = e.name.get_ref().clone();
        if name.is_empty() || jwt.iter().any(|j| j.name == name) {
            return Err(invalid(
                Some(e.name.span()),
                at("name"),
                format!("`{name}` is empty or taken"),
            ));
        }
        introspection.push(IntrospectionSettings {
            name,
            url: e.url.get_ref().clone(),
            client_id: e.client_id.clone(),
            client_secret_file: relative_to(file, &e.client_secret_file),
            ca_file: e.ca_file.as_ref().map(|p| relative_to(file, p)),
            max_cache_secs: e.max_cache_secs.clamp(1, 3600),
            inactive_cache_secs: e.inactive_cache_secs.min(300),
            roles_claim: e.roles_claim.split('.').map(str::to_owned).collect(),
            scopes_claim: e.scopes_claim.split('.').map(str::to_owned).collect(),
            issuer: e.issuer.clone(),
            audiences: e.audiences.clone(),
            client_ids: e.client_ids.clone(),
            lookups_per_source: e.lookups_per_source,
        });
    }
    Ok(AuthSettings {
        introspection,
        key_file,
        allow_empty_key_file: a.allow_empty_key_file,
        key_header: header(&a.key_header, "auth.key_header")?,
        consumer_header: header(&a.consumer_header, "auth.consumer_header")?,
        roles_header: header(&a.roles_header, "auth.roles_header")?,
        subject_header: header(&a.subject_header, "auth.subject_header")?,
        jwt,
    })
}
