//! `[[upstreams]]`: servers, balancing, timeouts, pooling, the retry
//! budget, the circuit breaker, active health checks and outlier ejection.

use super::*;

/// Most `upstreams[].retries`: each retry can repeat a request's effect.
pub(super) const MAX_RETRIES: u32 = 5;

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
pub(super) struct UpstreamFile {
    pub(super) name: Spanned<String>,
    pub(super) servers: Spanned<Vec<SocketAddr>>,
    #[serde(default)]
    pub(super) balance: Balance,
    #[serde(default = "default_connect_ms")]
    pub(super) connect_timeout_ms: u64,
    #[serde(default = "default_response_ms")]
    pub(super) response_timeout_ms: u64,
    #[serde(default = "default_idle_per_server")]
    pub(super) idle_per_server: usize,
    #[serde(default = "default_idle_timeout_ms")]
    pub(super) idle_timeout_ms: u64,
    #[serde(default = "default_retries")]
    pub(super) retries: Spanned<u32>,
    #[serde(default = "default_max_requests")]
    pub(super) max_requests: Spanned<u32>,
    #[serde(default = "default_max_connects")]
    pub(super) max_connects: Spanned<u32>,
    #[serde(default)]
    pub(super) max_uploads: Option<Spanned<u32>>,
    #[serde(default)]
    pub(super) health_check: Option<Spanned<HealthCheckFile>>,
    #[serde(default)]
    pub(super) outlier: OutlierFile,
    #[serde(default)]
    pub(super) tls: Option<Spanned<UpstreamTlsFile>>,
    #[serde(default)]
    pub(super) http2: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UpstreamTlsFile {
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    server_name: Option<String>,
    #[serde(default)]
    client_cert: Option<PathBuf>,
    #[serde(default)]
    client_key: Option<PathBuf>,
}

/// `[upstreams.tls]`: the hop to the upstream over TLS, verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// CA certificates (PEM) the servers' chains must lead to; default:
    /// the system's roots.
    pub ca_file: Option<PathBuf>,
    /// The name sent as SNI and verified in the certificate; default:
    /// each server's IP address (which its certificate must then hold).
    pub server_name: Option<String>,
    /// The gateway's certificate chain and key for mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HealthCheckFile {
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    grpc_service: Option<String>,
    #[serde(default = "default_check_interval")]
    interval_ms: u64,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default = "default_healthy")]
    healthy_threshold: u32,
    #[serde(default = "default_unhealthy")]
    unhealthy_threshold: u32,
    #[serde(default)]
    expect_status: Option<Vec<u16>>,
    #[serde(default)]
    host: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct OutlierFile {
    consecutive_failures: u32,
    base_ejection_ms: u64,
    max_ejection_percent: Spanned<u32>,
}

impl Default for OutlierFile {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection_ms: 30_000,
            max_ejection_percent: Spanned::new(0..0, 10),
        }
    }
}

fn default_max_requests() -> Spanned<u32> {
    Spanned::new(0..0, 1024)
}
fn default_max_connects() -> Spanned<u32> {
    Spanned::new(0..0, 256)
}
fn default_check_interval() -> u64 {
    5_000
}
fn default_healthy() -> u32 {
    2
}
fn default_unhealthy() -> u32 {
    3
}
fn default_expect() -> Vec<u16> {
    vec![200]
}

/// `[upstreams.health_check]`: a request the gateway sends to every server
/// of the upstream on its own, to know a server is down before a client does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// The path asked for (`GET`; on an HTTP/2 upstream, the gRPC health
    /// service's method, for the logs).
    pub path: String,
    /// On an HTTP/2 upstream, the service asked about with the gRPC health
    /// protocol (`grpc.health.v1.Health/Check`; empty: the whole server).
    pub grpc_service: Option<String>,
    /// Time between two checks of one server.
    pub interval_ms: u64,
    /// How long a check may take (connect to the end of the status line).
    pub timeout_ms: u64,
    /// Passing checks in a row that bring a down server back.
    pub healthy_threshold: u32,
    /// Failing checks in a row that take a server out.
    pub unhealthy_threshold: u32,
    /// Statuses that pass (HTTP/1.1 checks).
    pub expect_status: Vec<u16>,
    /// The `Host` sent (default: the server's address).
    pub host: Option<String>,
}

/// `[upstreams.outlier]`: passive ejection (Envoy's outlier detection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outlier {
    /// 5xx answers or failed connects in a row that eject a server (0: never).
    pub consecutive_failures: u32,
    /// The first ejection's length; the n-th lasts n times as long (at most 10).
    pub base_ejection_ms: u64,
    /// Most servers of the upstream ejected at once, in percent of them
    /// (at least one may always be).
    pub max_ejection_percent: u32,
}

pub(super) fn default_retries() -> Spanned<u32> {
    Spanned::new(0..0, 1)
}

pub(super) fn default_connect_ms() -> u64 {
    1_000
}
pub(super) fn default_response_ms() -> u64 {
    15_000
}
pub(super) fn default_idle_per_server() -> usize {
    64
}
/// nginx's upstream `keepalive_timeout` is 60 s; shorter here, so a burst's
/// connections go back within half a minute of it.
pub(super) fn default_idle_timeout_ms() -> u64 {
    30_000
}

/// Validated `[[upstreams]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// Idle keep-alive connections a worker keeps per server whatever the
    /// demand; beyond, it keeps as many as requests are in flight to the
    /// server (a connection coming back is never closed while the load
    /// that opened it lasts).
    pub idle_per_server: usize,
    /// An idle connection unused this long is closed (HAProxy's
    /// `pool-purge-delay`, nginx's `keepalive_timeout`).
    pub idle_timeout_ms: u64,
    /// Further attempts after the first: a connect that failed (any
    /// request), or an idempotent bodiless request that failed before any
    /// response byte.
    pub retries: u32,
    /// Requests in flight to it at most, across workers (circuit breaker).
    pub max_requests: u32,
    /// Connects in progress to it at most, across workers.
    pub max_connects: u32,
    /// Requests whose body still streams from the client, at most, across
    /// workers; they take these places, not `max_requests` ones, so a
    /// trickling upload cannot hold the places other requests need.
    pub max_uploads: u32,
    /// The active health check, if any.
    pub health_check: Option<HealthCheck>,
    /// Passive ejection.
    pub outlier: Outlier,
    /// TLS to the servers (plain HTTP/1.1 without it).
    pub tls: Option<UpstreamTls>,
    /// Speaks HTTP/2 with prior knowledge (h2c): for `grpc` routes.
    pub http2: bool,
}

/// Every `[[upstreams]]` entry, validated: unique names, servers, a bounded
/// retry budget.
pub(super) fn upstream_settings(
    raw: &[UpstreamFile],
    file: &str,
    invalid: &Invalid<'_>,
) -> Result<Vec<UpstreamSettings>, ConfigError> {
    let mut upstreams: Vec<UpstreamSettings> = Vec::new();
    for (i, u) in raw.iter().enumerate() {
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
        let uploads = u.max_uploads.clone().unwrap_or_else(|| {
            // A quarter of `max_requests`: the upstream sees at most 1.25
            // times that many requests at once.
            Spanned::new(0..0, u.max_requests.get_ref().div_ceil(4))
        });
        for (key, v) in [
            ("max_requests", &u.max_requests),
            ("max_connects", &u.max_connects),
            ("max_uploads", &uploads),
        ] {
            if *v.get_ref() == 0 {
                return Err(invalid(
                    Some(v.span()),
                    format!("upstreams[{i}].{key}"),
                    "must be at least 1".into(),
                ));
            }
        }
        if *u.outlier.max_ejection_percent.get_ref() > 100 {
            return Err(invalid(
                Some(u.outlier.max_ejection_percent.span()),
                format!("upstreams[{i}].outlier.max_ejection_percent"),
                "a percentage: 0 to 100".into(),
            ));
        }
        let http2 = u.http2.as_ref().is_some_and(|h| *h.get_ref());
        let health_check = u
            .health_check
            .as_ref()
            .map(|h| health_check(i, h, http2, invalid))
            .transpose()?;
        let tls = u
            .tls
            .as_ref()
            .map(|t| upstream_tls(i, t, file, invalid))
            .transpose()?;
        upstreams.push(UpstreamSettings {
            name,
            servers: u.servers.get_ref().clone(),
            balance: u.balance,
            connect_timeout_ms: u.connect_timeout_ms.max(1),
            response_timeout_ms: u.response_timeout_ms.max(1),
            idle_per_server: u.idle_per_server,
            idle_timeout_ms: u.idle_timeout_ms.max(100),
            retries: *u.retries.get_ref(),
            max_requests: *u.max_requests.get_ref(),
            max_connects: *u.max_connects.get_ref(),
            max_uploads: *uploads.get_ref(),
            health_check,
            outlier: Outlier {
                consecutive_failures: u.outlier.consecutive_failures,
                base_ejection_ms: u.outlier.base_ejection_ms.clamp(100, 3_600_000),
                max_ejection_percent: *u.outlier.max_ejection_percent.get_ref(),
            },
            tls,
            http2,
        });
    }
    Ok(upstreams)
}

/// One `[upstreams.health_check]`, validated.
/// On an HTTP/2 upstream the check speaks the gRPC health protocol
/// (`http2`), which has no path or status of its own to choose.
fn health_check(
    i: usize,
    h: &Spanned<HealthCheckFile>,
    http2: bool,
    invalid: &Invalid<'_>,
) -> Result<HealthCheck, ConfigError> {
    let at = |what: &str| format!("upstreams[{i}].health_check.{what}");
    let bad = |what: &str, why: &str| Err(invalid(Some(h.span()), at(what), why.to_owned()));
    let f = h.get_ref();
    let (path, grpc_service) = match (http2, &f.path, &f.grpc_service) {
        (true, Some(_), _) => {
            return bad(
                "path",
                "an HTTP/2 upstream is checked with the gRPC health protocol \
                 (/grpc.health.v1.Health/Check): name the service with grpc_service \
                 (empty: the whole server), not a path",
            );
        }
        (true, None, service) => {
            let service = service.clone().unwrap_or_default();
            if service.len() > 1024 || service.bytes().any(|b| b < b' ' || b == 0x7f) {
                return bad(
                    "grpc_service",
                    "a service name (e.g. my.package.Orders) of printable characters, at most 1024 bytes",
                );
            }
            ("/grpc.health.v1.Health/Check".to_owned(), Some(service))
        }
        (false, _, Some(_)) => {
            return bad(
                "grpc_service",
                "the gRPC health protocol is spoken to HTTP/2 upstreams only (http2 = true)",
            );
        }
        (false, None, None) => {
            return bad("path", "the path to GET, e.g. /healthz");
        }
        (false, Some(p), None) => (p.clone(), None),
    };
    if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return bad(
            "path",
            "an absolute path without spaces or control characters, e.g. /healthz",
        );
    }
    if http2 && (f.expect_status.is_some() || f.host.is_some()) {
        return bad(
            if f.host.is_some() {
                "host"
            } else {
                "expect_status"
            },
            "a gRPC health check passes on SERVING; expect_status and host are for HTTP/1.1 checks",
        );
    }
    let expect_status = f.expect_status.clone().unwrap_or_else(default_expect);
    if f.interval_ms < 100 {
        return bad("interval_ms", "at least 100");
    }
    // Default: a second, or the interval when that is shorter.
    let timeout_ms = f.timeout_ms.unwrap_or(f.interval_ms.min(1_000));
    if timeout_ms == 0 || timeout_ms > f.interval_ms.min(10_000) {
        return bad("timeout_ms", "1 to interval_ms, at most 10000");
    }
    if f.healthy_threshold == 0 || f.unhealthy_threshold == 0 {
        return bad("healthy_threshold", "both thresholds must be at least 1");
    }
    if expect_status.is_empty() || expect_status.iter().any(|s| !(100..=599).contains(s)) {
        return bad("expect_status", "status codes from 100 to 599");
    }
    if let Some(host) = &f.host
        && (host.is_empty() || host.bytes().any(|b| b <= b' ' || b == 0x7f))
    {
        return bad("host", "a host name without spaces or control characters");
    }
    Ok(HealthCheck {
        path,
        grpc_service,
        interval_ms: f.interval_ms,
        timeout_ms,
        healthy_threshold: f.healthy_threshold,
        unhealthy_threshold: f.unhealthy_threshold,
        expect_status,
        host: f.host.clone(),
    })
}

/// One `[upstreams.tls]`, validated: a name rustls can verify, a client
/// certificate only with its key. The files are read when the gateway
/// builds its TLS clients (start and reload), where their errors are named.
fn upstream_tls(
    i: usize,
    t: &Spanned<UpstreamTlsFile>,
    file: &str,
    invalid: &Invalid<'_>,
) -> Result<UpstreamTls, ConfigError> {
    let at = |what: &str| format!("upstreams[{i}].tls.{what}");
    let f = t.get_ref();
    if let Some(name) = &f.server_name
        && rustls_pki_types::ServerName::try_from(name.as_str()).is_err()
    {
        return Err(invalid(
            Some(t.span()),
            at("server_name"),
            format!("`{name}` is not a DNS name or an IP address"),
        ));
    }
    let client_cert = match (&f.client_cert, &f.client_key) {
        (Some(c), Some(k)) => Some((relative_to(file, c), relative_to(file, k))),
        (None, None) => None,
        _ => {
            return Err(invalid(
                Some(t.span()),
                at("client_cert"),
                "client_cert and client_key go together (mutual TLS)".into(),
            ));
        }
    };
    Ok(UpstreamTls {
        ca_file: f.ca_file.as_ref().map(|p| relative_to(file, p)),
        server_name: f.server_name.clone(),
        client_cert,
    })
}
