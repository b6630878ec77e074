//! Upstream health shared by every worker: the circuit breaker's gauges
//! (requests in flight and connects in progress, across workers), each
//! server's active-check verdict and its passive ejection (Envoy's outlier
//! detection). Workers count with relaxed atomics and never wait; the
//! checker thread (`check`) and the admin API read the same state. One
//! state per upstream name and server list, kept across reloads that keep
//! both, so a reload neither forgets an ejection nor resets the gauges.

mod report;

pub use report::render_metrics;

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed},
    },
};

use rustls::ClientConfig;

use super::tls::Client;

use crate::config::{HealthCheck, Outlier, UpstreamSettings, UpstreamTls};

/// Every configured upstream's shared state.
#[derive(Default)]
pub struct Registry {
    list: Mutex<Vec<Arc<UpstreamHealth>>>,
}

impl Registry {
    /// States for `upstreams` (at start and after each reload), with the
    /// TLS clients built for them (`tls`, by index): kept for an upstream
    /// whose name and servers did not change, with its limits, checks and
    /// TLS client following the new settings (the old client, and its
    /// sessions, while its TLS settings stay); made for new ones; dropped
    /// for the rest.
    pub fn sync(&self, upstreams: &[UpstreamSettings], tls: Vec<Option<Client>>) {
        let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        let next = upstreams
            .iter()
            .zip(tls.into_iter().chain(std::iter::repeat(None)))
            .map(|(s, client)| {
                let h = find(&list, s).unwrap_or_else(|| Arc::new(UpstreamHealth::new(s)));
                h.follow(s);
                h.follow_tls(s, client);
                h
            })
            .collect();
        *list = next;
    }

    /// The state of `s`: the registry's, or, for an upstream a reload
    /// already removed (a request still on an older snapshot), one of its
    /// own (its TLS client built here; without one its requests fail).
    pub fn of(&self, s: &UpstreamSettings) -> Arc<UpstreamHealth> {
        let list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        find(&list, s).unwrap_or_else(|| {
            let h = UpstreamHealth::new(s);
            let client = s
                .tls
                .as_ref()
                .and_then(|t| super::tls::client(t, s.http2).ok());
            h.follow_tls(s, client);
            Arc::new(h)
        })
    }

    /// Every upstream's state, in configuration order.
    pub fn all(&self) -> Vec<Arc<UpstreamHealth>> {
        self.list.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn find(list: &[Arc<UpstreamHealth>], s: &UpstreamSettings) -> Option<Arc<UpstreamHealth>> {
    list.iter()
        .find(|h| {
            h.name == s.name
                && h.servers.len() == s.servers.len()
                && h.servers.iter().zip(&s.servers).all(|(a, b)| a.addr == *b)
        })
        .cloned()
}

/// One upstream's shared state.
pub struct UpstreamHealth {
    /// Its name.
    pub name: String,
    /// Its servers, by index.
    pub servers: Vec<ServerHealth>,
    max_requests: AtomicU32,
    max_connects: AtomicU32,
    max_uploads: AtomicU32,
    requests: Gauge,
    connects: Gauge,
    /// When a connect last ended or began with none in progress
    /// (`CLOCK_MONOTONIC` ns): connects are making progress while recent.
    connect_progress_ns: AtomicU64,
    uploads: Gauge,
    /// Requests refused by `max_requests` since start.
    pub overflow_requests: AtomicU64,
    /// Requests refused by `max_connects` since start.
    pub overflow_connects: AtomicU64,
    /// Requests refused by `max_uploads` since start.
    pub overflow_uploads: AtomicU64,
    consecutive: AtomicU32,
    base_ejection_ms: AtomicU64,
    max_ejection_percent: AtomicU32,
    /// The active check, read by the checker thread.
    check: Mutex<Option<HealthCheck>>,
    /// Taken for an ejection decision only (rare), so two workers never
    /// eject past the share, nor the same server twice.
    ejecting: Mutex<()>,
    /// The TLS client and the settings it was built from (TLS hops only).
    tls: Mutex<Option<(UpstreamTls, Client)>>,
}

/// A gauge every worker moves on every request, on a cache line of its
/// own so the others' reads of the upstream's settings do not bounce it.
#[repr(align(64))]
#[derive(Default)]
struct Gauge(AtomicU32);

/// One server's shared state.
pub struct ServerHealth {
    /// Its address.
    pub addr: SocketAddr,
    /// The active check took it out.
    checked_down: AtomicBool,
    /// Ejected until this `CLOCK_MONOTONIC` time (ns); 0: not ejected.
    ejected_until_ns: AtomicU64,
    /// Times ejected since start.
    pub ejections: AtomicU32,
    /// The next ejection's length in base lengths (1 to 10), back to 1
    /// after ten quiet base lengths.
    multiplier: AtomicU32,
    /// 5xx answers and failed connects in a row.
    failures_in_row: AtomicU32,
    /// Active checks passed and failed since start.
    pub checks_passed: AtomicU64,
    /// See `checks_passed`.
    pub checks_failed: AtomicU64,
}

impl std::fmt::Debug for UpstreamHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamHealth")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A place under a circuit-breaker limit, given back on drop (also when
/// the request's future is dropped or unwinds).
pub struct Held<'a>(&'a AtomicU32);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

fn take<'a>(gauge: &'a AtomicU32, max: &AtomicU32, overflow: &AtomicU64) -> Option<Held<'a>> {
    if gauge.fetch_add(1, Relaxed) >= max.load(Relaxed) {
        gauge.fetch_sub(1, Relaxed);
        overflow.fetch_add(1, Relaxed);
        return None;
    }
    Some(Held(gauge))
}

impl UpstreamHealth {
    /// A fresh state: every server healthy, nothing in flight.
    pub fn new(s: &UpstreamSettings) -> Self {
        let h = Self {
            name: s.name.clone(),
            servers: s
                .servers
                .iter()
                .map(|&addr| ServerHealth {
                    addr,
                    checked_down: AtomicBool::new(false),
                    ejected_until_ns: AtomicU64::new(0),
                    ejections: AtomicU32::new(0),
                    multiplier: AtomicU32::new(0),
                    failures_in_row: AtomicU32::new(0),
                    checks_passed: AtomicU64::new(0),
                    checks_failed: AtomicU64::new(0),
                })
                .collect(),
            max_requests: AtomicU32::new(0),
            max_connects: AtomicU32::new(0),
            max_uploads: AtomicU32::new(0),
            requests: Gauge::default(),
            connects: Gauge::default(),
            connect_progress_ns: AtomicU64::new(0),
            uploads: Gauge::default(),
            overflow_requests: AtomicU64::new(0),
            overflow_connects: AtomicU64::new(0),
            overflow_uploads: AtomicU64::new(0),
            consecutive: AtomicU32::new(0),
            base_ejection_ms: AtomicU64::new(0),
            max_ejection_percent: AtomicU32::new(0),
            check: Mutex::new(None),
            ejecting: Mutex::new(()),
            tls: Mutex::new(None),
        };
        h.follow(s);
        h
    }

    /// Takes up `s`'s limits, outlier settings and check.
    fn follow(&self, s: &UpstreamSettings) {
        self.max_requests.store(s.max_requests, Relaxed);
        self.max_connects.store(s.max_connects, Relaxed);
        self.max_uploads.store(s.max_uploads, Relaxed);
        let Outlier {
            consecutive_failures,
            base_ejection_ms,
            max_ejection_percent,
        } = s.outlier;
        self.consecutive.store(consecutive_failures, Relaxed);
        self.base_ejection_ms.store(base_ejection_ms, Relaxed);
        self.max_ejection_percent
            .store(max_ejection_percent, Relaxed);
        let mut check = self.check.lock().unwrap_or_else(|e| e.into_inner());
        if check.is_some() && s.health_check.is_none() {
            // No check any more: nothing holds its servers out.
            for srv in &self.servers {
                srv.checked_down.store(false, Relaxed);
            }
        }
        *check = s.health_check.clone();
    }

    /// Takes up `s`'s TLS client: `client` (built for `s.tls`), unless the
    /// one held was built for the same settings from the same files (its
    /// sessions stay).
    fn follow_tls(&self, s: &UpstreamSettings, client: Option<Client>) {
        let mut tls = self.tls.lock().unwrap_or_else(|e| e.into_inner());
        let same = match (&*tls, &s.tls, &client) {
            (Some((held, old)), Some(want), Some(new)) => {
                held == want && old.files == new.files && old.h2 == new.h2
            }
            _ => false,
        };
        if !same {
            *tls = s.tls.clone().zip(client);
        }
    }

    /// The TLS client and the name to verify for server `addr` (TLS hops;
    /// `None`: plain, or the client could not be built).
    pub fn tls_for(
        &self,
        addr: SocketAddr,
    ) -> Option<(Arc<ClientConfig>, rustls::pki_types::ServerName<'static>)> {
        let tls = self.tls.lock().unwrap_or_else(|e| e.into_inner());
        tls.as_ref()
            .map(|(s, c)| (c.config.clone(), super::tls::server_name(s, addr)))
    }

    /// The active check, if any.
    pub fn check(&self) -> Option<HealthCheck> {
        self.check.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A place for one more request in flight, or `None` at `max_requests`.
    pub fn enter_request(&self) -> Option<Held<'_>> {
        take(
            &self.requests.0,
            &self.max_requests,
            &self.overflow_requests,
        )
    }

    /// A place for one more request whose body still streams from the
    /// client, or `None` at `max_uploads`.
    pub fn enter_upload(&self) -> Option<Held<'_>> {
        take(&self.uploads.0, &self.max_uploads, &self.overflow_uploads)
    }

    /// A place for one more connect in progress, or `None` at
    /// `max_connects` (not counted: a request may wait for one, see
    /// [`Self::refused_connect`]).
    pub fn enter_connect(&self) -> Option<Held<'_>> {
        let gauge = &self.connects.0;
        let before = gauge.fetch_add(1, Relaxed);
        if before >= self.max_connects.load(Relaxed) {
            gauge.fetch_sub(1, Relaxed);
            return None;
        }
        if before == 0 {
            self.connect_progressed();
        }
        Some(Held(gauge))
    }

    /// A request refused at `max_connects` (for metrics).
    pub fn refused_connect(&self) {
        self.overflow_connects.fetch_add(1, Relaxed);
    }

    /// A connect ended (either way).
    pub fn connect_progressed(&self) {
        self.connect_progress_ns.store(
            crate::clock::Clock::now_ns(&crate::clock::Monotonic),
            Relaxed,
        );
    }

    /// Whether the connects in progress are stuck: none ended within
    /// `stall_ns` (a backend that no longer accepts). Requests at
    /// `max_connects` then get 503 at once instead of waiting.
    pub fn connects_stalled(&self, now_ns: u64, stall_ns: u64) -> bool {
        now_ns.saturating_sub(self.connect_progress_ns.load(Relaxed)) > stall_ns
    }

    /// Whether server `i` may get requests at `now_ns`: not taken out by
    /// the active check, not ejected.
    pub fn usable(&self, i: usize, now_ns: impl FnOnce() -> u64) -> bool {
        let s = &self.servers[i];
        if s.checked_down.load(Relaxed) {
            return false;
        }
        let until = s.ejected_until_ns.load(Relaxed);
        until == 0 || until <= now_ns()
    }

    /// Server `i` answered without a 5xx: its failure streak ends.
    pub fn answered(&self, i: usize) {
        let s = &self.servers[i];
        if s.failures_in_row.load(Relaxed) != 0 {
            s.failures_in_row.store(0, Relaxed);
        }
    }

    /// Server `i` failed (a 5xx, a failed connect, a broken or late
    /// answer) at `now_ns`; returns the ejection's length when this
    /// failure ejected it.
    pub fn failed(&self, i: usize, now_ns: u64) -> Option<std::time::Duration> {
        let threshold = self.consecutive.load(Relaxed);
        let s = &self.servers[i];
        let streak = s.failures_in_row.fetch_add(1, Relaxed) + 1;
        if threshold == 0 || streak < threshold {
            return None;
        }
        let _one = self.ejecting.lock().unwrap_or_else(|e| e.into_inner());
        let last_end = s.ejected_until_ns.load(Relaxed);
        if last_end > now_ns {
            return None;
        }
        let ejected = |x: &ServerHealth| x.ejected_until_ns.load(Relaxed) > now_ns;
        let n = self.servers.len();
        let ejected_now = self.servers.iter().filter(|x| ejected(x)).count();
        let out_now = self
            .servers
            .iter()
            .filter(|x| ejected(x) || x.checked_down.load(Relaxed))
            .count();
        // At most the share (at least one), and never the last server
        // taking requests: a failing answer beats none at all.
        let most = (n * self.max_ejection_percent.load(Relaxed) as usize / 100).max(1);
        if ejected_now >= most || out_now + 1 >= n {
            return None;
        }
        s.failures_in_row.store(0, Relaxed);
        s.ejections.fetch_add(1, Relaxed);
        let base = self.base_ejection_ms.load(Relaxed);
        let quiet = last_end != 0 && now_ns.saturating_sub(last_end) > 10 * base * 1_000_000;
        let times = if quiet {
            1
        } else {
            (s.multiplier.load(Relaxed) + 1).min(10)
        };
        s.multiplier.store(times, Relaxed);
        let ms = base * u64::from(times);
        s.ejected_until_ns
            .store(now_ns.saturating_add(ms * 1_000_000), Relaxed);
        Some(std::time::Duration::from_millis(ms))
    }

    /// Records an active check's verdict on server `i`; whether it changed.
    pub fn set_checked(&self, i: usize, up: bool) -> bool {
        self.servers[i].checked_down.swap(!up, Relaxed) == up
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(n: u16, consecutive: u32, pct: u32) -> UpstreamSettings {
        UpstreamSettings {
            name: "u".into(),
            servers: (0..n)
                .map(|i| SocketAddr::from(([127, 0, 0, 1], 1000 + i)))
                .collect(),
            balance: Default::default(),
            connect_timeout_ms: 1000,
            response_timeout_ms: 1000,
            idle_per_server: 4,
            idle_timeout_ms: 30_000,
            retries: 1,
            max_requests: 2,
            max_connects: 1,
            max_uploads: 1,
            health_check: None,
            outlier: Outlier {
                consecutive_failures: consecutive,
                base_ejection_ms: 1000,
                max_ejection_percent: pct,
            },
            tls: None,
            http2: false,
        }
    }

    #[test]
    fn limits_hold_and_places_come_back_on_drop() {
        let h = UpstreamHealth::new(&settings(1, 5, 10));
        let a = h.enter_request().expect("first");
        let b = h.enter_request().expect("second");
        assert!(h.enter_request().is_none());
        assert_eq!(h.overflow_requests.load(Relaxed), 1);
        drop(a);
        let _c = h.enter_request().expect("a place came back");
        drop(b);
        let _x = h.enter_connect().expect("connect");
        assert!(h.enter_connect().is_none());
        assert_eq!(h.overflow_connects.load(Relaxed), 0, "it may wait");
        h.refused_connect();
        assert_eq!(h.overflow_connects.load(Relaxed), 1);
    }

    #[test]
    fn consecutive_failures_eject_within_the_share_and_for_longer_each_time() {
        let h = UpstreamHealth::new(&settings(4, 3, 25));
        let t = 1_000_000_000;
        assert_eq!(h.failed(0, t), None);
        h.answered(0);
        assert_eq!(h.failed(0, t), None);
        assert_eq!(h.failed(0, t), None);
        assert_eq!(h.failed(0, t), Some(std::time::Duration::from_secs(1)));
        assert!(!h.usable(0, || t));
        // 25 % of 4: one at a time.
        for _ in 0..3 {
            assert_eq!(h.failed(1, t), None);
        }
        assert!(h.usable(1, || t));
        // Back after its time; the second ejection lasts twice as long.
        let later = t + 1_000_000_001;
        assert!(h.usable(0, || later));
        for _ in 0..2 {
            h.failed(0, later);
        }
        assert_eq!(h.failed(0, later), Some(std::time::Duration::from_secs(2)));
    }

    #[test]
    fn the_last_server_taking_requests_is_never_ejected() {
        let one = UpstreamHealth::new(&settings(1, 2, 100));
        for _ in 0..5 {
            assert_eq!(one.failed(0, 10), None);
        }
        assert!(one.usable(0, || 10));
        let two = UpstreamHealth::new(&settings(2, 1, 100));
        assert!(two.set_checked(1, false));
        assert_eq!(two.failed(0, 10), None, "server 1 is out already");
    }

    #[test]
    fn a_reload_keeping_name_and_servers_keeps_the_state() {
        let r = Registry::default();
        let s = settings(2, 1, 50);
        r.sync(std::slice::from_ref(&s), vec![None]);
        let h = r.of(&s);
        h.failed(1, 5);
        let mut more = s.clone();
        more.max_requests = 9;
        r.sync(std::slice::from_ref(&more), vec![None]);
        let again = r.of(&more);
        assert!(Arc::ptr_eq(&h, &again));
        assert_eq!(again.max_requests.load(Relaxed), 9);
        assert!(!again.usable(1, || 5));
        let mut moved = more.clone();
        moved.servers.pop();
        r.sync(std::slice::from_ref(&moved), vec![None]);
        assert!(!Arc::ptr_eq(&h, &r.of(&moved)));
        assert_eq!(r.all().len(), 1);
    }
}
