//! The admin API: plain HTTP/1.1 with JSON, on its own listener (loopback
//! by default, never the public port), one request per connection, each
//! connection on a thread of its own off the request path (32 at once at
//! most). With `admin.token_file` every request must carry
//! `Authorization: Bearer <token>`.
//!
//! - `GET /verdicts`: the live verdicts.
//! - `POST /verdicts` with `{"source": ADDR, "secs": N, "why": TEXT}`: place one.
//! - `DELETE /verdicts/ADDR`: lift one.
//! - `GET /why/ADDR`: is the source dropped, by what, since when, and its counters.
//! - `GET /limits?source=ADDR[&consumer=ID | &issuer=NAME&subject=SUB][&route=N]`:
//!   each limit's live state.
//! - `GET /cluster`: whether Redis is reachable, and syncs made.
//! - `GET /upstreams`: each upstream's circuit-breaker gauges and each
//!   server's health (active check, ejection).
//! - `POST /reload`: reload the configuration (as SIGHUP does) and say what
//!   changed, or why nothing did (422).
//! - `GET /metrics`: Prometheus text; `GET /metrics/latency.hgrm[?route=NAME]`:
//!   a latency percentile distribution.
//!
//! `request` reads one request, bounded in size and time; `client` is the
//! other end, for `gateway verdicts|why|limits|reload`.

pub mod client;
mod request;

pub use request::fuzz_head;

use std::{
    io::Write,
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
        mpsc::SyncSender,
    },
    time::Duration,
};

use gateway_common::Outcome;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use request::{CLIENT_TIMEOUT, Request, read_request};

use crate::{
    background::Background,
    clock::{Clock, Monotonic},
    config::AdminSettings,
    control::verdicts::{Book, BookError},
    observe::metrics,
    respond::reason_phrase,
    route::Route,
    stages::rate_limit::{self, Caller},
    worker::Shared,
};

/// How long `POST /reload` waits for the main thread's answer (the
/// client waits 10 s).
const RELOAD_WAIT: Duration = Duration::from_secs(8);

/// The running admin API.
pub struct AdminServer {
    /// The address it listens on (the port is known after binding `:0`).
    pub addr: SocketAddr,
    thread: Background,
    /// Connections being served.
    active: Arc<AtomicUsize>,
}

/// The admin token from `admin.token_file`, checked as `run` needs it (at
/// least 16 characters); `None` without a file.
pub fn read_token(settings: &AdminSettings) -> Result<Option<String>, String> {
    let Some(p) = &settings.token_file else {
        return Ok(None);
    };
    let t =
        std::fs::read_to_string(p).map_err(|e| format!("admin.token_file {}: {e}", p.display()))?;
    let t = t.trim().to_owned();
    if t.len() < 16 {
        return Err(format!(
            "admin.token_file {}: the token needs at least 16 characters ({} here)",
            p.display(),
            t.len()
        ));
    }
    Ok(Some(t))
}

impl AdminServer {
    /// Binds `settings.listen` and serves from a thread.
    pub fn start(
        settings: &AdminSettings,
        book: Arc<Mutex<Book>>,
        shared: Arc<Shared>,
        reloads: SyncSender<crate::reload::Ask>,
    ) -> Result<Option<Self>, String> {
        let Some(listen) = settings.listen else {
            return Ok(None);
        };
        let token = read_token(settings)?;
        let listener = TcpListener::bind(listen)
            .map_err(|e| format!("admin API: cannot listen on {listen}: {e} (admin.listen)"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let api = Arc::new(Api {
            book,
            shared,
            token,
            hosts: settings.hosts.clone(),
            reloads,
        });
        let active = Arc::new(AtomicUsize::new(0));
        let serving = active.clone();
        let mut thread = Background::default();
        thread
            .spawn("admin", move |stop| {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => accept(&api, &serving, stream),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            })
            .map_err(|e| format!("starting the admin API: {e}"))?;
        Ok(Some(Self {
            addr,
            thread,
            active,
        }))
    }

    /// Stops accepting, and waits for the requests being served (each is
    /// bounded in time) so nothing holds the verdict book after.
    pub fn stop(self) {
        self.thread.stop();
        let until = std::time::Instant::now() + CLIENT_TIMEOUT + RELOAD_WAIT;
        while self.active.load(Ordering::Acquire) > 0 && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Serves `stream` on a thread of its own, while fewer than
/// [`MAX_CONNECTIONS`] are served: a client that sends nothing holds only
/// its own thread, for the pre-auth read deadline at most. Beyond the cap,
/// an immediate 503.
fn accept(api: &Arc<Api>, active: &Arc<AtomicUsize>, stream: TcpStream) {
    if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
        active.fetch_sub(1, Ordering::AcqRel);
        let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
        let (status, v) = error(503, "admin.busy", "too many admin connections; try again");
        write_answer(&stream, status, "application/json", &v.to_string());
        return;
    }
    let (api, done) = (api.clone(), Done(active.clone()));
    let spawned = std::thread::Builder::new()
        .name("admin-conn".into())
        .spawn(move || {
            let _done = done;
            api.serve(stream);
        });
    if let Err(e) = spawned {
        tracing::warn!("admin API: cannot start a thread for a connection: {e}");
    }
}

/// Counts a connection's thread out when it ends (also when it panics,
/// or was never started).
struct Done(Arc<AtomicUsize>);

impl Drop for Done {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Admin connections served at once at most.
const MAX_CONNECTIONS: usize = 32;

fn write_answer(mut stream: &TcpStream, status: u16, ctype: &str, body: &str) {
    let head = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        reason_phrase(status),
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body.as_bytes());
}

struct Api {
    book: Arc<Mutex<Book>>,
    shared: Arc<Shared>,
    token: Option<String>,
    /// Names accepted in `Host` besides addresses and `localhost`.
    hosts: Vec<String>,
    reloads: SyncSender<crate::reload::Ask>,
}

impl Api {
    /// A `Host` naming an address, `localhost` or one of `admin.hosts`: a
    /// DNS name of another would be a rebinding page's.
    fn host_ok(&self, req: &Request) -> bool {
        request::host_is_local(&req.host) || self.hosts.contains(&req.host)
    }
}

fn error(status: u16, reason: &str, detail: impl Into<String>) -> (u16, Value) {
    (
        status,
        json!({"error": reason_phrase(status), "reason": reason, "detail": detail.into()}),
    )
}

fn address(text: &str) -> Result<IpAddr, (u16, Value)> {
    text.parse().map_err(|_| {
        error(
            400,
            "admin.address",
            format!("`{text}` is not an IP address"),
        )
    })
}

impl Api {
    fn serve(&self, stream: TcpStream) {
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_write_timeout(Some(CLIENT_TIMEOUT));
        const JSON: &str = "application/json";
        let (status, ctype, body) = match read_request(&mut &stream) {
            Ok(req) => match self.text(&req) {
                Some((status, ctype, text)) => (status, ctype, text),
                None => {
                    let (status, v) = self.answer(&req);
                    (status, JSON, v.to_string())
                }
            },
            Err((status, reason)) => {
                let (status, v) = error(status, reason, "could not read the request");
                (status, JSON, v.to_string())
            }
        };
        write_answer(&stream, status, ctype, &body);
    }

    /// The text answers, `GET /metrics` and `GET /metrics/latency.hgrm
    /// [?route=NAME]`, to a request the JSON API's checks let through
    /// (`None`: not one of them, or refused: `answer` says why).
    fn text(&self, req: &Request) -> Option<(u16, &'static str, String)> {
        if req.method != "GET"
            || !req.path.starts_with("/metrics")
            || req.from_browser
            || !self.host_ok(req)
            || !self.authorized(req)
        {
            return None;
        }
        let tally = self.shared.metrics.merged();
        match req.path.as_str() {
            "/metrics" => {
                let snap = self.shared.published.current();
                let names = metrics::Names {
                    routes: snap
                        .routes
                        .iter()
                        .map(|r| r.settings.name.clone())
                        .collect(),
                    limits: snap
                        .cfg
                        .rate_limit
                        .limits
                        .iter()
                        .map(|l| l.name.clone())
                        .collect(),
                    upstreams: snap
                        .cfg
                        .upstreams
                        .iter()
                        .map(|u| {
                            (
                                u.name.clone(),
                                u.servers.iter().map(|a| a.to_string()).collect(),
                            )
                        })
                        .collect(),
                };
                let mut extra = metrics::Extra::default();
                if let Some(log) = &self.shared.access_log {
                    extra.log_written = log.written.load(Ordering::Relaxed);
                    extra.log_dropped = log.dropped.load(Ordering::Relaxed);
                }
                if let Ok(book) = self.book.lock() {
                    extra.verdicts_live = book.list(Monotonic.now_ns()).len() as u64;
                    extra.verdicts_issued = book.issued;
                    extra.verdicts_overflowed = book.overflowed;
                    extra.verdicts_not_placed = book.not_placed;
                    if let Some(Ok(c)) = book.enforcement.counters() {
                        extra.xdp = Outcome::ALL.iter().map(|o| (o.name(), c.get(*o))).collect();
                    }
                }
                let mut body = metrics::render(&tally, &extra, &names);
                crate::proxy::health::render_metrics(
                    &self.shared.health.all(),
                    Monotonic.now_ns(),
                    &mut body,
                );
                self.shared.tunnels.render_metrics(&mut body);
                Some((200, "text/plain; version=0.0.4; charset=utf-8", body))
            }
            "/metrics/latency.hgrm" => {
                // By the route's label: its name, or its position when unnamed.
                let route = req.query.strip_prefix("route=").map(|name| {
                    let snap = self.shared.published.current();
                    snap.routes
                        .iter()
                        .find(|r| r.settings.name == name)
                        .map(|r| r.index as u32)
                });
                let mut all = tally.latency.values().cloned().reduce(|mut a, b| {
                    let _ = a.add(&b);
                    a
                });
                if let Some(r) = route {
                    all = r.and_then(|r| tally.latency.get(&r).cloned());
                }
                match all {
                    Some(h) => Some((200, "text/plain; charset=utf-8", metrics::hgrm(&h))),
                    None => Some((
                        404,
                        "text/plain; charset=utf-8",
                        "no requests recorded for that route yet\n".into(),
                    )),
                }
            }
            _ => None,
        }
    }

    /// Asks the main thread to reload and waits for its answer.
    fn reload(&self) -> (u16, Value) {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        if self.reloads.try_send(tx).is_err() {
            return error(503, "admin.busy", "reloads are already queued; try again");
        }
        // Wakes the main thread, which waits for signals between ticks.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::SIGUSR2);
        match rx.recv_timeout(RELOAD_WAIT) {
            Ok(Ok(done)) => (200, json!({"reloaded": done.source, "changes": done.lines})),
            Ok(Err(why)) => error(422, "admin.reload", why),
            Err(_) => error(
                503,
                "admin.reload_pending",
                "the reload did not finish in time; see the gateway's log",
            ),
        }
    }

    fn authorized(&self, req: &Request) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let given = req
            .authorization
            .as_deref()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map_or("", |(_, t)| t.trim());
        bool::from(given.as_bytes().ct_eq(token.as_bytes()))
    }

    fn answer(&self, req: &Request) -> (u16, Value) {
        // A web page the operator has open can reach loopback too: no
        // browser-made request is served, and no Host but an address.
        if req.from_browser || !self.host_ok(req) {
            return error(
                403,
                "admin.browser",
                "the admin API answers the gateway command and scripts, not web pages",
            );
        }
        if !self.authorized(req) {
            return error(
                401,
                "admin.token",
                "this admin API needs `Authorization: Bearer <token>`",
            );
        }
        if req.method == "POST" && !req.json {
            return error(
                415,
                "admin.content_type",
                "send the body as application/json",
            );
        }
        let now = Monotonic.now_ns();
        let Ok(mut book) = self.book.lock() else {
            return error(500, "admin.internal", "the verdict book is unusable");
        };
        let segments: Vec<&str> = req.path.trim_matches('/').split('/').collect();
        let result = match (req.method.as_str(), segments.as_slice()) {
            ("GET", ["verdicts"]) => Ok((
                200,
                json!({"verdicts": book.list(now).iter().map(|e| e.json()).collect::<Vec<_>>()}),
            )),
            ("POST", ["verdicts"]) => add(&mut book, &req.body, now),
            ("DELETE", ["verdicts", ip]) => address(ip).map(|ip| {
                if book.remove(ip) {
                    (200, json!({"removed": ip.to_string()}))
                } else {
                    error(404, "admin.no_verdict", format!("{ip} holds no verdict"))
                }
            }),
            ("GET", ["why", ip]) => address(ip).map(|ip| (200, book.why(ip, now))),
            ("GET", ["upstreams"]) => Ok((
                200,
                json!({"upstreams": self.shared.health.all().iter().map(|u| u.json(now)).collect::<Vec<_>>()}),
            )),
            ("GET", ["cluster"]) => Ok(match &self.shared.limits.link {
                None => (200, json!({"redis": null})),
                Some(l) => (
                    200,
                    json!({
                        "redis": "configured",
                        "up": !l.down.load(Ordering::Relaxed),
                        "syncs": l.syncs.load(Ordering::Relaxed),
                        "dropped": l.dropped(),
                    }),
                ),
            }),
            ("GET", ["limits"]) => {
                drop(book);
                self.limits(&req.query)
            }
            ("POST", ["reload"]) => {
                // Not under the book's lock: the reload takes it.
                drop(book);
                Ok(self.reload())
            }
            (
                _,
                ["verdicts"]
                | ["verdicts", _]
                | ["why", _]
                | ["limits"]
                | ["upstreams"]
                | ["reload"],
            ) => Ok(error(
                405,
                "admin.method",
                format!("{} is not served here", req.method),
            )),
            _ => Ok(error(
                404,
                "admin.not_found",
                format!("no {} here", req.path),
            )),
        };
        result.unwrap_or_else(|e| e)
    }

    fn limits(&self, query: &str) -> Result<(u16, Value), (u16, Value)> {
        let mut source = None;
        let mut consumer = None;
        let mut issuer = None;
        let mut subject = None;
        let mut route = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "source" => source = Some(address(v)?),
                "consumer" => consumer = Some(v.to_owned()),
                "issuer" => issuer = Some(v.to_owned()),
                "subject" => subject = Some(v.to_owned()),
                "route" => route = Some(v),
                _ => {
                    return Err(error(
                        400,
                        "admin.query",
                        format!("unknown parameter `{k}`"),
                    ));
                }
            }
        }
        let source = source.ok_or_else(|| error(400, "admin.query", "give source=ADDRESS"))?;
        // An API key's consumer, or a token's subject with its issuer:
        // limits count them apart.
        let who = match (consumer.as_deref(), issuer.as_deref(), subject.as_deref()) {
            (Some(id), None, None) => Some(rate_limit::Consumer::Key(id)),
            (None, Some(issuer), Some(subject)) => {
                Some(rate_limit::Consumer::Subject { issuer, subject })
            }
            (None, None, None) => None,
            _ => {
                return Err(error(
                    400,
                    "admin.query",
                    "give consumer=ID (an API key's consumer), or issuer=NAME and subject=SUB (a token's)",
                ));
            }
        };
        let snap = self.shared.published.current();
        let settings = &snap.cfg.rate_limit;
        // A route by its name (a route without one is named by its position).
        let routes: Vec<&Route> = match route {
            Some(name) => match snap.routes.iter().find(|r| r.settings.name == name) {
                Some(r) => vec![r],
                None => {
                    return Err(error(
                        404,
                        "admin.route",
                        format!("no route named `{name}`"),
                    ));
                }
            },
            None => snap.routes.iter().collect(),
        };
        let mut out = Vec::new();
        for route in routes {
            let who = Caller {
                source: rate_limit::source_key(source, settings.ipv6_prefix),
                consumer: who,
                route: route.index,
            };
            let live = rate_limit::live(&self.shared.limits.buckets, settings, &who);
            for i in &route.settings.rate_limits {
                let (_, c) = live[*i];
                let l = &settings.limits[*i];
                out.push(json!({
                    "route": route.settings.name,
                    "limit": l.name,
                    "key": l.key.to_string(),
                    "rate": format!("{}/{}s", l.count, l.window_secs),
                    "burst": l.burst,
                    "remaining": c.remaining,
                    "full_in_ms": c.reset_ns / 1_000_000,
                    "retry_in_ms": c.retry_ns / 1_000_000,
                }));
            }
        }
        Ok((
            200,
            json!({"source": source.to_string(), "consumer": consumer, "issuer": issuer, "subject": subject, "limits": out}),
        ))
    }
}

fn add(book: &mut Book, body: &[u8], now: u64) -> Result<(u16, Value), (u16, Value)> {
    // Strict: a key twice (`"secs":60,"secs":31536000`) would mean
    // whichever one a reader of the audit trail believes; an unknown key
    // (`"sec"`) is a mistake to point out, not to ignore.
    use crate::stages::auth::jwt::strict_json::{NotStrict, object};
    let v = Value::Object(object(body).map_err(|e| match e {
        NotStrict::Duplicate => error(400, "admin.json", "a key appears twice in the body"),
        NotStrict::Malformed => error(400, "admin.json", "the body is not one JSON object"),
    })?);
    if let Some(k) = v.as_object().and_then(|o| {
        o.keys()
            .find(|k| !["source", "secs", "why"].contains(&k.as_str()))
    }) {
        return Err(error(
            400,
            "admin.json",
            format!("unknown key `{k}` (known: source, secs, why)"),
        ));
    }
    let source = v["source"]
        .as_str()
        .ok_or_else(|| error(400, "admin.json", "give \"source\": an IP address"))
        .and_then(address)?;
    let secs = v["secs"].as_u64().ok_or_else(|| {
        error(
            400,
            "admin.json",
            "give \"secs\": a whole number of seconds",
        )
    })?;
    let why = v["why"].as_str().unwrap_or("");
    if why.len() > 256 || why.chars().any(char::is_control) {
        return Err(error(
            400,
            "admin.json",
            "\"why\" is at most 256 printable characters",
        ));
    }
    match book.add(source, secs, why, now) {
        Ok(()) => Ok((
            201,
            json!({"source": source.to_string(), "expires_in_secs": secs}),
        )),
        Err(e @ (BookError::Length | BookError::Allowed(_) | BookError::Own(_))) => {
            Err(error(400, "admin.verdict", e.to_string()))
        }
        Err(e @ BookError::Kernel(_)) => Err(error(500, "admin.kernel", e.to_string())),
    }
}
