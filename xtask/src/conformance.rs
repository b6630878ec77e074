//! `cargo xtask conformance`: the RFC 9113 cases of `httpwg-cli` (crates.io)
//! against the release gateway. The tool speaks cleartext HTTP/2 only and
//! the gateway serves it only over TLS, so a small relay (Python's `ssl`,
//! ALPN `h2`) stands between them: the gateway runs exactly as shipped, with
//! no test-only listener. Prints the tool's verdict per case and its count.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::build;

const GATEWAY_PORT: u16 = 18543;
const RELAY_PORT: u16 = 18544;
const DEMO_PORT: u16 = 18545;

/// Cleartext in, TLS with ALPN `argv[3]` out, one thread pair per connection.
const RELAY: &str = r#"
import socket, ssl, sys, threading
up, port, alpn = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols([alpn])
def pipe(a, b):
    try:
        while True:
            d = a.recv(65536)
            if not d:
                break
            b.sendall(d)
    except OSError:
        pass
    for s in (a, b):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(256)
while True:
    c, _ = srv.accept()
    try:
        u = ctx.wrap_socket(socket.create_connection(("127.0.0.1", up)), server_hostname="localhost")
        if u.selected_alpn_protocol() != alpn:
            raise OSError("the gateway did not choose " + alpn)
    except OSError as e:
        print("relay:", e, flush=True)
        c.close()
        continue
    threading.Thread(target=pipe, args=(c, u), daemon=True).start()
    threading.Thread(target=pipe, args=(u, c), daemon=True).start()
"#;

/// Kills its child on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_port(port: u16, what: &str) -> Result<()> {
    let until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < until {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{what} did not listen on {port}")
}

/// `httpwg`, installed with cargo when missing.
fn httpwg() -> Result<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let bin = home.join("bin/httpwg");
    if !bin.exists() {
        eprintln!("xtask: installing httpwg-cli (cargo install httpwg-cli --locked)");
        let ok = Command::new("cargo")
            .args(["install", "httpwg-cli", "--locked"])
            .status()
            .context("cargo install httpwg-cli")?
            .success();
        if !ok {
            bail!("cargo install httpwg-cli failed");
        }
    }
    Ok(bin)
}

/// Runs the cases; the tool's own exit status is reported, not returned
/// (the cases the gateway fails are listed in README with the reason).
pub fn run() -> Result<()> {
    let tool = httpwg()?;
    let obj = build::ebpf()?;
    let gateway = build::release(&obj, &[])?;
    let dir = build::target_dir().join("conformance");
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("gateway.toml");
    // The demo backend answers every path; escalation is off, since the
    // cases are protocol errors from one address, which would earn it a verdict.
    std::fs::write(
        &config,
        format!(
            "[listen]\nhttps = \"127.0.0.1:{GATEWAY_PORT}\"\nplain_http_port = {}\n\
             [demo]\nlisten = \"127.0.0.1:{DEMO_PORT}\"\n\
             [[upstreams]]\nname = \"demo\"\nservers = [\"127.0.0.1:{DEMO_PORT}\"]\n\
             [[routes]]\npath_prefix = \"/\"\nupstream = \"demo\"\nauth = \"none\"\n\
             [rate_limit.escalation]\nrejections = 0\nauth_failures = 0\nattacks = 0\n\
             [admin]\nenabled = false\n[xdp]\nenabled = false\n",
            GATEWAY_PORT + 10
        ),
    )?;
    let log = std::fs::File::create(dir.join("gateway.log"))?;
    let _gw = Killed(
        Command::new(&gateway)
            .args(["run", "--config"])
            .arg(&config)
            .env("GATEWAY_STATE_DIR", dir.join("state"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting the gateway")?,
    );
    wait_port(GATEWAY_PORT, "the gateway")?;
    let _relay = Killed(
        Command::new("python3")
            .args([
                "-c",
                RELAY,
                &GATEWAY_PORT.to_string(),
                &RELAY_PORT.to_string(),
                "h2",
            ])
            .stdout(Stdio::inherit())
            .spawn()
            .context("starting the TLS relay (python3)")?,
    );
    wait_port(RELAY_PORT, "the TLS relay")?;
    let out = Command::new(tool)
        .args([
            "-a",
            &format!("127.0.0.1:{RELAY_PORT}"),
            "--frame-timeout",
            "2000",
        ])
        // The tool wants a server command to start: the gateway already runs.
        .args(["--", "sleep", "600"])
        .env("NO_COLOR", "1")
        .output()
        .context("running httpwg")?;
    let mut all = out.stdout.clone();
    all.extend_from_slice(&out.stderr);
    let text = String::from_utf8_lossy(&all);
    let strip = |l: &str| {
        let mut s = String::new();
        let mut esc = false;
        for c in l.chars() {
            match (esc, c) {
                (false, '\u{1b}') => esc = true,
                (true, 'm') => esc = false,
                (true, _) => {}
                (false, c) => s.push(c),
            }
        }
        s
    };
    for line in text.lines().map(strip) {
        if line.contains("Test failed") || line.contains("Passed") {
            println!("{line}");
        }
    }
    println!("details: {}", dir.join("httpwg.log").display());
    std::fs::write(dir.join("httpwg.log"), &all)?;
    Ok(())
}

const ECHO_PORT: u16 = 18546;

/// Runs Autobahn's fuzzing-client cases (PyPI `kosoku`, installed when
/// missing) against the `websockets` echo server of the tests, once
/// directly and once through the release gateway (over TLS, by the same
/// relay), and prints each run's verdict counts and the cases whose
/// verdict the gateway changed. The gateway passes frames through, so the
/// echo server's own verdicts are the baseline. Its tunnel limits are
/// lifted for the run (`max_message_bytes`, `bytes_per_second`): the 9.x
/// cases send messages of up to 16 MiB, which the defaults refuse with
/// 1009 on purpose.
pub fn websocket() -> Result<()> {
    for (module, package) in [
        ("kosoku", "kosoku"),
        ("websockets.sync.client", "websockets"),
    ] {
        let have = Command::new("python3")
            .args(["-c", &format!("import {module}")])
            .status()
            .is_ok_and(|s| s.success());
        if !have {
            eprintln!("xtask: installing {package} (pip)");
            let ok = Command::new("python3")
                .args(["-m", "pip", "install", "-q", package])
                .status()
                .context("pip install")?
                .success();
            if !ok {
                bail!("pip install {package} failed");
            }
        }
    }
    let obj = build::ebpf()?;
    let gateway = build::release(&obj, &[])?;
    let dir = build::target_dir().join("conformance");
    std::fs::create_dir_all(&dir)?;
    let echo = build::workspace_root().join("tests/websocket/echo.py");
    let _echo = Killed(
        Command::new("python3")
            .arg(&echo)
            .arg(ECHO_PORT.to_string())
            .arg(dir.join("handshakes.jsonl"))
            .stdout(Stdio::null())
            .spawn()
            .context("starting the echo server (python3)")?,
    );
    wait_port(ECHO_PORT, "the echo server")?;
    let config = dir.join("gateway-websocket.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\nhttps = \"127.0.0.1:{GATEWAY_PORT}\"\nplain_http_port = {}\n\
             [demo]\nlisten = \"127.0.0.1:{DEMO_PORT}\"\n\
             [[upstreams]]\nname = \"echo\"\nservers = [\"127.0.0.1:{ECHO_PORT}\"]\n\
             [[routes]]\npath_prefix = \"/\"\nupstream = \"echo\"\nauth = \"none\"\nwebsocket = true\n\
             [websocket]\nmax_message_bytes = 0\nbytes_per_second = 0\n\
             [rate_limit.escalation]\nrejections = 0\nauth_failures = 0\nattacks = 0\n\
             [admin]\nenabled = false\n[xdp]\nenabled = false\n",
            GATEWAY_PORT + 10
        ),
    )?;
    let log = std::fs::File::create(dir.join("gateway-websocket.log"))?;
    let _gw = Killed(
        Command::new(&gateway)
            .args(["run", "--config"])
            .arg(&config)
            .env("GATEWAY_STATE_DIR", dir.join("state"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting the gateway")?,
    );
    wait_port(GATEWAY_PORT, "the gateway")?;
    let _relay = Killed(
        Command::new("python3")
            .args([
                "-c",
                RELAY,
                &GATEWAY_PORT.to_string(),
                &RELAY_PORT.to_string(),
                "http/1.1",
            ])
            .stdout(Stdio::inherit())
            .spawn()
            .context("starting the TLS relay (python3)")?,
    );
    wait_port(RELAY_PORT, "the TLS relay")?;
    let direct = autobahn(
        &format!("127.0.0.1:{ECHO_PORT}"),
        &dir.join("autobahn-direct"),
    )?;
    let through = autobahn(
        &format!("127.0.0.1:{RELAY_PORT}"),
        &dir.join("autobahn-gateway"),
    )?;
    for (name, verdicts) in [
        ("echo server directly", &direct),
        ("through the gateway", &through),
    ] {
        let mut counts = std::collections::BTreeMap::new();
        for v in verdicts.values() {
            *counts.entry(v.as_str()).or_insert(0) += 1;
        }
        println!("{name}: {} cases, {counts:?}", verdicts.len());
    }
    for (case, v) in &direct {
        let g = through.get(case).map_or("missing", String::as_str);
        if g != v {
            println!("  {case}: {v} directly, {g} through the gateway");
        }
    }
    println!("reports: {}", dir.display());
    Ok(())
}

/// Runs every case against `addr`; each case's `behavior`, by case id.
fn autobahn(addr: &str, out: &Path) -> Result<std::collections::BTreeMap<String, String>> {
    let _ = std::fs::remove_dir_all(out);
    // The tool exits non-zero when any case fails: its report is the result.
    Command::new("kosoku")
        .args(["-p", "4", "-o"])
        .arg(out)
        .arg(addr)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running kosoku")?;
    let index: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.join("index.json")).context("kosoku's index.json")?,
    )?;
    let cases = index
        .as_object()
        .and_then(|agents| agents.values().next())
        .and_then(|c| c.as_object())
        .context("kosoku's index.json names no agent")?;
    Ok(cases
        .iter()
        .map(|(id, v)| {
            let behavior = v["behavior"].as_str().unwrap_or("?").to_owned();
            (id.clone(), behavior)
        })
        .collect())
}
