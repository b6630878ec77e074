//! The XDP program attached for real, in driver and in skb mode, to a veth
//! in a namespace, judged from the client on the far side of the veth.

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpListener},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use gateway::{
    clock::{Clock, Monotonic},
    config::{AttachMode, Config},
    xdp::policy::Lists,
    xdp::{Counters, DataPlane, XdpError},
};
use gateway_common::{Outcome, Verdict, VerdictReason};
use gateway_tests::{Testbed, connect_from, require_root, syn_flood};

const TLS_PORT: u16 = 8443;
const SYN_RATE: u32 = 50;
const SYN_BURST: u32 = 10;
const HELLO: &[u8] = &[
    0x16, 0x03, 0x01, 0x00, 0x40, 0x01, 0x00, 0x00, 0x3c, 0x03, 0x03,
];
/// How long a dropped SYN is waited for before calling it dropped.
const DROPPED: Duration = Duration::from_millis(400);
/// How long a passing connect may take on a veth.
const PASSES: Duration = Duration::from_secs(2);

/// A listener in the server namespace that records the first bytes of every
/// connection; stops by itself when dropped.
struct Recorder {
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Recorder {
    fn start(listener: TcpListener) -> Self {
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !st.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let s = s.clone();
                        std::thread::spawn(move || {
                            let _ = conn.set_nonblocking(false);
                            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                            let mut buf = [0u8; 64];
                            if let Ok(n) = conn.read(&mut buf)
                                && let Ok(mut v) = s.lock()
                            {
                                v.push(buf[..n].to_vec());
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> Vec<Vec<u8>> {
        self.seen.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn config(bed: &Testbed, v6: bool, mode: AttachMode) -> Config {
    let server = SocketAddr::new(bed.server_ip(v6), TLS_PORT);
    let (deny, allow) = if v6 {
        (
            format!("{}/127", bed.host_ip(true, 4)),
            format!("{}/128", bed.host_ip(true, 5)),
        )
    } else {
        (
            format!("{}/31", bed.host_ip(false, 4)),
            format!("{}/32", bed.host_ip(false, 5)),
        )
    };
    let text = format!(
        r#"
[listen]
https = "{server}"
plain_http_port = 8080

[xdp]
interface = "{iface}"
mode = "{mode}"
plain_http_on_tls = "reset"
syn_rate = {SYN_RATE}
syn_burst = {SYN_BURST}

[policy]
deny = ["{deny}"]
allow = ["{allow}"]

# Each test host is a source of its own (the testbed's IPv6 hosts share a
# /64, which verdicts and SYN clocks otherwise key by).
[rate_limit]
ipv6_prefix = 128
"#,
        iface = bed.server_if
    );
    Config::parse(&text, "netns.toml").expect("valid test config")
}

fn delta(before: &Counters, after: &Counters, o: Outcome) -> u64 {
    after.get(o) - before.get(o)
}

fn scenario(mode: AttachMode, v6: bool) {
    require_root();
    let tag = format!("{}{}", if v6 { "6" } else { "4" }, mode);
    let bed = Testbed::new(&tag).expect("testbed");
    let cfg = config(&bed, v6, mode);
    let server = SocketAddr::new(bed.server_ip(v6), TLS_PORT);
    let (mut dp, recorder) = bed.server.run(|| {
        let mut dp = DataPlane::load().expect("load");
        dp.configure(&cfg).expect("configure");
        dp.attach(&cfg.xdp.interface, mode).expect("attach");
        let listener = TcpListener::bind(server).expect("listener in the server namespace");
        (dp, Recorder::start(listener))
    });
    // veth schedules the receiving side of an XDP_TX only when that side
    // runs XDP too (drivers of real NICs need nothing): give the client veth
    // the same program with empty maps, which passes everything.
    let _peer = (mode == AttachMode::Driver).then(|| {
        bed.client.run(|| {
            let mut peer = DataPlane::load().expect("load peer program");
            peer.attach(&bed.client_if, mode)
                .expect("attach peer program");
            peer
        })
    });
    let [flooder, banned, denied, allowed] = [2, 3, 4, 5].map(|h| bed.host_ip(v6, h));

    // A source with a live verdict is dropped and counted; after expiry it passes.
    let c0 = dp.counters().expect("counters");
    let expires = Monotonic.now_ns() + 1_200_000_000;
    let verdict = Verdict {
        expires_at_ns: expires,
        reason: VerdictReason::RateLimit as u32,
        _pad: 0,
    };
    dp.set_verdict(banned, verdict).expect("verdict");
    let r = bed.client.run(|| connect_from(banned, server, DROPPED));
    assert!(r.is_err(), "{tag}: a source with a live verdict connected");
    let c1 = dp.counters().expect("counters");
    assert!(
        delta(&c0, &c1, Outcome::DroppedVerdict) >= 1,
        "{tag}: verdict drop not counted: {c1}"
    );
    let wait = expires.saturating_sub(Monotonic.now_ns()) + 100_000_000;
    std::thread::sleep(Duration::from_nanos(wait));
    bed.client
        .run(|| connect_from(banned, server, PASSES))
        .unwrap_or_else(|e| panic!("{tag}: source still dropped after its verdict expired: {e}"));

    // A denied CIDR is dropped while an allowed address inside it passes.
    let r = bed.client.run(|| connect_from(denied, server, DROPPED));
    assert!(r.is_err(), "{tag}: a denied source connected");
    bed.client
        .run(|| connect_from(allowed, server, PASSES))
        .unwrap_or_else(|e| {
            panic!("{tag}: an allowed source inside a denied CIDR was dropped: {e}")
        });
    let c2 = dp.counters().expect("counters");
    assert!(
        delta(&c1, &c2, Outcome::DroppedDenied) >= 1,
        "{tag}: deny not counted: {c2}"
    );
    assert!(
        delta(&c1, &c2, Outcome::PassedAllowed) >= 1,
        "{tag}: allow not counted: {c2}"
    );

    // Plain HTTP to the TLS port is reset; a TLS ClientHello passes.
    let reset = bed.client.run(|| {
        let mut s = connect_from(flooder, server, PASSES).expect("connect for plain HTTP");
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        s.write_all(b"GET / HTTP/1.1\r\nHost: gateway\r\n\r\n")
            .expect("write");
        let mut buf = [0u8; 16];
        let started = Instant::now();
        (s.read(&mut buf), started.elapsed())
    });
    match reset {
        (Err(e), took) if e.kind() == ErrorKind::ConnectionReset => {
            assert!(
                took < Duration::from_secs(1),
                "{tag}: reset came late ({took:?})"
            )
        }
        other => panic!(
            "{tag}: plain HTTP was not reset: {other:?}\nserver veth: {}\nclient veth: {}",
            bed.server
                .exec(&["ethtool", "-S", &bed.server_if])
                .unwrap_or_default(),
            bed.client
                .exec(&["ethtool", "-S", &bed.client_if])
                .unwrap_or_default()
        ),
    }
    bed.client.run(|| {
        let mut s = connect_from(flooder, server, PASSES).expect("connect for TLS");
        s.write_all(HELLO).expect("write hello");
    });
    let deadline = Instant::now() + Duration::from_secs(3);
    while !recorder.seen().iter().any(|b| b.starts_with(&HELLO[..3])) {
        assert!(
            Instant::now() < deadline,
            "{tag}: the ClientHello never reached the server"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !recorder.seen().iter().any(|b| b.starts_with(b"GET")),
        "{tag}: plain HTTP reached the server"
    );
    let c3 = dp.counters().expect("counters");
    assert!(
        delta(&c2, &c3, Outcome::ResetPlainHttp) >= 1,
        "{tag}: reset not counted: {c3}"
    );

    // A SYN flood from one source is held to its budget while another
    // source connects normally.
    std::thread::sleep(Duration::from_millis(300)); // let the flooder's budget refill
    let c4 = dp.counters().expect("counters");
    let (flood, other) = std::thread::scope(|s| {
        let flood = s.spawn(|| {
            bed.client.run(|| {
                syn_flood(
                    flooder,
                    server,
                    800,
                    Duration::from_micros(1000),
                    Duration::from_secs(5),
                )
            })
        });
        std::thread::sleep(Duration::from_millis(200));
        let other = bed.client.run(|| connect_from(banned, server, PASSES));
        (flood.join().expect("flood thread"), other)
    });
    let (sent, took) = flood.expect("SYN flood");
    other.unwrap_or_else(|e| {
        panic!("{tag}: a second source could not connect during the flood: {e}")
    });
    let c5 = dp.counters().expect("counters");
    let dropped = delta(&c4, &c5, Outcome::DroppedSynRate);
    let admitted = u64::from(sent) - dropped;
    let expected = f64::from(SYN_BURST) + f64::from(SYN_RATE) * took.as_secs_f64();
    // Tolerance: 15 % plus 5 SYNs for timer granularity at both ends.
    let slack = expected * 0.15 + 5.0;
    assert!(
        (admitted as f64 - expected).abs() <= slack,
        "{tag}: {sent} SYNs in {took:?}: admitted {admitted}, expected {expected:.1} ± {slack:.1}"
    );
    drop(recorder);
    drop(dp);
}

#[test]
fn driver_mode_ipv4() {
    scenario(AttachMode::Driver, false);
}

#[test]
fn driver_mode_ipv6() {
    scenario(AttachMode::Driver, true);
}

#[test]
fn skb_mode_ipv4() {
    scenario(AttachMode::Skb, false);
}

#[test]
fn skb_mode_ipv6() {
    scenario(AttachMode::Skb, true);
}

#[test]
fn attach_errors_are_clear_and_leave_nothing_behind() {
    require_root();
    let bed = Testbed::new("err").expect("testbed");
    let iface = bed.server_if.clone();
    bed.server.run(|| {
        let mut first = DataPlane::load().expect("load");
        first.attach(&iface, AttachMode::Skb).expect("first attach");
        let mut second = DataPlane::load().expect("load");
        let err = second
            .attach(&iface, AttachMode::Skb)
            .expect_err("second attach must fail");
        assert!(
            matches!(err, XdpError::SlotTaken(ref i) if *i == iface),
            "{err}"
        );
        assert!(err.to_string().contains(&iface), "{err}");

        let err = second
            .attach("nosuchif0", AttachMode::Auto)
            .expect_err("unknown interface");
        assert!(matches!(err, XdpError::UnknownInterface(_)), "{err}");
        assert_eq!(
            err.to_string(),
            "interface `nosuchif0` does not exist (xdp.interface)"
        );

        let err = second
            .attach("lo", AttachMode::Driver)
            .expect_err("lo has no native XDP");
        assert!(matches!(err, XdpError::DriverModeUnsupported(_)), "{err}");
        drop(second);

        // The first attachment survived the failed second one.
        let out = bed
            .server
            .exec(&["ip", "link", "show", "dev", &iface])
            .expect("ip link");
        assert!(out.contains("xdp"), "first program gone: {out}");
        drop(first);
    });
    // Dropping the data plane detaches: the interface is free again.
    let out = bed
        .server
        .exec(&["ip", "link", "show", "dev", &iface])
        .expect("ip link");
    assert!(!out.contains("xdp"), "still attached after drop: {out}");
}

/// A reload moves the attached program's lists and SYN budget in place:
/// same program on the interface, verdicts and counters kept.
#[test]
fn a_reload_changes_lists_and_syn_budget_in_place() {
    require_root();
    let bed = Testbed::new("rl").expect("testbed");
    let server = SocketAddr::new(bed.server_ip(false), TLS_PORT);
    let [flooder, banned, denied] = [2, 3, 4].map(|h| bed.host_ip(false, h));
    let text = |syn: &str, deny: &str| {
        format!(
            "[listen]\nhttps = \"{server}\"\nplain_http_port = 8080\n\
             [xdp]\ninterface = \"{}\"\nmode = \"skb\"\n{syn}\n[policy]\ndeny = [{deny}]\n",
            bed.server_if
        )
    };
    let before = Config::parse(&text("syn_rate = 0", ""), "a.toml").expect("valid");
    let after = Config::parse(
        &text("syn_rate = 5\nsyn_burst = 2", &format!("\"{denied}/32\"")),
        "b.toml",
    )
    .expect("valid");
    let (mut dp, _recorder) = bed.server.run(|| {
        let mut dp = DataPlane::load().expect("load");
        dp.configure(&before).expect("configure");
        dp.attach(&before.xdp.interface, AttachMode::Skb)
            .expect("attach");
        let listener = TcpListener::bind(server).expect("listener");
        (dp, Recorder::start(listener))
    });
    let first = bed.xdp_prog_id();
    assert!(first.is_some(), "no XDP program on {}", bed.server_if);
    let flood = || {
        bed.client
            .run(|| {
                syn_flood(
                    flooder,
                    server,
                    60,
                    Duration::from_millis(5),
                    Duration::from_secs(3),
                )
            })
            .expect("SYN flood")
    };
    let verdict = Verdict {
        expires_at_ns: Monotonic.now_ns() + 60_000_000_000,
        reason: VerdictReason::Policy as u32,
        _pad: 0,
    };
    dp.set_verdict(banned, verdict).expect("verdict");

    // Before: no deny list, no SYN limit.
    bed.client
        .run(|| connect_from(denied, server, PASSES))
        .expect("not denied yet");
    let c0 = dp.counters().expect("counters");
    flood();
    let c1 = dp.counters().expect("counters");
    assert_eq!(delta(&c0, &c1, Outcome::DroppedSynRate), 0, "{c1}");

    // After: the new deny entry drops, the SYN budget holds a flood to
    // about its burst plus 5/s, and the verdict placed before is still there.
    dp.reconfigure(&Lists::of(&before), &after)
        .expect("reconfigure");
    assert_eq!(bed.xdp_prog_id(), first, "the program was replaced");
    let r = bed.client.run(|| connect_from(denied, server, DROPPED));
    assert!(r.is_err(), "a source denied by the reload connected");
    let c2 = dp.counters().expect("counters");
    assert!(delta(&c1, &c2, Outcome::DroppedDenied) >= 1, "{c2}");
    assert!(
        c2.get(Outcome::Passed) >= c1.get(Outcome::Passed),
        "counters were reset"
    );
    let (sent, _) = flood();
    let c3 = dp.counters().expect("counters");
    assert!(
        delta(&c2, &c3, Outcome::DroppedSynRate) >= u64::from(sent).saturating_sub(10),
        "the reloaded SYN budget let too many through: {c3}"
    );
    let r = bed.client.run(|| connect_from(banned, server, DROPPED));
    assert!(r.is_err(), "the verdict did not survive the reload");

    // And back: the entry is removed, the limit lifted.
    dp.reconfigure(&Lists::of(&after), &before)
        .expect("reconfigure back");
    bed.client
        .run(|| connect_from(denied, server, PASSES))
        .expect("a source no longer denied");
    let c4 = dp.counters().expect("counters");
    flood();
    let c5 = dp.counters().expect("counters");
    assert_eq!(delta(&c4, &c5, Outcome::DroppedSynRate), 0, "{c5}");
    assert_eq!(bed.xdp_prog_id(), first);
}
