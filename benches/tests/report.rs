//! The benchmark report's reduced mode, run as a user would
//! (`gateway-bench all --reduced`): every scenario runs against the peers,
//! and the folder it writes is well formed — tables whose rows match their
//! headers, a `.hgrm` per scenario that reads back, PNG plots, the machine
//! and the commands named. Figures are not judged here: speed lives in the
//! benchmark itself.

use std::{path::Path, process::Command};

/// Rows of the Markdown table under `heading` (of any level): (header
/// cells, body rows).
fn table(md: &str, heading: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let section = md
        .split("\n#")
        .map(|s| s.trim_start_matches('#').trim_start())
        .find(|s| s.starts_with(heading))
        .unwrap_or_else(|| panic!("no section {heading:?} in:\n{md}"));
    let cells = |l: &str| -> Vec<String> {
        l.trim()
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_owned())
            .collect()
    };
    // The first table only: a section may hold more below.
    let mut lines = section
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'));
    let header = cells(
        lines
            .next()
            .unwrap_or_else(|| panic!("no table under {heading}")),
    );
    let rows: Vec<Vec<String>> = lines.skip(1).map(cells).collect();
    for r in &rows {
        assert_eq!(
            r.len(),
            header.len(),
            "{heading}: row {r:?} against {header:?}"
        );
    }
    (header, rows)
}

fn number(cell: &str) -> f64 {
    cell.trim_end_matches('×')
        .parse()
        .unwrap_or_else(|_| panic!("not a number: {cell:?}"))
}

/// A `.hgrm` file reads back: rising percentiles, counts that add up.
fn check_hgrm(path: &Path) {
    let text = std::fs::read_to_string(path).expect("hgrm");
    let mut last_q = -1.0;
    let mut last_count = 0u64;
    for line in text
        .lines()
        .skip(2)
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 4, "{}: {line}", path.display());
        let q: f64 = f[1].parse().expect("percentile");
        let count: u64 = f[2].parse().expect("count");
        assert!(
            q >= last_q && count >= last_count,
            "{}: {line}",
            path.display()
        );
        (last_q, last_count) = (q, count);
    }
    let total: u64 = text
        .split("Total count    =")
        .nth(1)
        .and_then(|t| t.trim().trim_end_matches(']').trim().parse().ok())
        .unwrap_or_else(|| panic!("{}: no total", path.display()));
    assert!(
        total > 0 && total == last_count,
        "{}: {total} vs {last_count}",
        path.display()
    );
}

/// A PNG of the size the plots are drawn at.
fn check_png(path: &Path) {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "{}", path.display());
    let be = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    assert_eq!((be(16), be(20)), (1200, 700), "{}", path.display());
    assert!(
        b.len() > 20_000,
        "{}: only {} bytes",
        path.display(),
        b.len()
    );
}

#[test]
fn the_reduced_report_runs_every_scenario_and_is_well_formed() {
    gateway_tests::require_root();
    let out = std::env::temp_dir().join(format!("gw-report-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    // In a network namespace of its own: the benchmark's fixed ports
    // (18080-18446) can then never meet a service of the host's.
    let ns = gateway_tests::NetNs::new(&format!("gwt-report-{}", std::process::id() % 10_000))
        .expect("namespace");
    let status = Command::new("ip")
        .args(["netns", "exec", ns.name()])
        .arg(env!("CARGO_BIN_EXE_gateway-bench"))
        .args(["all", "--reduced", "--out"])
        .arg(&out)
        .arg("--gateway")
        .arg(gateway_tests::gateway_bin())
        .status()
        .expect("gateway-bench runs");
    assert!(status.success(), "gateway-bench all --reduced: {status}");
    let md = std::fs::read_to_string(out.join("report.md")).expect("report.md");
    // The machine and versions, so a reader can rerun it.
    let release = nix::sys::utsname::uname().expect("uname");
    assert!(md.contains(&*release.release().to_string_lossy()), "{md}");
    for fact in [
        "**CPU:**",
        "**gateway:** gateway ",
        "**setup:**",
        "proxies on CPUs",
    ] {
        assert!(md.contains(fact), "{fact} missing:\n{md}");
    }
    assert!(
        md.contains("`taskset -c") && md.contains(" wrk -t 1 -c 64 "),
        "{md}"
    );
    // CI installs the peers: every one is measured, with its OpenSSL named.
    // Only what the kernel refuses may be left out, and it says so.
    let left_out: Vec<&str> = md
        .split("## Left out\n\n")
        .nth(1)
        .map(|s| s.split("\n\n").next().unwrap_or("").lines().collect())
        .unwrap_or_default();
    let xdp_refused = left_out
        .iter()
        .any(|l| l.starts_with("- XDP drop path against nftables: the kernel refused"));
    assert!(
        left_out.iter().all(|l| l.contains("the kernel refused")),
        "a peer is missing:\n{md}"
    );
    assert!(
        md.contains("Running on OpenSSL version") && md.contains("built with OpenSSL"),
        "{md}"
    );

    let (header, closed) = table(&md, "Proxy, closed loop");
    assert_eq!(header[0], "system");
    let names: Vec<&str> = closed.iter().map(|r| r[0].as_str()).collect();
    for n in [
        "backend", "gateway", "gw+key", "haproxy", "nginx", "gw+valid", "ha+post", "ng+post",
    ] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
    for r in &closed {
        assert!(number(&r[1]) > 0.0, "{r:?}");
        assert_eq!(r.last().map(String::as_str), Some("0"), "errors in {r:?}");
    }
    let ha = closed
        .iter()
        .find(|r| r[0] == "haproxy")
        .expect("haproxy row");
    assert_eq!(ha[7], "1.00×", "ratios are to HAProxy: {ha:?}");
    let (header, cpu) = table(&md, "Where the CPU goes");
    assert_eq!(header[2], "proxy user µs/req", "{header:?}");
    for name in ["gateway", "haproxy", "nginx"] {
        let r = cpu
            .iter()
            .find(|r| r[0] == name)
            .unwrap_or_else(|| panic!("{name} missing from {cpu:?}"));
        let busy = number(r[5].trim_end_matches(" %"));
        assert!(
            number(&r[2]) + number(&r[3]) > 0.0 && (0.0..=100.0).contains(&busy),
            "{r:?}"
        );
        // Counted at the backend: a pool keeping its connections opens
        // next to none per request.
        let (connects, reuses) = (number(&r[7]), number(&r[8]));
        assert!(
            (0.0..=1.0).contains(&connects) && (connects + reuses - 1.0).abs() < 1e-3,
            "{r:?}"
        );
    }
    let (_, open) = table(&md, "Proxy, open loop");
    for r in &open {
        assert_eq!(r[1], "1000", "{r:?}");
        assert!(
            number(&r[2]) > 900.0,
            "the open loop fell short of its rate: {r:?}"
        );
        assert_eq!(r.last().map(String::as_str), Some("0"), "errors in {r:?}");
    }
    let (_, idle) = table(&md, "Memory per idle");
    let idle_names: Vec<&str> = idle.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(idle_names, ["gateway", "haproxy", "nginx"], "{idle:?}");
    for r in &idle {
        let kib = number(&r[1]);
        assert!((0.0..1024.0).contains(&kib), "{r:?}");
    }
    let (_, flood) = table(&md, "Flood");
    assert_eq!(flood.len(), 3, "{flood:?}");
    if !xdp_refused {
        let (_, xdp) = table(&md, "XDP drop path");
        assert!(xdp.iter().any(|r| r[0] == "nftables"), "{xdp:?}");
    }

    // HTTP/2: the three proxies' h2 frontends under h2load, each answered
    // every request, with its distribution and plot.
    let (header, h2) = table(&md, "h2load -c16 -m4");
    assert_eq!(header[1], "req/s", "{header:?}");
    let h2_names: Vec<&str> = h2.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(h2_names, ["gateway", "haproxy", "nginx"], "{h2:?}");
    for r in &h2 {
        assert!(number(&r[1]) > 0.0, "{r:?}");
        assert_eq!(r.last().map(String::as_str), Some("0"), "errors in {r:?}");
        check_hgrm(&out.join(format!("hgrm/h2-c16m4-{}.hgrm", r[0])));
    }
    let (_, h2_idle) = table(&md, "Memory per idle h2 connection");
    assert_eq!(h2_idle.len(), 3, "{h2_idle:?}");
    assert!(md.contains("](h2-1.png)"), "h2-1.png not linked");
    check_png(&out.join("h2-1.png"));

    for (kind, rows) in [("closed", &closed), ("open", &open)] {
        for r in rows {
            check_hgrm(&out.join(format!("hgrm/{}-{kind}.hgrm", r[0])));
        }
    }
    for png in ["closed-loop.png", "post.png", "open-loop.png"] {
        assert!(md.contains(&format!("]({png})")), "{png} not linked");
        check_png(&out.join(png));
    }
    let csv = std::fs::read_to_string(out.join("summary.csv")).expect("summary.csv");
    assert_eq!(csv.lines().count(), 1 + closed.len() + open.len(), "{csv}");
    assert!(csv.lines().all(|l| l.split(',').count() == 16), "{csv}");
    let _ = std::fs::remove_dir_all(&out);
}
