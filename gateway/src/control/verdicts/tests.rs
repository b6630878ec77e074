//! The book's unit tests: the ladder, IPv6 prefixes, an operator's verdicts.

use super::*;
use std::sync::{Arc, Mutex};

use crate::xdp::policy::SourcePolicy;

fn book(extra: &str) -> Book {
    let cfg = Config::parse(
        &format!("[listen]\nhttps = \"127.0.0.1:8443\"\n{extra}"),
        "t.toml",
    )
    .expect("config");
    let policy = Arc::new(Mutex::new(SourcePolicy::new(&cfg)));
    Book::new(Enforcement::Userspace(policy), Arc::default(), &cfg)
}

fn sentence(b: &mut Book, ip: IpAddr, now: u64) -> Sentence {
    let mut s = None;
    while s.is_none() {
        s = b
            .escalation
            .record(ip, crate::control::escalate::Offence::Attack, now);
    }
    s.expect("sentenced")
}

#[test]
fn first_offences_are_refused_request_by_request_then_in_the_kernel() {
    let mut b = book(
        "[rate_limit.escalation]\nattacks = 2\nban_secs = 10\nmax_ban_secs = 100\nkernel_after = 2\n",
    );
    let ip: IpAddr = "198.18.0.7".parse().expect("ip");
    let first = sentence(&mut b, ip, 0);
    b.place(&first, 0);
    let list = b.list(0);
    assert_eq!(list.len(), 1);
    assert_eq!((list[0].enforced, list[0].reason), ("request", "abuse"));
    // Said in the log only once the workers refuse it.
    let view = std::cell::RefCell::default();
    assert_eq!(b.requests.check(&view, ip, || SEC), None);
    assert_eq!(b.unannounced.len(), 1, "announced before it was published");
    b.publish();
    assert!(b.unannounced.is_empty());
    assert_eq!(
        b.requests.check(&view, ip, || SEC),
        Some((VerdictReason::Abuse, 9 * SEC))
    );
    // Nothing at accept yet: the page its user opens says why.
    let Enforcement::Userspace(p) = &b.enforcement else {
        panic!("userspace")
    };
    assert!(p.lock().expect("lock").admit_connection(ip, SEC).is_ok());
    // The second offence, once the first verdict ended, is enforced below.
    let second = sentence(&mut b, ip, 20);
    b.place(&second, 20 * SEC);
    let list = b.list(20 * SEC);
    assert_eq!(list.len(), 1);
    assert_eq!((list[0].enforced, list[0].expires_in_secs), ("accept", 20));
    assert!(b.remove(ip));
    assert!(b.list(20 * SEC).is_empty());
}

#[test]
fn ipv6_verdicts_cover_the_prefix() {
    let mut b = book("");
    let one: IpAddr = "2001:db8:7:7::1".parse().expect("ip");
    b.add(one, 60, "scanner", 0).expect("added");
    let list = b.list(0);
    assert_eq!(
        list[0].source,
        "2001:db8:7:7::".parse::<IpAddr>().expect("ip")
    );
    let other: IpAddr = "2001:db8:7:7:aaaa::2".parse().expect("ip");
    assert_eq!(b.why(other, SEC)["by"], "verdict");
    assert!(b.remove(other), "lifted through another address of the /64");
}

const SEC: u64 = 1_000_000_000;

#[test]
fn an_operator_adds_lists_and_lifts_a_verdict() {
    let mut b = book("");
    let ip: IpAddr = "198.18.0.2".parse().expect("ip");
    b.add(ip, 60, "scanner", 10 * SEC).expect("added");
    let list = b.list(10 * SEC);
    assert_eq!(list.len(), 1);
    assert_eq!((list[0].reason, list[0].expires_in_secs), ("policy", 60));
    assert_eq!(list[0].why, "scanner");
    let why = b.why(ip, 20 * SEC);
    assert_eq!(why["dropped"], true);
    assert_eq!(why["by"], "verdict");
    assert_eq!(why["verdict"]["expires_in_secs"], 50);
    assert!(b.remove(ip));
    assert!(!b.remove(ip));
    assert!(b.list(10 * SEC).is_empty());
    assert_eq!(b.why(ip, 20 * SEC)["dropped"], false);
    // Expired verdicts are not listed.
    b.add(ip, 1, "", 10 * SEC).expect("added");
    assert!(b.list(12 * SEC).is_empty());
}

#[test]
fn bad_lengths_and_allowed_sources_are_refused() {
    let mut b = book("[policy]\nallow = [\"10.0.0.0/8\"]\ndeny = [\"192.0.2.0/24\"]\n");
    let ip: IpAddr = "198.18.0.2".parse().expect("ip");
    assert!(matches!(b.add(ip, 0, "", 0), Err(BookError::Length)));
    assert!(matches!(
        b.add(ip, MAX_SECS + 1, "", 0),
        Err(BookError::Length)
    ));
    let allowed: IpAddr = "10.1.2.3".parse().expect("ip");
    assert!(matches!(
        b.add(allowed, 5, "", 0),
        Err(BookError::Allowed(_))
    ));
    assert_eq!(b.why(allowed, 0)["allowed"], true);
    let denied: IpAddr = "192.0.2.9".parse().expect("ip");
    assert_eq!(b.why(denied, 0)["by"], "policy.deny");
}

#[test]
fn behind_trusted_proxies_a_kernel_verdict_is_enforced_per_request_too_and_listed_once() {
    let mut b = book("[proxy]\ntrusted_proxies = [\"10.9.0.0/16\"]\n");
    let client: IpAddr = "198.18.3.3".parse().expect("ip");
    b.add(client, 60, "scanner", 0).expect("added");
    let list = b.list(0);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0].enforced, "accept");
    let view = std::cell::RefCell::default();
    assert_eq!(
        b.requests.check(&view, client, || SEC).map(|(r, _)| r),
        Some(VerdictReason::Policy)
    );
    assert!(b.remove(client));
    assert_eq!(b.requests.check(&view, client, || SEC), None);
    // Without trusted proxies, the kernel alone holds it.
    let mut plain = book("");
    plain.add(client, 60, "", 0).expect("added");
    assert!(plain.requests.list().is_empty());
}
