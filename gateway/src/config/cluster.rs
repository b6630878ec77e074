//! `[cluster]`: the Redis several gateways share limits and verdicts
//! through. Never a home-made cluster: Redis is the only shared state.

use super::*;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct ClusterFile {
    #[serde(default)]
    redis: Option<Spanned<String>>,
    #[serde(default)]
    sync_ms: Option<Spanned<u64>>,
    #[serde(default)]
    on_failure: OnFailure,
}

/// What limited routes do while Redis is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Each gateway keeps counting on its own (limits become per gateway).
    #[default]
    Open,
    /// Limited routes answer 503 `rate_limit.unavailable`.
    Closed,
}

/// Validated `[cluster]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// `redis://host:port/db`; `None`: this gateway stands alone.
    pub redis: Option<String>,
    /// How often counts go to Redis and the cluster's come back.
    pub sync_ms: u64,
    /// What limited routes do while Redis is unreachable.
    pub on_failure: OnFailure,
}

pub(super) fn cluster_settings(
    c: &ClusterFile,
    invalid: &Invalid<'_>,
) -> Result<ClusterSettings, ConfigError> {
    let redis = match &c.redis {
        None => None,
        Some(u) => {
            let url = u.get_ref();
            if !url.starts_with("redis://") {
                // Only the scheme: the rest may hold a password, and this
                // message reaches logs and `POST /reload` answers.
                let scheme = url.split_once("://").map_or("no scheme", |(s, _)| s);
                return Err(invalid(
                    Some(u.span()),
                    "cluster.redis".into(),
                    format!(
                        "the URL's scheme is `{scheme}`: give redis://[:password@]host:port[/db] (TLS to Redis is not supported: keep it on a private network)"
                    ),
                ));
            }
            Some(url.clone())
        }
    };
    let sync_ms = match &c.sync_ms {
        None => 100,
        Some(s) if (10..=5000).contains(s.get_ref()) => *s.get_ref(),
        Some(s) => {
            return Err(invalid(
                Some(s.span()),
                "cluster.sync_ms".into(),
                "must be 10 to 5000".into(),
            ));
        }
    };
    Ok(ClusterSettings {
        redis,
        sync_ms,
        on_failure: c.on_failure,
    })
}
