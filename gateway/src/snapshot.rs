//! The configuration as the request path uses it: compiled once, immutable,
//! and published to the workers whole. A reload builds a new snapshot beside
//! the old one and publishes it; a connection picks the new one up between
//! two requests with one atomic load, never a lock on the request path.

use std::sync::{
    Arc, RwLock,
    atomic::{AtomicU64, Ordering},
};

use crate::{
    addr::CidrSet,
    config::{Authenticator, Config, RouteAuth, RouteSettings},
    filters::{Headers, ResponseFilters},
    route::{Route, RouteTable},
    stages::{
        auth::{
            api_key::KeyRing,
            jwt::{Issuer, Vocabulary, keys::KeySet},
        },
        authz::Rule,
    },
};

/// Everything a request needs from the configuration, compiled.
pub struct Snapshot {
    /// Consumers and API key hashes (the key file's last good version).
    pub keys: Arc<KeyRing>,
    /// JWT issuers, compiled, by index.
    pub issuers: Vec<Issuer>,
    /// Each issuer's key set (last good version), by issuer index.
    pub jwks: Vec<Arc<KeySet>>,
    /// Role, scope and claim-rule names as bit positions.
    pub vocab: Vocabulary,
    /// Each consumer's role bits, by consumer index.
    pub consumer_roles: Vec<u64>,
    /// `www-authenticate` lines for a 401 without credentials.
    pub challenge: Vec<u8>,
    /// The validated configuration it was built from.
    pub cfg: Config,
    /// The routes, compiled, in the order they are tried.
    pub routes: RouteTable,
    /// TLS configuration (certificates, resumption).
    pub tls: Arc<rustls::ServerConfig>,
    /// Peers whose forwarding headers are kept.
    pub trusted_proxies: CidrSet,
    /// Headers added to every response.
    pub filters: ResponseFilters,
    /// The configuration's number, rising with each reload (a new key
    /// file or key set keeps it): what the workers' token caches and
    /// upstream pools follow.
    pub epoch: u64,
}

/// The last snapshot number given out.
static EPOCH: AtomicU64 = AtomicU64::new(0);

impl Snapshot {
    /// Whether `ip` is one of the trusted proxies (`proxy.trusted_proxies`),
    /// whose forwarding headers are kept and whose own address is never
    /// counted, limited or sentenced.
    pub fn is_trusted_proxy(&self, ip: std::net::IpAddr) -> bool {
        self.trusted_proxies.contains(&crate::addr::source_addr(ip))
    }

    /// Compiles a configuration with its TLS settings, key ring and JWT key
    /// sets (missing sets start empty and not loaded), under a new epoch.
    pub fn new(
        cfg: Config,
        tls: Arc<rustls::ServerConfig>,
        keys: Arc<KeyRing>,
        jwks: Vec<Arc<KeySet>>,
    ) -> Self {
        let epoch = EPOCH.fetch_add(1, Ordering::Relaxed) + 1;
        Self::build(cfg, tls, keys, jwks, epoch)
    }

    fn build(
        cfg: Config,
        tls: Arc<rustls::ServerConfig>,
        keys: Arc<KeyRing>,
        mut jwks: Vec<Arc<KeySet>>,
        epoch: u64,
    ) -> Self {
        let vocab = vocabulary(&cfg);
        let routes = RouteTable::new(
            cfg.routes
                .iter()
                .enumerate()
                .map(|(index, r)| Route {
                    index,
                    settings: r.clone(),
                    rule: rule(r, &vocab, &keys),
                    headers: Headers::of_route(&cfg, r),
                })
                .collect(),
        );
        let consumer_roles = keys
            .consumers()
            .iter()
            .map(|c| Vocabulary::bits(&vocab.roles, &c.roles))
            .collect();
        jwks.resize_with(cfg.auth.jwt.len(), Arc::default);
        Self {
            keys,
            issuers: cfg.auth.jwt.iter().map(Issuer::new).collect(),
            jwks,
            challenge: challenge(&cfg),
            vocab,
            consumer_roles,
            routes,
            trusted_proxies: CidrSet::new(&cfg.proxy.trusted_proxies),
            filters: ResponseFilters::new(&cfg),
            tls,
            cfg,
            epoch,
        }
    }

    /// The same configuration with another version of the key file (the
    /// same epoch: token caches stay, they depend on the configuration).
    pub fn with_keys(&self, keys: Arc<KeyRing>) -> Self {
        let (cfg, tls, jwks) = (self.cfg.clone(), self.tls.clone(), self.jwks.clone());
        Self::build(cfg, tls, keys, jwks, self.epoch)
    }

    /// The same configuration with another key set for issuer `i`.
    pub fn with_jwks(&self, i: usize, set: Arc<KeySet>) -> Self {
        let mut jwks = self.jwks.clone();
        if let Some(slot) = jwks.get_mut(i) {
            *slot = set;
        }
        // The same epoch: cached verifications name the key set's revision.
        let (cfg, tls, keys) = (self.cfg.clone(), self.tls.clone(), self.keys.clone());
        Self::build(cfg, tls, keys, jwks, self.epoch)
    }

    /// The name of the JWT issuer or introspection endpoint a token's
    /// issuer index names (introspection endpoints follow the issuers).
    pub fn token_issuer_name(&self, issuer: usize) -> &str {
        let auth = &self.cfg.auth;
        match auth.jwt.get(issuer) {
            Some(j) => &j.name,
            None => auth
                .introspection
                .get(issuer - auth.jwt.len())
                .map_or("", |e| e.name.as_str()),
        }
    }
}

/// A route's authorization rule as bits of `vocab`.
fn rule(r: &RouteSettings, vocab: &Vocabulary, keys: &KeyRing) -> Rule {
    let attr_bits = vocab
        .attrs
        .iter()
        .enumerate()
        .filter(|(_, (path, values))| {
            r.claims
                .iter()
                .any(|(c, v)| c.split('.').eq(path.iter().map(String::as_str)) && v == values)
        })
        .fold(0u64, |acc, (i, _)| acc | 1 << i);
    Rule {
        need_roles: Vocabulary::bits(&vocab.roles, &r.roles),
        need_scopes: Vocabulary::bits(&vocab.scopes, &r.scopes),
        need_attrs: attr_bits,
        // Unknown consumer ids simply match nobody (the key file may not
        // list them yet).
        consumers: (!r.consumers.is_empty()).then(|| {
            keys.consumers()
                .iter()
                .enumerate()
                .filter(|(_, c)| r.consumers.contains(&c.id))
                .map(|(i, _)| i)
                .collect()
        }),
    }
}

/// Every role, scope and claim rule routes name, each given a bit (the
/// configuration allows at most 64 of each).
fn vocabulary(cfg: &Config) -> Vocabulary {
    let mut v = Vocabulary::default();
    for r in &cfg.routes {
        for role in &r.roles {
            if !v.roles.contains(role) {
                v.roles.push(role.clone());
            }
        }
        for scope in &r.scopes {
            if !v.scopes.contains(scope) {
                v.scopes.push(scope.clone());
            }
        }
        for (claim, values) in &r.claims {
            let rule = (
                claim.split('.').map(str::to_owned).collect(),
                values.clone(),
            );
            if !v.attrs.contains(&rule) {
                v.attrs.push(rule);
            }
        }
    }
    v
}

/// `www-authenticate` for a 401 without credentials: one challenge per
/// scheme routes use (RFC 9110 §11.6.1).
fn challenge(cfg: &Config) -> Vec<u8> {
    let mut api_key = false;
    let mut bearer = false;
    for r in &cfg.routes {
        if let RouteAuth::Required(list) = &r.auth {
            for a in list {
                match a {
                    Authenticator::ApiKey => api_key = true,
                    Authenticator::Jwt(_) | Authenticator::Introspect(_) => bearer = true,
                }
            }
        }
    }
    let mut out = Vec::new();
    if api_key {
        out.extend_from_slice(
            format!(
                "www-authenticate: ApiKey realm=\"gateway\", header=\"{}\"\r\n",
                cfg.auth.key_header
            )
            .as_bytes(),
        );
    }
    if bearer {
        out.extend_from_slice(b"www-authenticate: Bearer realm=\"gateway\"\r\n");
    }
    out
}

/// The snapshot in force, behind a generation counter.
pub struct Published {
    current: RwLock<Arc<Snapshot>>,
    generation: AtomicU64,
    /// Serialises read-modify-publish (key file reloads on the main
    /// thread, key set fetches on their threads) so no update is lost.
    updating: std::sync::Mutex<()>,
}

impl Published {
    /// Publishes the first snapshot (generation 0).
    pub fn new(first: Snapshot) -> Self {
        Self {
            current: RwLock::new(Arc::new(first)),
            generation: AtomicU64::new(0),
            updating: std::sync::Mutex::new(()),
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

    /// Publishes `change(current)`, with no other update in between.
    pub fn update(&self, change: impl FnOnce(&Snapshot) -> Snapshot) {
        let _one_at_a_time = self.updating.lock().unwrap_or_else(|e| e.into_inner());
        let next = change(&self.current());
        self.publish(next);
    }

    /// Replaces the snapshot; connections take it up at their next request.
    pub fn publish(&self, next: Snapshot) {
        let mut guard = self.current.write().unwrap_or_else(|e| e.into_inner());
        *guard = Arc::new(next);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}
