//! The configuration as the request path uses it: compiled once, immutable,
//! and published to the workers whole. A reload builds a new snapshot beside
//! the old one and publishes it; a connection picks the new one up between
//! two requests with one atomic load, never a lock on the request path.

use std::sync::{
    Arc, RwLock,
    atomic::{AtomicU64, Ordering},
};

use crate::{
    config::{Config, RouteAuth},
    filters::ResponseFilters,
    policy::CidrSet,
    route::RouteTable,
    stages::{auth::api_key::KeyRing, authz::Rule},
};

/// Everything a request needs from the configuration, compiled.
pub struct Snapshot {
    /// Consumers and API key hashes (the key file's last good version).
    pub keys: Arc<KeyRing>,
    /// Each route's authorization rule, by route index.
    pub rules: Vec<Rule>,
    /// Each consumer's role bits, by consumer index.
    pub consumer_roles: Vec<u64>,
    /// `www-authenticate` lines for a 401.
    pub challenge: Vec<u8>,
    /// The validated configuration it was built from.
    pub cfg: Config,
    /// Compiled routes, each with its stage plan.
    pub routes: RouteTable,
    /// TLS configuration (certificates, resumption).
    pub tls: Arc<rustls::ServerConfig>,
    /// Peers whose forwarding headers are kept.
    pub trusted_proxies: CidrSet,
    /// Headers added to every response.
    pub filters: ResponseFilters,
}

impl Snapshot {
    /// Compiles a configuration with its TLS settings and key ring.
    pub fn new(cfg: Config, tls: Arc<rustls::ServerConfig>, keys: Arc<KeyRing>) -> Self {
        // Role names become bit positions (the configuration allows at most
        // 64 distinct roles across routes).
        let mut roles: Vec<&str> = Vec::new();
        for r in &cfg.routes {
            for role in &r.roles {
                if !roles.contains(&role.as_str()) {
                    roles.push(role);
                }
            }
        }
        let bits = |names: &[String]| {
            names
                .iter()
                .filter_map(|n| roles.iter().position(|r| r == n))
                .fold(0u64, |acc, i| acc | 1 << i)
        };
        let rules = cfg
            .routes
            .iter()
            .map(|r| Rule {
                need_roles: bits(&r.roles),
                // Unknown consumer ids simply match nobody (the key file
                // may not list them yet).
                consumers: (!r.consumers.is_empty()).then(|| {
                    keys.consumers()
                        .iter()
                        .enumerate()
                        .filter(|(_, c)| r.consumers.contains(&c.id))
                        .map(|(i, _)| i)
                        .collect()
                }),
            })
            .collect();
        let consumer_roles = keys.consumers().iter().map(|c| bits(&c.roles)).collect();
        let uses_keys = cfg
            .routes
            .iter()
            .any(|r| matches!(&r.auth, RouteAuth::Required(_)));
        let challenge = if uses_keys {
            format!(
                "www-authenticate: ApiKey realm=\"gateway\", header=\"{}\"\r\n",
                cfg.auth.key_header
            )
            .into_bytes()
        } else {
            Vec::new()
        };
        Self {
            keys,
            rules,
            consumer_roles,
            challenge,
            routes: RouteTable::new(&cfg.routes),
            trusted_proxies: CidrSet::new(&cfg.proxy.trusted_proxies),
            filters: ResponseFilters::new(&cfg),
            tls,
            cfg,
        }
    }

    /// The same configuration with another version of the key file.
    pub fn with_keys(&self, keys: Arc<KeyRing>) -> Self {
        Self::new(self.cfg.clone(), self.tls.clone(), keys)
    }
}

/// The snapshot in force, behind a generation counter.
pub struct Published {
    current: RwLock<Arc<Snapshot>>,
    generation: AtomicU64,
}

impl Published {
    /// Publishes the first snapshot (generation 0).
    pub fn new(first: Snapshot) -> Self {
        Self {
            current: RwLock::new(Arc::new(first)),
            generation: AtomicU64::new(0),
        }
    }

    /// The current generation: compare with the one held to see whether to [`Published::load`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current snapshot and its generation.
    pub fn load(&self) -> (u64, Arc<Snapshot>) {
        // The lock is taken only when the generation changed (a reload),
        // or once per worker at start; a poisoned lock still holds a
        // complete snapshot, since publish only swaps an Arc.
        let guard = self.current.read().unwrap_or_else(|e| e.into_inner());
        (self.generation(), guard.clone())
    }

    /// The snapshot in force now.
    pub fn current(&self) -> Arc<Snapshot> {
        self.load().1
    }

    /// Replaces the snapshot; connections take it up at their next request.
    pub fn publish(&self, next: Snapshot) {
        let mut guard = self.current.write().unwrap_or_else(|e| e.into_inner());
        *guard = Arc::new(next);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}
