//! `[[upstreams]]`: servers, balancing, timeouts, pooling and the retry budget.

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
    #[serde(default = "default_retries")]
    pub(super) retries: Spanned<u32>,
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

/// Every `[[upstreams]]` entry, validated: unique names, servers, a bounded
/// retry budget.
pub(super) fn upstream_settings(
    raw: &[UpstreamFile],
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
    Ok(upstreams)
}
