//! Authentication and authorization end to end: API keys from a key file,
//! roles and allow-lists, identity headers, rotation and reload, each tried
//! from the attacker's side with a backend that records what reached it.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use gateway::stages::auth::api_key;
use gateway_tests::harness::{Response, Setup, TempDir, reason_of, setup_with};

/// A consumer's key line for the key file.
fn key_table(key: &str, extra: &str) -> String {
    format!(
        "[[consumers.keys]]\nhash = \"{}\"\nprefix = \"{}\"\n{extra}",
        api_key::hash_line(key),
        api_key::shown_prefix(key)
    )
}

fn consumer(id: &str, roles: &[&str], keys: &str) -> String {
    let roles: Vec<String> = roles.iter().map(|r| format!("\"{r}\"")).collect();
    format!(
        "[[consumers]]\nid = \"{id}\"\nroles = [{}]\n{keys}\n",
        roles.join(", ")
    )
}

/// Writes the key file atomically (a reader never sees half of it).
fn write_keys(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write keys");
    std::fs::rename(&tmp, path).expect("rename keys");
}

const ROUTES: &str = r#"
[[routes]]
path_prefix = "/public"
upstream = "backend"
auth = "none"

[[routes]]
path_prefix = "/admin"
upstream = "backend"
auth = ["api_key"]
roles = ["admin"]

[[routes]]
path_prefix = "/only-alice"
upstream = "backend"
auth = "api_key"
consumers = ["alice"]

[[routes]]
path_prefix = "/api"
upstream = "backend"
auth = ["api_key"]
"#;

fn start(tag: &str, keys: &std::path::Path, xdp_extra: &str) -> Setup {
    setup_with(
        tag,
        "",
        "workers = 2",
        ROUTES,
        &format!("{xdp_extra}\n[auth]\nkey_file = \"{}\"\n", keys.display()),
        &[],
    )
}

fn key_header(key: &str) -> String {
    format!("x-api-key: {key}\r\n")
}

#[test]
fn api_keys_authenticate_roles_authorize_and_forged_identities_are_stripped() {
    let dir = TempDir::new("authkeys");
    let keys = dir.0.join("consumers.toml");
    let [a, b, c, d] = [0; 4].map(|_| api_key::generate().expect("key"));
    write_keys(
        &keys,
        &[
            consumer("alice", &["admin"], &key_table(&a, "")),
            consumer("bob", &[], &key_table(&b, "")),
            consumer(
                "carol",
                &[],
                &key_table(&c, "expires = 2020-01-01T00:00:00Z\n"),
            ),
            consumer(
                "dave",
                &[],
                &key_table(&d, "not_before = 2999-01-01T00:00:00Z\n"),
            ),
        ]
        .concat(),
    );
    let s = start("authkeys", &keys, "");
    let status = |r: &Response| (r.status, reason_of(r));
    // (path, headers, status, reason)
    let rows: &[(&str, String, u16, &str)] = &[
        ("/public/x", String::new(), 200, ""),
        ("/api/x", String::new(), 401, "auth.missing"),
        (
            "/api/x",
            key_header("gwk_not-a-key"),
            401,
            "auth.invalid_key",
        ),
        ("/api/x", key_header(&c), 401, "auth.invalid_key"),
        ("/api/x", key_header(&d), 401, "auth.invalid_key"),
        ("/api/x", key_header(&a), 200, ""),
        ("/admin/x", key_header(&b), 403, "auth.forbidden"),
        ("/admin/x", key_header(&a), 200, ""),
        ("/only-alice/x", key_header(&b), 403, "auth.forbidden"),
        ("/only-alice/x", key_header(&a), 200, ""),
        // A client cannot grant itself roles or another identity.
        (
            "/admin/x",
            format!(
                "{}x-consumer-id: alice\r\nx-consumer-roles: admin\r\n",
                key_header(&b)
            ),
            403,
            "auth.forbidden",
        ),
        (
            "/api/forged",
            format!(
                "{}X-Consumer-Id: alice\r\nX-Consumer-Roles: admin\r\n",
                key_header(&b)
            ),
            200,
            "",
        ),
        (
            "/api/x",
            format!("{}{}", key_header(&a), key_header(&b)),
            400,
            "auth.ambiguous",
        ),
        // A bearer token beside the key was never checked: it must not
        // reach a backend that would believe it.
        (
            "/api/bearer",
            format!(
                "{}Authorization: Bearer forged.admin.token\r\n",
                key_header(&b)
            ),
            200,
            "",
        ),
        (
            &format!("/api/x?api_key={a}"),
            String::new(),
            400,
            "auth.key_in_query",
        ),
        // An encoded path cannot slip past the role rule.
        ("/api/%2e%2e/admin/x", key_header(&b), 403, "auth.forbidden"),
    ];
    let mut failed = Vec::new();
    for (path, headers, want_status, want_reason) in rows {
        let r = s.get(path, headers);
        if status(&r) != (*want_status, want_reason.to_string()) {
            failed.push(format!("{path} {headers:?}: got {:?}", status(&r)));
        }
        if *want_status == 401 && r.header("www-authenticate").is_none() {
            failed.push(format!("{path}: 401 without www-authenticate"));
        }
        // A key in the URL is told where to send it instead.
        let body = String::from_utf8_lossy(&r.body);
        if *want_reason == "auth.key_in_query"
            && !body.contains("\"detail\":\"send the API key in its header")
        {
            failed.push(format!("{path}: no detail in {body}"));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    // No key reached the log, not even the one sent in the URL.
    let mut s = s;
    assert!(
        s.gw.proc
            .wait_for_line(&a, Duration::from_millis(500))
            .is_none(),
        "an API key was logged: {:?}",
        s.gw.proc.seen
    );
    assert!(
        s.gw.proc
            .seen
            .iter()
            // The query is not logged at all: only where the key was refused.
            .any(|l| l.contains("\"reason\":\"auth.key_in_query\"") && !l.contains("api_key")),
        "{:?}",
        s.gw.proc.seen
    );
    // Only the allowed requests reached the backend.
    assert_eq!(
        s.backend.paths(),
        [
            "/public/x",
            "/api/x",
            "/admin/x",
            "/only-alice/x",
            "/api/forged",
            "/api/bearer"
        ]
    );
    let got = s.backend.received();
    let bearer = got[5].head.to_ascii_lowercase();
    assert!(
        !bearer.contains("authorization") && !bearer.contains("forged"),
        "{bearer}"
    );
    let alice = got[1].head.to_ascii_lowercase();
    assert!(alice.contains("x-consumer-id: alice\r\n"), "{alice}");
    assert!(alice.contains("x-consumer-roles: admin\r\n"), "{alice}");
    assert!(
        !alice.contains("x-api-key"),
        "the key went upstream: {alice}"
    );
    let forged = got[4].head.to_ascii_lowercase();
    assert!(forged.contains("x-consumer-id: bob\r\n"), "{forged}");
    assert!(
        !forged.contains("alice") && !forged.contains("admin"),
        "{forged}"
    );
    let public = got[0].head.to_ascii_lowercase();
    assert!(!public.contains("x-consumer-id"), "{public}");
}

#[test]
fn a_pipelined_authenticated_and_unauthenticated_pair_is_judged_one_by_one() {
    let dir = TempDir::new("authpipe");
    let keys = dir.0.join("consumers.toml");
    let a = api_key::generate().expect("key");
    write_keys(&keys, &consumer("alice", &[], &key_table(&a, "")));
    let s = start("authpipe", &keys, "");
    let mut c = s.client();
    c.send(
        format!(
            "GET /api/one HTTP/1.1\r\nHost: localhost\r\nx-api-key: {a}\r\n\r\n\
             GET /api/two HTTP/1.1\r\nHost: localhost\r\n\r\n"
        )
        .as_bytes(),
    )
    .expect("send");
    assert_eq!(c.response("GET").expect("first").status, 200);
    assert_eq!(c.response("GET").expect("second").status, 401);
    assert_eq!(s.backend.paths(), ["/api/one"]);
}

#[test]
fn auth_failures_are_counted_per_source_and_logged() {
    let dir = TempDir::new("authcount");
    let keys = dir.0.join("consumers.toml");
    // A consumer with a key no guess will find.
    let key = api_key::generate().expect("key");
    write_keys(&keys, &consumer("alice", &[], &key_table(&key, "")));
    let mut s = start("authcount", &keys, "stats_interval_secs = 1");
    for _ in 0..5 {
        assert_eq!(s.get("/api/x", &key_header("gwk_guess")).status, 401);
    }
    // The five may straddle two 1 s windows: the line that says the total
    // reached 5 is the one to read, however they were split.
    let until = std::time::Instant::now() + Duration::from_secs(10);
    let line = loop {
        let left = until.saturating_duration_since(std::time::Instant::now());
        let line =
            s.gw.proc
                .wait_for_line("auth failures in the last", left)
                .unwrap_or_else(|| panic!("no line with the total 5: {:?}", s.gw.proc.seen));
        if line.contains("(total 5)") {
            break line;
        }
    };
    assert!(line.contains("127.0.0.1 x"), "{line}");
}

#[test]
fn keys_rotate_with_overlap_while_a_load_loop_runs_without_a_failure() {
    let dir = TempDir::new("rotate");
    let keys = dir.0.join("consumers.toml");
    let (old, new) = (
        api_key::generate().expect("key"),
        api_key::generate().expect("key"),
    );
    write_keys(&keys, &consumer("alice", &[], &key_table(&old, "")));
    let s = start("rotate", &keys, "");
    let current = Arc::new(Mutex::new(old.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(Mutex::new(Vec::new())),
    );
    let load = {
        let (current, stop, ok, failed) =
            (current.clone(), stop.clone(), ok.clone(), failed.clone());
        let mut c = s.client();
        std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(20);
            while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                let key = current.lock().map(|k| k.clone()).unwrap_or_default();
                c.send(
                    format!(
                        "GET /api/load HTTP/1.1\r\nHost: localhost\r\nx-api-key: {key}\r\n\r\n"
                    )
                    .as_bytes(),
                )
                .expect("send");
                let r = c.response("GET").expect("response");
                if r.status == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else if let Ok(mut f) = failed.lock() {
                    f.push((r.status, reason_of(&r)));
                }
            }
        })
    };
    let wait_until = |key: &str, want: u16| {
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if s.get("/api/probe", &key_header(key)).status == want {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    };
    std::thread::sleep(Duration::from_millis(300));
    // 1. Add the new key beside the old one.
    write_keys(
        &keys,
        &consumer(
            "alice",
            &[],
            &[key_table(&old, ""), key_table(&new, "")].concat(),
        ),
    );
    assert!(wait_until(&new, 200), "the new key never worked");
    // 2. Move the client over, 3. retire the old key.
    *current.lock().expect("lock") = new.clone();
    std::thread::sleep(Duration::from_millis(300));
    write_keys(&keys, &consumer("alice", &[], &key_table(&new, "")));
    assert!(wait_until(&old, 401), "the old key still works");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    load.join().expect("load loop");
    let failed = failed.lock().expect("lock").clone();
    assert!(
        failed.is_empty(),
        "failed requests during rotation: {failed:?}"
    );
    assert!(ok.load(Ordering::Relaxed) > 50, "too few requests: {ok:?}");
}

#[test]
fn a_broken_key_file_keeps_the_last_good_set_and_sighup_reloads() {
    let dir = TempDir::new("brokenkeys");
    let keys = dir.0.join("consumers.toml");
    let (a, b) = (
        api_key::generate().expect("key"),
        api_key::generate().expect("key"),
    );
    write_keys(&keys, &consumer("alice", &[], &key_table(&a, "")));
    let mut s = start("brokenkeys", &keys, "");
    write_keys(
        &keys,
        "[[consumers]]\nid = \"alice\"\n[[consumers.keys]]\nhash = \"sha256:nope\"\n",
    );
    let line =
        s.gw.proc
            .wait_for_line("keeping the last good key set", Duration::from_secs(5))
            .unwrap_or_default();
    assert!(
        line.contains(&format!("{}:4: consumers[0].keys[0].hash:", keys.display())),
        "{line}"
    );
    assert_eq!(s.get("/api/x", &key_header(&a)).status, 200);
    // A good file, then SIGHUP at once: no need to wait for the poll (a
    // whole reload, or the poll if its tick comes first: both say so).
    write_keys(&keys, &consumer("alice", &[], &key_table(&b, "")));
    let pid = nix::unistd::Pid::from_raw(s.gw.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
    assert!(
        s.gw.proc
            .wait_for_line("1 consumers, 1 keys", Duration::from_secs(5))
            .is_some()
    );
    assert_eq!(s.get("/api/x", &key_header(&b)).status, 200);
    assert_eq!(s.get("/api/x", &key_header(&a)).status, 401);
}

/// A key file caught half-way through a non-atomic rewrite reads as empty:
/// it must not revoke every key. An empty file is refused like a broken
/// one (at start too), unless the operator says empty means empty.
#[test]
fn an_empty_key_file_keeps_the_last_good_set_unless_allowed() {
    let dir = TempDir::new("emptykeys");
    let keys = dir.0.join("consumers.toml");
    let a = api_key::generate().expect("key");
    write_keys(&keys, &consumer("alice", &[], &key_table(&a, "")));
    let mut s = start("emptykeys", &keys, "");
    // Truncated in place, as `> consumers.toml` or a crashed editor does.
    std::fs::write(&keys, "").expect("truncate");
    let line =
        s.gw.proc
            .wait_for_line("keeping the last good key set", Duration::from_secs(5))
            .unwrap_or_default();
    assert!(line.contains("holds no key"), "{line}");
    assert_eq!(s.get("/api/x", &key_header(&a)).status, 200);
    // Comments only: no key either.
    write_keys(&keys, "# being rewritten\n");
    assert!(
        s.gw.proc
            .wait_for_line("holds no key", Duration::from_secs(5))
            .is_some()
    );
    assert_eq!(s.get("/api/x", &key_header(&a)).status, 200);

    // At start, an empty file stops the gateway with the reason.
    let cfg = s.gw.dir.0.join("gateway.toml");
    let out = std::process::Command::new(gateway_tests::gateway_bin())
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .expect("run gateway check");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("holds no key"), "{err}");
    assert!(err.contains("allow_empty_key_file"), "{err}");

    // Said on purpose, an empty file revokes every key.
    let text = std::fs::read_to_string(&cfg).expect("config");
    std::fs::write(
        &cfg,
        text.replace("[auth]\n", "[auth]\nallow_empty_key_file = true\n"),
    )
    .expect("config");
    write_keys(&keys, &consumer("alice", &[], &key_table(&a, "")));
    let pid = nix::unistd::Pid::from_raw(s.gw.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
    assert!(
        s.gw.proc
            .wait_for_line("published as generation", Duration::from_secs(5))
            .is_some(),
        "{:?}",
        s.gw.proc.seen
    );
    std::fs::write(&keys, "").expect("truncate");
    assert!(
        s.gw.proc
            .wait_for_line("0 consumers, 0 keys", Duration::from_secs(5))
            .is_some(),
        "{:?}",
        s.gw.proc.seen
    );
    assert_eq!(s.get("/api/x", &key_header(&a)).status, 401);
}
