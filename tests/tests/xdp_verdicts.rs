//! The XDP program's decisions, exactly: crafted frames run through the
//! loaded program with `BPF_PROG_TEST_RUN` (no attach, no namespace), each
//! row checking the action and which counter moved.

use std::net::IpAddr;

use gateway::{
    clock::{Clock, Monotonic},
    config::Config,
    xdp::DataPlane,
};
use gateway_common::{Outcome, Verdict, VerdictReason};
use gateway_tests::{
    frame::{self, ACK_PSH, SYN},
    require_root,
};

const PASS: u32 = 2;
const DROP: u32 = 1;
const TX: u32 = 3;

const CONFIG: &str = r#"
[listen]
https = "[::]:8443"
plain_http_port = 8080

[xdp]
interface = "lo"
syn_rate = 0

[policy]
deny = ["198.18.9.0/24", "2001:2:0:9::/64"]
allow = ["198.18.9.7/32", "2001:2:0:9::7/128", "198.18.1.68/32"]
"#;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

fn plane(config: &str) -> DataPlane {
    require_root();
    let cfg = Config::parse(config, "test.toml").expect("valid config");
    let mut dp = DataPlane::load().expect("the XDP program loads and verifies");
    dp.configure(&cfg).expect("maps take the configuration");
    let now = Monotonic.now_ns();
    let live = Verdict {
        expires_at_ns: now + 3_600_000_000_000,
        reason: VerdictReason::RateLimit as u32,
        _pad: 0,
    };
    let expired = Verdict {
        expires_at_ns: 1,
        reason: VerdictReason::Abuse as u32,
        _pad: 0,
    };
    dp.set_verdict(ip("198.18.1.66"), live).expect("verdict");
    dp.set_verdict(ip("198.18.1.67"), expired).expect("verdict");
    dp.set_verdict(ip("198.18.1.68"), live).expect("verdict");
    dp.set_verdict(ip("2001:2:0:1::66"), live).expect("verdict");
    dp
}

struct Case {
    name: &'static str,
    frame: Vec<u8>,
    action: u32,
    outcome: Outcome,
}

fn tcp(src: &str, dst: &str, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    frame::tcp(ip(src), ip(dst), 40000, dport, flags, payload, None)
}

const HELLO: &[u8] = &[
    0x16, 0x03, 0x01, 0x00, 0x40, 0x01, 0x00, 0x00, 0x3c, 0x03, 0x03,
];

fn cases() -> Vec<Case> {
    let gw4 = "198.18.1.1";
    let gw6 = "2001:2:0:1::1";
    let mut truncated = tcp("198.18.1.2", gw4, 8443, SYN, b"");
    truncated.truncate(14 + 12);
    vec![
        Case {
            name: "arp_passes_uninspected",
            frame: frame::arp(),
            action: PASS,
            outcome: Outcome::PassedNotInspected,
        },
        Case {
            name: "other_port_passes",
            frame: tcp("198.18.1.2", gw4, 22, SYN, b""),
            action: PASS,
            outcome: Outcome::Passed,
        },
        Case {
            name: "live_verdict_v4_drops",
            frame: tcp("198.18.1.66", gw4, 22, SYN, b""),
            action: DROP,
            outcome: Outcome::DroppedVerdict,
        },
        Case {
            name: "expired_verdict_passes",
            frame: tcp("198.18.1.67", gw4, 22, SYN, b""),
            action: PASS,
            outcome: Outcome::Passed,
        },
        Case {
            name: "live_verdict_v6_drops",
            frame: tcp("2001:2:0:1::66", gw6, 22, SYN, b""),
            action: DROP,
            outcome: Outcome::DroppedVerdict,
        },
        Case {
            name: "allow_beats_verdict",
            frame: tcp("198.18.1.68", gw4, 22, SYN, b""),
            action: PASS,
            outcome: Outcome::PassedAllowed,
        },
        Case {
            name: "denied_v4_drops",
            frame: tcp("198.18.9.3", gw4, 22, SYN, b""),
            action: DROP,
            outcome: Outcome::DroppedDenied,
        },
        Case {
            name: "allowed_inside_denied_v4_passes",
            frame: tcp("198.18.9.7", gw4, 22, SYN, b""),
            action: PASS,
            outcome: Outcome::PassedAllowed,
        },
        Case {
            name: "denied_v6_drops",
            frame: tcp("2001:2:0:9::3", gw6, 22, SYN, b""),
            action: DROP,
            outcome: Outcome::DroppedDenied,
        },
        Case {
            name: "allowed_inside_denied_v6_passes",
            frame: tcp("2001:2:0:9::7", gw6, 22, SYN, b""),
            action: PASS,
            outcome: Outcome::PassedAllowed,
        },
        Case {
            name: "plain_http_to_tls_port_v4_resets",
            frame: tcp("198.18.1.2", gw4, 8443, ACK_PSH, b"GET / HTTP/1.1\r\n"),
            action: TX,
            outcome: Outcome::ResetPlainHttp,
        },
        Case {
            // 2001:2:0:1::66 holds a verdict, which holds for its /64.
            name: "live_verdict_v6_covers_its_prefix",
            frame: tcp("2001:2:0:1::2", gw6, 22, SYN, b""),
            action: DROP,
            outcome: Outcome::DroppedVerdict,
        },
        Case {
            name: "plain_http_to_tls_port_v6_resets",
            frame: tcp("2001:2:0:2::2", gw6, 8443, ACK_PSH, b"POST /x HTTP/1.1\r\n"),
            action: TX,
            outcome: Outcome::ResetPlainHttp,
        },
        Case {
            // Behind extension headers the request line is still found; the
            // RST is not built there, the segment is dropped.
            name: "plain_http_behind_dest_opts_drops",
            frame: frame::with_ext_headers(
                tcp("2001:2:0:2::2", gw6, 8443, ACK_PSH, b"GET / HTTP/1.1\r\n"),
                &[60],
                false,
            ),
            action: DROP,
            outcome: Outcome::DroppedPlainHttp,
        },
        Case {
            name: "plain_http_behind_four_ext_headers_drops",
            frame: frame::with_ext_headers(
                tcp("2001:2:0:2::2", gw6, 8443, ACK_PSH, b"GET / HTTP/1.1\r\n"),
                &[0, 60, 43, 44],
                false,
            ),
            action: DROP,
            outcome: Outcome::DroppedPlainHttp,
        },
        Case {
            name: "a_chain_longer_than_walked_drops",
            frame: frame::with_ext_headers(
                tcp("2001:2:0:2::2", gw6, 8443, SYN, b""),
                &[60; 7],
                false,
            ),
            action: DROP,
            outcome: Outcome::DroppedExtHeaders,
        },
        Case {
            name: "a_later_fragment_passes_with_source_checks",
            frame: frame::with_ext_headers(
                tcp("2001:2:0:2::2", gw6, 8443, ACK_PSH, b"GET / HTTP/1.1\r\n"),
                &[44],
                true,
            ),
            action: PASS,
            outcome: Outcome::Passed,
        },
        Case {
            name: "a_later_fragment_from_a_banned_prefix_drops",
            frame: frame::with_ext_headers(
                tcp("2001:2:0:1::9", gw6, 8443, ACK_PSH, b"xx"),
                &[44],
                true,
            ),
            action: DROP,
            outcome: Outcome::DroppedVerdict,
        },
        Case {
            name: "plain_http_behind_vlan_resets",
            frame: frame::tcp(
                ip("198.18.1.2"),
                ip(gw4),
                40000,
                8443,
                ACK_PSH,
                b"HEAD / HTTP/1.1\r\n",
                Some(42),
            ),
            action: TX,
            outcome: Outcome::ResetPlainHttp,
        },
        Case {
            name: "client_hello_to_tls_port_passes",
            frame: tcp("198.18.1.2", gw4, 8443, ACK_PSH, HELLO),
            action: PASS,
            outcome: Outcome::Passed,
        },
        Case {
            name: "syn_to_tls_port_passes",
            frame: tcp("198.18.1.2", gw4, 8443, SYN, b""),
            action: PASS,
            outcome: Outcome::Passed,
        },
        Case {
            // Mid-stream ciphertext whose first bytes spell a method word:
            // no request-line shape, so it is never reset.
            name: "ciphertext_starting_with_a_method_passes",
            frame: tcp(
                "198.18.1.2",
                gw4,
                8443,
                ACK_PSH,
                b"GET \x00\x9f\x13\xee\x01\x02\x8a\x7f\x10\x11",
            ),
            action: PASS,
            outcome: Outcome::Passed,
        },
        Case {
            name: "ciphertext_starting_with_a_method_and_slash_passes",
            frame: tcp(
                "198.18.1.2",
                gw4,
                8443,
                ACK_PSH,
                b"POST /\x01\xfe\x00\x13\x37",
            ),
            action: PASS,
            outcome: Outcome::Passed,
        },
        Case {
            name: "short_payload_passes",
            frame: tcp("198.18.1.2", gw4, 8443, ACK_PSH, b"GE"),
            action: PASS,
            outcome: Outcome::Passed,
        },
        Case {
            name: "plain_http_port_drops",
            frame: tcp("198.18.1.2", gw4, 8080, SYN, b""),
            action: DROP,
            outcome: Outcome::DroppedPlainHttp,
        },
        Case {
            name: "truncated_ip_drops",
            frame: truncated,
            action: DROP,
            outcome: Outcome::DroppedMalformed,
        },
    ]
}

#[test]
fn decisions_table() {
    let mut dp = plane(CONFIG);
    let mut failures = Vec::new();
    for case in cases() {
        let before = dp.counters().expect("counters");
        let (action, _) = dp.test_run(&case.frame).expect("test run");
        let after = dp.counters().expect("counters");
        let moved: Vec<_> = Outcome::ALL
            .iter()
            .filter(|o| after.get(**o) != before.get(**o))
            .map(|o| (o.name(), after.get(*o) - before.get(*o)))
            .collect();
        if action != case.action || moved != [(case.outcome.name(), 1)] {
            failures.push(format!(
                "{}: action {action} (want {}), counters moved {moved:?} (want {}=1)",
                case.name,
                case.action,
                case.outcome.name()
            ));
        }
    }
    assert!(failures.is_empty(), "rows failed:\n{}", failures.join("\n"));
}

/// Checks the RST frame the program built: swapped addresses and ports,
/// RST flag, no payload, valid checksums.
#[test]
fn reset_frame_is_a_valid_rst() {
    let mut dp = plane(CONFIG);
    let req = tcp(
        "198.18.1.2",
        "198.18.1.1",
        8443,
        ACK_PSH,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    let (action, out) = dp.test_run(&req).expect("test run");
    assert_eq!(action, TX);
    assert_eq!(out.len(), 14 + 20 + 20, "payload cut");
    assert_eq!(&out[0..6], &req[6..12], "MACs swapped");
    let ip4 = &out[14..34];
    assert_eq!(&ip4[12..16], &[198, 18, 1, 1]);
    assert_eq!(&ip4[16..20], &[198, 18, 1, 2]);
    let tcp = &out[34..54];
    assert_eq!(u16::from_be_bytes([tcp[0], tcp[1]]), 8443);
    assert_eq!(u16::from_be_bytes([tcp[2], tcp[3]]), 40000);
    // The request carried ACK 2000: the reset's sequence number is that.
    assert_eq!(u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]), 2000);
    assert_eq!(tcp[13] & 0x04, 0x04, "RST set");
    let mut acc: u32 = 0;
    for w in ip4.chunks(2) {
        acc += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    assert_eq!(acc, 0xffff, "IPv4 header checksum");
    let mut acc: u32 = 6 + 20;
    for w in ip4[12..20].chunks(2).chain(tcp.chunks(2)) {
        acc += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    assert_eq!(acc, 0xffff, "TCP checksum");
}

#[test]
fn syn_budget_admits_the_burst_then_drops() {
    syn_budget_case("syn_rate = 1\nsyn_burst = 3");
}

#[test]
fn per_cpu_syn_budget_admits_the_burst_then_drops() {
    // BPF_PROG_TEST_RUN runs on one CPU, so the per-CPU budget is the same.
    syn_budget_case("syn_rate = 1\nsyn_burst = 3\nsyn_budget = \"per_cpu\"");
}

#[test]
fn an_ipv6_prefix_shares_one_syn_budget_behind_extension_headers_too() {
    let mut dp = plane(&CONFIG.replace("syn_rate = 0", "syn_rate = 1\nsyn_burst = 3"));
    let gw6 = "2001:2:0:1::1";
    // Three hosts of one /64, one SYN behind a Destination Options header:
    // one budget of three.
    let frames = [
        tcp("2001:2:0:3::1", gw6, 8443, SYN, b""),
        frame::with_ext_headers(tcp("2001:2:0:3::2", gw6, 8443, SYN, b""), &[60], false),
        tcp("2001:2:0:3::3", gw6, 8443, SYN, b""),
        frame::with_ext_headers(tcp("2001:2:0:3::4", gw6, 8443, SYN, b""), &[0, 60], false),
    ];
    let actions: Vec<u32> = frames
        .iter()
        .map(|f| dp.test_run(f).expect("run").0)
        .collect();
    assert_eq!(actions, [PASS, PASS, PASS, DROP]);
    // Another /64 has its own.
    let other = tcp("2001:2:0:4::1", gw6, 8443, SYN, b"");
    assert_eq!(dp.test_run(&other).expect("run").0, PASS);
}

#[test]
fn trusted_proxies_and_loopback_never_run_out_of_syn_budget() {
    let knobs = "syn_rate = 1\nsyn_burst = 1\n\n[proxy]\ntrusted_proxies = [\"198.18.1.50/32\"]";
    let mut dp = plane(&CONFIG.replace("syn_rate = 0", knobs));
    // A spoofed flood carrying the proxy's address drains nothing.
    let proxy = tcp("198.18.1.50", "198.18.1.1", 8443, SYN, b"");
    assert!((0..50).all(|_| dp.test_run(&proxy).expect("run").0 == PASS));
    let local = tcp("127.0.0.1", "127.0.0.1", 8443, SYN, b"");
    assert!((0..50).all(|_| dp.test_run(&local).expect("run").0 == PASS));
    // Anyone else has one SYN.
    let other = tcp("198.18.1.51", "198.18.1.1", 8443, SYN, b"");
    let actions: Vec<u32> = (0..3)
        .map(|_| dp.test_run(&other).expect("run").0)
        .collect();
    assert_eq!(actions, [PASS, DROP, DROP]);
    // Unless the operator counts loopback too.
    let strict = CONFIG
        .replace("syn_rate = 0", "syn_rate = 1\nsyn_burst = 1")
        .replace("[policy]\n", "[policy]\nexempt_loopback = false\n");
    let mut dp = plane(&strict);
    let actions: Vec<u32> = (0..2)
        .map(|_| dp.test_run(&local).expect("run").0)
        .collect();
    assert_eq!(actions, [PASS, DROP]);
}

fn syn_budget_case(knobs: &str) {
    let mut dp = plane(&CONFIG.replace("syn_rate = 0", knobs));
    let syn = tcp("198.18.1.2", "198.18.1.1", 8443, SYN, b"");
    let other = tcp("198.18.1.3", "198.18.1.1", 8443, SYN, b"");
    let actions: Vec<u32> = (0..6).map(|_| dp.test_run(&syn).expect("run").0).collect();
    assert_eq!(actions, [PASS, PASS, PASS, DROP, DROP, DROP]);
    // Another source has its own budget.
    assert_eq!(dp.test_run(&other).expect("run").0, PASS);
    // Non-SYN segments of established connections are never limited.
    let data = tcp("198.18.1.2", "198.18.1.1", 8443, ACK_PSH, HELLO);
    assert_eq!(dp.test_run(&data).expect("run").0, PASS);
    assert_eq!(
        dp.counters()
            .expect("counters")
            .get(Outcome::DroppedSynRate),
        3
    );
}

#[test]
fn sweep_removes_only_expired_verdicts() {
    let mut dp = plane(CONFIG);
    let now = Monotonic.now_ns();
    assert_eq!(
        dp.sweep_expired(now).expect("sweep"),
        1,
        "only the expired verdict goes"
    );
    assert_eq!(dp.sweep_expired(now).expect("sweep"), 0);
    // The live verdict still drops.
    let (action, _) = dp
        .test_run(&tcp("198.18.1.66", "198.18.1.1", 22, SYN, b""))
        .expect("run");
    assert_eq!(action, DROP);
}

#[test]
fn a_full_map_is_one_clear_error() {
    require_root();
    let mut dp = DataPlane::load().expect("load");
    let mut err = None;
    for port in 1..=gateway_common::PORT_CAPACITY + 1 {
        if let Err(e) = dp.set_port(ip("127.0.0.1"), port as u16, gateway_common::PortKind::Tls) {
            err = Some((port, e));
            break;
        }
    }
    let (port, err) = err.expect("the port map fills up");
    assert_eq!(port, gateway_common::PORT_CAPACITY + 1);
    assert_eq!(
        err.to_string(),
        format!(
            "map PORTS is full ({} entries): listener 127.0.0.1:{port}",
            gateway_common::PORT_CAPACITY
        )
    );
}

/// Listeners are matched by address and port: on a host with several
/// addresses, another service on the gateway's port at another address is
/// never inspected (the embedded default listens on 127.0.0.1 only); and a
/// plain-HTTP port with the 308 listener passes, `https_only` or not.
#[test]
fn listeners_are_matched_by_address_and_redirect_wins_over_https_only() {
    let get = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    let one = |config: &str, dst: &str, port: u16| {
        let src = if dst.contains(':') {
            "2001:2:0:3::2"
        } else {
            "198.18.1.2"
        };
        let mut dp = plane(config);
        let before = dp.counters().expect("counters");
        let (action, _) = dp
            .test_run(&tcp(src, dst, port, ACK_PSH, get))
            .expect("run");
        let after = dp.counters().expect("counters");
        let moved: Vec<_> = Outcome::ALL
            .iter()
            .filter(|o| after.get(**o) != before.get(**o))
            .map(|o| o.name())
            .collect();
        (action, moved)
    };
    let specific = CONFIG.replace("[::]:8443", "198.18.1.1:8443");
    // Ours: plain HTTP on the TLS port is reset, on the plain port dropped.
    assert_eq!(
        one(&specific, "198.18.1.1", 8443),
        (TX, vec!["reset_plain_http"])
    );
    assert_eq!(
        one(&specific, "198.18.1.1", 8080),
        (DROP, vec!["dropped_plain_http"])
    );
    // A neighbour's, at another address: untouched.
    assert_eq!(one(&specific, "198.18.1.3", 8443), (PASS, vec!["passed"]));
    assert_eq!(one(&specific, "198.18.1.3", 8080), (PASS, vec!["passed"]));
    assert_eq!(
        one(&specific, "2001:2:0:1::1", 8443),
        (PASS, vec!["passed"])
    );
    // With the 308 listener, its port passes although https_only is on.
    let redirect = specific.replace(
        "plain_http_port = 8080",
        "plain_http_port = 8080\nredirect_plain_http = true",
    );
    assert_eq!(one(&redirect, "198.18.1.1", 8080), (PASS, vec!["passed"]));
}
