//! The workers' side of the cluster (`crate::control::cluster`): a lock-free queue
//! of the requests each bucket admitted, which the sync thread sends to
//! Redis, and whether Redis is reachable, which decides whether a limited
//! route may answer while it is not.

use std::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering},
    mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
};

use crate::{
    config::{ClusterSettings, OnFailure},
    respond::Failure,
};

/// Limited routes while Redis is down and `on_failure = "closed"`.
pub const UNAVAILABLE: Failure = Failure::internal(503, "rate_limit.unavailable");

/// Admitted requests queued between syncs at most; beyond, they are
/// dropped and counted (the cluster then under-counts this gateway).
const QUEUE: usize = 1 << 18;
/// Requests admitted on a bucket: its key, its limit's interval (ns), how many.
pub type Admitted = (u64, u64, u32);

/// The workers' side: where admitted requests go, and whether Redis is up.
pub struct Link {
    tx: SyncSender<Admitted>,
    /// Redis cannot be reached (true until the first connection).
    pub down: AtomicBool,
    /// Refuse limited routes while down.
    pub fail_closed: bool,
    dropped: AtomicU64,
    /// Pipelines sent to Redis (by the sync thread; the request path sends none).
    pub syncs: AtomicU64,
}

impl Link {
    /// Records `n` requests admitted on `key`, of a limit `interval_ns` apart.
    pub fn admitted(&self, key: u64, interval_ns: u64, n: u32) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.tx.try_send((key, interval_ns, n))
        {
            self.dropped.fetch_add(u64::from(n), Ordering::Relaxed);
        }
    }

    /// Admitted requests dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Whether a limited route must refuse now.
    pub fn refuses(&self) -> bool {
        self.fail_closed && self.down.load(Ordering::Relaxed)
    }
}

/// The link for the workers and the receiving end for [`crate::control::cluster::Cluster::start`].
pub fn link(settings: &ClusterSettings) -> (Link, Receiver<Admitted>) {
    let (tx, rx) = sync_channel(QUEUE);
    (
        Link {
            tx,
            down: AtomicBool::new(true),
            fail_closed: settings.on_failure == OnFailure::Closed,
            dropped: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
        },
        rx,
    )
}
