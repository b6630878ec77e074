//! `/metrics` on the admin listener as Prometheus reads it: the text
//! parses, and the counters and latency histograms move as requests flow;
//! a latency distribution comes as `.hgrm`.

use std::time::{Duration, Instant};

use gateway_tests::harness::{SHOP_ROUTE as ROUTES, setup_with};

fn scrape(admin: std::net::SocketAddr, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(admin).expect("admin");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {admin}\r\n\r\n").as_bytes())
        .expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let (head, body) = out.split_once("\r\n\r\n").expect("head");
    (head.to_owned(), body.to_owned())
}

/// Every sample of the exposition, as (name with labels, value); panics on
/// a line that is not Prometheus text.
fn samples(text: &str) -> Vec<(String, f64)> {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("prometheus text");
    scrape
        .samples
        .iter()
        .map(|s| {
            let mut labels: Vec<String> =
                s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            labels.sort();
            let value = match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                prometheus_parse::Value::Histogram(h) => {
                    h.iter().map(|b| b.count).fold(0.0, f64::max)
                }
                prometheus_parse::Value::Summary(_) => f64::NAN,
            };
            (format!("{}{{{}}}", s.metric, labels.join(",")), value)
        })
        .collect()
}

fn value(samples: &[(String, f64)], key: &str) -> f64 {
    samples
        .iter()
        .find(|(k, _)| k == key)
        .map_or(0.0, |(_, v)| *v)
}

#[test]
fn metrics_parse_and_move_as_requests_flow() {
    let s = setup_with("metrics", "", "workers = 2", ROUTES, "", &[]);
    let admin = s.gw.admin_addr().expect("admin listener");
    let (head, before) = scrape(admin, "/metrics");
    assert!(
        head.contains("200") && head.contains("text/plain; version=0.0.4"),
        "{head}"
    );
    let before = samples(&before);
    for _ in 0..5 {
        assert_eq!(s.get("/shop/x", "").status, 200);
    }
    assert_eq!(s.get("/shop/x?q=%27%20OR%20%271%27%3D%271", "").status, 403);
    // Published every 500 ms.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut after = Vec::new();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        after = samples(&scrape(admin, "/metrics").1);
        if value(&after, "gateway_requests_total{code=200,route=0}") >= 5.0
            && value(&after, "gateway_rejections_total{reason=waf.sqli}") >= 1.0
        {
            break;
        }
    }
    let moved = |k: &str| value(&after, k) - value(&before, k);
    assert_eq!(
        moved("gateway_requests_total{code=200,route=0}"),
        5.0,
        "{after:?}"
    );
    assert_eq!(moved("gateway_requests_total{code=403,route=0}"), 1.0);
    assert_eq!(moved("gateway_rejections_total{reason=waf.sqli}"), 1.0);
    assert!(
        moved("gateway_request_duration_seconds_count{route=0}") >= 6.0,
        "{after:?}"
    );
    assert!(moved("gateway_upstream_duration_seconds_count{route=0}") >= 5.0);
    assert!(moved("gateway_tls_handshakes_total{}") >= 6.0, "{after:?}");
    assert!(
        moved("gateway_access_log_lines_total{}") >= 5.0,
        "{after:?}"
    );
    assert_eq!(value(&after, "gateway_access_log_dropped_total{}"), 0.0);
    assert!(
        after
            .iter()
            .any(|(k, _)| k.starts_with("gateway_connections_open"))
    );

    let (head, hgrm) = scrape(admin, "/metrics/latency.hgrm?route=0");
    assert!(head.contains("200"), "{head}");
    assert!(
        hgrm.contains("Percentile") && hgrm.contains("Total count"),
        "{hgrm}"
    );
    let (head, _) = scrape(admin, "/metrics/latency.hgrm?route=9");
    assert!(head.contains("404"), "{head}");
    // The public port never serves metrics: the path is routed like any
    // other (the catch-all route's backend answers it), and no counter is
    // in its answer.
    let r = s.get("/metrics", "");
    let body = String::from_utf8_lossy(&r.body);
    assert!(
        !body.contains("gateway_requests_total") && !body.contains("# TYPE"),
        "{body}"
    );
    assert_eq!(s.backend.hits("/metrics"), 1);
}

#[test]
fn rate_limit_decisions_and_upstream_pools_show_in_metrics() {
    // An upstream whose only server refuses connections.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead = closed.local_addr().expect("addr");
    drop(closed);
    let routes = r#"
[[routes]]
path_prefix = "/limited"
upstream = "backend"
auth = "none"
rate_limits = ["tight"]

[[routes]]
path_prefix = "/dead"
upstream = "dead"
auth = "none"

[[routes]]
path_prefix = "/"
upstream = "backend"
auth = "none"
"#;
    let tail = format!(
        "[[upstreams]]\nname = \"dead\"\nservers = [\"{dead}\"]\n\n[[rate_limit.limits]]\nname = \"tight\"\nkey = \"source\"\nrate = \"2/s\"\n"
    );
    let s = setup_with("metrics-up", "", "workers = 1", routes, &tail, &[]);
    let admin = s.gw.admin_addr().expect("admin listener");
    // One keep-alive connection: the first request opens an upstream
    // connection, the rest reuse it.
    let mut c = s.client();
    let mut ok = 0;
    let mut limited = 0;
    for _ in 0..6 {
        match c.get("/limited/x").expect("response").status {
            200 => ok += 1,
            429 => limited += 1,
            other => panic!("status {other}"),
        }
    }
    for _ in 0..3 {
        assert_eq!(c.get("/open").expect("response").status, 200);
    }
    assert!(ok >= 1 && limited >= 1, "{ok} allowed, {limited} limited");
    let dead_status = s.get("/dead/x", "").status;
    assert!([502, 503].contains(&dead_status), "{dead_status}");
    let backend = s.backend.addr;
    let key = |name: &str, upstream: &str, server: &dyn std::fmt::Display| {
        format!("{name}{{server={server},upstream={upstream}}}")
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut m = Vec::new();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        m = samples(&scrape(admin, "/metrics").1);
        if value(
            &m,
            &key("gateway_upstream_connect_failures_total", "dead", &dead),
        ) >= 1.0
        {
            break;
        }
    }
    let decisions = |d: &str| {
        value(
            &m,
            &format!("gateway_rate_limit_decisions_total{{decision={d},limit=tight}}"),
        )
    };
    assert_eq!(decisions("allowed"), f64::from(ok), "{m:?}");
    assert_eq!(decisions("limited"), f64::from(limited), "{m:?}");
    // Every forwarded request either opened a connection or reused one.
    let opened = value(
        &m,
        &key("gateway_upstream_connects_total", "backend", &backend),
    );
    let reused = value(
        &m,
        &key("gateway_upstream_reuses_total", "backend", &backend),
    );
    assert_eq!(opened + reused, f64::from(ok + 3), "{m:?}");
    assert!(
        reused >= f64::from(ok + 1),
        "keep-alive upstream not reused: {m:?}"
    );
    assert!(
        value(
            &m,
            &key("gateway_upstream_connections_idle", "backend", &backend)
        ) >= 1.0
    );
    assert_eq!(
        value(&m, &key("gateway_upstream_server_up", "backend", &backend)),
        1.0
    );
    assert_eq!(
        value(
            &m,
            &key("gateway_upstream_requests_in_flight", "backend", &backend)
        ),
        0.0
    );
    // The refusing server: down, its failures counted, never connected.
    let up = key("gateway_upstream_server_up", "dead", &dead);
    assert!(m.iter().any(|(k, _)| *k == up), "no {up} in {m:?}");
    assert_eq!(
        value(&m, &key("gateway_upstream_server_up", "dead", &dead)),
        0.0,
        "{m:?}"
    );
    assert!(
        value(
            &m,
            &key("gateway_upstream_connect_failures_total", "dead", &dead)
        ) >= 1.0
    );
    assert_eq!(
        value(&m, &key("gateway_upstream_connects_total", "dead", &dead)),
        0.0
    );
}

/// A tmux session killed on drop, also when the test fails.
struct Tmux(String);

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .status();
    }
}

#[test]
fn top_renders_the_live_figures_in_a_terminal() {
    let s = setup_with("metrics-top", "", "workers = 2", ROUTES, "", &[]);
    let admin = s.gw.admin_addr().expect("admin listener");
    let name = format!("gwtop{}", std::process::id());
    let session = Tmux(name.clone());
    let started = std::process::Command::new("tmux")
        .args(["new-session", "-d", "-s", &name, "-x", "100", "-y", "30"])
        .arg(format!(
            "{} top --admin {admin} --interval 0.5",
            gateway_tests::gateway_bin().display()
        ))
        .status()
        .expect("tmux (apt-get install tmux)");
    assert!(started.success());
    // Traffic for a few frames: served requests and WAF refusals.
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        assert_eq!(s.get("/shop/x", "").status, 200);
        assert_eq!(
            s.get("/shop/x?q=%3Cscript%3Ealert(1)%3C/script%3E", "")
                .status,
            403
        );
    }
    let screen = std::process::Command::new("tmux")
        .args(["capture-pane", "-p", "-t", &session.0])
        .output()
        .expect("capture");
    let screen = String::from_utf8_lossy(&screen.stdout).into_owned();
    assert!(
        screen.contains(&format!("gateway top: {admin}")),
        "{screen}"
    );
    for want in [
        "requests/s",
        "2xx",
        "p99",
        "waf.xss",
        "XDP drops/s",
        "open connections",
    ] {
        assert!(screen.contains(want), "no {want} on screen:\n{screen}");
    }
    // A rate above zero: the frame is about traffic, not just headings.
    let rate: f64 = screen
        .lines()
        .find_map(|l| l.strip_prefix("requests/s"))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|r| r.parse().ok())
        .unwrap_or(0.0);
    assert!(rate > 0.0, "{screen}");
    // Refreshed in place: one frame on screen, not a scroll of them.
    assert_eq!(screen.matches("gateway top:").count(), 1, "{screen}");
}
