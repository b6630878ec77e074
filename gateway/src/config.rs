//! Configuration: one TOML file parsed into plain typed structs, then
//! validated once into the runtime form the rest of the gateway uses.
//!
//! Every error names where it is: `file:line: key: what is wrong`.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

/// The configuration used when no file is given: HTTPS on 127.0.0.1:8443,
/// XDP on the loopback interface. Works on a fresh machine.
pub const EMBEDDED_DEFAULT: &str = include_str!("default.toml");

/// A configuration error, located in its file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A key is missing, unknown, mistyped or has a bad value.
    #[error("{file}:{line}: {key}: {message}")]
    Invalid {
        /// The file (or `<embedded default>`).
        file: String,
        /// 1-based line of the offending key or value.
        line: usize,
        /// Dotted key path, e.g. `policy.deny[2]`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// Most distinct roles (and scopes, and claim rules) across all routes:
/// they are bits of a `u64`.
const MAX_ROLES: usize = 64;

/// Most `upstreams[].retries`: each retry can repeat a request's effect.
const MAX_RETRIES: u32 = 5;

/// Largest `limits.buffer_body_bytes`: each connection may hold that much.
const MAX_BUFFER_BODY: usize = 1024 * 1024;

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    listen: ListenFile,
    #[serde(default)]
    tls: TlsFile,
    #[serde(default)]
    runtime: RuntimeFile,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    proxy: ProxyFile,
    #[serde(default)]
    demo: Option<DemoFile>,
    #[serde(default)]
    log: LogFile,
    #[serde(default)]
    upstreams: Vec<UpstreamFile>,
    #[serde(default)]
    routes: Vec<RouteFile>,
    #[serde(default)]
    xdp: XdpFile,
    #[serde(default)]
    policy: PolicyFile,
    #[serde(default)]
    auth: AuthFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    #[serde(default)]
    key_file: Option<Spanned<PathBuf>>,
    #[serde(default = "default_key_header")]
    key_header: Spanned<String>,
    #[serde(default = "default_consumer_header")]
    consumer_header: Spanned<String>,
    #[serde(default = "default_roles_header")]
    roles_header: Spanned<String>,
    #[serde(default = "default_subject_header")]
    subject_header: Spanned<String>,
    #[serde(default)]
    jwt: Vec<JwtFile>,
    #[serde(default)]
    introspection: Vec<IntrospectionFile>,
}

/// One `[[auth.introspection]]` endpoint as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IntrospectionFile {
    name: Spanned<String>,
    url: Spanned<String>,
    client_id: String,
    client_secret_file: PathBuf,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default = "default_max_cache")]
    max_cache_secs: u64,
    #[serde(default = "default_inactive_cache")]
    inactive_cache_secs: u64,
    #[serde(default = "default_roles_claim")]
    roles_claim: String,
    #[serde(default = "default_scopes_claim")]
    scopes_claim: String,
}

fn default_max_cache() -> u64 {
    300
}
fn default_inactive_cache() -> u64 {
    10
}

impl Default for AuthFile {
    fn default() -> Self {
        Self {
            key_file: None,
            key_header: default_key_header(),
            consumer_header: default_consumer_header(),
            roles_header: default_roles_header(),
            subject_header: default_subject_header(),
            jwt: Vec::new(),
            introspection: Vec::new(),
        }
    }
}

fn default_subject_header() -> Spanned<String> {
    Spanned::new(0..0, "x-auth-subject".into())
}

/// One `[[auth.jwt]]` issuer as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JwtFile {
    name: Spanned<String>,
    issuer: Spanned<String>,
    audiences: Spanned<Vec<String>>,
    algorithms: Spanned<Vec<String>>,
    #[serde(default = "default_leeway")]
    leeway_secs: u64,
    #[serde(default = "yes")]
    require_exp: bool,
    #[serde(default = "default_roles_claim")]
    roles_claim: String,
    #[serde(default = "default_scopes_claim")]
    scopes_claim: String,
    #[serde(default)]
    jwks_file: Option<PathBuf>,
    #[serde(default)]
    jwks_url: Option<String>,
    #[serde(default)]
    discovery: bool,
    #[serde(default)]
    secret_file: Option<PathBuf>,
    #[serde(default = "default_refresh")]
    refresh_secs: u64,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default = "default_max_token")]
    max_token_bytes: usize,
    #[serde(default = "yes")]
    cache: bool,
}

fn default_leeway() -> u64 {
    30
}
fn default_roles_claim() -> String {
    "roles".into()
}
fn default_scopes_claim() -> String {
    "scope".into()
}
fn default_refresh() -> u64 {
    300
}
fn default_max_token() -> usize {
    8192
}

/// A claim rule as written: one value or several (any of them).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ClaimValues {
    One(String),
    Many(Vec<String>),
}

fn default_key_header() -> Spanned<String> {
    Spanned::new(0..0, "x-api-key".into())
}
fn default_consumer_header() -> Spanned<String> {
    Spanned::new(0..0, "x-consumer-id".into())
}
fn default_roles_header() -> Spanned<String> {
    Spanned::new(0..0, "x-consumer-roles".into())
}

/// A route's `auth` as written: `"none"` or a list of authenticators.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum AuthList {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    #[serde(default)]
    certificates: Vec<CertFile>,
    #[serde(default)]
    session_cache: Option<usize>,
    #[serde(default)]
    tickets: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CertFile {
    cert: PathBuf,
    key: PathBuf,
    #[serde(default)]
    names: Vec<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RuntimeFile {
    #[serde(default)]
    workers: usize,
    #[serde(default)]
    max_connections_per_worker: Option<usize>,
    #[serde(default)]
    pin_cpus: bool,
}

/// `[limits]`: the userspace protections, all per connection or request.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Time to receive a whole request head, from its first byte (slowloris).
    pub header_timeout_ms: u64,
    /// Time a keep-alive connection may sit idle between requests.
    pub idle_timeout_ms: u64,
    /// Longest gap between two reads of a request body; also the time a
    /// body has before `body_min_rate` starts to count.
    pub body_timeout_ms: u64,
    /// Bytes per second a request body must average after
    /// `body_timeout_ms` (each such many bytes buy one more second); 0: off.
    pub body_min_rate: u64,
    /// Bodies up to this size are read whole before an upstream connection
    /// is taken; larger ones stream.
    pub buffer_body_bytes: usize,
    /// Longest request line (414 beyond).
    pub max_request_line_bytes: usize,
    /// Longest request head (431 beyond).
    pub max_header_bytes: usize,
    /// Most header fields in a request (431 beyond).
    pub max_headers: usize,
    /// Default largest request body; routes may lower or raise it (413 beyond).
    pub max_body_bytes: u64,
    /// How long SIGTERM waits for in-flight requests.
    pub shutdown_grace_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            body_timeout_ms: 30_000,
            body_min_rate: 1024,
            buffer_body_bytes: 16 * 1024,
            max_request_line_bytes: 8 * 1024,
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            max_body_bytes: 10 * 1024 * 1024,
            shutdown_grace_ms: 10_000,
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ProxyFile {
    #[serde(default)]
    trusted_proxies: Vec<Cidr>,
    #[serde(default)]
    hsts: Option<Spanned<String>>,
    #[serde(default)]
    underscores_in_headers: Underscores,
    #[serde(default)]
    encoded_slashes: EncodedSlashes,
}

/// What happens to `%2F` and `%5C` in a path.
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogFile {
    #[serde(default = "yes")]
    access: bool,
}

impl Default for LogFile {
    fn default() -> Self {
        Self { access: true }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DemoFile {
    listen: SocketAddr,
    #[serde(default)]
    api_key: bool,
}

/// How an upstream spreads requests over its servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Each server in turn.
    #[default]
    RoundRobin,
    /// The server with the fewest requests in flight (per worker).
    LeastOutstanding,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamFile {
    name: Spanned<String>,
    servers: Spanned<Vec<SocketAddr>>,
    #[serde(default)]
    balance: Balance,
    #[serde(default = "default_connect_ms")]
    connect_timeout_ms: u64,
    #[serde(default = "default_response_ms")]
    response_timeout_ms: u64,
    #[serde(default = "default_idle_per_server")]
    idle_per_server: usize,
    #[serde(default = "default_retries")]
    retries: Spanned<u32>,
}

fn default_retries() -> Spanned<u32> {
    Spanned::new(0..0, 1)
}

fn default_connect_ms() -> u64 {
    1_000
}
fn default_response_ms() -> u64 {
    15_000
}
fn default_idle_per_server() -> usize {
    64
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteFile {
    #[serde(default)]
    host: Option<Spanned<String>>,
    #[serde(default)]
    path_prefix: Option<Spanned<String>>,
    #[serde(default)]
    path: Option<Spanned<String>>,
    #[serde(default)]
    methods: Vec<Spanned<String>>,
    upstream: Spanned<String>,
    #[serde(default)]
    max_body_bytes: Option<u64>,
    #[serde(default)]
    auth: Option<Spanned<AuthList>>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    consumers: Vec<String>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    claims: std::collections::BTreeMap<String, ClaimValues>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenFile {
    https: SocketAddr,
    #[serde(default = "default_plain_port")]
    plain_http_port: Spanned<u16>,
    #[serde(default = "yes")]
    https_only: bool,
    #[serde(default)]
    redirect_plain_http: bool,
}

fn default_plain_port() -> Spanned<u16> {
    Spanned::new(0..0, 80)
}

/// A CIDR as written in the file, with errors that say what is wrong
/// (ipnet alone says "invalid IP address syntax" for `10.0.0.0/33` too).
#[derive(Debug, Clone, Copy)]
struct Cidr(IpNet);

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_cidr(&text)
            .map(Cidr)
            .map_err(serde::de::Error::custom)
    }
}

/// Parses `a.b.c.d/n`, `x::y/n`, or a bare address (a host route).
fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let (addr, len) = match text.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (text, None),
    };
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("`{addr}` is not an IP address"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => match l.parse::<u8>() {
            Ok(n) if n <= max => n,
            _ => return Err(format!("prefix length `{l}` must be 0 to {max} for {ip}")),
        },
    };
    IpNet::new(ip, len).map_err(|e| e.to_string())
}
fn yes() -> bool {
    true
}

/// How the XDP program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// Native if the driver supports it, generic otherwise.
    #[default]
    Auto,
    /// Native (driver) XDP only.
    Driver,
    /// Generic (skb) XDP.
    Skb,
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Driver => "driver",
            Self::Skb => "skb",
        })
    }
}

/// Where the kernel keeps SYN budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SynBudget {
    /// One budget per source shared by all CPUs (exact).
    #[default]
    Shared,
    /// One budget per source and CPU (cheaper; up to N× on N CPUs).
    PerCpu,
}

/// What happens to plain HTTP sent to the TLS port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PlainHttpOnTls {
    /// Answer with a TCP RST so the client fails at once.
    #[default]
    Reset,
    /// Drop silently.
    Drop,
    /// Let it reach the gateway.
    Pass,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct XdpFile {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default = "auto")]
    interface: Spanned<String>,
    #[serde(default)]
    mode: AttachMode,
    #[serde(default)]
    plain_http_on_tls: PlainHttpOnTls,
    #[serde(default)]
    syn_budget: SynBudget,
    #[serde(default = "default_syn_rate")]
    syn_rate: u32,
    #[serde(default)]
    syn_burst: Option<Spanned<u32>>,
    #[serde(default = "default_sweep_ms")]
    sweep_interval_ms: u64,
    #[serde(default = "default_stats_secs")]
    stats_interval_secs: u64,
}

impl Default for XdpFile {
    fn default() -> Self {
        Self {
            enabled: true,
            interface: Spanned::new(0..0, "auto".into()),
            mode: AttachMode::Auto,
            plain_http_on_tls: PlainHttpOnTls::Reset,
            syn_budget: SynBudget::Shared,
            syn_rate: default_syn_rate(),
            syn_burst: None,
            sweep_interval_ms: default_sweep_ms(),
            stats_interval_secs: default_stats_secs(),
        }
    }
}

fn auto() -> Spanned<String> {
    Spanned::new(0..0, "auto".into())
}
fn default_syn_rate() -> u32 {
    200
}
fn default_sweep_ms() -> u64 {
    1000
}
fn default_stats_secs() -> u64 {
    10
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    allow: Option<Spanned<Vec<Cidr>>>,
    #[serde(default)]
    deny: Option<Spanned<Vec<Cidr>>>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it came from, for messages.
    pub source: String,
    /// The HTTPS listen address.
    pub https: SocketAddr,
    /// The port plain-HTTP clients try.
    pub plain_http_port: u16,
    /// Whether plain HTTP is refused (dropped in the kernel).
    pub https_only: bool,
    /// Kernel data plane settings.
    pub xdp: XdpSettings,
    /// Source address policy.
    pub policy: PolicySettings,
    /// Answer plain HTTP on `plain_http_port` with 308 to HTTPS.
    pub redirect_plain_http: bool,
    /// Certificates and session resumption.
    pub tls: TlsSettings,
    /// Workers and connection caps.
    pub runtime: RuntimeSettings,
    /// Timeouts and size limits.
    pub limits: Limits,
    /// Forwarding headers and HSTS.
    pub proxy: ProxySettings,
    /// Address of the built-in demo backend, when it should run.
    pub demo: Option<SocketAddr>,
    /// Generate a demo consumer and key (in the state directory) when no
    /// `auth.key_file` is given.
    pub demo_api_key: bool,
    /// Authentication settings.
    pub auth: AuthSettings,
    /// One access-log line per request.
    pub access_log: bool,
    /// Upstreams by position; routes refer to them by index.
    pub upstreams: Vec<UpstreamSettings>,
    /// Routes in match order.
    pub routes: Vec<RouteSettings>,
}

/// One certificate with the names it answers for.
#[derive(Debug, Clone)]
pub struct CertSettings {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// SNI names; empty means the default certificate.
    pub names: Vec<String>,
}

/// Validated `[tls]`.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// Certificates; empty means a self-signed one generated on first run.
    pub certificates: Vec<CertSettings>,
    /// Session cache entries (TLS 1.2 ids and 1.3 stateful resumption).
    pub session_cache: usize,
    /// Stateless session tickets.
    pub tickets: bool,
}

/// Validated `[runtime]`.
#[derive(Debug, Clone, Copy)]
pub struct RuntimeSettings {
    /// Worker threads (each with its own listener and pools).
    pub workers: usize,
    /// Connections one worker holds at most; more are closed at accept.
    pub max_connections_per_worker: usize,
    /// Whether the file set `max_connections_per_worker` (else the default
    /// may be lowered to what `RLIMIT_NOFILE` allows).
    pub max_connections_set: bool,
    /// Pin worker `i` to CPU `i`.
    pub pin_cpus: bool,
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
    /// `%2F` and `%5C` in paths: refused or kept encoded.
    pub encoded_slashes: EncodedSlashes,
}

/// Validated `[[upstreams]]` entry.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// Its name.
    pub name: String,
    /// Its servers.
    pub servers: Vec<SocketAddr>,
    /// Balancing.
    pub balance: Balance,
    /// TCP connect timeout.
    pub connect_timeout_ms: u64,
    /// Time to the response head.
    pub response_timeout_ms: u64,
    /// Idle keep-alive connections kept per server and worker.
    pub idle_per_server: usize,
    /// Further attempts after the first: a connect that failed (any
    /// request), or an idempotent bodiless request that failed before any
    /// response byte.
    pub retries: u32,
}

/// How a route matches the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// The path starts with this.
    Prefix(String),
    /// The path is exactly this.
    Exact(String),
}

/// Validated `[[routes]]` entry.
#[derive(Debug, Clone)]
pub struct RouteSettings {
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
#[derive(Debug, Clone)]
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
#[derive(Debug, Clone)]
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

/// Validated `[auth]`.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// The consumers and their key hashes (re-read when it changes).
    pub key_file: Option<PathBuf>,
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

/// Validated `[xdp]` section.
#[derive(Debug, Clone)]
pub struct XdpSettings {
    /// Attach XDP at all.
    pub enabled: bool,
    /// The interface to attach to (resolved from `auto`).
    pub interface: String,
    /// Attach mode.
    pub mode: AttachMode,
    /// Plain HTTP on the TLS port.
    pub plain_http_on_tls: PlainHttpOnTls,
    /// Where SYN budgets are kept in the kernel.
    pub syn_budget: SynBudget,
    /// SYNs per second per source; 0 disables the limit.
    pub syn_rate: u32,
    /// SYNs a source may send at once.
    pub syn_burst: u32,
    /// How often expired verdicts are removed.
    pub sweep_interval_ms: u64,
    /// How often counters are logged (0: only at exit).
    pub stats_interval_secs: u64,
}

/// Validated `[policy]` section (prefixes normalised to their network).
#[derive(Debug, Clone, Default)]
pub struct PolicySettings {
    /// CIDRs always let through.
    pub allow: Vec<IpNet>,
    /// CIDRs always dropped.
    pub deny: Vec<IpNet>,
}

impl Config {
    /// Loads and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The embedded default.
    pub fn embedded() -> Result<Self, ConfigError> {
        Self::parse(EMBEDDED_DEFAULT, "<embedded default>")
    }

    /// Parses and validates `text`, naming it `file` in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        let invalid = located(text, file);
        let raw: File = parse_toml(text, file)?;

        let xdp = &raw.xdp;
        let interface = if xdp.interface.get_ref() == "auto" {
            interface_for(raw.listen.https.ip())
                .map_err(|m| invalid(Some(xdp.interface.span()), "xdp.interface".into(), m))?
        } else {
            xdp.interface.get_ref().clone()
        };
        if interface.is_empty() || interface.len() >= libc::IFNAMSIZ {
            return Err(invalid(
                Some(xdp.interface.span()),
                "xdp.interface".into(),
                format!("`{interface}` is not an interface name"),
            ));
        }
        let syn_burst = match &xdp.syn_burst {
            Some(b) if *b.get_ref() == 0 => {
                return Err(invalid(
                    Some(b.span()),
                    "xdp.syn_burst".into(),
                    "must be at least 1".into(),
                ));
            }
            Some(b) => *b.get_ref(),
            None => xdp.syn_rate.max(1),
        };
        if *raw.listen.plain_http_port.get_ref() == raw.listen.https.port() {
            return Err(invalid(
                Some(raw.listen.plain_http_port.span()),
                "listen.plain_http_port".into(),
                "must differ from the HTTPS port".into(),
            ));
        }
        let mut lists = [Vec::new(), Vec::new()];
        for (i, (key, list)) in [
            ("policy.allow", &raw.policy.allow),
            ("policy.deny", &raw.policy.deny),
        ]
        .into_iter()
        .enumerate()
        {
            let Some(list) = list else { continue };
            if list.get_ref().len() > gateway_common::CIDR_CAPACITY as usize {
                return Err(invalid(
                    Some(list.span()),
                    key.into(),
                    format!(
                        "{} CIDRs, more than the kernel's trie holds ({})",
                        list.get_ref().len(),
                        gateway_common::CIDR_CAPACITY
                    ),
                ));
            }
            lists[i] = list.get_ref().iter().map(|c| c.0.trunc()).collect();
        }
        let [allow, deny] = lists;

        let mut upstreams: Vec<UpstreamSettings> = Vec::new();
        for (i, u) in raw.upstreams.iter().enumerate() {
            let name = u.name.get_ref().clone();
            if upstreams.iter().any(|x| x.name == name) {
                return Err(invalid(
                    Some(u.name.span()),
                    format!("upstreams[{i}].name"),
                    format!("upstream `{name}` is defined twice"),
                ));
            }
            if *u.retries.get_ref() > MAX_RETRIES {
                return Err(invalid(
                    Some(u.retries.span()),
                    format!("upstreams[{i}].retries"),
                    format!("at most {MAX_RETRIES}"),
                ));
            }
            if u.servers.get_ref().is_empty() {
                return Err(invalid(
                    Some(u.servers.span()),
                    format!("upstreams[{i}].servers"),
                    "needs at least one server".into(),
                ));
            }
            upstreams.push(UpstreamSettings {
                name,
                servers: u.servers.get_ref().clone(),
                balance: u.balance,
                connect_timeout_ms: u.connect_timeout_ms.max(1),
                response_timeout_ms: u.response_timeout_ms.max(1),
                idle_per_server: u.idle_per_server,
                retries: *u.retries.get_ref(),
            });
        }
        let auth = auth_settings(&raw.auth, file, &invalid)?;
        let has_keys = auth.key_file.is_some() || raw.demo.as_ref().is_some_and(|d| d.api_key);
        let issuers: Vec<&str> = auth.jwt.iter().map(|j| j.name.as_str()).collect();
        let endpoints: Vec<&str> = auth.introspection.iter().map(|j| j.name.as_str()).collect();
        let auth_ctx = AuthContext {
            has_keys,
            issuers: &issuers,
            endpoints: &endpoints,
        };
        let mut routes = Vec::new();
        for (i, r) in raw.routes.iter().enumerate() {
            let max_body = raw.limits.max_body_bytes;
            routes.push(compile_route(
                i, r, &upstreams, max_body, &auth_ctx, &invalid,
            )?);
        }
        // Rules compile to bits of a u64 (stages::authz).
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
        let hsts = match &raw.proxy.hsts {
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
        };
        let limits = raw.limits;
        if limits.buffer_body_bytes > MAX_BUFFER_BODY {
            return Err(invalid(
                None,
                "limits.buffer_body_bytes".into(),
                format!("at most {MAX_BUFFER_BODY} (it is held per connection)"),
            ));
        }
        if limits.max_headers == 0
            || limits.max_header_bytes < 64
            || limits.max_request_line_bytes < 16
        {
            return Err(invalid(
                None,
                "limits".into(),
                "header limits are too small to parse a request".into(),
            ));
        }
        let workers = match raw.runtime.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        Ok(Config {
            redirect_plain_http: raw.listen.redirect_plain_http,
            tls: TlsSettings {
                certificates: raw
                    .tls
                    .certificates
                    .iter()
                    .map(|c| CertSettings {
                        cert: c.cert.clone(),
                        key: c.key.clone(),
                        names: c.names.iter().map(|n| n.to_ascii_lowercase()).collect(),
                    })
                    .collect(),
                session_cache: raw.tls.session_cache.unwrap_or(4096),
                tickets: raw.tls.tickets.unwrap_or(true),
            },
            runtime: RuntimeSettings {
                workers,
                max_connections_per_worker: raw
                    .runtime
                    .max_connections_per_worker
                    .unwrap_or(10_000)
                    .max(1),
                max_connections_set: raw.runtime.max_connections_per_worker.is_some(),
                pin_cpus: raw.runtime.pin_cpus,
            },
            limits,
            proxy: ProxySettings {
                trusted_proxies: raw
                    .proxy
                    .trusted_proxies
                    .iter()
                    .map(|c| c.0.trunc())
                    .collect(),
                hsts,
                underscores_in_headers: raw.proxy.underscores_in_headers,
                encoded_slashes: raw.proxy.encoded_slashes,
            },
            demo: raw.demo.as_ref().map(|d| d.listen),
            demo_api_key: raw.demo.as_ref().is_some_and(|d| d.api_key),
            auth,
            access_log: raw.log.access,
            upstreams,
            routes,
            source: file.to_owned(),
            https: raw.listen.https,
            plain_http_port: *raw.listen.plain_http_port.get_ref(),
            https_only: raw.listen.https_only,
            xdp: XdpSettings {
                enabled: xdp.enabled,
                interface,
                mode: xdp.mode,
                plain_http_on_tls: xdp.plain_http_on_tls,
                syn_budget: xdp.syn_budget,
                syn_rate: xdp.syn_rate,
                syn_burst,
                sweep_interval_ms: xdp.sweep_interval_ms.max(10),
                stats_interval_secs: xdp.stats_interval_secs,
            },
            policy: PolicySettings { allow, deny },
        })
    }
}

/// Builds a [`ConfigError::Invalid`] from a span, a key and a message.
type Invalid<'a> = dyn Fn(Option<std::ops::Range<usize>>, String, String) -> ConfigError + 'a;

/// One `[[routes]]` entry, validated.
fn compile_route(
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
    let (PathMatch::Exact(p) | PathMatch::Prefix(p)) = &path.0;
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
    })
}

/// A route's `auth`, required on every route: a public route says so.
/// What a route's `auth` may name.
struct AuthContext<'a> {
    has_keys: bool,
    issuers: &'a [&'a str],
    endpoints: &'a [&'a str],
}

fn route_auth(
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

/// `[auth]`, validated: header names are tokens, stored lower case; a
/// relative key file is relative to the configuration file.
fn auth_settings(
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
        });
    }
    Ok(AuthSettings {
        introspection,
        key_file,
        key_header: header(&a.key_header, "auth.key_header")?,
        consumer_header: header(&a.consumer_header, "auth.consumer_header")?,
        roles_header: header(&a.roles_header, "auth.roles_header")?,
        subject_header: header(&a.subject_header, "auth.subject_header")?,
        jwt,
    })
}

/// One `[[auth.jwt]]` issuer, validated: `iss` and `aud` always set, the
/// algorithms named, one key source that fits them (RFC 8725).
fn jwt_settings(
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

/// A path from the configuration, relative to the file it is written in.
fn relative_to(file: &str, p: &Path) -> PathBuf {
    match Path::new(file).parent() {
        Some(dir) if p.is_relative() && !file.starts_with('<') => dir.join(p),
        _ => p.to_owned(),
    }
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

fn jwt_algorithms(names: &[String]) -> Result<Vec<jsonwebtoken::Algorithm>, String> {
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
fn jwt_key_source(
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

/// A route's host: a name or IP literal, matched without the request's
/// port. A port here could never match, so it is an error, not a silent miss.
fn route_host(h: &str) -> Result<String, String> {
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

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The interface that carries `ip`: `lo` for loopback, else the one holding it.
fn interface_for(ip: IpAddr) -> Result<String, String> {
    if ip.is_loopback() {
        return Ok("lo".into());
    }
    if ip.is_unspecified() {
        return Err(format!(
            "`auto` cannot pick one interface for {ip}: name the interface to protect"
        ));
    }
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| format!("listing interfaces: {e}"))?;
    for a in addrs {
        let Some(sa) = a.address else { continue };
        let found = match ip {
            IpAddr::V4(v4) => sa.as_sockaddr_in().is_some_and(|s| s.ip() == v4),
            IpAddr::V6(v6) => sa.as_sockaddr_in6().is_some_and(|s| s.ip() == v6),
        };
        if found {
            return Ok(a.interface_name);
        }
    }
    Err(format!(
        "no interface holds {ip}: name the interface to protect"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        match Config::parse(text, "t.toml") {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::embedded().expect("embedded default");
        assert_eq!(c.https.to_string(), "127.0.0.1:8443");
        assert_eq!(c.xdp.interface, "lo");
        assert!(c.https_only);
    }

    #[test]
    fn bad_cidr_names_line_and_key() {
        let e = err(
            "[listen]\nhttps = \"127.0.0.1:8443\"\n[policy]\ndeny = [\"10.0.0.0/8\", \"10.1.2.300/24\"]\n",
        );
        assert!(e.starts_with("t.toml:4: policy.deny[1]: "), "{e}");
    }

    #[test]
    fn cidr_errors_say_what_is_wrong() {
        let e = err("[listen]\nhttps = \"127.0.0.1:8443\"\n[policy]\ndeny = [\"10.0.0.0/33\"]\n");
        assert_eq!(
            e,
            "t.toml:4: policy.deny[0]: prefix length `33` must be 0 to 32 for 10.0.0.0"
        );
        let e = err("[listen]\nhttps = \"127.0.0.1:8443\"\n[policy]\nallow = [\"nope/8\"]\n");
        assert_eq!(e, "t.toml:4: policy.allow[0]: `nope` is not an IP address");
        // A bare address is a host route.
        let c = Config::parse(
            "[listen]\nhttps = \"127.0.0.1:8443\"\n[policy]\nallow = [\"2001:db8::1\"]\n",
            "t.toml",
        )
        .expect("valid");
        assert_eq!(c.policy.allow[0].to_string(), "2001:db8::1/128");
    }

    #[test]
    fn same_ports_point_at_the_key() {
        let e = err("[listen]\nhttps = \"127.0.0.1:8443\"\nplain_http_port = 8443\n");
        assert_eq!(
            e,
            "t.toml:3: listen.plain_http_port: must differ from the HTTPS port"
        );
    }

    #[test]
    fn unknown_key_is_refused() {
        let e = err("[listen]\nhttps = \"127.0.0.1:8443\"\n\n[xdp]\nmodee = \"skb\"\n");
        assert!(e.starts_with("t.toml:5: xdp"), "{e}");
        assert!(e.contains("modee"), "{e}");
    }

    #[test]
    fn bad_mode_is_refused() {
        let e = err("[listen]\nhttps = \"127.0.0.1:8443\"\n[xdp]\nmode = \"turbo\"\n");
        assert!(e.starts_with("t.toml:4: xdp.mode: "), "{e}");
    }

    #[test]
    fn zero_burst_is_refused() {
        let e = err("[listen]\nhttps = \"127.0.0.1:8443\"\n[xdp]\nsyn_burst = 0\n");
        assert_eq!(e, "t.toml:4: xdp.syn_burst: must be at least 1");
    }

    #[test]
    fn auto_interface_needs_a_concrete_address() {
        let e = err("[listen]\nhttps = \"0.0.0.0:8443\"\n");
        assert!(e.contains("xdp.interface: `auto` cannot pick"), "{e}");
    }

    #[test]
    fn missing_listen_is_reported() {
        let e = err("[xdp]\nmode = \"skb\"\n");
        assert!(e.contains("missing field `listen`"), "{e}");
    }

    #[test]
    fn too_many_cidrs_are_refused() {
        let many: Vec<String> = (0..=gateway_common::CIDR_CAPACITY)
            .map(|i| format!("\"10.{}.{}.0/24\"", i / 256, i % 256))
            .collect();
        let e = err(&format!(
            "[listen]\nhttps = \"127.0.0.1:8443\"\n[policy]\nallow = [{}]\n",
            many.join(",")
        ));
        assert!(
            e.starts_with("t.toml:4: policy.allow: 16385 CIDRs, more than"),
            "{e}"
        );
    }

    #[test]
    fn cidrs_are_normalised() {
        let c = Config::parse(
            "[listen]\nhttps = \"127.0.0.1:8443\"\n[policy]\nallow = [\"198.18.0.7/24\"]\n",
            "t.toml",
        )
        .expect("valid");
        assert_eq!(c.policy.allow[0].to_string(), "198.18.0.0/24");
    }
}
