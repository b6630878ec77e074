//! The kernel verdict loop from the attacker's side, with the real binary
//! and XDP attached in a namespace pair: a spoofed SYN flood carrying a
//! trusted proxy's address cannot lock the proxy out; a load test from the
//! host itself is never cut; an IPv6 attacker is its /64 (rotating inside
//! it escapes nothing) and is refused request by request before the kernel
//! drops it; a configured upstream is never sentenced in the kernel; the
//! host itself and a trusted proxy driving refusals are never sentenced in
//! the kernel; and a full verdict map falls back to request verdicts and
//! says so.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use gateway::{
    clock::{Clock, Monotonic},
    config::Config,
    control::escalate::Sentence,
    control::verdicts::{Book, RequestVerdicts},
    xdp::DataPlane,
    xdp::enforce::Enforcement,
};
use gateway_common::{VERDICT_CAPACITY, VerdictReason};
use gateway_tests::{
    NetNs, Running, Testbed, connect_from,
    harness::{Backend, Certs, Client, TempDir, client_config, reason_of},
    require_root, run_gateway_in, sh, syn_flood,
};
use nix::sys::signal::Signal;

fn stop(mut gw: Running) {
    gw.stop(Signal::SIGTERM, Duration::from_secs(10))
        .expect("the gateway stops");
}

/// A flood of SYNs carrying a trusted proxy's address (spoofed, or the
/// proxy's own) never drains a budget the proxy's real connections need;
/// the same flood from any other source is cut.
#[test]
fn spoofed_syns_with_a_trusted_proxys_address_never_lock_it_out() {
    require_root();
    let bed = Testbed::new("synproxy").expect("testbed");
    let dir = TempDir::new("xdp-synproxy");
    let certs = Certs::issue(&dir.0, &["localhost"]);
    let server = bed.server_ip(false);
    let (proxy, other) = (bed.host_ip(false, 2), bed.host_ip(false, 3));
    let config = format!(
        "[listen]\nhttps = \"{server}:8443\"\nplain_http_port = 8080\n\n{certs}\n\
         [demo]\nlisten = \"127.0.0.1:8081\"\n\
         [[upstreams]]\nname = \"demo\"\nservers = [\"127.0.0.1:8081\"]\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"demo\"\nauth = \"none\"\n\
         [proxy]\ntrusted_proxies = [\"{proxy}/32\"]\n\
         [xdp]\ninterface = \"{iface}\"\nmode = \"skb\"\nsyn_rate = 100\nsyn_burst = 100\n",
        certs = certs.toml(),
        iface = bed.server_if,
    );
    let gw = run_gateway_in(&bed.server, &dir.0, &config);
    let dst = SocketAddr::new(server, 8443);
    let tried_during_flood = |src: IpAddr| -> usize {
        bed.client.run(|| {
            std::thread::scope(|s| {
                // Spread over the whole attempt: the budget never refills.
                let flood = s.spawn(|| {
                    syn_flood(
                        src,
                        dst,
                        30_000,
                        Duration::from_micros(100),
                        Duration::from_secs(3),
                    )
                    .expect("flood")
                });
                std::thread::sleep(Duration::from_millis(300));
                let ok = (0..3)
                    .filter(|_| connect_from(src, dst, Duration::from_secs(2)).is_ok())
                    .count();
                let (sent, _) = flood.join().expect("flood thread");
                assert!(sent > 1_000, "the flood sent only {sent} SYNs");
                ok
            })
        })
    };
    assert_eq!(
        tried_during_flood(proxy),
        3,
        "the trusted proxy was locked out by a flood carrying its address"
    );
    assert!(
        tried_during_flood(other) < 3,
        "the same flood from another source was not cut"
    );
    stop(gw);
}

/// `cargo xtask run` on `lo`, load-tested from the same host with
/// `Connection: close` (a new connection per request): the SYN budget never
/// cuts the host's own traffic, and the start-up log says so.
#[test]
fn a_load_test_from_the_host_itself_is_never_cut() {
    require_root();
    let ns = NetNs::new(&format!("gwt-lo-{}", std::process::id() % 10_000)).expect("namespace");
    let dir = TempDir::new("xdp-lo");
    let certs = Certs::issue(&dir.0, &["localhost"]);
    // A budget a handful of connections a second exceeds.
    let config = format!(
        "[listen]\nhttps = \"127.0.0.1:8443\"\nplain_http_port = 8080\n\n{certs}\n\
         [demo]\nlisten = \"127.0.0.1:8081\"\n\
         [[upstreams]]\nname = \"demo\"\nservers = [\"127.0.0.1:8081\"]\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"demo\"\nauth = \"none\"\n\
         [xdp]\ninterface = \"lo\"\nmode = \"skb\"\nsyn_rate = 20\nsyn_burst = 20\n",
        certs = certs.toml(),
    );
    let mut gw = run_gateway_in(&ns, &dir.0, &config);
    assert!(
        gw.seen.iter().any(|l| l.contains("loopback exempt")),
        "{:?}",
        gw.seen
    );
    let out = ns
        .exec(&[
            "wrk",
            "-t1",
            "-c8",
            "-d2s",
            "-H",
            "Connection: close",
            "https://127.0.0.1:8443/public",
        ])
        .expect("wrk");
    let requests: u64 = out
        .split_whitespace()
        .zip(out.split_whitespace().skip(1))
        .find_map(|(n, w)| (w == "requests").then(|| n.parse().ok()).flatten())
        .unwrap_or_else(|| panic!("no request count in {out}"));
    assert!(
        requests > 100,
        "too few requests to exceed the budget: {out}"
    );
    assert!(
        !out.contains("Socket errors"),
        "connections were cut: {out}"
    );
    assert!(
        gw.wait_for_line("refused at accept", Duration::from_millis(200))
            .is_none()
    );
    stop(gw);
}

/// An IPv6 attacker is its /64: a verdict earned by one address holds for
/// every address of the prefix, first request by request (with the
/// answer), then in XDP; another /64 is served throughout. A configured
/// upstream is never sentenced in the kernel, so the gateway keeps
/// reaching it.
#[test]
fn an_ipv6_prefix_is_one_source_from_the_first_verdict_to_the_kernel() {
    require_root();
    let bed = Testbed::new("v6esc").expect("testbed");
    let dir = TempDir::new("xdp-v6esc");
    let certs = Certs::issue(&dir.0, &["localhost"]);
    // The client side's /64s apart from the gateway's own (a verdict on
    // the gateway's own /64 never goes to the kernel): the attacker's two
    // addresses, a neighbour, and an upstream.
    let n = bed.n;
    let ip = |t: String| t.parse::<IpAddr>().expect("ip");
    let (a, b) = (
        ip(format!("2001:2:3:{n:x}::2")),
        ip(format!("2001:2:3:{n:x}::3")),
    );
    let neighbour = ip(format!("2001:2:1:{n:x}::9"));
    let upstream = ip(format!("2001:2:2:{n:x}::7"));
    for ip in [a, b, neighbour, upstream] {
        bed.client
            .exec(&[
                "ip",
                "-6",
                "addr",
                "add",
                &format!("{ip}/64"),
                "dev",
                &bed.client_if,
                "nodad",
            ])
            .expect("address");
        bed.server
            .exec(&[
                "ip",
                "-6",
                "route",
                "replace",
                &format!("{ip}/64"),
                "dev",
                &bed.server_if,
            ])
            .expect("route");
    }
    let backend = bed
        .client
        .run(|| Backend::start_at(SocketAddr::new(upstream, 9080)));
    let config = format!(
        "[listen]\nhttps = \"[::]:8443\"\nplain_http_port = 8080\n\n{certs}\n\
         [[upstreams]]\nname = \"peer\"\nservers = [\"[{upstream}]:9080\"]\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"peer\"\nauth = \"none\"\nwaf = \"block\"\n\
         [rate_limit.escalation]\nattacks = 2\nwindow_secs = 60\nban_secs = 2\nmax_ban_secs = 60\nkernel_after = 2\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [xdp]\ninterface = \"{iface}\"\nmode = \"skb\"\n",
        certs = certs.toml(),
        iface = bed.server_if,
    );
    let mut gw = run_gateway_in(&bed.server, &dir.0, &config);
    let dst = SocketAddr::new(bed.server_ip(true), 8443);
    let cfg = client_config(&certs.ca, &[&rustls::version::TLS13]);
    let get = |src: IpAddr, path: &str| -> Option<(u16, String)> {
        bed.client.run(|| {
            let tcp = connect_from(src, dst, Duration::from_secs(1)).ok()?;
            let mut c = Client::over(tcp, "localhost", cfg.clone()).ok()?;
            c.send(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
                .ok()?;
            let r = c.response("GET").ok()?;
            Some((r.status, reason_of(&r)))
        })
    };
    let attack = "/?q=%27%20OR%20%271%27%3D%271";
    assert_eq!(get(neighbour, "/ok").map(|r| r.0), Some(200));
    // First offence, by `a`: refused request by request, for the whole /64.
    for _ in 0..2 {
        assert_eq!(get(a, attack), Some((403, "waf.sqli".into())));
    }
    let prefix = format!("2001:2:3:{n:x}::");
    let line = gw
        .wait_for_line(&format!("verdict: {prefix} "), Duration::from_secs(3))
        .unwrap_or_else(|| panic!("no verdict on the /64: {:?}", gw.seen));
    assert!(line.contains("refused request by request"), "{line}");
    assert_eq!(
        get(b, "/innocent"),
        Some((403, "verdict.abuse".into())),
        "another address of the /64 escaped"
    );
    assert_eq!(get(neighbour, "/ok").map(|r| r.0), Some(200));
    // Second offence, by `b` once it ended: dropped in XDP, for `a` too.
    std::thread::sleep(Duration::from_millis(2300));
    for _ in 0..2 {
        assert_eq!(get(b, attack), Some((403, "waf.sqli".into())));
    }
    let line = gw
        .wait_for_line(&format!("verdict: {prefix} "), Duration::from_secs(3))
        .unwrap_or_else(|| panic!("no second verdict: {:?}", gw.seen));
    assert!(line.contains("dropped in XDP"), "{line}");
    assert!(line.contains("offence 2"), "{line}");
    let dropped = bed
        .client
        .run(|| connect_from(a, dst, Duration::from_millis(800)));
    assert!(dropped.is_err(), "an address of the /64 still connects");
    assert_eq!(get(neighbour, "/ok").map(|r| r.0), Some(200));

    // The upstream's own address attacks: never a kernel verdict (XDP
    // would drop its replies to the gateway), refused request by request.
    let upstream_prefix = format!("2001:2:2:{n:x}::");
    for round in 0..2 {
        for _ in 0..2 {
            let _ = get(upstream, attack);
        }
        let line = gw
            .wait_for_line(
                &format!("verdict: {upstream_prefix} "),
                Duration::from_secs(3),
            )
            .unwrap_or_else(|| panic!("no verdict on the upstream's prefix: {:?}", gw.seen));
        assert!(line.contains("refused request by request"), "{line}");
        if round == 1 {
            assert!(line.contains("would cut the gateway off"), "{line}");
        }
        std::thread::sleep(Duration::from_millis(2300));
    }
    // The gateway still reaches its upstream for everyone else.
    let before = backend.hits("/still");
    assert_eq!(get(neighbour, "/still").map(|r| r.0), Some(200));
    assert_eq!(backend.hits("/still"), before + 1);
    stop(gw);
}

/// With the kernel's verdict map full, a verdict is enforced request by
/// request instead, counted, and listed as such; the source is recorded
/// as serving it because it does.
#[test]
fn a_full_verdict_map_falls_back_to_request_verdicts() {
    require_root();
    let cfg = Config::parse(
        "[listen]\nhttps = \"127.0.0.1:8443\"\n[xdp]\ninterface = \"lo\"\n",
        "t.toml",
    )
    .expect("config");
    let mut dp = DataPlane::load().expect("load");
    dp.configure(&cfg).expect("configure");
    let requests = Arc::new(RequestVerdicts::default());
    let mut book = Book::new(Enforcement::Kernel(Box::new(dp)), requests.clone(), &cfg);
    let now = Monotonic.now_ns();
    for i in 0..VERDICT_CAPACITY {
        let ip = IpAddr::from((0xc612_0000u32 + i).to_be_bytes());
        book.add(ip, 600, "filler", now).expect("room in the map");
    }
    let source: IpAddr = "203.0.113.9".parse().expect("ip");
    let s = Sentence {
        source,
        reason: VerdictReason::Abuse,
        secs: 60,
        offence: 2,
        why: "5 attacks (WAF detections, HTTP/2 abuse) in 60s".into(),
        in_kernel: true,
    };
    book.place(&s, now);
    assert_eq!(book.overflowed, 1);
    assert_eq!(book.not_placed, 0);
    // The workers see it from the control loop's next publish.
    requests.publish();
    let view = std::cell::RefCell::default();
    assert_eq!(
        requests.check(&view, source, || now).map(|(r, _)| r),
        Some(VerdictReason::Abuse)
    );
    let listed = book.list(now);
    let entry = listed.iter().find(|e| e.source == source).expect("listed");
    assert_eq!(entry.enforced, "request");
    // And `sh` is still usable: nothing was left attached.
    sh(&["true"]).expect("shell");
}

/// With XDP on `lo` (as `cargo xtask run` attaches it) and escalation on
/// with every verdict meant for the kernel: the host's own client earning
/// verdicts by WAF hits, guessed keys and 429s is refused request by
/// request (a kernel drop would cut the host off its own gateway) and
/// still connects; a trusted proxy forwarding attacks is never counted.
#[test]
fn loopback_and_a_trusted_proxy_are_never_sentenced_in_the_kernel() {
    require_root();
    let ns = NetNs::new(&format!("gwt-lo-esc-{}", std::process::id() % 10_000)).expect("namespace");
    let dir = TempDir::new("xdp-lo-esc");
    let certs = Certs::issue(&dir.0, &["localhost"]);
    let keys = dir.0.join("consumers.toml");
    std::fs::write(&keys, "").expect("key file");
    let config = format!(
        "[listen]\nhttps = \"127.0.0.1:8443\"\nplain_http_port = 8080\n\n{certs}\n\
         [auth]\nkey_file = \"{keys}\"\nallow_empty_key_file = true\n\
         [demo]\nlisten = \"127.0.0.1:8081\"\n\
         [[upstreams]]\nname = \"demo\"\nservers = [\"127.0.0.1:8081\"]\n\
         [[routes]]\npath_prefix = \"/keyed\"\nupstream = \"demo\"\nauth = [\"api_key\"]\n\
         [[routes]]\npath_prefix = \"/limited\"\nupstream = \"demo\"\nauth = \"none\"\nrate_limits = [\"ip\"]\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"demo\"\nauth = \"none\"\nwaf = \"block\"\n\
         [[rate_limit.limits]]\nname = \"ip\"\nkey = \"source\"\nrate = \"1/min\"\n\
         [rate_limit.escalation]\nattacks = 2\nauth_failures = 2\nrejections = 2\nwindow_secs = 60\nban_secs = 1\nmax_ban_secs = 1\nkernel_after = 1\n\
         [proxy]\ntrusted_proxies = [\"127.0.0.2/32\"]\n\
         [xdp]\ninterface = \"lo\"\nmode = \"skb\"\n",
        certs = certs.toml(),
        keys = keys.display(),
    );
    let mut gw = run_gateway_in(&ns, &dir.0, &config);
    let dst = SocketAddr::from(([127, 0, 0, 1], 8443));
    let cfg = client_config(&certs.ca, &[&rustls::version::TLS13]);
    let get = |src: [u8; 4], path: &str, headers: &str| -> Option<(u16, String)> {
        ns.run(|| {
            let tcp = connect_from(IpAddr::from(src), dst, Duration::from_secs(1)).ok()?;
            let mut c = Client::over(tcp, "localhost", cfg.clone()).ok()?;
            c.send(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{headers}\r\n").as_bytes())
                .ok()?;
            let r = c.response("GET").ok()?;
            Some((r.status, reason_of(&r)))
        })
    };
    let attack = "/?q=%27%20OR%20%271%27%3D%271";
    let host = [127, 0, 0, 1];
    // Each kind of offence, in turn, by the host's own client.
    for (what, path, headers, answer) in [
        ("WAF hits", attack, "", (403, "waf.sqli")),
        (
            "guessed keys",
            "/keyed/x",
            "x-api-key: gwk_guessed\r\n",
            (401, "auth.invalid_key"),
        ),
        ("429s", "/limited/x", "", (429, "rate_limit.exceeded")),
    ] {
        let mut refused = 0;
        for _ in 0..4 {
            match get(host, path, headers) {
                Some((status, reason)) if (status, reason.as_str()) == answer => refused += 1,
                Some(_) => {}
                None => panic!("{what}: the host was cut off its own gateway"),
            }
        }
        assert!(refused >= 2, "{what}: {refused} refused");
        let line = gw
            .wait_for_line("verdict: 127.0.0.1", Duration::from_secs(3))
            .unwrap_or_else(|| panic!("{what}: no verdict: {:?}", gw.seen));
        assert!(
            line.contains("refused request by request"),
            "{what}: {line}"
        );
        assert!(line.contains("would cut the gateway off"), "{what}: {line}");
        // Served its answer, never dropped: it still connects.
        let during = get(host, "/fine", "").expect("the host still connects");
        assert!(
            matches!(during.0, 403 | 429) && during.1.starts_with("verdict."),
            "{what}: {during:?}"
        );
        std::thread::sleep(Duration::from_millis(1200));
        assert_eq!(get(host, "/fine", "").map(|r| r.0), Some(200), "{what}");
    }
    // A trusted proxy forwarding attacks for its clients: refused, never
    // counted against it, never sentenced.
    for i in 0..6 {
        let r = get(
            [127, 0, 0, 2],
            attack,
            &format!("X-Forwarded-For: 198.18.77.{i}\r\n"),
        );
        assert_eq!(r.map(|r| r.0), Some(403));
    }
    assert!(
        gw.wait_for_line("verdict: 127.0.0.2", Duration::from_millis(1500))
            .is_none(),
        "the trusted proxy was sentenced: {:?}",
        gw.seen
    );
    assert_eq!(get([127, 0, 0, 2], "/fine", "").map(|r| r.0), Some(200));
    stop(gw);
}
