//! One rate-limit decision (`cargo xtask bench limit`): the key's hash and
//! the GCRA compare-and-swap on the shared bucket table, alone, and while a
//! second thread (another worker) charges the same key as fast as it can,
//! which is the worst case for the shared cache line. Target: ≤ 100 ns.
//! The floor for that case is the cache line's trip between the cores,
//! measured in the same run as two threads adding to one atomic.

use std::{
    hint::black_box,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use criterion::{Criterion, criterion_group, criterion_main};
use gateway::{
    config::{ClusterSettings, LimitKey, LimitSettings, OnFailure, RateLimitSettings},
    control::cluster,
    stages::rate_limit::{self, Buckets, Caller, Leases, Meter, Phase},
};

fn settings() -> RateLimitSettings {
    RateLimitSettings {
        limits: vec![LimitSettings {
            name: "per-ip".into(),
            key: LimitKey {
                source: true,
                ..LimitKey::default()
            },
            // Never refuses during the run: every decision writes the bucket.
            count: 1_000_000_000,
            window_secs: 1,
            burst: 1_000_000_000,
        }],
        ipv6_prefix: 64,
        headers: false,
        table_entries: 1 << 20,
        escalation: Default::default(),
        shared: false,
    }
}

/// One decision on the per-ip limit.
fn decide(
    buckets: &Buckets,
    s: &RateLimitSettings,
    who: &Caller<'_>,
    link: Option<&cluster::Link>,
    leases: &mut Leases,
    lines: &mut Vec<u8>,
) -> Result<(), gateway::respond::Failure> {
    // The worker's tally lives as long as the worker: one per thread here.
    thread_local! {
        static DECISIONS: std::cell::RefCell<gateway::observe::metrics::LimitCounts> =
            std::cell::RefCell::new(gateway::observe::metrics::LimitCounts(vec![[0; 2]; 4]));
    }
    DECISIONS.with_borrow_mut(|decisions| {
        let mut meter = Meter {
            buckets,
            link,
            leases,
            refused_by_source: false,
            decisions,
        };
        rate_limit::charge(&mut meter, s, &[0], Phase::Anonymous, black_box(who), lines)
    })
}

fn decision(c: &mut Criterion) {
    let s = settings();
    let buckets = Arc::new(Buckets::new(s.table_entries));
    let who = Caller {
        source: rate_limit::source_key("198.18.0.7".parse().expect("ip"), 64),
        consumer: None,
        route: 0,
    };
    let mut lines = Vec::new();
    let mut leases = Leases::default();
    let mut one = |b: &mut criterion::Bencher<'_>| {
        b.iter(|| decide(&buckets, &s, &who, None, &mut leases, &mut lines))
    };
    let mut g = c.benchmark_group("limit");
    // A new caller each time: the hash, the probe and one exchange, as for
    // a client's occasional request.
    let mut n = 0u32;
    let mut cold = Leases::default();
    let mut cold_lines = Vec::new();
    g.bench_function("one worker, a new source each time", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            let mut who = Caller {
                source: who.source,
                consumer: None,
                route: 0,
            };
            who.source[12..].copy_from_slice(&n.to_be_bytes());
            decide(&buckets, &s, &who, None, &mut cold, &mut cold_lines)
        })
    });
    // One caller over and over (its requests taken ahead in leases).
    g.bench_function("one worker", &mut one);
    let stop = Arc::new(AtomicBool::new(false));
    let other = {
        let (buckets, stop, s) = (buckets.clone(), stop.clone(), s.clone());
        let who = Caller {
            source: who.source,
            consumer: None,
            route: 0,
        };
        std::thread::spawn(move || {
            let mut lines = Vec::new();
            let mut leases = Leases::default();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let _ = decide(&buckets, &s, &who, None, &mut leases, &mut lines);
                n += 1;
            }
            n
        })
    };
    g.bench_function("two workers, one key", &mut one);
    stop.store(true, Ordering::Relaxed);
    let n = other.join().expect("second thread");
    assert!(n > 0, "the second thread never charged");
    // The floor of any count exact across cores: two threads adding to one
    // atomic, so its cache line moves between them as the bucket's does.
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let adder = {
        let (counter, stop) = (counter.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                counter.fetch_add(1, Ordering::AcqRel);
            }
        })
    };
    g.bench_function("floor: two threads, one atomic add", |b| {
        b.iter(|| counter.fetch_add(1, Ordering::AcqRel))
    });
    stop.store(true, Ordering::Relaxed);
    let _ = adder.join();
    // Shared through Redis: the decision also queues the admitted request
    // for the sync thread (drained here as that thread would).
    let (link, admitted) = cluster::link(&ClusterSettings {
        redis: Some("redis://127.0.0.1:1/".into()),
        sync_ms: 100,
        on_failure: OnFailure::Open,
    });
    link.down.store(false, Ordering::Relaxed);
    let stop = Arc::new(AtomicBool::new(false));
    let drain = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(10));
                while admitted.try_recv().is_ok() {}
            }
        })
    };
    g.bench_function("one worker, shared through Redis", |b| {
        b.iter(|| {
            decide(
                &buckets,
                &s,
                &who,
                Some(&link),
                &mut leases,
                &mut Vec::new(),
            )
        })
    });
    stop.store(true, Ordering::Relaxed);
    let _ = drain.join();
    g.finish();
}

criterion_group!(benches, decision);
criterion_main!(benches);
