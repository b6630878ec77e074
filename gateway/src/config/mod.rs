//! Configuration: one TOML file parsed into plain typed structs, then
//! validated once into the runtime form the rest of the gateway uses.
//!
//! Every error names where it is: `file:line: key: what is wrong`.
//! The sections with most to check have their own files: `auth` (API keys,
//! introspection, each route's rules), `jwt` (issuers), `routes`,
//! `upstreams`, `xdp` (kernel settings and source policy), `proxy`,
//! `rate_limit`, `admin`, `cluster`, `cors`, `headers`; `located` makes the
//! errors.

mod admin;
mod anomaly;
mod auth;
mod cluster;
mod cors;
mod headers;
mod http2;
mod jwt;
mod limits;
mod located;
mod log;
mod openapi;
mod proxy;
mod rate_limit;
mod routes;
mod schema;
mod upstreams;
mod waf;
mod websocket;
mod xdp;

pub use admin::*;
pub use auth::*;
pub use cluster::*;
pub use cors::*;
pub use headers::*;
pub use http2::*;
pub use jwt::*;
pub use limits::*;
pub(crate) use located::*;
pub use log::*;
pub use openapi::ImportReport;
pub use proxy::*;
pub use rate_limit::*;
pub use routes::*;
pub use schema::*;
pub use upstreams::*;
pub use waf::*;
pub use websocket::*;
pub use xdp::*;

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
    http2: Http2Settings,
    #[serde(default)]
    websocket: WebSocketSettings,
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
    openapi: Vec<openapi::OpenApiFile>,
    #[serde(default)]
    xdp: XdpFile,
    #[serde(default)]
    policy: PolicyFile,
    #[serde(default)]
    auth: AuthFile,
    #[serde(default)]
    rate_limit: RateLimitFile,
    #[serde(default)]
    admin: AdminFile,
    #[serde(default)]
    cluster: ClusterFile,
    #[serde(default)]
    response_headers: HeadersFile,
    #[serde(default)]
    cors: Option<CorsFile>,
    #[serde(default)]
    waf: WafFile,
    #[serde(default)]
    anomaly: crate::observe::anomaly::AnomalySettings,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DemoFile {
    listen: SocketAddr,
    #[serde(default)]
    api_key: bool,
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
    /// `[http2]`: HTTP/2 offered to clients, and its per-connection limits.
    pub http2: Http2Settings,
    /// `[websocket]`: the tunnels of `websocket = true` routes.
    pub websocket: WebSocketSettings,
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
    /// `[log]`: the access log's format and output.
    pub log: LogSettings,
    /// Upstreams by position; routes refer to them by index.
    pub upstreams: Vec<UpstreamSettings>,
    /// Routes in match order (those imported from OpenAPI documents first).
    pub routes: Vec<RouteSettings>,
    /// What each `[[openapi]]` document brought in.
    pub openapi: Vec<ImportReport>,
    /// The WAF's defaults.
    pub waf: WafSettings,
    /// Anomaly detection.
    pub anomaly: crate::observe::anomaly::AnomalySettings,
    /// Rate limits and their escalation to verdicts.
    pub rate_limit: RateLimitSettings,
    /// The admin API.
    pub admin: AdminSettings,
    /// The Redis shared with other gateways.
    pub cluster: ClusterSettings,
    /// Security headers added and fingerprinting headers removed.
    pub response_headers: HeaderSettings,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

impl Config {
    /// Loads and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with_text(path).map(|(cfg, _)| cfg)
    }

    /// [`Config::load`], with the text it was parsed from (for findings
    /// that point at its lines).
    pub fn load_with_text(path: &Path) -> Result<(Self, String), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string()).map(|cfg| (cfg, text))
    }

    /// The embedded default.
    pub fn embedded() -> Result<Self, ConfigError> {
        Self::parse(EMBEDDED_DEFAULT, "<embedded default>")
    }

    /// The body of the `config` fuzz target: any text either parses, or
    /// fails with an error that names the file (and its line where it has
    /// one), never a panic. Whether it parsed.
    pub fn fuzz_parse(data: &[u8]) -> bool {
        let Ok(text) = std::str::from_utf8(data) else {
            return false;
        };
        match Self::parse(text, "fuzz.toml") {
            Ok(_) => true,
            Err(e) => {
                assert!(e.to_string().starts_with("fuzz.toml:"), "{e}");
                false
            }
        }
    }

    /// Parses and validates `text`, naming it `file` in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        let invalid = located(text, file);
        let raw: File = parse_toml(text, file)?;

        let xdp = xdp_settings(&raw.xdp, raw.listen.https.ip(), &invalid)?;
        if *raw.listen.plain_http_port.get_ref() == raw.listen.https.port() {
            return Err(invalid(
                Some(raw.listen.plain_http_port.span()),
                "listen.plain_http_port".into(),
                "must differ from the HTTPS port".into(),
            ));
        }
        let policy = policy_settings(&raw.policy, &invalid)?;

        let upstreams = upstream_settings(&raw.upstreams, file, &invalid)?;
        let auth = auth_settings(&raw.auth, file, &invalid)?;
        let has_keys = auth.key_file.is_some() || raw.demo.as_ref().is_some_and(|d| d.api_key);
        let issuers: Vec<&str> = auth.jwt.iter().map(|j| j.name.as_str()).collect();
        let endpoints: Vec<&str> = auth.introspection.iter().map(|j| j.name.as_str()).collect();
        let auth_ctx = AuthContext {
            has_keys,
            issuers: &issuers,
            endpoints: &endpoints,
        };
        let rate_limit = rate_limit_settings(&raw.rate_limit, &invalid)?;
        let cluster = cluster_settings(&raw.cluster, &invalid)?;
        let response_headers = header_settings(&raw.response_headers, &invalid)?;
        let cors = raw
            .cors
            .as_ref()
            .map(|c| cors_settings(c, "cors", &invalid))
            .transpose()?;
        if rate_limit.shared && cluster.redis.is_none() {
            return Err(invalid(
                None,
                "rate_limit.backend".into(),
                "`redis` needs cluster.redis (the Redis the gateways share)".into(),
            ));
        }
        let admin = admin_settings(
            &raw.admin,
            file,
            raw.listen.https,
            *raw.listen.plain_http_port.get_ref(),
            &invalid,
        )?;
        let (imported, openapi) = openapi::import(&raw.openapi, file, &invalid)?;
        let waf = waf_settings(&raw.waf, &auth.key_header, &invalid)?;
        let ctx = RouteContext {
            upstreams: &upstreams,
            max_body: raw.limits.max_body_bytes,
            auth: &auth_ctx,
            limits: &rate_limit.limits,
            cors: cors.as_ref(),
            file,
            waf: waf.mode,
            waf_body: waf.max_body_bytes,
        };
        let mut routes = Vec::new();
        for (i, imp) in imported.iter().enumerate() {
            // Errors name the operation, not a `routes[i]` the file lacks.
            let mut route = compile_full(i, &imp.route, &ctx, &invalid).map_err(|e| match e {
                ConfigError::Invalid {
                    file,
                    line,
                    key,
                    message,
                } => ConfigError::Invalid {
                    file,
                    line,
                    key: key.replacen(&format!("routes[{i}]"), &imp.name, 1),
                    message,
                },
                other => other,
            })?;
            route.serve = imp.serve.clone();
            route.origin = Some(imp.name.clone());
            routes.push(route);
        }
        for (i, r) in raw.routes.iter().enumerate() {
            routes.push(compile_full(i, r, &ctx, &invalid)?);
        }
        let names: Vec<_> = imported
            .iter()
            .map(|imp| imp.route.name.as_ref().map(|n| (n, imp.name.clone())))
            .chain(
                raw.routes
                    .iter()
                    .enumerate()
                    .map(|(i, r)| r.name.as_ref().map(|n| (n, format!("routes[{i}]")))),
            )
            .collect();
        name_routes(&mut routes, &names, &invalid)?;
        check_rule_counts(&routes, &invalid)?;
        let proxy = proxy_settings(&raw.proxy, &invalid)?;
        let limits = limit_settings(raw.limits, &invalid)?;
        let http2 = http2_settings(raw.http2, &invalid)?;
        let websocket = websocket_settings(raw.websocket, &invalid)?;
        for (i, r) in routes.iter().enumerate() {
            let whole = r.judged_body_limit();
            if whole > limits.body_memory_per_worker as u64 {
                return Err(invalid(
                    None,
                    "limits.body_memory_per_worker".into(),
                    format!(
                        "{} bytes, less than the {whole} bytes routes[{i}] may read whole: such a body could never be read",
                        limits.body_memory_per_worker
                    ),
                ));
            }
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
            http2,
            websocket,
            proxy,
            demo: raw.demo.as_ref().map(|d| d.listen),
            demo_api_key: raw.demo.as_ref().is_some_and(|d| d.api_key),
            auth,
            access_log: raw.log.access,
            log: log_settings(&raw.log, file),
            upstreams,
            routes,
            openapi,
            waf,
            anomaly: anomaly::anomaly_settings(&raw.anomaly, &invalid)?,
            rate_limit,
            admin,
            cluster,
            response_headers,
            source: file.to_owned(),
            https: raw.listen.https,
            plain_http_port: *raw.listen.plain_http_port.get_ref(),
            https_only: raw.listen.https_only,
            xdp,
            policy,
        })
    }
}

#[cfg(test)]
mod tests;
