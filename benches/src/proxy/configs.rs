//! The configurations every system runs with, written into the work
//! folder: the backend, the gateway (plain and authenticated), HAProxy and
//! nginx doing the same work, and the wrk scripts.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::{BACKEND_PORT, BACKEND_STATUS_PORT, BACKEND_TLS_PORT, GRPC_PORT, Opts, PORTS, wrk};

/// The files written, and what the clients need to send.
pub struct Files {
    /// The GET script.
    pub lua: PathBuf,
    /// The JSON POST script.
    pub post_lua: PathBuf,
    /// The backend nginx's config.
    pub backend: PathBuf,
    /// The gateway's.
    pub gateway: PathBuf,
    /// The authenticated gateway's.
    pub gateway_key: PathBuf,
    /// `gateway`'s on the baseline's port (`--baseline`).
    pub gateway_base: PathBuf,
    /// HAProxy's.
    pub haproxy: PathBuf,
    /// nginx's.
    pub nginx: PathBuf,
    /// The API key `gw+key` wants.
    pub api_key: String,
    /// The JWT routes' tokens.
    pub jwt: crate::jwt_fixture::JwtFixture,
}

/// A valid order of about 1 KiB, the POST scenarios' body.
pub fn order_body() -> String {
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

/// Writes every config into `work`.
pub fn write(work: &Path, opts: &Opts) -> Result<Files> {
    let (cert, key, _) =
        gateway::tls::self_signed(work, "127.0.0.1").map_err(|e| anyhow::anyhow!("{e}"))?;
    let combined = work.join("combined.pem");
    std::fs::write(
        &combined,
        [std::fs::read(&cert)?, std::fs::read(&key)?].concat(),
    )?;
    let lua = work.join("report.lua");
    std::fs::write(&lua, wrk::LUA)?;
    let post_lua = work.join("post.lua");
    std::fs::write(
        &post_lua,
        format!(
            "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.body = [[{}]]\n{}",
            order_body(),
            wrk::LUA
        ),
    )?;
    let w = opts.workers.unwrap_or(1);
    let hsts = "max-age=31536000; includeSubDomains";

    // The backend: nginx answering small JSON on plain HTTP, and over TLS
    // on a second port (the gateway's `gw+tls-up` route).
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
  server {{ listen 127.0.0.1:{BACKEND_TLS_PORT} ssl reuseport; default_type application/json;
    ssl_certificate {cert}; ssl_certificate_key {key}; ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:up:1m;
    location / {{ return 200 '{{"service":"bench","ok":true}}'; }} }}
  # Connections the backend accepted: how often a proxy opened one.
  server {{ listen 127.0.0.1:{BACKEND_STATUS_PORT}; location / {{ stub_status; }} }}
}}
"#,
            w = work.display(),
            cert = cert.display(),
            key = key.display()
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
# The pool's defaults: no tuning for the load (its connects per request
# are in the report).
[[upstreams]]
name = "backend"
servers = ["127.0.0.1:{BACKEND_PORT}"]
[[upstreams]]
name = "backend-tls"
servers = ["127.0.0.1:{BACKEND_TLS_PORT}"]
[upstreams.tls]
ca_file = "{cert}"
[[routes]]
path = "/orders"
methods = ["POST"]
upstream = "backend"
auth = "none"
body_schema = {ORDER_SCHEMA}
[[routes]]
path_prefix = "/tls-up"
upstream = "backend-tls"
auth = "none"
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
    let gw_base_conf = work.join("gateway-base.toml");
    std::fs::write(
        &gw_base_conf,
        std::fs::read_to_string(&gw_conf)?.replace(
            &format!("127.0.0.1:{}", PORTS[1].1),
            &format!("127.0.0.1:{}", PORTS[5].1),
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
    let jwt = crate::jwt_fixture::make(work)?;
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
  bind 127.0.0.1:{port} ssl crt {combined} alpn h2,http/1.1
  option forwardfor
  http-request set-header X-Forwarded-Proto https
  http-response set-header Strict-Transport-Security "{hsts}"
{jwt_rules}  default_backend be
backend be
  server s1 127.0.0.1:{BACKEND_PORT}
"#,
            port = PORTS[3].1,
            combined = combined.display(),
            cpu_map = haproxy_cpu_map(opts),
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
  upstream be {{ server 127.0.0.1:{BACKEND_PORT}; keepalive 1024; }}
  server {{
    listen 127.0.0.1:{port} ssl http2 reuseport;
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

    // The gRPC scenario (`bench h2`), on this build's gateway only (a
    // baseline build may not know `grpc`): its route before the catch-all.
    let text = std::fs::read_to_string(&gw_conf)?.replace(
        "[[routes]]\nupstream = \"backend\"\nauth = \"none\"",
        "[[routes]]\npath_prefix = \"/test.Echo/\"\nupstream = \"grpc\"\nauth = \"none\"\ngrpc = true\n[[routes]]\nupstream = \"backend\"\nauth = \"none\"",
    ) + &format!(
        "[[upstreams]]\nname = \"grpc\"\nservers = [\"127.0.0.1:{GRPC_PORT}\"]\nhttp2 = true\n"
    );
    std::fs::write(&gw_conf, text)?;
    Ok(Files {
        lua,
        post_lua,
        backend: backend_conf,
        gateway: gw_conf,
        gateway_key: gw_key_conf,
        gateway_base: gw_base_conf,
        haproxy: haproxy_conf,
        nginx: nginx_conf,
        api_key,
        jwt,
    })
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
