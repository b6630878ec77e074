//! Work that must not run on the request path, done on the main thread's
//! tick: the workers hand it events with a bounded `try_send` (never
//! waiting), it keeps per-source counts (which the rate-limit stage will
//! turn into kernel verdicts), and it re-reads the key file when it changes.

use std::{
    collections::HashMap,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
    },
    time::SystemTime,
};

use crate::{
    snapshot::Published,
    stages::auth::api_key::{KeyFileError, KeyRing},
};

/// Something a worker saw that the control side counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A request from `source` failed authentication (a 401).
    AuthFailed {
        /// The client address (the TCP peer, IPv4-mapped addresses as IPv4).
        source: IpAddr,
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
        *self.recent.entry(source).or_default() += 1;
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

/// Counts every queued event.
pub fn drain(rx: &Receiver<Event>, failures: &mut AuthFailures) {
    while let Ok(e) = rx.try_recv() {
        match e {
            Event::AuthFailed { source } => failures.record(source),
        }
    }
}

/// Watches the key file and publishes a new snapshot when it changes.
pub struct KeyWatch {
    path: PathBuf,
    stamp: Option<(SystemTime, u64)>,
    /// The stamp of a broken version already reported (one error per version).
    reported: Option<(SystemTime, u64)>,
}

impl KeyWatch {
    /// Watches `path`, whose current version is already loaded.
    pub fn new(path: &Path) -> Self {
        Self {
            stamp: stamp(path),
            path: path.to_owned(),
            reported: None,
        }
    }

    /// Reloads when the file changed (or always, with `force`: SIGHUP).
    /// A broken file keeps the last good key set and is reported once.
    pub fn poll(&mut self, published: &Published, force: bool) {
        let now = stamp(&self.path);
        if !force && now == self.stamp {
            return;
        }
        self.stamp = now;
        match KeyRing::load(&self.path) {
            Ok(keys) => {
                let (consumers, count) = (keys.consumers().len(), keys.key_count());
                let next = published.current().with_keys(Arc::new(keys));
                published.publish(next);
                self.reported = None;
                tracing::info!(
                    "key file {} reloaded: {consumers} consumers, {count} keys",
                    self.path.display()
                );
            }
            Err(e) if force || self.reported != now => {
                self.reported = now;
                report_broken(&e);
            }
            Err(_) => {}
        }
    }
}

fn report_broken(e: &KeyFileError) {
    tracing::error!("{e}; keeping the last good key set");
}

/// When and how big: a change of either means a new version.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
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
        // The repeat offender is remembered.
        assert_eq!(f.count(a), 3);
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
        drain(&rx, &mut f);
        assert_eq!(f.count(a), QUEUE as u64);
    }
}
