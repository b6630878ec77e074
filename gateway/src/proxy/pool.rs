//! Upstreams as one worker sees them: its own keep-alive pool per server,
//! its own balancing state and its own view of which servers refused
//! connects; beside them the upstream's shared health (`health`: checks,
//! ejections, circuit-breaker gauges), read with atomics. Nothing here
//! takes a lock.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use super::{health::UpstreamHealth, upstream_conn::UpstreamConn};
use crate::{
    clock::{Clock, Monotonic},
    config::{Balance, UpstreamSettings},
    observe::metrics::ServerFigures,
};

/// First and longest backoff for a server that refused connections.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// An idle connection unused for longer is checked before it is used.
const REVALIDATE_AFTER: Duration = Duration::from_millis(500);

#[derive(Debug)]
struct Server {
    addr: SocketAddr,
    idle: Vec<UpstreamConn>,
    outstanding: usize,
    /// The most requests in flight at once in this window and the last
    /// (windows of the idle timeout, turned by [`Pool::reap`]): the
    /// connections the load needs.
    peak: usize,
    last_peak: usize,
    failures: u32,
    down_until: Option<Instant>,
    /// Since start, for the metrics: connections opened, requests on a
    /// pooled connection, connects refused or timed out.
    connects: u64,
    reuses: u64,
    connect_failures: u64,
}

/// One upstream's servers, pools and balancing state, per worker.
#[derive(Debug)]
pub struct Pool {
    /// The settings it was built from.
    pub settings: UpstreamSettings,
    /// The upstream's state shared by every worker.
    pub health: Arc<UpstreamHealth>,
    servers: Vec<Server>,
    cursor: usize,
    /// When the current peak window ends.
    window_ends: Option<Instant>,
}

impl Pool {
    /// A pool with no connections yet.
    pub fn new(settings: &UpstreamSettings, health: Arc<UpstreamHealth>) -> Self {
        Self {
            health,
            servers: settings
                .servers
                .iter()
                .map(|&addr| Server {
                    addr,
                    idle: Vec::new(),
                    outstanding: 0,
                    peak: 0,
                    last_peak: 0,
                    failures: 0,
                    down_until: None,
                    connects: 0,
                    reuses: 0,
                    connect_failures: 0,
                })
                .collect(),
            settings: settings.clone(),
            window_ends: None,
            cursor: 0,
        }
    }

    /// The address of server `i`.
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.servers[i].addr
    }

    /// Picks a server that is up (its connect backoff passed, its health
    /// check passing, not ejected), skipping `exclude`; `None` when every
    /// candidate is down.
    pub fn pick(&mut self, now: Instant, exclude: Option<usize>) -> Option<usize> {
        let n = self.servers.len();
        let health = &self.health;
        // One clock reading per pick, and only if an ejection needs it.
        let ns = std::cell::OnceCell::new();
        let usable = |i: usize, s: &Server| {
            Some(i) != exclude
                && s.down_until.is_none_or(|t| t <= now)
                && health.usable(i, || *ns.get_or_init(|| Monotonic.now_ns()))
        };
        match self.settings.balance {
            Balance::RoundRobin => {
                for k in 0..n {
                    let i = (self.cursor + k) % n;
                    if usable(i, &self.servers[i]) {
                        self.cursor = (i + 1) % n;
                        return Some(i);
                    }
                }
                None
            }
            Balance::LeastOutstanding => {
                // Ties go round robin so equal servers share the load.
                let start = self.cursor;
                self.cursor = (self.cursor + 1) % n;
                (0..n)
                    .map(|k| (start + k) % n)
                    .filter(|&i| usable(i, &self.servers[i]))
                    .min_by_key(|&i| self.servers[i].outstanding)
            }
        }
    }

    /// An idle connection to server `i`, if one is pooled.
    /// Connections the server closed while idle, or that hold stray bytes
    /// (which would be read as the next response), are dropped here.
    pub fn checkout(&mut self, i: usize, now: Instant, check: bool) -> Option<UpstreamConn> {
        while let Some(c) = self.servers[i].idle.pop() {
            // A connection back this recently is taken on trust, unless
            // `check`: the check is a syscall a request under load would pay
            // (one in four of its calls), and a retryable request that
            // finds it dead is sent again on a fresh one. One idle longer is
            // looked at first: its server may have closed it since.
            let fresh = !check
                && c.idle_since
                    .is_some_and(|t| now.saturating_duration_since(t) < REVALIDATE_AFTER);
            if fresh || c.looks_alive() {
                self.servers[i].reuses += 1;
                return Some(c);
            }
        }
        None
    }

    /// Counts a new connection to server `i`.
    pub fn opened(&mut self, i: usize) {
        self.servers[i].connects += 1;
    }

    /// Adds this pool's figures, as upstream `upstream`, to `out`.
    pub fn figures(&self, upstream: u32, now: Instant, out: &mut Vec<ServerFigures>) {
        out.extend(self.servers.iter().enumerate().map(|(i, s)| ServerFigures {
            upstream,
            server: i as u32,
            idle: s.idle.len() as u64,
            in_flight: s.outstanding as u64,
            down: u64::from(s.down_until.is_some_and(|t| t > now)),
            connects: s.connects,
            reuses: s.reuses,
            failures: s.connect_failures,
        }));
    }

    /// Returns a connection to its server's pool at `now`. It is kept while
    /// the pool holds fewer idle connections than `idle_per_server`, or
    /// while the server's connections (idle, and busy with other requests)
    /// number fewer than the most requests in flight at once lately: a
    /// connection the load needed a moment ago, it will need again
    /// (closing those cost ~31 % of requests a new backend connection at
    /// -c256). What a burst left behind goes with the idle timeout
    /// ([`Pool::reap`]). The caller found it [`UpstreamConn::drained`]:
    /// the reuse decision after a response checks that once. Whether it
    /// was kept.
    pub fn checkin(&mut self, mut conn: UpstreamConn, now: Instant) -> bool {
        let floor = self.settings.idle_per_server;
        let s = &mut self.servers[conn.server];
        let needed = s.peak.max(s.last_peak);
        // 0 turns keep-alive to the upstream off.
        if floor == 0 || s.idle.len() >= floor && s.idle.len() + s.outstanding >= needed {
            return false;
        }
        conn.reused = true;
        conn.buf.clear();
        conn.start = 0;
        conn.idle_since = Some(now);
        // Last in, first out: the busiest connections stay warm and the
        // rest age at the bottom, where the idle timeout finds them.
        s.idle.push(conn);
        true
    }

    /// Closes idle connections unused for `idle_timeout_ms` at `now`, and
    /// turns the peak window when it is over; how many it closed.
    pub fn reap(&mut self, now: Instant) -> usize {
        let timeout = Duration::from_millis(self.settings.idle_timeout_ms);
        let turn = self.window_ends.is_none_or(|end| now >= end);
        if turn {
            self.window_ends = Some(now + timeout);
        }
        let mut closed = 0;
        for s in &mut self.servers {
            if turn {
                s.last_peak = s.peak;
                s.peak = s.outstanding;
            }
            // Oldest first: they are at the bottom of the stack.
            let stale = s
                .idle
                .iter()
                .take_while(|c| {
                    c.idle_since
                        .is_some_and(|t| now.duration_since(t) >= timeout)
                })
                .count();
            s.idle.drain(..stale);
            closed += stale;
        }
        closed
    }

    /// Counts a request in flight on server `i`.
    pub fn begin(&mut self, i: usize) {
        let s = &mut self.servers[i];
        s.outstanding += 1;
        s.peak = s.peak.max(s.outstanding);
    }

    /// Counts a request done on server `i`.
    pub fn end(&mut self, i: usize) {
        self.servers[i].outstanding = self.servers[i].outstanding.saturating_sub(1);
    }

    /// Server `i` refused: mark it down with exponential backoff and drop its idle connections.
    pub fn mark_down(&mut self, i: usize, now: Instant) {
        let s = &mut self.servers[i];
        s.connect_failures += 1;
        s.failures = s.failures.saturating_add(1);
        let backoff = BACKOFF_FIRST
            .saturating_mul(1 << (s.failures - 1).min(5))
            .min(BACKOFF_MAX);
        s.down_until = Some(now + backoff);
        s.idle.clear();
    }

    /// Closes server `i`'s idle connections (it was ejected).
    pub fn drop_idle(&mut self, i: usize) {
        self.servers[i].idle.clear();
    }

    /// Server `i` answered: it is up.
    pub fn mark_up(&mut self, i: usize) {
        let s = &mut self.servers[i];
        s.failures = 0;
        s.down_until = None;
    }
}

#[cfg(test)]
mod tests {
    use tokio_uring::net::TcpStream;

    use super::*;

    fn settings(balance: Balance, n: u16) -> UpstreamSettings {
        UpstreamSettings {
            name: "u".into(),
            servers: (0..n)
                .map(|i| SocketAddr::from(([127, 0, 0, 1], 1000 + i)))
                .collect(),
            balance,
            connect_timeout_ms: 1000,
            response_timeout_ms: 1000,
            idle_per_server: 4,
            idle_timeout_ms: 30_000,
            retries: 1,
            max_requests: 1024,
            max_connects: 256,
            max_uploads: 256,
            health_check: None,
            outlier: crate::config::Outlier {
                consecutive_failures: 0,
                base_ejection_ms: 1000,
                max_ejection_percent: 10,
            },
            tls: None,
            http2: false,
        }
    }

    fn pool(balance: Balance, n: u16) -> Pool {
        let s = settings(balance, n);
        let health = Arc::new(UpstreamHealth::new(&s));
        Pool::new(&s, health)
    }

    #[test]
    fn round_robin_skips_down_servers_until_backoff_passes() {
        let mut p = pool(Balance::RoundRobin, 3);
        let t0 = Instant::now();
        assert_eq!(
            [p.pick(t0, None), p.pick(t0, None), p.pick(t0, None)],
            [Some(0), Some(1), Some(2)]
        );
        p.mark_down(1, t0);
        let picks: Vec<_> = (0..4).map(|_| p.pick(t0, None)).collect();
        assert_eq!(picks, [Some(0), Some(2), Some(0), Some(2)]);
        // After the first backoff (1 s) it is tried again.
        assert!((0..3).any(|_| p.pick(t0 + Duration::from_millis(1001), None) == Some(1)));
        // A second failure doubles the backoff.
        p.mark_down(1, t0);
        assert!(!(0..3).any(|_| p.pick(t0 + Duration::from_millis(1500), None) == Some(1)));
    }

    #[test]
    fn all_down_is_none_and_exclude_is_respected() {
        let mut p = pool(Balance::RoundRobin, 2);
        let t0 = Instant::now();
        assert_eq!(p.pick(t0, Some(0)), Some(1));
        assert_eq!(p.pick(t0, Some(1)), Some(0));
        p.mark_down(0, t0);
        p.mark_down(1, t0);
        assert_eq!(p.pick(t0, None), None);
    }

    fn conn(to: &std::net::TcpListener, server: usize) -> Option<UpstreamConn> {
        // Connected to a listener that never accepts: open, and silent.
        let tcp = std::net::TcpStream::connect(to.local_addr().ok()?).ok()?;
        Some(UpstreamConn {
            tcp: TcpStream::from_std(tcp),
            buf: Vec::new(),
            start: 0,
            server,
            reused: false,
            tls: None,
            idle_since: None,
        })
    }

    #[test]
    fn connections_stay_while_the_load_needs_them_and_age_out_after() {
        tokio_uring::start(async {
            let mut p = pool(Balance::RoundRobin, 1);
            let backlog = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
            let conn = |server| conn(&backlog, server);
            let t0 = Instant::now();
            assert_eq!(p.reap(t0), 0, "the first window begins");
            // A burst of 11 at once, then each comes back: a floor of 4,
            // and all 11 stay, since the load needed 11.
            for _ in 0..11 {
                p.begin(0);
            }
            for _ in 0..11 {
                p.end(0);
                assert!(p.checkin(conn(0).expect("socket"), t0));
            }
            assert_eq!(p.servers[0].idle.len(), 11, "closed under load");
            // One more than the load ever needed is closed at once.
            assert!(!p.checkin(conn(0).expect("socket"), t0));
            // Idle ones go after the idle timeout, oldest first; one used
            // again later stays.
            let one = p.checkout(0, t0, false).expect("pooled");
            assert!(p.checkin(one, t0 + Duration::from_secs(20)));
            assert_eq!(p.reap(t0 + Duration::from_secs(29)), 0);
            assert_eq!(p.reap(t0 + Duration::from_secs(31)), 10);
            assert_eq!(p.servers[0].idle.len(), 1);
            // Two quiet windows later, the burst is forgotten: beyond the
            // floor, a connection coming back is closed.
            assert_eq!(p.reap(t0 + Duration::from_secs(62)), 1);
            for _ in 0..4 {
                assert!(p.checkin(conn(0).expect("socket"), t0 + Duration::from_secs(62)));
            }
            assert!(!p.checkin(conn(0).expect("socket"), t0 + Duration::from_secs(62)));
        });
    }

    #[test]
    fn a_connection_idle_a_while_is_checked_before_use() {
        tokio_uring::start(async {
            let mut p = pool(Balance::RoundRobin, 1);
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
            let t0 = Instant::now();
            // Its server closes it as soon as it is pooled.
            let closed = |p: &mut Pool| {
                let c = conn(&listener, 0).expect("socket");
                drop(listener.accept().expect("accept"));
                std::thread::sleep(Duration::from_millis(20));
                assert!(p.checkin(c, t0));
            };
            closed(&mut p);
            assert!(
                p.checkout(0, t0 + Duration::from_millis(600), false)
                    .is_none(),
                "a closed one was handed out"
            );
            // Back a moment ago, it is checked for a request that could not
            // be sent again, and taken on trust (no syscall) for one that
            // could: that one is retried on a fresh connection if need be.
            closed(&mut p);
            assert!(
                p.checkout(0, t0 + Duration::from_millis(100), true)
                    .is_none()
            );
            closed(&mut p);
            assert!(
                p.checkout(0, t0 + Duration::from_millis(100), false)
                    .is_some()
            );
        });
    }

    #[test]
    fn least_outstanding_prefers_idle_servers() {
        let mut p = pool(Balance::LeastOutstanding, 3);
        let t0 = Instant::now();
        p.begin(0);
        p.begin(0);
        p.begin(1);
        assert_eq!(p.pick(t0, None), Some(2));
        p.begin(2);
        p.begin(2);
        assert_eq!(p.pick(t0, None), Some(1));
    }
}
