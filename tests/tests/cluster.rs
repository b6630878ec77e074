//! Two gateways and a real `redis-server`: a limit counted across both
//! within the stated bound, verdicts reaching the other gateway (and a new
//! one) at once, no Redis call per request, and Redis killed and restarted.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use gateway_tests::harness::{Client, Redis, Setup, client_config, setup_with};

const ROUTES: &str = r#"
[[routes]]
path_prefix = "/limited"
upstream = "backend"
auth = "none"
rate_limits = ["ip"]

[[routes]]
path_prefix = "/together"
upstream = "backend"
auth = "none"
rate_limits = ["route-wide"]
"#;

fn gateway(tag: &str, redis: &Redis, on_failure: &str) -> Setup {
    setup_with(
        tag,
        "",
        "workers = 2",
        ROUTES,
        &format!(
            r#"
[cluster]
redis = "{}"
sync_ms = 50
on_failure = "{on_failure}"

[rate_limit]
backend = "redis"

[[rate_limit.limits]]
name = "ip"
key = "source"
rate = "10/min"

[[rate_limit.limits]]
name = "route-wide"
key = "route"
rate = "10/min"
"#,
            redis.url()
        ),
        &[],
    )
}

/// Waits until `s` has logged `times` lines containing `needle`.
fn logged_times(s: &mut Setup, needle: &str, times: usize, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let n = s.gw.proc.seen.iter().filter(|l| l.contains(needle)).count();
        if n >= times {
            return true;
        }
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return false;
        };
        s.gw.proc.wait_for_line(needle, left);
    }
}

fn logged(s: &mut Setup, needle: &str, within: Duration) -> bool {
    logged_times(s, needle, 1, within)
}

fn status(s: &Setup, path: &str) -> u16 {
    s.get(path, "").status
}

/// One admin request; the status and the JSON body.
fn admin(s: &Setup, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let addr: SocketAddr = s.gw.admin_addr().expect("admin address");
    let mut c = TcpStream::connect(addr).expect("admin");
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        c,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    let (head, json) = out.split_once("\r\n\r\n").unwrap_or_default();
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, serde_json::from_str(json).unwrap_or_default())
}

fn listed(s: &Setup, ip: &str) -> Option<serde_json::Value> {
    let (_, v) = admin(s, "GET", "/verdicts", "");
    v["verdicts"]
        .as_array()?
        .iter()
        .find(|e| e["source"] == ip)
        .cloned()
}

#[test]
fn two_gateways_share_a_limit_and_verdicts_through_redis() {
    let redis = Redis::start();
    let mut a = gateway("cl-a", &redis, "open");
    let mut b = gateway("cl-b", &redis, "open");
    for g in [&mut a, &mut b] {
        assert!(
            logged(
                g,
                "reachable: limits and verdicts are shared",
                Duration::from_secs(5)
            ),
            "{:?}",
            g.gw.proc.seen
        );
    }
    let evals_before = redis.calls("eval");

    // A spends the source's whole burst; once B has synced, B refuses too.
    let on_a: Vec<u16> = (0..11).map(|_| status(&a, "/limited/x")).collect();
    assert_eq!(on_a.iter().filter(|&&s| s == 200).count(), 10, "{on_a:?}");
    assert_eq!(on_a[10], 429);
    // B has never seen this source: its requests are decided locally until
    // it has synced (at most its own burst: the bound below), then B knows
    // the cluster's count. Polled until it refuses, rather than slept on.
    let admitted_on_b = std::cell::Cell::new(0);
    gateway_tests::harness::wait_until(
        "B learns A's count",
        Duration::from_secs(5),
        || match status(&b, "/limited/x") {
            200 => {
                admitted_on_b.set(admitted_on_b.get() + 1);
                std::thread::sleep(Duration::from_millis(20));
                false
            }
            code => code == 429,
        },
    );
    assert!(
        admitted_on_b.get() <= 10,
        "B admitted {} past A's count, more than its own burst",
        admitted_on_b.get()
    );
    let then: Vec<u16> = (0..5).map(|_| status(&b, "/limited/x")).collect();
    assert_eq!(then, [429; 5], "B forgot A's count");

    // Both at once on a fresh key: at most burst + (N-1)·(burst + rate·sync)
    // = 10 + 1·(10 + 10/min·50ms) = 20 get through, then the debt holds.
    let burst = |g: &Setup| {
        let tls = client_config(&g.certs.ca, &[&rustls::version::TLS13]);
        let port = g.gw.port;
        move || {
            (0..20)
                .filter(|_| {
                    let mut c = Client::connect(port, "localhost", tls.clone()).expect("TLS");
                    c.send(b"GET /together HTTP/1.1\r\nHost: localhost\r\n\r\n")
                        .expect("send");
                    c.response("GET").expect("response").status == 200
                })
                .count()
        }
    };
    let (ta, tb) = std::thread::scope(|sc| {
        let ha = sc.spawn(burst(&a));
        let hb = sc.spawn(burst(&b));
        (ha.join().expect("a"), hb.join().expect("b"))
    });
    assert!((10..=20).contains(&(ta + tb)), "admitted {ta} + {tb}");
    // Both have sent what they admitted to Redis and read the other's:
    // two more syncs each (`GET /cluster` counts them).
    let syncs = |g: &Setup| {
        admin(g, "GET", "/cluster", "").1["syncs"]
            .as_u64()
            .unwrap_or(0)
    };
    let (sa, sb) = (syncs(&a), syncs(&b));
    gateway_tests::harness::wait_until("both gateways sync", Duration::from_secs(5), || {
        syncs(&a) >= sa + 2 && syncs(&b) >= sb + 2
    });
    let after = (0..5)
        .flat_map(|_| [status(&a, "/together"), status(&b, "/together")])
        .filter(|&s| s == 200)
        .count();
    assert_eq!(after, 0, "the cluster forgot what it admitted");

    // No Redis call per request: the scripts ran once per sync batch.
    let evals = redis.calls("eval") - evals_before;
    let requests = 11 + admitted_on_b.get() + 6 + 40 + 10;
    assert!(
        evals > 0 && evals < requests / 2,
        "{evals} EVALs for {requests} requests"
    );

    // A verdict placed on B reaches A within a few syncs (5 s here: a
    // bound for a loaded machine), and a gateway that starts afterwards
    // finds it in Redis.
    let (code, _) = admin(
        &b,
        "POST",
        "/verdicts",
        r#"{"source":"198.18.9.9","secs":120,"why":"scanner"}"#,
    );
    assert_eq!(code, 201);
    let placed = Instant::now();
    let mut seen = None;
    while placed.elapsed() < Duration::from_secs(5) && seen.is_none() {
        seen = listed(&a, "198.18.9.9");
        std::thread::sleep(Duration::from_millis(20));
    }
    let seen = seen.expect("A never got B's verdict");
    assert!(
        seen["why"]
            .as_str()
            .unwrap_or_default()
            .starts_with("scanner (from gateway "),
        "{seen}"
    );
    let mut c = gateway("cl-c", &redis, "open");
    assert!(logged(&mut c, "shared by gateway", Duration::from_secs(3)));
    assert!(
        listed(&c, "198.18.9.9").is_some(),
        "C joined without the current set"
    );
    // Lifted on A: gone everywhere.
    assert_eq!(admin(&a, "DELETE", "/verdicts/198.18.9.9", "").0, 200);
    let lifted = Instant::now();
    while lifted.elapsed() < Duration::from_secs(5)
        && (listed(&b, "198.18.9.9").is_some() || listed(&c, "198.18.9.9").is_some())
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(listed(&b, "198.18.9.9").is_none() && listed(&c, "198.18.9.9").is_none());
}

#[test]
fn redis_killed_and_restarted_fails_open_or_closed_and_recovers() {
    let mut redis = Redis::start();
    let mut open = gateway("cl-open", &redis, "open");
    let mut closed = gateway("cl-closed", &redis, "closed");
    for g in [&mut open, &mut closed] {
        assert!(logged(g, "reachable: limits", Duration::from_secs(5)));
    }
    assert_eq!(status(&closed, "/limited/x"), 200);

    redis.kill();
    for g in [&mut open, &mut closed] {
        assert!(
            logged(g, "unreachable", Duration::from_secs(5)),
            "{:?}",
            g.gw.proc.seen
        );
    }
    // Open: the limit is counted locally (10/min burst 10), still enforced.
    let before = open.backend.hits("/limited");
    let local: Vec<u16> = (0..11).map(|_| status(&open, "/limited/x")).collect();
    assert_eq!(local.iter().filter(|&&s| s == 200).count(), 10, "{local:?}");
    assert_eq!(local[10], 429);
    assert_eq!(
        open.backend.hits("/limited") - before,
        10,
        "the 429 reached the backend"
    );
    // Closed: limited routes refuse; others are served.
    let before = closed.backend.hits("/limited");
    let r = closed.get("/limited/x", "");
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(
        gateway_tests::harness::reason_of(&r),
        "rate_limit.unavailable"
    );
    assert_eq!(
        closed.backend.hits("/limited"),
        before,
        "the 503 reached the backend"
    );
    assert_eq!(status(&closed, "/plain"), 200);
    // Several failed retries, one line.
    std::thread::sleep(Duration::from_millis(2500));
    let _ = open
        .gw
        .proc
        .wait_for_line("never", Duration::from_millis(100));
    let lines = open
        .gw
        .proc
        .seen
        .iter()
        .filter(|l| l.contains("unreachable"))
        .count();
    assert_eq!(lines, 1, "{:?}", open.gw.proc.seen);

    redis.restart();
    for g in [&mut open, &mut closed] {
        assert!(
            logged_times(g, "reachable: limits", 2, Duration::from_secs(5)),
            "{:?}",
            g.gw.proc.seen
        );
    }
    assert_eq!(status(&closed, "/limited/x"), 200);
}
