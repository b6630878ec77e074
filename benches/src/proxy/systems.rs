//! Starting the systems measured (the backend, two gateways, HAProxy,
//! nginx) and naming the scenarios each is measured in.

use std::{
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{BACKEND_PORT, Opts, PORTS, configs::Files, wrk};
use crate::openloop;

/// A process group we started; killed on drop.
struct Proc {
    name: &'static str,
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(-(self.child.id() as i32));
        let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGTERM);
        std::thread::sleep(Duration::from_millis(200));
        let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

fn spawn(
    name: &'static str,
    cpus: Option<&str>,
    program: &Path,
    args: &[&str],
    log: &Path,
) -> Result<Proc> {
    let mut cmd = crate::cpu::pinned(cpus, program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(log)?)
        .stderr(std::fs::File::create(log.with_extension("err"))?);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {name} ({})", program.display()))?;
    Ok(Proc { name, child })
}

fn wait_port(port: u16, proc: &mut Proc) -> Result<()> {
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = proc.child.try_wait() {
            bail!(
                "{} exited with {status} before listening on {port}",
                proc.name
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{} did not listen on {port}", proc.name)
}

/// One scenario: a name, the process group whose CPU it is charged, and
/// what the closed and open loops send.
pub struct System {
    /// Its row's name.
    pub name: String,
    /// The proxy's process group (none for the backend alone).
    pub pgid: Option<u32>,
    /// The closed loop's target.
    pub closed: wrk::Target,
    /// The open loop's target, for the scenarios measured open-loop too.
    pub open: Option<openloop::Target>,
}

/// The running processes (stopped on drop) and the scenarios on them.
pub struct Started {
    /// Kept for their drop.
    _procs: Vec<Proc>,
    /// The in-process demo backend stands in for a missing nginx.
    pub demo_backend: bool,
    /// The scenarios, in report order.
    pub systems: Vec<System>,
}

fn request(method: &str, port: u16, path: &str, headers: &[String], body: &str) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n");
    for h in headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    if method == "POST" {
        r.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    r.push_str("\r\n");
    r.push_str(body);
    r.into_bytes()
}

/// Starts every installed system and lists its scenarios; `have(tool)`
/// says whether a peer is installed.
pub fn start(
    opts: &Opts,
    gateway: &Path,
    work: &Path,
    files: &Files,
    have: &dyn Fn(&str) -> bool,
) -> Result<Started> {
    let pc = opts.proxy_cpus.as_deref();
    let lc = opts.load_cpus.as_deref();
    let nginx_bin = PathBuf::from("nginx");
    let mut procs = Vec::new();
    let demo_backend = !have("nginx");
    if demo_backend {
        gateway::demo::start(([127, 0, 0, 1], BACKEND_PORT).into())
            .context("starting the demo backend")?;
    } else {
        let mut backend = spawn(
            "backend",
            lc,
            &nginx_bin,
            &[
                "-c",
                &files.backend.display().to_string(),
                "-e",
                &work.join("backend-e.log").display().to_string(),
            ],
            &work.join("backend.log"),
        )?;
        wait_port(BACKEND_PORT, &mut backend)?;
        procs.push(backend);
    }
    let mut pgids = std::collections::HashMap::new();
    let mut launch = |name: &'static str, program: &Path, args: &[&str], port: u16| -> Result<()> {
        let mut p = spawn(name, pc, program, args, &work.join(format!("{name}.log")))?;
        wait_port(port, &mut p)?;
        pgids.insert(name, p.child.id());
        procs.push(p);
        Ok(())
    };
    let s = |p: &Path| p.display().to_string();
    launch(
        "gateway",
        gateway,
        &["run", "--config", &s(&files.gateway)],
        PORTS[1].1,
    )?;
    launch(
        "gw+key",
        gateway,
        &["run", "--config", &s(&files.gateway_key)],
        PORTS[2].1,
    )?;
    if let Some(base) = &opts.baseline {
        launch(
            "gw-base",
            base,
            &["run", "--config", &s(&files.gateway_base)],
            PORTS[5].1,
        )?;
    }
    if have("haproxy") {
        launch(
            "haproxy",
            Path::new("haproxy"),
            &["-db", "-f", &s(&files.haproxy)],
            PORTS[3].1,
        )?;
    }
    if have("nginx") {
        let e = s(&work.join("nginx-e.log"));
        launch(
            "nginx",
            &nginx_bin,
            &["-c", &s(&files.nginx), "-e", &e],
            PORTS[4].1,
        )?;
    }
    let mut systems = Vec::new();
    let mut add = |name: &str,
                   proc: &str,
                   port: u16,
                   path: &str,
                   header: Option<String>,
                   post: bool,
                   open: bool| {
        if port != BACKEND_PORT && !pgids.contains_key(proc) {
            return;
        }
        let https = port != BACKEND_PORT;
        let headers: Vec<String> = header.into_iter().collect();
        let body = if post {
            super::configs::order_body()
        } else {
            String::new()
        };
        let method = if post { "POST" } else { "GET" };
        systems.push(System {
            name: name.into(),
            pgid: pgids.get(proc).copied(),
            closed: wrk::Target {
                url: format!(
                    "{}://127.0.0.1:{port}{path}",
                    if https { "https" } else { "http" }
                ),
                headers: headers.clone(),
                lua: if post {
                    files.post_lua.clone()
                } else {
                    files.lua.clone()
                },
            },
            open: open.then(|| openloop::Target {
                port,
                tls: https,
                request: request(method, port, path, &headers, &body),
            }),
        });
    };
    let key = Some(format!("x-api-key: {}", files.api_key));
    let bearer = |t: &str| Some(format!("Authorization: Bearer {t}"));
    let (g, k, h, n) = (PORTS[1].1, PORTS[2].1, PORTS[3].1, PORTS[4].1);
    add("backend", "", BACKEND_PORT, "/", None, false, true);
    add("gateway", "gateway", g, "/", None, false, true);
    // `launch` ran only with `--baseline`; `add` skips a process not running.
    add("gw-base", "gw-base", PORTS[5].1, "/", None, false, true);
    add("gw+key", "gw+key", k, "/", key, false, true);
    // The demo backend speaks no TLS: this row needs nginx.
    if !demo_backend {
        add("gw+tls-up", "gateway", g, "/tls-up", None, false, false);
    }
    if !opts.no_jwt {
        add(
            "gw+es256",
            "gw+key",
            k,
            "/es/x",
            bearer(&files.jwt.es_token),
            false,
            false,
        );
        add(
            "gw+es256-nc",
            "gw+key",
            k,
            "/es-nc/x",
            bearer(&files.jwt.es_token),
            false,
            false,
        );
        add(
            "gw+rs256",
            "gw+key",
            k,
            "/rs/x",
            bearer(&files.jwt.rs_token),
            false,
            false,
        );
    }
    add("haproxy", "haproxy", h, "/", None, false, true);
    add("nginx", "nginx", n, "/", None, false, true);
    if !opts.no_jwt {
        add(
            "ha+es256",
            "haproxy",
            h,
            "/es/x",
            bearer(&files.jwt.es_token),
            false,
            false,
        );
        add(
            "ha+rs256",
            "haproxy",
            h,
            "/rs/x",
            bearer(&files.jwt.rs_token),
            false,
            false,
        );
    }
    // The JSON POST: validated by the gateway, and proxied unvalidated by
    // each proxy (`/post` takes the gateway's catch-all route).
    add("gw+valid", "gateway", g, "/orders", None, true, true);
    add("gw+post", "gateway", g, "/post", None, true, false);
    add(
        "gwb+valid",
        "gw-base",
        PORTS[5].1,
        "/orders",
        None,
        true,
        true,
    );
    add("ha+post", "haproxy", h, "/orders", None, true, true);
    add("ng+post", "nginx", n, "/orders", None, true, false);
    if !opts.only.is_empty() {
        systems.retain(|s| opts.only.contains(&s.name));
    }
    Ok(Started {
        _procs: procs,
        demo_backend,
        systems,
    })
}
