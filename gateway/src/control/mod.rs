//! Work that must not run on the request path, done on the main thread's
//! tick: the workers hand it events with a bounded `try_send` (never
//! waiting), it keeps per-source counts (which the rate-limit stage will
//! turn into kernel verdicts), and it re-reads the key file and issuer key
//! files when they change. Issuer keys are loaded first here at start, and
//! fetched over HTTPS by a thread per URL issuer.
//!
//! Beside the tick: `escalate` (offences into verdicts), `verdicts` (the
//! book of verdicts in force, shared with the admin API, and the ones the
//! workers enforce request by request) and `cluster` (Redis: limits and
//! verdicts shared with other gateways).

pub mod cluster;
pub mod escalate;
pub mod verdicts;

use std::{
    collections::HashMap,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
    },
    time::{Duration, SystemTime},
};

use crate::{
    config::{JwtSettings, KeySource},
    control::escalate::{Escalation, Offence, Sentence},
    fetch::Https,
    snapshot::Published,
    stages::auth::{api_key::KeyRing, jwt::keys::KeySet},
};

/// Something a worker saw that the control side counts.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A worker's per-source and per-consumer counts of the last second.
    Traffic(Box<crate::observe::anomaly::Batch>),
    /// A request from `source` failed authentication (a 401).
    AuthFailed {
        /// The client address (the TCP peer, IPv4-mapped addresses as IPv4).
        source: IpAddr,
    },
    /// A request from `source` was refused by a rate limit (a 429).
    RateLimited {
        /// The client address (the TCP peer, IPv4-mapped addresses as IPv4).
        source: IpAddr,
    },
    /// The WAF detected an attack in a request from `source`, or its
    /// HTTP/2 connection was closed for abuse.
    Attack {
        /// The client address (the TCP peer, IPv4-mapped addresses as IPv4).
        source: IpAddr,
    },
    /// A token named a key the issuer's key set lacks: fetch it again.
    UnknownKid {
        /// The issuer, by index.
        issuer: usize,
    },
}

/// The workers' side of the event queue.
pub struct Events {
    tx: SyncSender<Event>,
    dropped: AtomicU64,
}

/// Events queued at most before workers drop them (and count the drops).
const QUEUE: usize = 65_536;

impl Events {
    /// A queue and its receiving end.
    pub fn new() -> (Self, Receiver<Event>) {
        let (tx, rx) = sync_channel(QUEUE);
        (
            Self {
                tx,
                dropped: AtomicU64::new(0),
            },
            rx,
        )
    }

    /// Queues an event without waiting; a full queue drops it.
    pub fn report(&self, e: Event) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(e) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Events dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Authentication failures per source address, bounded in memory.
#[derive(Debug, Default)]
pub struct AuthFailures {
    total: HashMap<IpAddr, u64>,
    recent: HashMap<IpAddr, u64>,
}

/// Sources remembered at most; beyond it the quietest half is forgotten.
const MAX_SOURCES: usize = 100_000;

impl AuthFailures {
    /// Counts one failure from `source`.
    pub fn record(&mut self, source: IpAddr) {
        if self.total.len() >= MAX_SOURCES && !self.total.contains_key(&source) {
            let mut counts: Vec<u64> = self.total.values().copied().collect();
            let (_, median, _) = counts.select_nth_unstable(MAX_SOURCES / 2);
            let median = *median;
            self.total.retain(|_, n| *n > median);
        }
        *self.total.entry(source).or_default() += 1;
        // Bounded too: with `stats_interval_secs = 0` nothing drains it but
        // `forget_recent`, and IPv6 gives a client endless addresses.
        if self.recent.len() < MAX_SOURCES || self.recent.contains_key(&source) {
            *self.recent.entry(source).or_default() += 1;
        }
    }

    /// Drops the sources counted since the last [`AuthFailures::take_recent`]
    /// (nobody will log them: `stats_interval_secs = 0`).
    pub fn forget_recent(&mut self) {
        self.recent.clear();
    }

    /// All failures counted from `source` (the counter the escalation to a
    /// kernel verdict reads).
    pub fn count(&self, source: IpAddr) -> u64 {
        self.total.get(&source).copied().unwrap_or(0)
    }

    /// The sources that failed since the last call, most failures first.
    pub fn take_recent(&mut self) -> Vec<(IpAddr, u64)> {
        let mut v: Vec<_> = self.recent.drain().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }
}

/// Handles every queued event: counts failures and refusals (at `now`,
/// in seconds), passes on requests for fresh keys; returns the verdicts
/// earned.
pub fn drain(
    rx: &Receiver<Event>,
    failures: &mut AuthFailures,
    escalation: &mut Escalation,
    now: u64,
    mut unknown_kid: impl FnMut(usize),
    mut traffic: impl FnMut(crate::observe::anomaly::Batch),
) -> Vec<Sentence> {
    let mut sentences = Vec::new();
    while let Ok(e) = rx.try_recv() {
        let sentence = match e {
            Event::AuthFailed { source } => {
                failures.record(source);
                escalation.record(source, Offence::AuthFailed, now)
            }
            Event::RateLimited { source } => escalation.record(source, Offence::RateLimited, now),
            Event::Attack { source } => escalation.record(source, Offence::Attack, now),
            Event::UnknownKid { issuer } => {
                unknown_kid(issuer);
                None
            }
            Event::Traffic(batch) => {
                traffic(*batch);
                None
            }
        };
        sentences.extend(sentence);
    }
    sentences
}

/// A watched file's last version seen: its modification time and size (a
/// change of either is a new version).
struct FileVersion {
    path: PathBuf,
    seen: Option<(SystemTime, u64)>,
}

impl FileVersion {
    /// Watches `path`, whose current version counts as seen.
    fn new(path: &Path) -> Self {
        Self {
            seen: stamp(path),
            path: path.to_owned(),
        }
    }

    /// Whether there is a version not seen yet; it counts as seen from
    /// now on, so a broken one is reported once. (SIGHUP reloads
    /// everything through `reload`.)
    fn changed(&mut self) -> bool {
        let now = stamp(&self.path);
        let changed = now != self.seen;
        self.seen = now;
        changed
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Watches the key file and publishes a new snapshot when it changes.
pub struct KeyWatch {
    file: FileVersion,
}

impl KeyWatch {
    /// Watches `path`, whose current version is already loaded.
    pub fn new(path: &Path) -> Self {
        Self {
            file: FileVersion::new(path),
        }
    }

    /// Reloads when the file changed. A broken file keeps the last good
    /// key set.
    pub fn poll(&mut self, published: &Published) {
        if !self.file.changed() {
            return;
        }
        let allow_empty = published.current().cfg.auth.allow_empty_key_file;
        match KeyRing::load_in_use(&self.file.path, allow_empty) {
            Ok(keys) => {
                let (consumers, count) = (keys.consumers().len(), keys.key_count());
                let keys = Arc::new(keys);
                published.update(|s| s.with_keys(keys));
                tracing::info!(
                    "key file {} reloaded: {consumers} consumers, {count} keys",
                    self.file.path.display()
                );
            }
            Err(e) => report_broken(&e),
        }
    }
}

fn report_broken(e: &dyn std::fmt::Display) {
    tracing::error!("{e}; keeping the last good key set");
}

/// Key set revisions, unique for the process (a cached verification names
/// the revision it used).
static REVISION: AtomicU64 = AtomicU64::new(1);

fn next_revision() -> u64 {
    REVISION.fetch_add(1, Ordering::Relaxed)
}

/// Reads an issuer's keys from a file (JWKS or HMAC secret).
pub fn load_key_file(s: &JwtSettings) -> Result<KeySet, String> {
    let (path, secret) = match &s.source {
        KeySource::File(p) => (p, false),
        KeySource::Secret(p) => (p, true),
        KeySource::Url(_) | KeySource::Discovery => return Err("not a file".into()),
    };
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let set = if secret {
        // A trailing newline is an editor's, not the secret's.
        let trimmed = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
        KeySet::from_secret(trimmed, &s.algorithms, next_revision())
    } else {
        KeySet::from_jwks(&bytes, &s.algorithms, next_revision())
    };
    set.map_err(|e| format!("{}: {e}", path.display()))
}

/// Issuer `i`'s keys from its file (JWKS or HMAC secret), the error
/// naming the issuer: at start and at every reload.
pub fn issuer_file_keys(i: usize, s: &JwtSettings) -> Result<KeySet, String> {
    load_key_file(s).map_err(|e| format!("auth.jwt[{i}] ({}): {e}", s.name))
}

/// Fetches an issuer's JWKS (after OIDC discovery when configured).
pub fn fetch_keys(s: &JwtSettings, https: &Https) -> Result<KeySet, String> {
    const TIMEOUT: Duration = Duration::from_secs(5);
    let url = match &s.source {
        KeySource::Url(u) => u.clone(),
        KeySource::Discovery => {
            let at = format!(
                "{}/.well-known/openid-configuration",
                s.issuer.trim_end_matches('/')
            );
            let doc: serde_json::Value = serde_json::from_slice(&https.get(&at, TIMEOUT)?)
                .map_err(|e| format!("{at}: {e}"))?;
            // OpenID Connect Discovery §4.3: the document speaks for this issuer.
            if doc.get("issuer").and_then(|v| v.as_str()) != Some(s.issuer.as_str()) {
                return Err(format!("{at}: `issuer` is not {}", s.issuer));
            }
            match doc.get("jwks_uri").and_then(|v| v.as_str()) {
                Some(u) if u.starts_with("https://") => u.to_owned(),
                _ => return Err(format!("{at}: no https jwks_uri")),
            }
        }
        KeySource::File(_) | KeySource::Secret(_) => return Err("not fetched".into()),
    };
    let body = https.get(&url, TIMEOUT)?;
    KeySet::from_jwks(&body, &s.algorithms, next_revision()).map_err(|e| format!("{url}: {e}"))
}

/// Fewest seconds between two fetches an unknown `kid` may cause, so
/// tokens with made-up key ids cannot hammer the issuer.
const MIN_REFETCH: Duration = Duration::from_secs(1);

/// Keeps issuer `i`'s fetched key set fresh: every `refresh_secs`, and
/// (at most once per [`MIN_REFETCH`]) when a token names an unknown key.
/// An outage keeps the last good set.
pub fn spawn_fetcher(
    i: usize,
    s: JwtSettings,
    https: Https,
    published: Arc<Published>,
    stopping: Arc<std::sync::atomic::AtomicBool>,
    asks: Receiver<()>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(format!("jwks-{}", s.name))
        .spawn(move || {
            let refresh = Duration::from_secs(s.refresh_secs);
            let mut last = std::time::Instant::now();
            loop {
                let wait = refresh.saturating_sub(last.elapsed());
                match asks.recv_timeout(wait) {
                    Ok(()) => {
                        let since = last.elapsed();
                        if since < MIN_REFETCH {
                            std::thread::sleep(MIN_REFETCH - since);
                        }
                        // One fetch answers every ask queued meanwhile.
                        while asks.try_recv().is_ok() {}
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                }
                if stopping.load(Ordering::Relaxed) {
                    return;
                }
                last = std::time::Instant::now();
                refresh_keys(i, &s, &https, &published);
            }
        })
        .map(|_| ())
}

/// One fetch of issuer `i`'s keys, published on success.
pub fn refresh_keys(i: usize, s: &JwtSettings, https: &Https, published: &Published) {
    match fetch_keys(s, https) {
        Ok(set) => {
            let (n, rev) = (set.len(), set.revision);
            let set = Arc::new(set);
            published.update(|snap| snap.with_jwks(i, set));
            tracing::info!("issuer {}: {n} keys (revision {rev})", s.name);
        }
        Err(e) => tracing::warn!(
            "issuer {}: fetching keys: {e}; keeping the last good key set",
            s.name
        ),
    }
}

/// Re-reads issuer key files (JWKS files and secrets) when they change.
pub struct IssuerFiles {
    watched: Vec<(usize, FileVersion)>,
}

impl IssuerFiles {
    /// Watches every file-based issuer of `settings`.
    pub fn new(settings: &[JwtSettings]) -> Self {
        let watched = files(settings)
            .map(|(i, p)| (i, FileVersion::new(p)))
            .collect();
        Self { watched }
    }

    /// Whether `settings` name the same files, issuer for issuer, as those
    /// watched: then the watches (and the versions they saw) stay.
    pub fn watches(&self, settings: &[JwtSettings]) -> bool {
        files(settings).eq(self.watched.iter().map(|(i, f)| (*i, f.path.as_path())))
    }

    /// Reloads changed files.
    pub fn poll(&mut self, settings: &[JwtSettings], published: &Published) {
        for (i, file) in &mut self.watched {
            if !file.changed() {
                continue;
            }
            match load_key_file(&settings[*i]) {
                Ok(set) => {
                    let (n, rev) = (set.len(), set.revision);
                    let set = Arc::new(set);
                    published.update(|snap| snap.with_jwks(*i, set));
                    tracing::info!(
                        "issuer {}: {n} keys from {} (revision {rev})",
                        settings[*i].name,
                        file.path.display()
                    );
                }
                Err(e) => report_broken(&e),
            }
        }
    }
}

/// The file-based issuers of `settings`: index and file.
fn files(settings: &[JwtSettings]) -> impl Iterator<Item = (usize, &Path)> {
    settings
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match &s.source {
            KeySource::File(p) | KeySource::Secret(p) => Some((i, p.as_path())),
            _ => None,
        })
}

/// Every issuer's first key set: files are read (a broken one stops the
/// start), URLs fetched once (a failure leaves the issuer without keys, and
/// its routes answer 503 until a fetch succeeds). Returns the key sets and,
/// per issuer, the HTTPS client of those fetched in the background.
#[expect(
    clippy::type_complexity,
    reason = "two parallel per-issuer lists, used once"
)]
pub fn first_issuer_keys(
    cfg: &crate::config::Config,
) -> Result<(Vec<Arc<KeySet>>, Vec<Option<Https>>), String> {
    crate::stages::auth::jwt::provider::install();
    let mut sets = Vec::new();
    let mut fetchers = Vec::new();
    for (i, s) in cfg.auth.jwt.iter().enumerate() {
        let at = format!("auth.jwt[{i}] ({})", s.name);
        match &s.source {
            KeySource::File(_) | KeySource::Secret(_) => {
                let set = issuer_file_keys(i, s)?;
                tracing::info!("issuer {}: {} keys", s.name, set.len());
                sets.push(Arc::new(set));
                fetchers.push(None);
            }
            KeySource::Url(_) | KeySource::Discovery => {
                let https = Https::new(s.ca_file.as_deref()).map_err(|e| format!("{at}: {e}"))?;
                match fetch_keys(s, &https) {
                    Ok(set) => {
                        tracing::info!("issuer {}: {} keys", s.name, set.len());
                        sets.push(Arc::new(set));
                    }
                    Err(e) => {
                        tracing::warn!(
                            "issuer {}: no keys yet ({e}); its routes answer 503 until a fetch succeeds",
                            s.name
                        );
                        sets.push(Arc::default());
                    }
                }
                fetchers.push(Some(https));
            }
        }
    }
    Ok((sets, fetchers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_counted_per_source_and_bounded() {
        let mut f = AuthFailures::default();
        let a: IpAddr = "198.18.0.1".parse().expect("ip");
        for _ in 0..3 {
            f.record(a);
        }
        assert_eq!(f.count(a), 3);
        assert_eq!(f.take_recent(), vec![(a, 3)]);
        assert!(f.take_recent().is_empty());
        for i in 0..(MAX_SOURCES as u32 + 10) {
            f.record(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)));
        }
        assert!(f.total.len() <= MAX_SOURCES, "{}", f.total.len());
        // Never drained (`stats_interval_secs = 0` logs nothing): still bounded.
        assert!(f.recent.len() <= MAX_SOURCES, "{}", f.recent.len());
        // The repeat offender is remembered.
        assert_eq!(f.count(a), 3);
        f.forget_recent();
        assert!(f.take_recent().is_empty());
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let (events, rx) = Events::new();
        let a: IpAddr = "198.18.0.2".parse().expect("ip");
        for _ in 0..QUEUE + 5 {
            events.report(Event::AuthFailed { source: a });
        }
        assert_eq!(events.dropped(), 5);
        let mut f = AuthFailures::default();
        let mut e = Escalation::new(crate::config::EscalationSettings::default(), &[], 64);
        let sentences = drain(&rx, &mut f, &mut e, 0, |_| {}, |_| {});
        assert_eq!(f.count(a), QUEUE as u64);
        // One verdict, however many failures past the threshold.
        assert_eq!(sentences.len(), 1);
        assert_eq!(sentences[0].source, a);
    }
}
