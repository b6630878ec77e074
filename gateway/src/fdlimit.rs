//! File descriptors: every proxied request needs two (the client's socket
//! and an upstream socket), so the connection caps are sized against
//! `RLIMIT_NOFILE` at start rather than discovered as EMFILE under load.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Descriptors kept aside for listeners, the ring, BPF maps, logs and the
/// demo backend.
const RESERVED: u64 = 64;

/// What the start-up check found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdBudget {
    /// The soft limit before we raised it.
    pub was: u64,
    /// The soft limit now (the hard limit, if raising worked).
    pub limit: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (what nginx's
/// `worker_rlimit_nofile` and HAProxy do), and reports both.
pub fn raise() -> Result<FdBudget, String> {
    let (soft, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| format!("reading RLIMIT_NOFILE: {e}"))?;
    if soft >= hard {
        return Ok(FdBudget {
            was: soft,
            limit: soft,
        });
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => Ok(FdBudget {
            was: soft,
            limit: hard,
        }),
        Err(e) => Err(format!("raising RLIMIT_NOFILE from {soft} to {hard}: {e}")),
    }
}

/// How many connections per worker fit in `limit` descriptors, with
/// `pooled` idle upstream connections kept across all workers.
pub fn connections_that_fit(limit: u64, workers: usize, pooled: u64) -> usize {
    let per_conn = 2 * workers.max(1) as u64;
    let free = limit.saturating_sub(RESERVED + pooled);
    usize::try_from(free / per_conn)
        .unwrap_or(usize::MAX)
        .max(1)
}

/// Idle upstream connections `cfg` keeps at most, across workers.
fn pooled(cfg: &crate::config::Config) -> u64 {
    cfg.upstreams
        .iter()
        .map(|u| (u.idle_per_server * u.servers.len() * cfg.runtime.workers) as u64)
        .sum()
}

/// Whether a reloaded `cfg`'s upstream pools still leave descriptors for
/// the running connection cap (fitted at start, kept by reloads), or at
/// least as many as `running`'s did (an explicit cap may not fit anyway).
pub fn fits_after_reload(
    running: &crate::config::Config,
    cfg: &crate::config::Config,
) -> Result<(), String> {
    let Ok((limit, _)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return Ok(());
    };
    let rt = &cfg.runtime;
    let fit = connections_that_fit(limit, rt.workers, pooled(cfg));
    let before = connections_that_fit(limit, rt.workers, pooled(running));
    if fit >= rt.max_connections_per_worker || fit >= before {
        return Ok(());
    }
    Err(format!(
        "upstreams: {} idle pooled connections would leave file descriptors for {fit} connections \
         per worker, under the running cap of {}: lower idle_per_server, or restart to refit the cap",
        pooled(cfg),
        rt.max_connections_per_worker
    ))
}

/// Raises the descriptor limit and fits the connection cap to it: the
/// default cap shrinks to what fits, an explicit one that does not fit is
/// kept with a warning (the operator may know better, e.g. few upstream hops).
pub fn fit_connections(cfg: &mut crate::config::Config) {
    let budget = match raise() {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!("{e}");
            return;
        }
    };
    if budget.was != budget.limit {
        tracing::info!(
            "file descriptor limit raised from {} to {}",
            budget.was,
            budget.limit
        );
    }
    let pooled = pooled(cfg);
    let rt = &mut cfg.runtime;
    let fit = connections_that_fit(budget.limit, rt.workers, pooled);
    if rt.max_connections_per_worker <= fit {
        return;
    }
    if rt.max_connections_set {
        tracing::warn!(
            "runtime.max_connections_per_worker = {} with {} workers needs about {} file descriptors \
             (a client and an upstream socket each), but the limit is {}: raise it \
             (ulimit -n, systemd LimitNOFILE=) or lower the cap to {fit}",
            rt.max_connections_per_worker,
            rt.workers,
            2 * rt.max_connections_per_worker * rt.workers,
            budget.limit
        );
    } else {
        tracing::info!(
            "max_connections_per_worker lowered from {} to {fit} to fit the file descriptor limit {}",
            rt.max_connections_per_worker,
            budget.limit
        );
        rt.max_connections_per_worker = fit;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_descriptors_per_connection_after_the_reserve() {
        // 1024 - 64 reserved = 960; 2 workers × 2 fds each = 4 per slot.
        assert_eq!(connections_that_fit(1024, 2, 0), 240);
        // Idle pooled upstream connections hold descriptors too.
        assert_eq!(connections_that_fit(1024, 2, 160), 200);
        // Never zero: a tiny limit still serves one connection.
        assert_eq!(connections_that_fit(10, 4, 0), 1);
    }
}
