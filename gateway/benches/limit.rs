//! One rate-limit decision (`cargo xtask bench limit`): the key's hash and
//! the GCRA compare-and-swap on the shared bucket table, alone, and while a
//! second thread (another worker) charges the same key as fast as it can,
//! which is the worst case for the shared cache line. Target: ≤ 100 ns.

use std::{
    hint::black_box,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use criterion::{Criterion, criterion_group, criterion_main};
use gateway::{
    config::{LimitKey, LimitSettings, RateLimitSettings},
    stages::rate_limit::{self, Buckets, Caller, Phase},
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
    }
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
    let mut one = |b: &mut criterion::Bencher<'_>| {
        b.iter(|| {
            rate_limit::charge(
                &buckets,
                &s,
                &[0],
                Phase::Anonymous,
                black_box(&who),
                &mut lines,
            )
        })
    };
    let mut g = c.benchmark_group("limit");
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
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let _ = rate_limit::charge(&buckets, &s, &[0], Phase::Anonymous, &who, &mut lines);
                n += 1;
            }
            n
        })
    };
    g.bench_function("two workers, one key", &mut one);
    stop.store(true, Ordering::Relaxed);
    let n = other.join().expect("second thread");
    assert!(n > 0, "the second thread never charged");
    g.finish();
}

criterion_group!(benches, decision);
criterion_main!(benches);
