//! `bench proxy`: wrk over TLS keep-alive against the backend directly, our
//! gateway, HAProxy 2.6 and nginx 1.22 doing the same work: TLS termination,
//! proxying to the same nginx backend over pooled keep-alive connections,
//! adding X-Forwarded-For, X-Forwarded-Proto and HSTS, no access log; and
//! the gateway again with an API key required on the route (`gw+key`), whose
//! ratio to the plain gateway is the cost of authentication; and a 1 KiB
//! JSON POST: the gateway validating it against a schema (`gw+valid`) and
//! not (`gw+post`), HAProxy and nginx proxying it unvalidated (`ha+post`,
//! `ng+post`).
//!
//! The systems alternate within each round; the report gives medians of
//! req/s, latency percentiles, and each proxy's own CPU time per request
//! (utime + stime of its processes, from /proc) with ratios to HAProxy.
//! Every latency distribution is saved under `--out`.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::cpu::{cpu_count, group_ticks, halves, median};

/// Options of `bench proxy`.
#[derive(clap::Args, Debug)]
pub struct Opts {
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// wrk connections.
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// wrk threads.
    #[arg(long, default_value_t = 1)]
    threads: u32,
    /// Rounds; medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Worker threads/processes for each proxy; default: one per proxy CPU.
    #[arg(long)]
    workers: Option<usize>,
    /// CPU list for the proxies (taskset syntax, e.g. "0-1"). Default: the
    /// first half of the machine's CPUs, so proxies never share a core with
    /// the load.
    #[arg(long)]
    proxy_cpus: Option<String>,
    /// CPU list for wrk and the backend. Default: the second half.
    #[arg(long)]
    load_cpus: Option<String>,
    /// Do not split the CPUs: proxies, wrk and backend all float.
    #[arg(long)]
    unpinned: bool,
    /// Pin each proxy's workers one per CPU (gateway `pin_cpus`, HAProxy
    /// `cpu-map`, nginx `worker_cpu_affinity`), within `--proxy-cpus`.
    #[arg(long)]
    pin_workers: bool,
    /// Where results and latency distributions go.
    #[arg(long, default_value = "target/bench/proxy")]
    out: PathBuf,
    /// The gateway binary (release).
    #[arg(long, default_value = "target/release/gateway")]
    gateway: PathBuf,
    /// Leave out the JWT scenarios (gateway ES256 with and without its
    /// verified-token cache, RS256; HAProxy `jwt_verify` ES256 and RS256).
    #[arg(long)]
    no_jwt: bool,
}

const BACKEND_PORT: u16 = 18080;
const PORTS: [(&str, u16); 5] = [
    ("backend", BACKEND_PORT),
    ("gateway", 18443),
    // The same gateway with an API key required on the route (auth stage,
    // key hash and lookup, identity headers): its cost is the ratio to `gateway`.
    ("gw+key", 18446),
    ("haproxy", 18444),
    ("nginx", 18445),
];

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
    let mut cmd = match cpus {
        Some(c) => {
            let mut t = Command::new("taskset");
            t.arg("-c").arg(c).arg(program);
            t
        }
        None => Command::new(program),
    };
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

const WRK_LUA: &str = r#"
done = function(summary, latency, requests)
  io.write(string.format("RESULT requests=%d duration_us=%d errors=%d\n", summary.requests, summary.duration,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout))
  for _, p in pairs({50, 90, 99, 99.9, 99.99}) do
    io.write(string.format("PCT %g %d\n", p, latency:percentile(p)))
  end
  for p = 1, 99 do
    io.write(string.format("DIST %d %d\n", p, latency:percentile(p)))
  end
  for _, p in pairs({99.5, 99.9, 99.95, 99.99, 99.999}) do
    io.write(string.format("DIST %g %d\n", p, latency:percentile(p)))
  end
end
"#;

struct Run {
    rps: f64,
    pct: BTreeMap<String, f64>,
    cpu_us_per_req: Option<f64>,
    errors: u64,
}

fn wrk(opts: &Opts, target: &Target, pgid: Option<u32>, dist_file: &Path) -> Result<Run> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let before = pgid.map(group_ticks);
    let mut cmd = match &opts.load_cpus {
        Some(c) => {
            let mut t = Command::new("taskset");
            t.arg("-c").arg(c).arg("wrk");
            t
        }
        None => Command::new("wrk"),
    };
    let out = cmd
        .args([
            "-t",
            &opts.threads.to_string(),
            "-c",
            &opts.connections.to_string(),
        ])
        .args([
            "-d",
            &format!("{}s", opts.duration),
            "--timeout",
            "5s",
            "-s",
        ])
        .arg(&target.lua)
        .args(target.headers.iter().flat_map(|h| ["-H", h.as_str()]))
        .arg(&target.url)
        .output()
        .context("running wrk (apt-get install wrk)")?;
    let after = pgid.map(group_ticks);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("wrk failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut requests = 0u64;
    let mut duration_us = 1u64;
    let mut errors = 0u64;
    let mut pct = BTreeMap::new();
    let mut dist = String::from("percentile,latency_us\n");
    for line in text.lines() {
        if let Some(r) = line.strip_prefix("RESULT ") {
            for kv in r.split_whitespace() {
                let (k, v) = kv.split_once('=').unwrap_or(("", "0"));
                let v: u64 = v.parse().unwrap_or(0);
                match k {
                    "requests" => requests = v,
                    "duration_us" => duration_us = v.max(1),
                    "errors" => errors = v,
                    _ => {}
                }
            }
        } else if let Some(p) = line.strip_prefix("PCT ") {
            let mut it = p.split_whitespace();
            if let (Some(k), Some(v)) = (it.next(), it.next().and_then(|v| v.parse::<f64>().ok())) {
                pct.insert(k.to_owned(), v);
            }
        } else if let Some(p) = line.strip_prefix("DIST ") {
            let _ = writeln!(dist, "{}", p.replace(' ', ","));
        }
    }
    std::fs::write(dist_file, dist)?;
    let cpu_us_per_req = match (before, after) {
        (Some(b), Some(a)) if requests > 0 => Some((a - b) as f64 / hz * 1e6 / requests as f64),
        _ => None,
    };
    Ok(Run {
        rps: requests as f64 * 1e6 / duration_us as f64,
        pct,
        cpu_us_per_req,
        errors,
    })
}

/// What wrk asks one system for.
struct Target {
    url: String,
    /// Extra request headers (`Name: value`).
    headers: Vec<String>,
    /// The wrk script: GET, or the JSON POST.
    lua: PathBuf,
}

/// A valid order of about 1 KiB, the POST scenarios' body.
fn order_body() -> String {
    let items: Vec<String> = (0..8)
        .map(|i| {
            format!(
                r#"{{"sku":"ABC-{i:04}","qty":{},"price":{}.5,"note":"line {i}"}}"#,
                i + 1,
                i * 10
            )
        })
        .collect();
    let mut body = format!(
        r#"{{"id":"9b2d3c4e-1f2a-4b5c-8d6e-7f8091a2b3c4","customer":{{"email":"ann@example.com","name":"Ann O'Brien"}},"placed":"2026-11-23T12:00:00Z","items":[{}],"comment":""#,
        items.join(",")
    );
    while body.len() < 1000 {
        body.push_str("pad ");
    }
    body.push_str("\"}");
    body
}

/// The schema `gw+valid` checks the order against.
const ORDER_SCHEMA: &str = r#"{ type = "object", required = ["id", "customer", "items"], additionalProperties = false, properties = { id = { type = "string", format = "uuid" }, customer = { type = "object", required = ["email"], properties = { email = { type = "string", format = "email" }, name = { type = "string", maxLength = 100 } } }, placed = { type = "string", format = "date-time" }, comment = { type = "string", maxLength = 2000 }, items = { type = "array", minItems = 1, items = { type = "object", required = ["sku", "qty", "price"], additionalProperties = false, properties = { sku = { type = "string", pattern = "^[A-Z]{3}-[0-9]{4}$" }, qty = { type = "integer", minimum = 1 }, price = { type = "number", minimum = 0 }, note = { type = "string", maxLength = 200 } } } } } }"#;

/// Runs the benchmark.
pub fn run(mut opts: Opts) -> Result<()> {
    // Fair by default: the proxies get one half of the CPUs, wrk and the
    // backend the other, and each proxy one worker per proxy CPU.
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    if !opts.unpinned && ncpu >= 2 {
        let (proxy, load) = halves();
        opts.proxy_cpus.get_or_insert(proxy);
        opts.load_cpus.get_or_insert(load);
    }
    if opts.workers.is_none() {
        let n = opts.proxy_cpus.as_deref().map_or(ncpu, cpu_count);
        opts.workers = Some(n.max(1));
    }
    for tool in ["wrk", "haproxy", "nginx"] {
        if Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            bail!("{tool} is missing: apt-get install wrk haproxy nginx-light");
        }
    }
    let gateway = std::fs::canonicalize(&opts.gateway).with_context(|| {
        format!(
            "{} (build it with cargo xtask build)",
            opts.gateway.display()
        )
    })?;
    std::fs::create_dir_all(&opts.out)?;
    let out = std::fs::canonicalize(&opts.out)?;
    let work = out.join("work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let (cert, key, _) =
        gateway::tls::self_signed(&work, "127.0.0.1").map_err(|e| anyhow::anyhow!("{e}"))?;
    let combined = work.join("combined.pem");
    std::fs::write(
        &combined,
        [std::fs::read(&cert)?, std::fs::read(&key)?].concat(),
    )?;
    let lua = work.join("report.lua");
    std::fs::write(&lua, WRK_LUA)?;
    let post_lua = work.join("post.lua");
    std::fs::write(
        &post_lua,
        format!(
            "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.body = [[{}]]\n{WRK_LUA}",
            order_body()
        ),
    )?;
    let w = opts.workers.unwrap_or(1);
    let hsts = "max-age=31536000; includeSubDomains";

    // The backend: nginx answering small JSON on plain HTTP.
    let backend_conf = work.join("backend.conf");
    std::fs::write(
        &backend_conf,
        format!(
            r#"
daemon off; master_process off; worker_processes 1; pid {w}/backend.pid; error_log {w}/backend-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off; keepalive_requests 1000000; keepalive_timeout 300s;
  client_body_temp_path {w}; proxy_temp_path {w}; fastcgi_temp_path {w}; uwsgi_temp_path {w}; scgi_temp_path {w};
  server {{ listen 127.0.0.1:{BACKEND_PORT} reuseport; default_type application/json;
    location / {{ return 200 '{{"service":"bench","ok":true}}'; }} }}
}}
"#,
            w = work.display()
        ),
    )?;
    let gw_conf = work.join("gateway.toml");
    std::fs::write(
        &gw_conf,
        format!(
            r#"
[listen]
https = "127.0.0.1:{port}"
https_only = false
[runtime]
workers = {w}
pin_cpus = {pin}
[log]
access = false
[tls]
[[tls.certificates]]
cert = "{cert}"
key = "{key}"
[[upstreams]]
name = "backend"
servers = ["127.0.0.1:{BACKEND_PORT}"]
idle_per_server = 256
[[routes]]
path = "/orders"
methods = ["POST"]
upstream = "backend"
auth = "none"
body_schema = {ORDER_SCHEMA}
[[routes]]
upstream = "backend"
auth = "none"
# Several gateways run side by side: none needs the admin API.
[admin]
enabled = false
[xdp]
enabled = false
"#,
            port = PORTS[1].1,
            cert = cert.display(),
            key = key.display(),
            pin = opts.pin_workers
        ),
    )?;
    // The API-key scenario: one consumer, its key sent by wrk.
    let api_key = gateway::stages::auth::api_key::generate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let key_file = work.join("consumers.toml");
    std::fs::write(
        &key_file,
        format!(
            "[[consumers]]\nid = \"bench\"\nroles = [\"reader\"]\n[[consumers.keys]]\nhash = \"{}\"\n",
            gateway::stages::auth::api_key::hash_line(&api_key)
        ),
    )?;
    // The authenticated gateway: the API key on `/`, and the JWT routes
    // (issuers and routes from the fixture) before it.
    let jwt = crate::jwt_fixture::make(&work)?;
    let (jwt_routes, jwt_issuers) = crate::jwt_fixture::gateway_toml(&jwt);
    let gw_key_conf = work.join("gateway-key.toml");
    std::fs::write(
        &gw_key_conf,
        std::fs::read_to_string(&gw_conf)?
            .replace(
                &format!("127.0.0.1:{}", PORTS[1].1),
                &format!("127.0.0.1:{}", PORTS[2].1),
            )
            .replace(
                "[[routes]]\nupstream = \"backend\"\nauth = \"none\"",
                &format!(
                    "{jwt_routes}[[routes]]\nupstream = \"backend\"\nauth = [\"api_key\"]\nroles = [\"reader\"]"
                ),
            )
            + &format!(
                "[auth]\nkey_file = \"{}\"\n{jwt_issuers}",
                key_file.display()
            ),
    )?;
    let haproxy_conf = work.join("haproxy.cfg");
    std::fs::write(
        &haproxy_conf,
        format!(
            r#"
global
  nbthread {w}
{cpu_map}
  maxconn 4000
  tune.ssl.default-dh-param 2048
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:{port} ssl crt {combined} alpn http/1.1
  option forwardfor
  http-request set-header X-Forwarded-Proto https
  http-response set-header Strict-Transport-Security "{hsts}"
{jwt_rules}  default_backend be
backend be
  server s1 127.0.0.1:{BACKEND_PORT}
"#,
            port = PORTS[3].1,
            combined = combined.display(),
            cpu_map = haproxy_cpu_map(&opts),
            jwt_rules = crate::jwt_fixture::haproxy_rules(&jwt)
        ),
    )?;
    let nginx_conf = work.join("nginx.conf");
    std::fs::write(
        &nginx_conf,
        format!(
            r#"
daemon off; worker_processes {w}; {affinity} pid {d}/nginx.pid; error_log {d}/nginx-error.log;
events {{ worker_connections 20000; }}
http {{
  access_log off; keepalive_requests 1000000; keepalive_timeout 300s;
  client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};
  upstream be {{ server 127.0.0.1:{BACKEND_PORT}; keepalive 256; }}
  server {{
    listen 127.0.0.1:{port} ssl reuseport;
    ssl_certificate {cert}; ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {{
      proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto https;
      add_header Strict-Transport-Security "{hsts}" always;
    }}
  }}
}}
"#,
            d = work.display(),
            port = PORTS[4].1,
            cert = cert.display(),
            key = key.display(),
            affinity = if opts.pin_workers {
                "worker_cpu_affinity auto;"
            } else {
                ""
            }
        ),
    )?;

    let pc = opts.proxy_cpus.as_deref();
    let lc = opts.load_cpus.as_deref();
    let nginx_bin = PathBuf::from("nginx");
    let mut backend = spawn(
        "backend",
        lc,
        &nginx_bin,
        &[
            "-c",
            &backend_conf.display().to_string(),
            "-e",
            &work.join("backend-e.log").display().to_string(),
        ],
        &work.join("backend.log"),
    )?;
    wait_port(BACKEND_PORT, &mut backend)?;
    let mut procs: Vec<(String, Option<Proc>, Target)> = Vec::new();
    let mut gw = spawn(
        "gateway",
        pc,
        &gateway,
        &["run", "--config", &gw_conf.display().to_string()],
        &work.join("gateway.log"),
    )?;
    wait_port(PORTS[1].1, &mut gw)?;
    let mut gw_key = spawn(
        "gw+key",
        pc,
        &gateway,
        &["run", "--config", &gw_key_conf.display().to_string()],
        &work.join("gateway-key.log"),
    )?;
    wait_port(PORTS[2].1, &mut gw_key)?;
    let mut hp = spawn(
        "haproxy",
        pc,
        Path::new("haproxy"),
        &["-db", "-f", &haproxy_conf.display().to_string()],
        &work.join("haproxy.log"),
    )?;
    wait_port(PORTS[3].1, &mut hp)?;
    let mut ng = spawn(
        "nginx",
        pc,
        &nginx_bin,
        &[
            "-c",
            &nginx_conf.display().to_string(),
            "-e",
            &work.join("nginx-e.log").display().to_string(),
        ],
        &work.join("nginx.log"),
    )?;
    wait_port(PORTS[4].1, &mut ng)?;
    let target = |port: u16, https: bool, headers: Vec<String>| Target {
        url: format!(
            "{}://127.0.0.1:{port}/",
            if https { "https" } else { "http" }
        ),
        headers,
        lua: lua.clone(),
    };
    let key_header = vec![format!("x-api-key: {api_key}")];
    procs.push(("backend".into(), None, target(BACKEND_PORT, false, vec![])));
    procs.push(("gateway".into(), Some(gw), target(PORTS[1].1, true, vec![])));
    procs.push((
        "gw+key".into(),
        Some(gw_key),
        target(PORTS[2].1, true, key_header),
    ));
    procs.push(("haproxy".into(), Some(hp), target(PORTS[3].1, true, vec![])));
    procs.push(("nginx".into(), Some(ng), target(PORTS[4].1, true, vec![])));
    // What is measured: each process's own scenario, and the JWT scenarios
    // on the authenticated gateway and on HAProxy (a process's CPU counts
    // only while its own wrk runs, so sharing it is fair).
    let pid = |name: &str| {
        procs
            .iter()
            .find(|(n, _, _)| n == name)
            .and_then(|(_, p, _)| p.as_ref().map(|p| p.child.id()))
    };
    let mut systems: Vec<(String, Option<u32>, Target)> = Vec::new();
    for (name, p, t) in &procs {
        systems.push((
            name.clone(),
            p.as_ref().map(|p| p.child.id()),
            Target {
                url: t.url.clone(),
                headers: t.headers.clone(),
                lua: t.lua.clone(),
            },
        ));
    }
    if !opts.no_jwt {
        let on = |port: u16, path: &str, token: &str| Target {
            url: format!("https://127.0.0.1:{port}{path}"),
            headers: vec![format!("Authorization: Bearer {token}")],
            lua: lua.clone(),
        };
        let (g, h) = (PORTS[2].1, PORTS[3].1);
        let (gk, hk) = (pid("gw+key"), pid("haproxy"));
        let at = systems.len() - 2;
        for (i, sys) in [
            ("gw+es256", gk, on(g, "/es/x", &jwt.es_token)),
            ("gw+es256-nc", gk, on(g, "/es-nc/x", &jwt.es_token)),
            ("gw+rs256", gk, on(g, "/rs/x", &jwt.rs_token)),
        ]
        .into_iter()
        .enumerate()
        {
            systems.insert(at + i, (sys.0.into(), sys.1, sys.2));
        }
        systems.push(("ha+es256".into(), hk, on(h, "/es/x", &jwt.es_token)));
        systems.push(("ha+rs256".into(), hk, on(h, "/rs/x", &jwt.rs_token)));
    }
    // The JSON POST: validated by the gateway, and proxied unvalidated by
    // each proxy (`/post` takes the gateway's catch-all route).
    let post = |port: u16, path: &str| Target {
        url: format!("https://127.0.0.1:{port}{path}"),
        headers: vec![],
        lua: post_lua.clone(),
    };
    for (name, proc_name, port, path) in [
        ("gw+valid", "gateway", PORTS[1].1, "/orders"),
        ("gw+post", "gateway", PORTS[1].1, "/post"),
        ("ha+post", "haproxy", PORTS[3].1, "/orders"),
        ("ng+post", "nginx", PORTS[4].1, "/orders"),
    ] {
        systems.push((name.into(), pid(proc_name), post(port, path)));
    }

    // Warm up every system (TLS session setup, pools).
    for (name, pgid, target) in &systems {
        let short = Opts {
            duration: 2,
            ..clone_opts(&opts)
        };
        let r = wrk(
            &short,
            target,
            *pgid,
            &work.join(format!("warmup-{name}.csv")),
        )?;
        if r.rps < 1.0 || r.errors > 0 {
            bail!(
                "{name}: warm-up failed ({} errors, {:.0} req/s)",
                r.errors,
                r.rps
            );
        }
    }
    let mut results: BTreeMap<String, Vec<Run>> = BTreeMap::new();
    for round in 0..opts.rounds {
        let mut order: Vec<usize> = (0..systems.len()).collect();
        order.rotate_left(round % systems.len());
        for i in order {
            let (name, pgid, target) = &systems[i];
            let dist = out.join(format!("latency-{name}-round{}.csv", round + 1));
            let r = wrk(&opts, target, *pgid, &dist)?;
            eprintln!(
                "round {} {name:<8} {:>9.0} req/s p50 {:>6.0}us p99 {:>6.0}us p99.9 {:>6.0}us cpu/req {} errors {}",
                round + 1,
                r.rps,
                r.pct.get("50").copied().unwrap_or(f64::NAN),
                r.pct.get("99").copied().unwrap_or(f64::NAN),
                r.pct.get("99.9").copied().unwrap_or(f64::NAN),
                r.cpu_us_per_req.map_or("-".into(), |c| format!("{c:.1}us")),
                r.errors
            );
            results.entry(name.clone()).or_default().push(r);
        }
    }
    drop(procs);
    drop(backend);

    let med = |name: &str, f: &dyn Fn(&Run) -> Option<f64>| -> f64 {
        median(
            results
                .get(name)
                .map(|v| v.iter().filter_map(f).collect())
                .unwrap_or_default(),
        )
    };
    let hp_rps = med("haproxy", &|r| Some(r.rps));
    let hp_p99 = med("haproxy", &|r| r.pct.get("99").copied());
    let hp_cpu = med("haproxy", &|r| r.cpu_us_per_req);
    let mut table = format!(
        "bench proxy: wrk -t{} -c{} -d{}s, {} rounds (medians), {} workers each{}, proxy cpus {}, load cpus {}\n",
        opts.threads,
        opts.connections,
        opts.duration,
        opts.rounds,
        opts.workers.unwrap_or(1),
        if opts.pin_workers {
            " pinned one per CPU"
        } else {
            ""
        },
        opts.proxy_cpus.as_deref().unwrap_or("any"),
        opts.load_cpus.as_deref().unwrap_or("any")
    );
    let _ = writeln!(
        table,
        "{:<8} {:>10} {:>8} {:>8} {:>8} {:>9} {:>11} {:>10} {:>11}",
        "system",
        "req/s",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "CPU us/req",
        "req/s vs HA",
        "p99 vs HA",
        "CPU vs HA"
    );
    let mut csv = String::from(
        "system,rps,p50_us,p99_us,p999_us,cpu_us_per_req,rps_vs_haproxy,p99_vs_haproxy,cpu_vs_haproxy\n",
    );
    let names: Vec<&str> = systems.iter().map(|(n, _, _)| n.as_str()).collect();
    for &name in &names {
        let rps = med(name, &|r| Some(r.rps));
        let p50 = med(name, &|r| r.pct.get("50").copied());
        let p99 = med(name, &|r| r.pct.get("99").copied());
        let p999 = med(name, &|r| r.pct.get("99.9").copied());
        let cpu = med(name, &|r| r.cpu_us_per_req);
        let _ = writeln!(
            table,
            "{name:<8} {rps:>10.0} {p50:>8.0} {p99:>8.0} {p999:>8.0} {cpu:>9.1} {:>11.2} {:>10.2} {:>11.2}",
            rps / hp_rps,
            p99 / hp_p99,
            cpu / hp_cpu
        );
        let _ = writeln!(
            csv,
            "{name},{rps:.0},{p50:.0},{p99:.0},{p999:.0},{cpu:.2},{:.3},{:.3},{:.3}",
            rps / hp_rps,
            p99 / hp_p99,
            cpu / hp_cpu
        );
    }
    let gw = |f: &dyn Fn(&Run) -> Option<f64>| (med("gateway", f), med("gw+key", f));
    let (rps_plain, rps_key) = gw(&|r| Some(r.rps));
    let (cpu_plain, cpu_key) = gw(&|r| r.cpu_us_per_req);
    let _ = writeln!(
        table,
        "API key: {:.3}x the unauthenticated gateway's req/s, {:+.1} us CPU per request",
        rps_key / rps_plain,
        cpu_key - cpu_plain
    );
    let rps = |n: &str| med(n, &|r| Some(r.rps));
    let cpu = |n: &str| med(n, &|r| r.cpu_us_per_req);
    if !opts.no_jwt {
        let _ = writeln!(
            table,
            "JWT ES256: {:.2}x HAProxy jwt_verify's req/s with the verified-token cache, {:.2}x without; RS256: {:.2}x",
            rps("gw+es256") / rps("ha+es256"),
            rps("gw+es256-nc") / rps("ha+es256"),
            rps("gw+rs256") / rps("ha+rs256"),
        );
    }
    let _ = writeln!(
        table,
        "JSON POST, validated: {:.2}x HAProxy's unvalidated req/s ({:.2}x nginx's), {:.2}x the gateway's own unvalidated POST, {:+.1} us CPU per request for the schema",
        rps("gw+valid") / rps("ha+post"),
        rps("gw+valid") / rps("ng+post"),
        rps("gw+valid") / rps("gw+post"),
        cpu("gw+valid") - cpu("gw+post"),
    );
    print!("{table}");
    plot(&out, opts.rounds, &names)?;
    std::fs::write(out.join("summary.txt"), &table)?;
    std::fs::write(out.join("summary.csv"), csv)?;
    println!("latency distributions and summary: {}", out.display());
    Ok(())
}

/// Draws the last round's latency distributions (percentile against
/// latency, log scale) into `latency.png` with gnuplot, when it is installed.
fn plot(out: &Path, rounds: usize, names: &[&str]) -> Result<()> {
    let have = Command::new("sh")
        .arg("-c")
        .arg("command -v gnuplot")
        .output()
        .map(|o| o.status.success());
    if !have.unwrap_or(false) {
        println!("no plot: gnuplot is missing (apt-get install gnuplot-nox)");
        return Ok(());
    }
    let png = out.join("latency.png");
    let mut script = format!(
        "set terminal pngcairo size 1000,600\nset output '{}'\nset datafile separator ','\n\
         set key left top\nset logscale xy\nset xlabel 'percentile'\nset ylabel 'latency (us)'\n\
         set xtics ('p0' 1, 'p50' 2, 'p90' 10, 'p99' 100, 'p99.9' 1000, 'p99.99' 10000, 'p99.999' 100000)\n\
         set title 'wrk over TLS keep-alive: latency by percentile (round {rounds})'\nset grid\nplot ",
        png.display()
    );
    let series: Vec<String> = names
        .iter()
        .map(|name| {
            format!(
                "'{}' every ::1 using (100/(100-$1)):2 with lines lw 2 title '{name}'",
                out.join(format!("latency-{name}-round{rounds}.csv"))
                    .display()
            )
        })
        .collect();
    script.push_str(&series.join(", "));
    script.push('\n');
    let status = Command::new("gnuplot")
        .stdin(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            if let Some(stdin) = child.stdin.as_mut() {
                std::io::Write::write_all(stdin, script.as_bytes())?;
            }
            child.wait()
        })
        .context("running gnuplot")?;
    if status.success() {
        println!("plot: {}", png.display());
    }
    Ok(())
}

/// HAProxy's `cpu-map` line pinning thread i to the i-th proxy CPU.
fn haproxy_cpu_map(opts: &Opts) -> String {
    if !opts.pin_workers {
        return String::new();
    }
    let all = format!(
        "0-{}",
        std::thread::available_parallelism().map_or(1, |n| n.get()) - 1
    );
    format!(
        "  cpu-map auto:1/1-{} {}",
        opts.workers.unwrap_or(1),
        opts.proxy_cpus.as_deref().unwrap_or(&all)
    )
}

fn clone_opts(o: &Opts) -> Opts {
    Opts {
        duration: o.duration,
        connections: o.connections,
        threads: o.threads,
        rounds: o.rounds,
        workers: o.workers,
        unpinned: o.unpinned,
        proxy_cpus: o.proxy_cpus.clone(),
        load_cpus: o.load_cpus.clone(),
        out: o.out.clone(),
        gateway: o.gateway.clone(),
        pin_workers: o.pin_workers,
        no_jwt: o.no_jwt,
    }
}
