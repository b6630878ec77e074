//! The `gateway` binary as an operator meets it: `--help`, `check`, `run`,
//! its error lines, the userspace fallback, and a clean stop that detaches.

use std::{process::Command, time::Duration};

use gateway_tests::{NetNs, Running, gateway_bin, require_root};
use nix::sys::signal::Signal;

fn write_config(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("gateway-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path
}

fn output(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(gateway_bin())
        .args(args)
        .output()
        .expect("run gateway");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_lists_the_commands() {
    let (code, out, _) = output(&["--help"]);
    assert_eq!(code, 0);
    for cmd in ["run", "check", "default-config", "top"] {
        assert!(out.contains(cmd), "--help lacks {cmd}: {out}");
    }
}

#[test]
fn check_accepts_the_embedded_default() {
    let (code, out, err) = output(&["check"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("<embedded default>: ok"), "{out}");
    assert!(out.contains("127.0.0.1:8443"), "{out}");
}

#[test]
fn check_shows_each_routes_rate_limits_and_names_an_unknown_one() {
    let text = "[listen]\nhttps = \"127.0.0.1:8443\"\n[[upstreams]]\nname = \"u\"\nservers = [\"127.0.0.1:9\"]\n\
        [[routes]]\nupstream = \"u\"\nauth = \"none\"\nrate_limits = [\"ip\"]\n\
        [[rate_limit.limits]]\nname = \"ip\"\nkey = [\"source\", \"route\"]\nrate = \"100/s\"\nburst = 50\n";
    let p = write_config("limits.toml", text).display().to_string();
    let (code, out, err) = output(&["check", "--config", &p]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("auth PUBLIC limits [ip 100/1s burst 50 by source+route] -> u"),
        "{out}"
    );
    let p = write_config("limits-bad.toml", &text.replace("[\"ip\"]", "[\"ipp\"]"))
        .display()
        .to_string();
    let (code, _, err) = output(&["check", "--config", &p]);
    assert_eq!(code, 1);
    assert!(
        err.contains(":9: routes[0].rate_limits: no limit named `ipp` in [[rate_limit.limits]]"),
        "{err}"
    );
}

#[test]
fn check_reports_file_line_and_key() {
    let path = write_config(
        "bad-cidr.toml",
        "[listen]\nhttps = \"127.0.0.1:8443\"\n\n[policy]\ndeny = [\"198.18.0.0/33\"]\n",
    );
    let p = path.display().to_string();
    let (code, _, err) = output(&["check", "--config", &p]);
    assert_eq!(code, 1);
    let first = err.lines().next().unwrap_or_default();
    assert!(
        first.starts_with(&format!("gateway: error: {p}:5: policy.deny[0]: ")),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");
}

/// CORS mistakes name their own line; a pattern over a public suffix
/// (`https://*.com`, `https://*.github.io`) is refused, since anyone can
/// register a name under it.
#[test]
fn cors_errors_name_their_line_and_public_suffix_patterns_are_refused() {
    let cases = [
        (
            "cors-suffix.toml",
            "[listen]\nhttps = \"127.0.0.1:8443\"\n\n[cors]\nallow_origins = [\n  \"https://app.example.com\",\n  \"https://*.com\",\n]\n",
            7,
            "public suffix `com`",
        ),
        (
            "cors-github.toml",
            "[listen]\nhttps = \"127.0.0.1:8443\"\n[cors]\nallow_origins = [\"https://*.github.io\"]\n",
            4,
            "public suffix `github.io`",
        ),
        (
            "cors-credentials.toml",
            "[listen]\nhttps = \"127.0.0.1:8443\"\n[cors]\nallow_origins = [\"*\"]\nmax_age_secs = 60\nallow_credentials = true\n",
            6,
            "allow_credentials",
        ),
    ];
    for (name, text, line, says) in cases {
        let p = write_config(name, text).display().to_string();
        let (code, _, err) = output(&["check", "--config", &p]);
        assert_eq!(code, 1, "{name}: {err}");
        assert!(
            err.starts_with(&format!("gateway: error: {p}:{line}: cors: ")),
            "{name}: {err}"
        );
        assert!(err.contains(says), "{name}: {err}");
    }
    // Your own domain's subdomains are fine.
    let p = write_config(
        "cors-own.toml",
        "[listen]\nhttps = \"127.0.0.1:8443\"\n[cors]\nallow_origins = [\"https://*.example.co.uk\"]\n",
    )
    .display()
    .to_string();
    let (code, _, err) = output(&["check", "--config", &p]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn header_injection_and_unmatchable_hosts_are_config_errors() {
    let base = "[listen]\nhttps = \"127.0.0.1:8443\"\n[xdp]\nenabled = false\n";
    let upstream = "[[upstreams]]\nname = \"a\"\nservers = [\"127.0.0.1:1\"]\n";
    let cases = [
        (
            "hsts-crlf.toml",
            format!("{base}[proxy]\nhsts = \"max-age=1\\r\\nSet-Cookie: a=b\"\n"),
            ":6: proxy.hsts: byte 0x0d is not allowed",
        ),
        (
            "host-port.toml",
            format!(
                "{base}{upstream}[[routes]]\nhost = \"api.test:8443\"\nupstream = \"a\"\nauth = \"none\"\n"
            ),
            ":9: routes[0].host: `api.test:8443` has a port",
        ),
        (
            "retries.toml",
            format!(
                "{base}[[upstreams]]\nname = \"a\"\nservers = [\"127.0.0.1:1\"]\nretries = 9\n"
            ),
            ":8: upstreams[0].retries: at most 5",
        ),
    ];
    for (name, text, want) in cases {
        let path = write_config(name, &text);
        let p = path.display().to_string();
        // `run` refuses the file the same way `check` does, before binding anything.
        for cmd in ["check", "run"] {
            let (code, _, err) = output(&[cmd, "--config", &p]);
            assert_eq!(code, 1, "{cmd} {name}: {err}");
            assert!(
                err.starts_with(&format!("gateway: error: {p}{want}")),
                "{cmd} {name}: {err}"
            );
        }
    }
}

#[test]
fn keys_new_prints_a_key_once_and_its_hash_matches_keys_hash() {
    let (code, out, err) = output(&["keys", "new", "--consumer", "alice", "--roles", "admin,ops"]);
    assert_eq!(code, 0, "{err}");
    let key = out
        .lines()
        .find(|l| l.starts_with("gwk_"))
        .expect("the key")
        .to_owned();
    assert_eq!(key.len(), 47, "{out}");
    assert!(
        out.contains("id = \"alice\"\nroles = [\"admin\", \"ops\"]"),
        "{out}"
    );
    let hash_line = out
        .lines()
        .find(|l| l.starts_with("hash = "))
        .expect("hash");
    // The printed lines make a key file the gateway accepts.
    let file = write_config(
        "keys-new.toml",
        out.split_once("table):\n").expect("lines").1,
    );
    let keyring = gateway::stages::auth::api_key::KeyRing::load(&file).expect("valid key file");
    assert_eq!(keyring.verify(key.as_bytes(), 0), Ok(0));
    // `keys hash` of the same key prints the same line.
    let mut child = Command::new(gateway_bin())
        .args(["keys", "hash"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin");
        writeln!(stdin, "{key}").expect("write");
    }
    let hashed = child.wait_with_output().expect("output");
    let hashed = String::from_utf8_lossy(&hashed.stdout);
    assert!(hashed.lines().any(|l| l == hash_line), "{hashed}");
    assert!(!hashed.contains(&key), "the key was echoed");
}

#[test]
fn a_route_without_auth_is_an_error_and_check_lists_public_routes() {
    let base = "[listen]\nhttps = \"127.0.0.1:8443\"\n[xdp]\nenabled = false\n[[upstreams]]\nname = \"a\"\nservers = [\"127.0.0.1:1\"]\n";
    let path = write_config(
        "no-auth.toml",
        &format!("{base}[[routes]]\npath_prefix = \"/x\"\nupstream = \"a\"\n"),
    );
    let p = path.display().to_string();
    let (code, _, err) = output(&["check", "--config", &p]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with(&format!(
            "gateway: error: {p}:10: routes[0].auth: missing: every route says who may call it"
        )),
        "{err}"
    );
    let path = write_config(
        "public.toml",
        &format!("{base}[[routes]]\npath_prefix = \"/docs\"\nupstream = \"a\"\nauth = \"none\"\n"),
    );
    let (code, out, err) = output(&["check", "--config", &path.display().to_string()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("prefix /docs any method auth PUBLIC"), "{out}");
    assert!(
        out.contains("public routes (auth = \"none\"): routes[0]"),
        "{out}"
    );
    let path = write_config(
        "api-key-without-file.toml",
        &format!("{base}[[routes]]\nupstream = \"a\"\nauth = [\"api_key\"]\n"),
    );
    let (code, _, err) = output(&["check", "--config", &path.display().to_string()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("routes[0].auth: `api_key` needs `auth.key_file`"),
        "{err}"
    );
}

/// What `run` loads before serving, `check` loads too: a file `check`
/// passes is never one `run` refuses.
#[test]
fn check_loads_every_file_run_loads() {
    let dir = std::env::temp_dir().join(format!("gateway-cli-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p.display().to_string()
    };
    let short_token = file("short.token", "abcde\n");
    let good_token = file("good.token", "0123456789abcdef0123\n");
    let weak_secret = file("weak.secret", "short\n");
    let good_secret = file("good.secret", &"k".repeat(48));
    let broken_jwks = file("broken.jwks", "{\"keys\": [{\"kty\": \"EC\"}]}");
    let oct_jwks = file(
        "oct.jwks",
        "{\"keys\": [{\"kty\": \"oct\", \"kid\": \"h\", \"k\": \"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0\"}]}",
    );
    let empty_client_secret = file("empty.client", "\n");
    let listen = "[listen]\nhttps = \"127.0.0.1:8443\"\n";
    let jwt = |source: &str| {
        format!(
            "{listen}[[auth.jwt]]\nname = \"idp\"\nissuer = \"https://id.example\"\naudiences = [\"api\"]\nalgorithms = [\"HS256\"]\n{source}\n"
        )
    };
    let cases = [
        (
            "short admin token",
            format!("{listen}[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{short_token}\"\n"),
            "the token needs at least 16 characters",
        ),
        (
            "missing admin token",
            format!(
                "{listen}[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{}/none.token\"\n",
                dir.display()
            ),
            "admin.token_file",
        ),
        (
            "weak HMAC secret",
            jwt(&format!("secret_file = \"{weak_secret}\"")),
            "auth.jwt[0] (idp)",
        ),
        (
            "broken JWKS file",
            jwt(&format!("jwks_file = \"{broken_jwks}\"")).replace("HS256", "ES256"),
            "auth.jwt[0] (idp)",
        ),
        (
            "a JWKS holding only a symmetric key",
            jwt(&format!("jwks_file = \"{oct_jwks}\"")).replace("HS256", "RS256"),
            "symmetric key in a JWKS",
        ),
        (
            "missing introspection secret",
            format!(
                "{listen}[[auth.introspection]]\nname = \"idp\"\nurl = \"https://id.example/introspect\"\nclient_id = \"gw\"\nclient_secret_file = \"{}/none.secret\"\n",
                dir.display()
            ),
            "auth.introspection (idp): client_secret_file",
        ),
        (
            "empty introspection secret",
            format!(
                "{listen}[[auth.introspection]]\nname = \"idp\"\nurl = \"https://id.example/introspect\"\nclient_id = \"gw\"\nclient_secret_file = \"{empty_client_secret}\"\n"
            ),
            "is empty",
        ),
    ];
    for (what, text, want) in &cases {
        let path = write_config(&format!("files-{}.toml", what.replace(' ', "-")), text);
        let (code, out, err) = output(&["check", "--config", path.to_str().expect("utf-8")]);
        assert_eq!(code, 1, "{what}: check passed: {out}");
        assert!(err.contains(want), "{what}: {err}");
    }
    // The good ones pass, and say what was read.
    let text = format!(
        "{}[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{good_token}\"\n",
        jwt(&format!("secret_file = \"{good_secret}\""))
    );
    let path = write_config("files-good.toml", &text);
    let (code, out, err) = output(&["check", "--config", path.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("issuer idp: 1 key loaded"), "{out}");
    assert!(out.contains("admin token: read"), "{out}");
}

/// `sudo cargo xtask run`: the demo's certificate and key go to the
/// invoking user's home (and are theirs), so the paths printed at start
/// work for the person who typed the command.
#[test]
fn under_sudo_the_state_is_the_invoking_users() {
    require_root();
    let passwd = std::fs::read_to_string("/etc/passwd").expect("passwd");
    let home = passwd
        .lines()
        .find_map(|l| l.strip_prefix("nobody:"))
        .and_then(|l| l.split(':').nth(4))
        .expect("a nobody user");
    let out = Command::new(gateway_bin())
        .arg("check")
        .env_remove("GATEWAY_STATE_DIR")
        .env_remove("XDG_STATE_HOME")
        .env("HOME", "/root")
        .env("SUDO_USER", "nobody")
        .output()
        .expect("run gateway");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "as {home}/.local/state/gateway/self-signed-cert.pem"
        )),
        "{stdout}"
    );
}

#[test]
fn check_reports_a_missing_file() {
    let (code, _, err) = output(&["check", "--config", "/nonexistent/gateway.toml"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("/nonexistent/gateway.toml: cannot read"),
        "{err}"
    );
}

/// Nothing is left attached to `lo` in `ns`.
fn assert_no_xdp(ns: &NetNs) {
    let link = ns
        .exec(&["ip", "link", "show", "dev", "lo"])
        .expect("ip link");
    assert!(!link.contains("xdp"), "XDP still attached: {link}");
}

fn ns_config(name: &str, iface: &str) -> std::path::PathBuf {
    ns_config_on(name, iface, 8443)
}

fn ns_config_on(name: &str, iface: &str, port: u16) -> std::path::PathBuf {
    write_config(
        name,
        &format!(
            "[listen]\nhttps = \"127.0.0.1:{port}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[xdp]\ninterface = \"{iface}\"\nsweep_interval_ms = 50\n"
        ),
    )
}

/// `gateway run` in `ns`, its generated state in a directory of the
/// test's own (never the real `$HOME`).
fn run_in(ns: &NetNs, config: &std::path::Path) -> Running {
    let state = config.with_extension("state");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns.name()])
        .arg(gateway_bin())
        .arg("run")
        .arg("--config")
        .arg(config)
        .env("GATEWAY_STATE_DIR", state);
    Running::spawn(cmd)
}

#[test]
fn run_attaches_refuses_a_second_instance_and_detaches_on_sigterm() {
    require_root();
    let ns = NetNs::new(&format!("gwt-cli-{}", std::process::id())).expect("namespace");
    let cfg = ns_config("lo.toml", "lo");
    let mut first = run_in(&ns, &cfg);
    assert!(
        first
            .wait_for_line("running;", Duration::from_secs(10))
            .is_some(),
        "first gateway did not start: {:?}",
        first.seen
    );
    assert!(
        first.seen.iter().any(|l| l.contains("XDP attached to lo")),
        "{:?}",
        first.seen
    );

    let mut second = run_in(&ns, &cfg);
    let status = second
        .stop(Signal::SIGCONT, Duration::from_secs(10))
        .expect("second exits by itself");
    assert_eq!(status.code(), Some(1));
    assert!(
        second
            .seen
            .iter()
            .any(|l| l.contains("interface `lo` already has an XDP program attached")),
        "{:?}",
        second.seen
    );

    let status = first
        .stop(Signal::SIGTERM, Duration::from_secs(10))
        .expect("first stops on SIGTERM");
    assert!(status.success(), "{status}: {:?}", first.seen);
    assert!(
        first
            .seen
            .iter()
            .any(|l| l.contains("XDP detached from lo")),
        "{:?}",
        first.seen
    );
    assert_no_xdp(&ns);
}

#[test]
fn run_with_an_unknown_interface_fails_in_one_line() {
    require_root();
    let ns = NetNs::new(&format!("gwt-cli-if-{}", std::process::id())).expect("namespace");
    let cfg = ns_config("nosuch.toml", "nosuch0");
    let mut gw = run_in(&ns, &cfg);
    let status = gw
        .stop(Signal::SIGCONT, Duration::from_secs(10))
        .expect("exits by itself");
    assert_eq!(status.code(), Some(1));
    let errors: Vec<_> = gw.seen.iter().filter(|l| l.contains("error")).collect();
    assert_eq!(
        errors,
        ["gateway: error: interface `nosuch0` does not exist (xdp.interface)"],
        "{:?}",
        gw.seen
    );
    assert_no_xdp(&ns);
}

#[test]
fn without_privilege_policy_moves_to_userspace_after_one_warning() {
    require_root();
    let port = gateway_tests::harness::free_port();
    let cfg = ns_config_on("unprivileged.toml", "lo", port);
    // Readable by the unprivileged user, with a state directory it may write.
    let dir = cfg.parent().expect("dir");
    let state = dir.join("unprivileged-state");
    std::fs::create_dir_all(&state).expect("state dir");
    for p in [dir, cfg.as_path(), state.as_path()] {
        let _ = Command::new("chmod").arg("a+rwx").arg(p).status();
    }
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
    ])
    .arg(gateway_bin())
    .arg("run")
    .arg("--config")
    .arg(&cfg)
    .env("GATEWAY_STATE_DIR", &state);
    let mut gw = Running::spawn(cmd);
    assert!(
        gw.wait_for_line("running;", Duration::from_secs(10))
            .is_some(),
        "{:?}",
        gw.seen
    );
    let warnings: Vec<_> = gw.seen.iter().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "{:?}", gw.seen);
    assert!(
        warnings[0].contains("XDP unavailable, enforcing the same policy in userspace"),
        "{warnings:?}"
    );
    assert!(warnings[0].contains("no permission"), "{warnings:?}");
    assert!(
        gw.seen
            .iter()
            .any(|l| l.contains("policy enforced in userspace")),
        "{:?}",
        gw.seen
    );
    let status = gw
        .stop(Signal::SIGINT, Duration::from_secs(10))
        .expect("stops on SIGINT");
    assert!(status.success(), "{status}");
}

#[test]
fn the_embedded_default_serves_the_demo_over_https_and_resets_plain_http() {
    use gateway_tests::harness::{Client, client_config};
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    use std::io::{Read, Write};
    require_root();
    let ns = NetNs::new(&format!("gwt-cli-default-{}", std::process::id())).expect("namespace");
    let state = std::env::temp_dir().join(format!("gateway-default-state-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns.name()])
        .arg(gateway_bin())
        .arg("run")
        .env("GATEWAY_STATE_DIR", &state);
    let mut gw = Running::spawn(cmd);
    assert!(
        gw.wait_for_line("running;", Duration::from_secs(10))
            .is_some(),
        "{:?}",
        gw.seen
    );
    let hint = gw
        .seen
        .iter()
        .find(|l| l.contains("try (demo consumer's API key): curl --cacert"))
        .cloned()
        .unwrap_or_default();
    let cert = state.join("self-signed-cert.pem");
    assert!(hint.contains(&cert.display().to_string()), "{:?}", gw.seen);
    // The demo key is printed with the curl line that uses it.
    let key = hint
        .split("x-api-key: ")
        .nth(1)
        .and_then(|k| k.split('\'').next())
        .unwrap_or_default()
        .to_owned();
    assert!(key.starts_with("gwk_"), "{hint}");
    let ca = CertificateDer::from_pem_file(&cert).expect("generated certificate");
    let (https, plain) = ns.run(|| {
        let cfg = client_config(&ca, &[&rustls::version::TLS13]);
        let mut c = Client::connect(8443, "localhost", cfg).expect("TLS to the embedded default");
        let mut ask = |path: &str, key: Option<&str>| {
            let key = key
                .map(|k| format!("x-api-key: {k}\r\n"))
                .unwrap_or_default();
            c.send(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{key}\r\n").as_bytes())
                .expect("send");
            c.response("GET").expect("response")
        };
        let public = ask("/public/hello", None);
        assert_eq!(public.status, 200, "{public:?}");
        let anonymous = ask("/api/hello", None);
        assert_eq!(anonymous.status, 401, "{anonymous:?}");
        assert!(
            anonymous.header("www-authenticate").is_some(),
            "{anonymous:?}"
        );
        let not_admin = ask("/admin/users", Some(&key));
        assert_eq!(not_admin.status, 403, "{not_admin:?}");
        let r = ask("/api/hello", Some(&key));
        // Plain HTTP to the TLS port: XDP on lo answers with a reset.
        let mut tcp = std::net::TcpStream::connect("127.0.0.1:8443").expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        let mut buf = [0u8; 64];
        (r, tcp.read(&mut buf).map_err(|e| e.kind()))
    });
    assert_eq!(https.status, 200);
    let body = String::from_utf8_lossy(&https.body).into_owned();
    assert!(
        body.contains("\"service\":\"demo\"") && body.contains("\"consumer\":\"demo\""),
        "{https:?}"
    );
    assert_eq!(plain, Err(std::io::ErrorKind::ConnectionReset));
    let status = gw
        .stop(Signal::SIGINT, Duration::from_secs(10))
        .expect("stops on Ctrl-C");
    assert!(status.success(), "{status}");
    assert!(
        gw.seen.iter().any(|l| l.contains("XDP detached from lo")),
        "{:?}",
        gw.seen
    );
    let _ = std::fs::remove_dir_all(&state);
}

#[test]
fn keys_new_refuses_what_the_key_file_would_refuse() {
    for (args, want) in [
        (
            &["keys", "new", "--consumer", "a b"][..],
            "--consumer: `a b` is not an id",
        ),
        (
            &["keys", "new", "--consumer", "a", "--roles", "x,y\r\nz"][..],
            "--roles: ",
        ),
        (
            &["keys", "new", "--consumer", "a", "--expires", "2027-01-01"][..],
            "--expires: `2027-01-01` needs a date, a time and an offset",
        ),
        (
            &["keys", "new", "--consumer", "a", "--expires", "soon"][..],
            "--expires: `soon` is not a date-time",
        ),
    ] {
        let (code, out, err) = output(args);
        assert_eq!(code, 1, "{args:?}: {out}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!out.contains("gwk_"), "a key was printed: {out}");
    }
}
