//! `[[routes]]`: host, path and methods to match, the upstream, limits.

mod protocol;

use super::*;
use crate::json::{BodySchema, Param};

/// Most distinct roles (and scopes, and claim rules) across all routes:
/// they are bits of a `u64`.
const MAX_ROLES: usize = 64;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RouteFile {
    #[serde(default)]
    pub(super) name: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) host: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) path_prefix: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) path: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) methods: Vec<Spanned<String>>,
    pub(super) upstream: Spanned<String>,
    #[serde(default)]
    pub(super) max_body_bytes: Option<u64>,
    #[serde(default)]
    pub(super) auth: Option<Spanned<AuthList>>,
    #[serde(default)]
    pub(super) roles: Vec<String>,
    #[serde(default)]
    pub(super) consumers: Vec<String>,
    #[serde(default)]
    pub(super) scopes: Vec<String>,
    #[serde(default)]
    pub(super) claims: std::collections::BTreeMap<String, ClaimValues>,
    #[serde(default)]
    pub(super) rate_limits: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) response_headers: Option<Spanned<std::collections::BTreeMap<String, String>>>,
    #[serde(default)]
    pub(super) cors: Option<RouteCors>,
    #[serde(default)]
    pub(super) content_types: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) body_schema: Option<Spanned<SchemaSource>>,
    #[serde(default)]
    pub(super) body_required: bool,
    #[serde(default)]
    pub(super) params: Vec<ParamFile>,
    #[serde(default)]
    pub(super) waf: Option<super::WafMode>,
    #[serde(default)]
    pub(super) grpc: Option<Spanned<bool>>,
    #[serde(default)]
    pub(super) websocket: Option<Spanned<bool>>,
}

/// How a route matches the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// The path starts with this.
    Prefix(String),
    /// The path is exactly this.
    Exact(String),
    /// The path has these segments, `{name}` ones taking any non-empty
    /// segment (`/users/{id}/orders`).
    Template(Vec<Segment>),
}

/// One segment of a path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// This text exactly.
    Literal(String),
    /// Any non-empty segment, named.
    Param(String),
}

impl PathMatch {
    /// The path as written in the configuration.
    pub fn written(&self) -> String {
        match self {
            Self::Exact(p) | Self::Prefix(p) => p.clone(),
            Self::Template(segments) => segments
                .iter()
                .map(|s| match s {
                    Segment::Literal(l) => format!("/{l}"),
                    Segment::Param(n) => format!("/{{{n}}}"),
                })
                .collect(),
        }
    }
}

/// Validated `[[routes]]` entry.
#[derive(Debug, Clone)]
pub struct RouteSettings {
    /// Its name in the access log and metric labels: `name` from the file,
    /// else its position in the route list (as `gateway check` numbers it).
    pub name: String,
    /// Host to match (lowercase, no port); `None` matches any.
    pub host: Option<String>,
    /// Path rule.
    pub path: PathMatch,
    /// Methods to match; empty matches any.
    pub methods: Vec<String>,
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    /// Largest request body for this route.
    pub max_body_bytes: u64,
    /// Who may call it.
    pub auth: RouteAuth,
    /// Roles the caller must hold, every one of them.
    pub roles: Vec<String>,
    /// Consumers allowed (empty: any authenticated caller).
    pub consumers: Vec<String>,
    /// Scopes a token must all carry.
    pub scopes: Vec<String>,
    /// Claims a token must carry: claim name (dotted path) → accepted values.
    pub claims: Vec<(String, Vec<String>)>,
    /// Rate limits charged, by index into `rate_limit.limits`.
    pub rate_limits: Vec<usize>,
    /// Changes to the global response headers: a value sets, an empty one
    /// removes.
    pub response_headers: Vec<(String, String)>,
    /// Its CORS policy (its own, or `[cors]`), if any.
    pub cors: Option<CorsSettings>,
    /// Media types a request body may have (lowercase, no parameters);
    /// empty: any.
    pub content_types: Vec<String>,
    /// The JSON Schema its bodies must meet, if any.
    pub body_schema: Option<BodySchema>,
    /// Query and path parameters it declares, each with its schema.
    pub params: Vec<Param>,
    /// A document the gateway serves itself (an OpenAPI `docs` route)
    /// instead of proxying.
    pub serve: Option<std::sync::Arc<[u8]>>,
    /// The OpenAPI operation it was imported from, if it was.
    pub origin: Option<String>,
    /// What its WAF does.
    pub waf: super::WafMode,
    /// The largest body its WAF reads whole (`[waf] max_body_bytes`).
    pub waf_body: u64,
    /// gRPC: the call goes to the HTTP/2 upstream stream for stream, its
    /// trailers relayed, `grpc-timeout` its deadline; the gateway's own
    /// refusals are gRPC statuses.
    pub grpc: bool,
    /// WebSocket: an upgrade request (RFC 6455) judged by every head stage
    /// becomes a tunnel on the upstream's 101 (`[websocket]` bounds it);
    /// plain requests are proxied as on any route.
    pub websocket: bool,
}

impl RouteSettings {
    /// The most body bytes this route reads whole before anything goes
    /// upstream (0: it streams bodies): its limit with a schema; with a
    /// WAF, up to `[waf] max_body_bytes` (a larger body is refused by a
    /// blocking WAF, streamed unscanned by a detecting one).
    pub fn judged_body_limit(&self) -> u64 {
        if self.body_schema.is_some() {
            self.max_body_bytes
        } else if self.waf != super::WafMode::Off {
            self.max_body_bytes.min(self.waf_body)
        } else {
            0
        }
    }
}

/// What compiling a route needs of the rest of the file.
pub(super) struct RouteContext<'a> {
    pub(super) upstreams: &'a [UpstreamSettings],
    pub(super) max_body: u64,
    pub(super) auth: &'a AuthContext<'a>,
    pub(super) limits: &'a [LimitSettings],
    pub(super) cors: Option<&'a CorsSettings>,
    pub(super) file: &'a str,
    pub(super) waf: super::WafMode,
    pub(super) waf_body: u64,
}

/// One `[[routes]]` entry (or an imported operation), every part validated.
pub(super) fn compile_full(
    i: usize,
    r: &RouteFile,
    ctx: &RouteContext<'_>,
    invalid: &Invalid<'_>,
) -> Result<RouteSettings, ConfigError> {
    let mut route = compile_route(i, r, ctx.upstreams, ctx.max_body, ctx.auth, invalid)?;
    let mut rules = BodyRules {
        content_types: &mut route.content_types,
        max_body_bytes: route.max_body_bytes,
    };
    let source = (r.body_schema.as_ref(), r.body_required);
    route.body_schema = route_body_schema(i, source, &mut rules, ctx.file, invalid)?;
    // A path parameter names a `{segment}` of the template.
    let segment_of = |name: &str| match &route.path {
        PathMatch::Template(t) => t.iter().position(|s| *s == Segment::Param(name.to_owned())),
        _ => None,
    };
    route.params = route_params(i, &r.params, segment_of, invalid)?;
    route.rate_limits = route_limits(i, &r.rate_limits, ctx.limits, invalid)?;
    route.cors = route_cors(i, r.cors.as_ref(), ctx.cors, invalid)?;
    route.waf = r.waf.unwrap_or(ctx.waf);
    route.waf_body = ctx.waf_body;
    protocol::route_protocol(i, r, &mut route, ctx.upstreams, invalid)?;
    if let Some(h) = &r.response_headers {
        route.response_headers = header_map(h.get_ref())
            .map_err(|e| invalid(Some(h.span()), format!("routes[{i}].response_headers"), e))?;
    }
    Ok(route)
}

/// One `[[routes]]` entry, validated.
pub(super) fn compile_route(
    i: usize,
    r: &RouteFile,
    upstreams: &[UpstreamSettings],
    default_max_body: u64,
    auth_ctx: &AuthContext<'_>,
    invalid: &Invalid<'_>,
) -> Result<RouteSettings, ConfigError> {
    let path = match (&r.path, &r.path_prefix) {
        (Some(_), Some(p)) => {
            return Err(invalid(
                Some(p.span()),
                format!("routes[{i}].path_prefix"),
                "give `path` or `path_prefix`, not both".into(),
            ));
        }
        (Some(p), None) if p.get_ref().contains(['{', '}']) => (
            template(p.get_ref())
                .map_err(|m| invalid(Some(p.span()), format!("routes[{i}].path"), m))?,
            p.span(),
        ),
        (Some(p), None) => (PathMatch::Exact(p.get_ref().clone()), p.span()),
        (None, Some(p)) => {
            // Matching is per segment: `/api/` means `/api`.
            let v = p.get_ref();
            let trimmed = v.trim_end_matches('/');
            let v = if trimmed.is_empty() { "/" } else { trimmed };
            (PathMatch::Prefix(v.to_owned()), p.span())
        }
        (None, None) => (PathMatch::Prefix("/".into()), r.upstream.span()),
    };
    let p = path.0.written();
    if !p.starts_with('/') {
        return Err(invalid(
            Some(path.1),
            format!("routes[{i}].path"),
            format!("`{p}` must start with /"),
        ));
    }
    let mut methods = Vec::new();
    for m in &r.methods {
        let v = m.get_ref();
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(invalid(
                Some(m.span()),
                format!("routes[{i}].methods"),
                format!("`{v}` is not a method (use upper case, e.g. GET)"),
            ));
        }
        methods.push(v.clone());
    }
    let host = match &r.host {
        None => None,
        Some(h) => Some(
            route_host(h.get_ref())
                .map_err(|m| invalid(Some(h.span()), format!("routes[{i}].host"), m))?,
        ),
    };
    let target = r.upstream.get_ref();
    let Some(upstream) = upstreams.iter().position(|u| &u.name == target) else {
        return Err(invalid(
            Some(r.upstream.span()),
            format!("routes[{i}].upstream"),
            format!("no upstream named `{target}`"),
        ));
    };
    let auth = route_auth(i, r, auth_ctx, invalid)?;
    let claims = r
        .claims
        .iter()
        .map(|(k, v)| {
            let values = match v {
                ClaimValues::One(s) => vec![s.clone()],
                ClaimValues::Many(v) => v.clone(),
            };
            (k.clone(), values)
        })
        .collect();
    Ok(RouteSettings {
        // Named once the whole list is known (`name_routes`).
        name: String::new(),
        host,
        path: path.0,
        methods,
        upstream,
        max_body_bytes: r.max_body_bytes.unwrap_or(default_max_body),
        auth,
        roles: r.roles.clone(),
        consumers: r.consumers.clone(),
        scopes: r.scopes.clone(),
        claims,
        rate_limits: Vec::new(),
        response_headers: Vec::new(),
        cors: None,
        content_types: media_types(i, &r.content_types, invalid)?,
        body_schema: None,
        params: Vec::new(),
        serve: None,
        origin: None,
        waf: Default::default(),
        waf_body: DEFAULT_WAF_BODY,
        grpc: false,
        websocket: false,
    })
}

/// `/users/{id}/orders`: literal segments and whole-segment `{name}`s with
/// distinct names.
fn template(path: &str) -> Result<PathMatch, String> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(format!("`{path}` must start with /"));
    };
    let mut segments = Vec::new();
    for s in rest.split('/') {
        let seg = match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(name)
                if !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)) =>
            {
                if segments.contains(&Segment::Param(name.to_owned())) {
                    return Err(format!("`{{{name}}}` appears twice in `{path}`"));
                }
                Segment::Param(name.to_owned())
            }
            _ if s.contains(['{', '}']) => {
                return Err(format!(
                    "`{s}` in `{path}`: a parameter is a whole segment, `{{name}}` (letters, digits, _ - .)"
                ));
            }
            _ => Segment::Literal(s.to_owned()),
        };
        segments.push(seg);
    }
    Ok(PathMatch::Template(segments))
}

/// A route's `content_types`: `type/subtype` media types, lowercased.
fn media_types(
    i: usize,
    list: &[Spanned<String>],
    invalid: &Invalid<'_>,
) -> Result<Vec<String>, ConfigError> {
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    list.iter()
        .map(|t| {
            let v = t.get_ref().trim().to_ascii_lowercase();
            match v.split_once('/') {
                Some((a, b)) if token(a) && token(b) => Ok(v),
                _ => Err(invalid(
                    Some(t.span()),
                    format!("routes[{i}].content_types"),
                    format!(
                        "`{}` is not a media type (e.g. application/json)",
                        t.get_ref()
                    ),
                )),
            }
        })
        .collect()
}

/// A route's host: a name or IP literal, matched without the request's
/// port. A port here could never match, so it is an error, not a silent miss.
pub(super) fn route_host(h: &str) -> Result<String, String> {
    let bare = if h.starts_with('[') {
        h.strip_suffix(']').map(|_| h)
    } else {
        (!h.contains(':')).then_some(h)
    };
    match bare {
        Some(b) if !b.is_empty() && !b.contains(['/', ' ', '*']) => Ok(b.to_ascii_lowercase()),
        Some(_) => Err(format!("`{h}` is not a host name")),
        None => Err(format!(
            "`{h}` has a port; routes match the host without its port (any port reaches the listener)"
        )),
    }
}

/// Longest route name.
const MAX_NAME: usize = 64;

/// Names every route: its `name` (letters, digits, `_`, `-`, `.`, not
/// digits only, not `none`, unique), else its position, which no written
/// name can take. `names[i]` is route `i`'s `name` as written, with where it is.
pub(super) fn name_routes(
    routes: &mut [RouteSettings],
    names: &[Option<(&Spanned<String>, String)>],
    invalid: &Invalid<'_>,
) -> Result<(), ConfigError> {
    let mut seen = std::collections::HashMap::new();
    for (i, (route, name)) in routes.iter_mut().zip(names).enumerate() {
        let Some((written, key)) = name else {
            route.name = i.to_string();
            continue;
        };
        let v = written.get_ref();
        let problem = if v.is_empty() || v.len() > MAX_NAME {
            Some(format!("`{v}` must be 1 to {MAX_NAME} characters"))
        } else if !v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        {
            Some(format!(
                "`{v}` may hold only letters, digits, `_`, `-` and `.` (it is a metric label)"
            ))
        } else if v == "none" {
            Some("`none` is the metrics' label for requests no route took".to_owned())
        } else if v.bytes().all(|b| b.is_ascii_digit()) {
            Some(format!(
                "`{v}` is digits only, which names a route by its position"
            ))
        } else {
            seen.insert(v.clone(), key.clone())
                .map(|other| format!("`{v}` is also the name of {other}"))
        };
        if let Some(m) = problem {
            return Err(invalid(Some(written.span()), format!("{key}.name"), m));
        }
        route.name = v.clone();
    }
    Ok(())
}

/// Roles, scopes and claim rules compile to bits of a `u64` (`stages::authz`).
pub(super) fn check_rule_counts(
    routes: &[RouteSettings],
    invalid: &Invalid<'_>,
) -> Result<(), ConfigError> {
    let count = |names: Vec<String>| {
        let mut n = names;
        n.sort_unstable();
        n.dedup();
        n.len()
    };
    let roles = count(routes.iter().flat_map(|r| r.roles.clone()).collect());
    let scopes = count(routes.iter().flat_map(|r| r.scopes.clone()).collect());
    let claims = count(
        routes
            .iter()
            .flat_map(|r| r.claims.iter().map(|(k, v)| format!("{k}={v:?}")))
            .collect(),
    );
    for (what, n) in [
        ("roles", roles),
        ("scopes", scopes),
        ("claim rules", claims),
    ] {
        if n > MAX_ROLES {
            return Err(invalid(
                None,
                "routes".into(),
                format!("{n} distinct {what} across routes, at most {MAX_ROLES}"),
            ));
        }
    }
    Ok(())
}

pub(super) fn route_auth(
    i: usize,
    r: &RouteFile,
    ctx: &AuthContext<'_>,
    invalid: &Invalid<'_>,
) -> Result<RouteAuth, ConfigError> {
    let has_keys = ctx.has_keys;
    let key = format!("routes[{i}].auth");
    let Some(auth) = &r.auth else {
        return Err(invalid(
            Some(r.upstream.span()),
            key,
            "missing: every route says who may call it: `auth = \"none\"` for a public \
             route, or e.g. `auth = [\"api_key\"]`"
                .into(),
        ));
    };
    let names: Vec<&str> = match auth.get_ref() {
        AuthList::One(s) if s == "none" => {
            if !r.roles.is_empty()
                || !r.consumers.is_empty()
                || !r.scopes.is_empty()
                || !r.claims.is_empty()
            {
                return Err(invalid(
                    Some(auth.span()),
                    key,
                    "a public route (`auth = \"none\"`) cannot require roles, consumers, scopes or claims"
                        .into(),
                ));
            }
            return Ok(RouteAuth::Public);
        }
        AuthList::One(s) => vec![s.as_str()],
        AuthList::Many(v) => v.iter().map(String::as_str).collect(),
    };
    let mut list = Vec::new();
    for name in names {
        let a = match name {
            "api_key" if has_keys => Authenticator::ApiKey,
            "api_key" => {
                return Err(invalid(
                    Some(auth.span()),
                    key,
                    "`api_key` needs `auth.key_file` (consumers and their key hashes)".into(),
                ));
            }
            "none" => {
                return Err(invalid(
                    Some(auth.span()),
                    key,
                    "`none` stands alone: `auth = \"none\"`".into(),
                ));
            }
            intro if intro.starts_with("introspect:") => {
                let name = &intro["introspect:".len()..];
                match ctx.endpoints.iter().position(|n| *n == name) {
                    Some(idx) => Authenticator::Introspect(idx),
                    None => {
                        return Err(invalid(
                            Some(auth.span()),
                            key,
                            format!("no [[auth.introspection]] named `{name}`"),
                        ));
                    }
                }
            }
            jwt if jwt.starts_with("jwt:") => {
                let name = &jwt[4..];
                match ctx.issuers.iter().position(|n| *n == name) {
                    Some(idx) => Authenticator::Jwt(idx),
                    None => {
                        return Err(invalid(
                            Some(auth.span()),
                            key,
                            format!("no [[auth.jwt]] named `{name}`"),
                        ));
                    }
                }
            }
            other => {
                return Err(invalid(
                    Some(auth.span()),
                    key,
                    format!(
                        "unknown authenticator `{other}` (known: api_key, jwt:NAME, introspect:NAME)"
                    ),
                ));
            }
        };
        if !list.contains(&a) {
            list.push(a);
        }
    }
    if list.is_empty() {
        return Err(invalid(
            Some(auth.span()),
            key,
            "empty: name an authenticator, or `auth = \"none\"`".into(),
        ));
    }
    Ok(RouteAuth::Required(list))
}
