//! Open tunnels across workers: the per-source and per-consumer caps
//! (`[websocket] max_per_source`, `max_per_consumer`), and the figures
//! `/metrics` shows. One map behind a mutex each, touched when a tunnel
//! opens and when it closes, never while bytes pass.

use std::{
    collections::HashMap,
    fmt::Write as _,
    hash::Hash,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use crate::respond::Failure;

/// A source holds `max_per_source` tunnels.
pub const PER_SOURCE: Failure = Failure::client(429, "websocket.per_source");
/// A consumer holds `max_per_consumer` tunnels.
pub const PER_CONSUMER: Failure = Failure::client(429, "websocket.per_consumer");

/// Every worker's tunnels.
#[derive(Debug, Default)]
pub struct Tunnels {
    by_source: Mutex<HashMap<[u8; 16], u32>>,
    by_consumer: Mutex<HashMap<String, u32>>,
    /// Open now.
    pub open: AtomicU64,
    /// Opened since start (an upstream's 101).
    pub opened: AtomicU64,
    /// Bytes relayed from clients to upstreams, and back.
    pub bytes_up: AtomicU64,
    /// See `bytes_up`.
    pub bytes_down: AtomicU64,
}

/// One tunnel's places under the caps, given back when dropped (and,
/// once it opened, its count among the open tunnels).
#[derive(Debug)]
pub struct Slot {
    tunnels: Arc<Tunnels>,
    source: Option<[u8; 16]>,
    consumer: Option<String>,
    open: bool,
}

fn take<K: Hash + Eq + Clone>(map: &Mutex<HashMap<K, u32>>, key: &K, cap: u32) -> bool {
    let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
    let n = match m.get_mut(key) {
        Some(n) => n,
        None => m.entry(key.clone()).or_insert(0),
    };
    if *n >= cap {
        return false;
    }
    *n += 1;
    true
}

fn give<K: Hash + Eq>(map: &Mutex<HashMap<K, u32>>, key: &K) {
    let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(n) = m.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            m.remove(key);
        }
    }
}

impl Tunnels {
    /// A place for one more tunnel from `source` (none: not counted) by
    /// `consumer` (none: anonymous), under caps of `per_source` and
    /// `per_consumer` (0: none).
    pub fn admit(
        self: &Arc<Self>,
        source: Option<[u8; 16]>,
        consumer: Option<&str>,
        (per_source, per_consumer): (u32, u32),
    ) -> Result<Slot, Failure> {
        let source = source.filter(|_| per_source != 0);
        if let Some(key) = source
            && !take(&self.by_source, &key, per_source)
        {
            return Err(PER_SOURCE);
        }
        let consumer = consumer.filter(|_| per_consumer != 0).map(str::to_owned);
        if let Some(key) = &consumer
            && !take(&self.by_consumer, key, per_consumer)
        {
            if let Some(key) = source {
                give(&self.by_source, &key);
            }
            return Err(PER_CONSUMER);
        }
        Ok(Slot {
            tunnels: self.clone(),
            source,
            consumer,
            open: false,
        })
    }

    /// Appends the tunnel series to a `/metrics` body.
    pub fn render_metrics(&self, out: &mut String) {
        for (name, kind, help, value) in [
            (
                "gateway_websocket_tunnels_open",
                "gauge",
                "WebSocket tunnels open now.",
                self.open.load(Relaxed),
            ),
            (
                "gateway_websocket_tunnels_total",
                "counter",
                "WebSocket tunnels opened (the upstream answered 101).",
                self.opened.load(Relaxed),
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP gateway_websocket_bytes_total Bytes relayed through WebSocket tunnels, by direction.\n# TYPE gateway_websocket_bytes_total counter"
        );
        for (direction, n) in [("up", &self.bytes_up), ("down", &self.bytes_down)] {
            let _ = writeln!(
                out,
                "gateway_websocket_bytes_total{{direction=\"{direction}\"}} {}",
                n.load(Relaxed)
            );
        }
    }
}

impl Slot {
    /// The upstream switched: one more tunnel open until this is dropped.
    pub fn opened(&mut self) {
        self.open = true;
        self.tunnels.open.fetch_add(1, Relaxed);
        self.tunnels.opened.fetch_add(1, Relaxed);
    }

    /// The tunnel closed after passing `up` and `down` bytes.
    pub fn carried(&self, up: u64, down: u64) {
        self.tunnels.bytes_up.fetch_add(up, Relaxed);
        self.tunnels.bytes_down.fetch_add(down, Relaxed);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.open {
            self.tunnels.open.fetch_sub(1, Relaxed);
        }
        if let Some(key) = &self.source {
            give(&self.tunnels.by_source, key);
        }
        if let Some(key) = &self.consumer {
            give(&self.tunnels.by_consumer, key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_and_places_come_back() {
        let t = Arc::new(Tunnels::default());
        let a = Some([1u8; 16]);
        let one = t.admit(a, Some("alice"), (2, 3)).expect("first");
        let two = t.admit(a, None, (2, 3)).expect("second");
        assert_eq!(t.admit(a, None, (2, 3)).err(), Some(PER_SOURCE));
        let b = Some([2u8; 16]);
        let _three = t.admit(b, Some("alice"), (2, 2)).expect("alice's second");
        // Over the consumer's cap: the source's place is given back.
        assert_eq!(t.admit(b, Some("alice"), (2, 2)).err(), Some(PER_CONSUMER));
        let _four = t.admit(b, None, (2, 2)).expect("b holds one");
        drop((one, two));
        let _again = t.admit(a, Some("alice"), (2, 2)).expect("places came back");
        // No cap: not counted.
        for _ in 0..10 {
            std::mem::forget(t.admit(a, Some("bob"), (0, 0)).expect("uncapped"));
        }
    }
}
