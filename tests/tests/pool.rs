//! The upstream pool under load, counted at the backend: connections are
//! kept while requests are in flight (not closed at a fixed idle cap and
//! opened again a moment later), idle ones go after the idle timeout, and
//! a cold start of more concurrent requests than `max_connects` waits for
//! a connection instead of answering 503.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use gateway_tests::harness::{Backend, Client, Setup, client_config, setup_with};

fn capped(backend: &Backend, extra: &str) -> String {
    format!(
        "[[upstreams]]\nname = \"capped\"\nservers = [\"{}\"]\n{extra}\n\n\
         [[routes]]\npath_prefix = \"/pooled\"\nupstream = \"capped\"\nauth = \"none\"\n",
        backend.addr
    )
}

/// `clients` connections at once, each sending `each` keep-alive GETs to
/// `path`; every status seen.
fn load(s: &Setup, clients: usize, each: usize, path: &str) -> Vec<u16> {
    let cfg = client_config(&s.certs.ca, &[&rustls::version::TLS13]);
    let port = s.gw.port;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|i| {
                let cfg = cfg.clone();
                scope.spawn(move || {
                    let Ok(mut c) = Client::connect(port, "localhost", cfg) else {
                        return vec![0; each];
                    };
                    (0..each)
                        .map(|j| c.get(&format!("{path}/{i}/{j}")).map_or(0, |r| r.status))
                        .collect::<Vec<u16>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("client thread"))
            .collect()
    })
}

fn metric(admin: SocketAddr, name: &str) -> f64 {
    let mut s = TcpStream::connect(admin).expect("admin");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .expect("send");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.lines()
        .filter(|l| l.starts_with(name) && l.contains("upstream=\"capped\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// 32 clients keep 32 requests in flight through a pool whose floor is 4:
/// the connections that come back are kept, so the backend sees about as
/// many connections as there is concurrency, not one per request.
#[test]
fn connections_stay_pooled_while_the_load_lasts_and_go_when_idle() {
    let backend = Backend::start();
    let routes = capped(&backend, "idle_per_server = 4\nidle_timeout_ms = 500");
    let s = setup_with("pool-keep", "", "workers = 1", &routes, "", &[]);
    let statuses = load(&s, 32, 25, "/pooled/slow/5");
    assert!(statuses.iter().all(|&c| c == 200), "{statuses:?}");
    let opened = backend.accepted();
    assert!(
        opened <= 40,
        "{opened} backend connections for 800 requests at a concurrency of 32"
    );
    // Once the load is gone, the idle timeout closes all but the floor's
    // worth and then those too (workers reap every 500 ms).
    let admin = s.gw.admin_addr().expect("admin");
    let until = Instant::now() + Duration::from_secs(5);
    let mut idle = metric(admin, "gateway_upstream_connections_idle");
    while idle > 0.0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(200));
        idle = metric(admin, "gateway_upstream_connections_idle");
    }
    assert_eq!(idle, 0.0, "idle connections outlived the idle timeout");
}

/// More concurrent requests than `max_connects` at a cold start: they
/// wait for a connection (a pooled one, or a place to connect) instead of
/// getting 503 `upstream.max_connects`.
#[test]
fn a_cold_start_beyond_max_connects_waits_instead_of_refusing() {
    let backend = Backend::start();
    let routes = capped(&backend, "max_connects = 2\nconnect_timeout_ms = 3000");
    let s = setup_with("pool-cold", "", "workers = 2", &routes, "", &[]);
    let statuses = load(&s, 48, 2, "/pooled/slow/50");
    let refused = statuses.iter().filter(|&&c| c == 503).count();
    assert_eq!(
        refused,
        0,
        "{refused} of {} refused: {statuses:?}",
        statuses.len()
    );
    assert!(statuses.iter().all(|&c| c == 200), "{statuses:?}");
    assert_eq!(backend.hits("/pooled/slow/50"), 96);
}
