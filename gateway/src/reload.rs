//! Hot reload (SIGHUP, or `gateway reload` through the admin API): re-reads
//! the configuration file and everything it names (certificates, key file,
//! issuer key files, schemas and OpenAPI documents), builds a whole new
//! snapshot beside the running one, and publishes it only once every part
//! loaded. A bad file changes nothing: the running configuration keeps
//! serving and the error names the file and line.
//!
//! Connections take the new snapshot up at their next request; a request
//! in flight finishes on the one it started with. The XDP program stays
//! attached: its lists and SYN budget change in place. Settings a running
//! process cannot change (listeners, workers, the admin API, the access
//! log, Redis, introspection, fetched JWT issuers) need a restart: a reload
//! that changes one is refused, naming it.

use std::{
    path::Path,
    sync::{Arc, Mutex},
};

use crate::{
    config::{Config, ConfigError, KeySource},
    control::issuer_file_keys,
    control::verdicts::Book,
    snapshot::Snapshot,
    stages::auth::{api_key::KeyRing, jwt::keys::KeySet},
    tls,
    worker::Shared,
    xdp::XdpError,
};

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file does not read or validate (`file:line: key: what`).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// It changes a setting only a restart can change.
    #[error("{key} changed: {why}; restart the gateway to change it (nothing was reloaded)")]
    NeedsRestart {
        /// The configuration key.
        key: String,
        /// What holds it fixed.
        why: &'static str,
    },
    /// A certificate, the key file or an issuer's keys do not load.
    #[error("{0} (nothing was reloaded)")]
    Load(String),
    /// The kernel refused the new lists (the old ones were put back).
    #[error("updating the XDP maps: {0} (nothing was reloaded)")]
    Kernel(#[from] XdpError),
    /// The verdict book is unusable.
    #[error("the verdict book is unusable (nothing was reloaded)")]
    Book,
}

/// What a reload did, for the log and the admin API's answer.
#[derive(Debug, Clone)]
pub struct Reloaded {
    /// The file read.
    pub source: String,
    /// One line per part that changed or was re-read.
    pub lines: Vec<String>,
}

/// Where the admin API's `POST /reload` sends its ask: the main thread
/// reloads (it owns the running configuration) and answers on the channel
/// inside.
pub type Ask = std::sync::mpsc::SyncSender<Result<Reloaded, String>>;

/// Reloads from `path` (the embedded default without one) over `running`,
/// and returns the configuration now in force with what changed.
pub fn reload(
    path: Option<&Path>,
    running: &Config,
    shared: &Shared,
    book: &Mutex<Book>,
) -> Result<(Config, Reloaded), ReloadError> {
    let mut next = match path {
        Some(p) => Config::load(p)?,
        None => Config::embedded()?,
    };
    needs_restart(running, &next)?;
    crate::demo::demo_keys(&mut next).map_err(ReloadError::Load)?;
    // The connection caps fitted to RLIMIT_NOFILE at start still hold, if
    // the new pools leave room for them.
    next.runtime = running.runtime;
    crate::fdlimit::fits_after_reload(running, &next).map_err(ReloadError::Load)?;

    let keys = KeyRing::load_configured(
        next.auth.key_file.as_deref(),
        next.auth.allow_empty_key_file,
    )
    .map_err(|e| ReloadError::Load(e.to_string()))?;
    // File and secret issuers are read again; fetched ones keep the keys
    // their fetcher holds (their settings cannot change without a restart).
    let mut files: Vec<Option<Arc<KeySet>>> = Vec::new();
    for (i, s) in next.auth.jwt.iter().enumerate() {
        files.push(match s.source {
            KeySource::File(_) | KeySource::Secret(_) => {
                Some(Arc::new(issuer_file_keys(i, s).map_err(ReloadError::Load)?))
            }
            KeySource::Url(_) | KeySource::Discovery => None,
        });
    }
    let upstream_tls =
        crate::proxy::tls::client_configs(&next.upstreams).map_err(ReloadError::Load)?;
    let certs = tls::certificates(&next, true).map_err(|e| ReloadError::Load(e.to_string()))?;
    let mut server = tls::server_config(&next.tls, &certs, next.http2.enabled)
        .map_err(|e| ReloadError::Load(format!("tls: {e}")))?;
    let current = shared.published.current();
    if running.tls.session_cache == next.tls.session_cache
        && running.tls.tickets == next.tls.tickets
    {
        server = tls::keep_sessions(server, &current.tls);
    }

    let mut lines = changes(running, &next, &keys, certs.len());
    // Made before the book's lock is taken: it may resolve names.
    let shield = crate::control::verdicts::Shield::of(&next);
    {
        let mut book = book.lock().map_err(|_| ReloadError::Book)?;
        book.reconfigure(running, &next, shield)?;
    }
    // Before the snapshot: a worker that meets it finds its upstreams' state.
    shared.health.sync(&next.upstreams, upstream_tls);
    let keys = Arc::new(keys);
    let published = next.clone();
    shared.published.update(move |cur| {
        let jwks = files
            .into_iter()
            .enumerate()
            .map(|(i, f)| f.unwrap_or_else(|| cur.jwks.get(i).cloned().unwrap_or_default()))
            .collect();
        Snapshot::new(published, server, keys, jwks)
    });
    lines.push(format!(
        "published as generation {}",
        shared.published.generation()
    ));
    let source = next.source.clone();
    Ok((next, Reloaded { source, lines }))
}

/// The first setting `next` changes that a running gateway cannot.
fn needs_restart(old: &Config, new: &Config) -> Result<(), ReloadError> {
    let refuse = |key: &str, why| {
        Err(ReloadError::NeedsRestart {
            key: key.to_owned(),
            why,
        })
    };
    const LISTENER: &str = "the workers' listeners are bound at start";
    if old.https != new.https {
        return refuse("listen.https", LISTENER);
    }
    if old.plain_http_port != new.plain_http_port
        || old.https_only != new.https_only
        || old.redirect_plain_http != new.redirect_plain_http
    {
        return refuse(
            "listen.plain_http_port, https_only or redirect_plain_http",
            LISTENER,
        );
    }
    let (o, n) = (&old.runtime, &new.runtime);
    if o.workers != n.workers
        || o.pin_cpus != n.pin_cpus
        || o.max_connections_set != n.max_connections_set
        || (n.max_connections_set && o.max_connections_per_worker != n.max_connections_per_worker)
    {
        return refuse("runtime", "worker threads start once");
    }
    let (o, n) = (&old.xdp, &new.xdp);
    if o.enabled != n.enabled
        || o.interface != n.interface
        || o.mode != n.mode
        || o.syn_budget != n.syn_budget
    {
        return refuse(
            "xdp.enabled, interface, mode or syn_budget",
            "the program is attached once and stays attached across reloads",
        );
    }
    if old.admin != new.admin {
        return refuse("admin", "the admin API is bound at start");
    }
    if old.rate_limit.ipv6_prefix != new.rate_limit.ipv6_prefix {
        return refuse(
            "rate_limit.ipv6_prefix",
            "verdicts, counts and the kernel's keys are made by it",
        );
    }
    if old.cluster != new.cluster
        || old.rate_limit.shared != new.rate_limit.shared
        || old.rate_limit.table_entries != new.rate_limit.table_entries
    {
        return refuse(
            "cluster, rate_limit.backend or rate_limit.table_entries",
            "the bucket table and the Redis link are made at start",
        );
    }
    if old.access_log != new.access_log || old.log != new.log {
        return refuse("log", "the access log's writer opens at start");
    }
    if old.demo != new.demo {
        return refuse("demo", "the demo backend starts once");
    }
    if old.anomaly != new.anomaly {
        return refuse("anomaly", "the detector's baselines are built from start");
    }
    if old.auth.introspection != new.auth.introspection {
        return refuse("auth.introspection", "the introspection clients start once");
    }
    let fetched = |c: &Config| {
        c.auth
            .jwt
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s.source, KeySource::Url(_) | KeySource::Discovery))
            .map(|(i, s)| (i, s.clone()))
            .collect::<Vec<_>>()
    };
    if old.auth.jwt.len() != new.auth.jwt.len() || fetched(old) != fetched(new) {
        return refuse(
            "auth.jwt",
            "issuers are numbered and fetched issuers get a thread each at start \
             (file and secret issuers may change their settings)",
        );
    }
    Ok(())
}

/// Lines saying what the reload changes.
fn changes(old: &Config, new: &Config, keys: &KeyRing, certs: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let count = |what: &str, a: usize, b: usize| {
        if a == b {
            format!("{what}: {b}")
        } else {
            format!("{what}: {a} -> {b}")
        }
    };
    lines.push(count("routes", old.routes.len(), new.routes.len()));
    lines.push(count("upstreams", old.upstreams.len(), new.upstreams.len()));
    lines.push(format!("certificates re-read: {certs}"));
    if let Some(p) = &new.auth.key_file {
        lines.push(format!(
            "key file {} re-read: {} consumers, {} keys",
            p.display(),
            keys.consumers().len(),
            keys.key_count()
        ));
    }
    if old.policy.allow != new.policy.allow || old.policy.deny != new.policy.deny {
        lines.push(format!(
            "policy: allow {} -> {} CIDRs, deny {} -> {} CIDRs (updated in place)",
            old.policy.allow.len(),
            new.policy.allow.len(),
            old.policy.deny.len(),
            new.policy.deny.len()
        ));
    }
    if (old.xdp.syn_rate, old.xdp.syn_burst) != (new.xdp.syn_rate, new.xdp.syn_burst) {
        lines.push(format!(
            "SYN budget: {}/s burst {} -> {}/s burst {} (updated in place)",
            old.xdp.syn_rate, old.xdp.syn_burst, new.xdp.syn_rate, new.xdp.syn_burst
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "[listen]\nhttps = \"127.0.0.1:8443\"\n[xdp]\nenabled = false\n";

    fn parse(text: &str) -> Config {
        Config::parse(text, "t.toml").expect("valid")
    }

    fn refused(old: &str, new: &str) -> String {
        match needs_restart(&parse(old), &parse(new)) {
            Err(e) => e.to_string(),
            Ok(()) => panic!("allowed:\n{new}"),
        }
    }

    #[test]
    fn listener_and_worker_changes_need_a_restart() {
        let e = refused(
            BASE,
            "[listen]\nhttps = \"127.0.0.1:9443\"\n[xdp]\nenabled = false\n",
        );
        assert!(e.starts_with("listen.https changed"), "{e}");
        let e = refused(BASE, &format!("{BASE}[runtime]\nworkers = 7\n"));
        assert!(e.starts_with("runtime changed"), "{e}");
        let e = refused(BASE, &format!("{BASE}[admin]\nlisten = \"127.0.0.1:1\"\n"));
        assert!(e.starts_with("admin changed"), "{e}");
        assert!(e.ends_with("(nothing was reloaded)"), "{e}");
    }

    #[test]
    fn policy_syn_budget_and_limits_reload() {
        let new = format!(
            "{BASE}syn_rate = 5\nsyn_burst = 3\n[policy]\ndeny = [\"198.18.0.0/24\"]\n\
             [limits]\nheader_timeout_ms = 900\n"
        );
        needs_restart(&parse(BASE), &parse(&new)).expect("reloadable");
    }
}
