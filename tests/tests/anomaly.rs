//! Anomaly detection from the attacker's side: after a recorded baseline
//! of ordinary traffic, a scan that stays under every fixed limit (a few
//! 404s a second from an address that made none) is logged with its
//! evidence and earns a verdict; the baseline itself never does.

use std::time::{Duration, Instant};

use gateway_tests::harness::{Client, client_config, reason_of, setup_with};

const ROUTES: &str = r#"
[[routes]]
path_prefix = "/"
upstream = "backend"
auth = "none"
rate_limits = ["generous"]
"#;

const TAIL: &str = r#"
[[rate_limit.limits]]
name = "generous"
key = "source"
rate = "100/s"

[rate_limit.escalation]
rejections = 0
auth_failures = 0
attacks = 0
ban_secs = 30

[anomaly]
window_secs = 1
baseline_windows = 3
factor = 5.0
min_events = 8
escalate = true
"#;

#[test]
fn a_scan_under_every_limit_is_caught_against_the_recorded_baseline() {
    let mut s = setup_with("anomaly", "", "workers = 2", ROUTES, TAIL, &[]);
    // The baseline: about 10 ordinary requests a second, no errors.
    let until = Instant::now() + Duration::from_millis(4000);
    while Instant::now() < until {
        assert_eq!(s.get("/catalog", "").status, 200);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        s.gw.proc
            .wait_for_line("anomaly:", Duration::from_millis(300))
            .is_none(),
        "ordinary traffic flagged: {:?}",
        s.gw.proc.seen
    );
    // The scan: 404s at ~25/s, far under the 100/s limit, beside the usual
    // traffic. A first partial window under `min_events` is folded into the
    // baseline (at most 7 events: 2.3/s over 3 windows); the rate keeps a
    // margin over 5 times that on a slow machine. Up to 5 windows; it stops
    // at the verdict.
    let until = Instant::now() + Duration::from_millis(5000);
    while Instant::now() < until {
        // The verdict may land at any moment: from then on the scanner's
        // requests get its answer (a first offence is refused request by
        // request).
        let cfg = client_config(&s.certs.ca, &[&rustls::version::TLS13]);
        let r = Client::connect(s.gw.port, "localhost", cfg)
            .and_then(|mut c| c.get("/bad/status/404"))
            .expect("a first offence is answered, not cut");
        if r.status == 403 {
            assert_eq!(reason_of(&r), "verdict.abuse");
            break;
        }
        assert_ne!(r.status, 429, "a fixed limit caught it first");
        std::thread::sleep(Duration::from_millis(30));
    }
    let line =
        s.gw.proc
            .wait_for_line("anomaly: source 127.0.0.1", Duration::from_secs(3))
            .unwrap_or_else(|| panic!("no anomaly: {:?}", s.gw.proc.seen));
    // The evidence: the 404 rate against a baseline from before the scan.
    // A first partial window of the scan, under `min_events`, may already
    // have been folded into it, so the baseline is low, not always zero.
    let (rate, baseline) = evidence(&line, "404s");
    assert!(baseline < 5.0 && rate > 5.0 * baseline.max(0.1), "{line}");
    let verdict =
        s.gw.proc
            .wait_for_line("verdict: 127.0.0.1", Duration::from_secs(3))
            .unwrap_or_else(|| panic!("no verdict: {:?}", s.gw.proc.seen));
    assert!(
        verdict.contains("(abuse: anomaly: source 127.0.0.1: 404s"),
        "{verdict}"
    );
    assert!(verdict.contains("refused request by request"), "{verdict}");
    let r = s.get("/catalog", "");
    assert_eq!(
        (r.status, reason_of(&r).as_str()),
        (403, "verdict.abuse"),
        "the scanner is still served: {r:?}"
    );
}

#[test]
fn behind_a_trusted_proxy_the_client_it_names_is_the_subject() {
    let tail = format!("{TAIL}\n[proxy]\ntrusted_proxies = [\"127.0.0.1/32\"]\n");
    let mut s = setup_with("anomaly-xff", "", "workers = 2", ROUTES, &tail, &[]);
    let via = |client: &str| format!("X-Forwarded-For: {client}\r\n");
    // The baseline: an ordinary client behind the proxy.
    let until = Instant::now() + Duration::from_millis(4000);
    while Instant::now() < until {
        assert_eq!(s.get("/catalog", &via("198.18.0.10")).status, 200);
        std::thread::sleep(Duration::from_millis(100));
    }
    // A scanner behind the same proxy, under every fixed limit, whose
    // probes the gateway refuses itself (a NUL in the path: 400): they
    // never reach a route, and still count. Beside it, the same probes
    // through a chain of trusted hops only, which name no client. The pace
    // keeps a margin over a baseline a first partial window lifted (see
    // the test above).
    let until = Instant::now() + Duration::from_millis(5000);
    while Instant::now() < until {
        let probe = s.get("/probe%00", &via("198.18.0.66"));
        if probe.status == 403 {
            // Its verdict: refused request by request, behind the proxy
            // too (the kernel cannot tell its packets from the proxy's).
            assert_eq!(reason_of(&probe), "verdict.abuse");
            break;
        }
        assert_eq!(probe.status, 400);
        assert_eq!(s.get("/probe%00", &via("127.0.0.1")).status, 400);
        assert_eq!(s.get("/catalog", &via("198.18.0.10")).status, 200);
        std::thread::sleep(Duration::from_millis(30));
    }
    let line =
        s.gw.proc
            .wait_for_line("anomaly: source 198.18.0.66", Duration::from_secs(3))
            .unwrap_or_else(|| panic!("no anomaly: {:?}", s.gw.proc.seen));
    assert!(line.contains(": 400s "), "{line}");
    let flagged: Vec<&String> =
        s.gw.proc
            .seen
            .iter()
            .filter(|l| l.contains("anomaly: source 127.0.0.1") || l.contains("verdict: 127.0.0.1"))
            .collect();
    assert!(
        flagged.is_empty(),
        "the proxy itself was counted: {flagged:?}"
    );
    // The proxy still carries the ordinary client, and the scanner behind
    // it gets its answer, whatever it asks for.
    assert_eq!(s.get("/catalog", &via("198.18.0.10")).status, 200);
    let r = s.get("/catalog", &via("198.18.0.66"));
    assert_eq!((r.status, reason_of(&r).as_str()), (403, "verdict.abuse"));
}

/// The rate and baseline (per second) a finding names for `measure`:
/// `...: 404s 14.0/s (14 in the window) against its baseline of 2.50/s`.
fn evidence(line: &str, measure: &str) -> (f64, f64) {
    let per_s = |t: &str| -> f64 {
        t.split("/s")
            .next()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no rate in {line}"))
    };
    let after = line
        .split(&format!(": {measure} "))
        .nth(1)
        .unwrap_or_else(|| panic!("no {measure} in {line}"));
    let baseline = after
        .split("against its baseline of ")
        .nth(1)
        .unwrap_or_else(|| panic!("no baseline in {line}"));
    (per_s(after), per_s(baseline))
}
