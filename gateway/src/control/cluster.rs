//! Several gateways, one Redis: limits counted across them and verdicts
//! shared, with no Redis round trip on the request path.
//!
//! **Limits.** Each gateway decides from its own bucket table, as alone.
//! Workers hand every admitted request's bucket to a queue (no lock, no
//! I/O); every `cluster.sync_ms` a background thread sends the counts in
//! one pipeline, where a Lua script advances each bucket's shared GCRA
//! arrival time by what this gateway admitted and returns it; the gateway
//! then moves its own buckets up to the cluster's. So each gateway's
//! buckets hold everything the cluster admitted up to the last sync.
//! *Bound:* what the others admitted since then is not yet seen, and each
//! of them can admit at most its bucket's content plus the rate over one
//! sync interval, so over any period a key gets at most
//! `burst + rate·t + (N−1)·(burst + rate·sync)` across N gateways; the
//! excess is debt the cluster's buckets then pay back.
//!
//! **Verdicts.** A verdict placed or lifted here is published
//! (`gw:verdicts`) and stored with its expiry (`gw:verdict:ADDR`); every
//! gateway subscribes, applies what others publish at once, and reads the
//! stored ones whenever it (re)subscribes, so a new node joins with the
//! current set.
//!
//! **Redis down:** one line, local limits go on (`on_failure = "open"`) or
//! limited routes answer 503 (`"closed"`); one line again on recovery.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc::Receiver,
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};

pub use crate::stages::rate_limit::cluster_link::{Link, link};
use crate::{
    background::Background,
    clock::{Clock, Monotonic, unix_ms},
    config::ClusterSettings,
    control::verdicts::{Book, Shout},
    stages::rate_limit::{Limiter, cluster_link::Admitted},
};

/// Verdict changes kept for Redis while it is unreachable, at most.
const MAX_PENDING: usize = 10_000;
/// Buckets per Lua call.
const PER_CALL: usize = 256;
const CHANNEL: &str = "gw:verdicts";
const VERDICT_PREFIX: &str = "gw:verdict:";

/// Advances each bucket (KEYS) by ARGV[2i-1] requests of ARGV[2i] µs and
/// returns how far ahead of now each bucket's arrival time is, in µs. Now
/// is Redis's own clock, so the gateways' clocks never need to agree; the
/// times are microseconds, exact in Lua's doubles.
const ADVANCE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
for i = 1, #KEYS do
  local n = tonumber(ARGV[2 * i - 1])
  local interval = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  tat = tat + n * interval
  redis.call('SET', KEYS[i], string.format('%.0f', tat), 'PX', math.floor((tat - now) / 1000) + 1000)
  out[i] = string.format('%.0f', tat - now)
end
return out
";

/// The running threads.
pub struct Cluster {
    threads: Background,
}

/// `url` without its password, for logs.
pub fn shown(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// The seed every gateway sharing `url` hashes bucket names with.
pub fn seed(url: &str) -> [u8; 16] {
    let d = ring::digest::digest(
        &ring::digest::SHA256,
        format!("gateway rate-limit buckets\n{url}").as_bytes(),
    );
    let mut s = [0u8; 16];
    s.copy_from_slice(&d.as_ref()[..16]);
    s
}

impl Cluster {
    /// Starts syncing limits and verdicts with the Redis at `settings.redis`.
    pub fn start(
        settings: &ClusterSettings,
        limits: Arc<Limiter>,
        book: Arc<Mutex<Book>>,
        admitted: Receiver<Admitted>,
        shouts: Receiver<Shout>,
    ) -> Result<Self, String> {
        let url = settings.redis.clone().ok_or("no cluster.redis")?;
        let client =
            redis::Client::open(url.as_str()).map_err(|e| format!("cluster.redis `{url}`: {e}"))?;
        let node = format!("{:016x}", rand_u64());
        let every = Duration::from_millis(settings.sync_ms);
        let sync = Sync {
            client: client.clone(),
            url: shown(&url),
            limits,
            node: node.clone(),
            admitted,
            shouts,
            every,
            said: std::cell::Cell::new(false),
        };
        let listen = Listen { client, book, node };
        let mut threads = Background::default();
        threads
            .spawn("cluster-sync", move |stop| sync.run(stop))
            .and_then(|()| threads.spawn("cluster-verdicts", move |stop| listen.run(stop)))
            .map_err(|e| e.to_string())?;
        Ok(Self { threads })
    }

    /// Stops both threads.
    pub fn stop(self) {
        self.threads.stop();
    }
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    u64::from_le_bytes(b)
}

/// The sync thread: counts out, the cluster's arrival times and verdicts in.
struct Sync {
    client: redis::Client,
    url: String,
    limits: Arc<Limiter>,
    node: String,
    admitted: Receiver<Admitted>,
    shouts: Receiver<Shout>,
    every: Duration,
    /// Whether an outage was reported since the start.
    said: std::cell::Cell<bool>,
}

impl Sync {
    fn run(self, stop: &AtomicBool) {
        let link = self.limits.link.as_ref();
        let mut con: Option<redis::Connection> = None;
        let mut pending: Vec<Shout> = Vec::new();
        let mut retry_at = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(self.every);
            let mut counts: HashMap<u64, (u64, u64)> = HashMap::new();
            while let Ok((key, interval, n)) = self.admitted.try_recv() {
                counts.entry(key).or_insert((0, interval)).0 += u64::from(n);
            }
            // Verdict changes wait until Redis takes them (a lift lost in an
            // outage would let the stored verdict come back).
            pending.extend(self.shouts.try_iter());
            if pending.len() > MAX_PENDING {
                let drop = pending.len() - MAX_PENDING;
                pending.drain(..drop);
                tracing::warn!(
                    "{drop} verdict changes not shared: Redis has been unreachable too long"
                );
            }
            if con.is_none() && Instant::now() >= retry_at {
                match self
                    .client
                    .get_connection_with_timeout(Duration::from_secs(1))
                {
                    Ok(c) => {
                        let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                        con = Some(c);
                    }
                    Err(e) => {
                        self.went_down(&e.to_string());
                        retry_at = Instant::now() + Duration::from_secs(1);
                    }
                }
            }
            let Some(c) = con.as_mut() else {
                continue;
            };
            match self.exchange(c, &counts, &pending) {
                Ok(()) => {
                    pending.clear();
                    if let Some(l) = link {
                        l.syncs.fetch_add(1, Ordering::Relaxed);
                        if l.down.swap(false, Ordering::Relaxed) {
                            tracing::info!(
                                "Redis at {} reachable: limits and verdicts are shared across gateways",
                                self.url
                            );
                        }
                    }
                }
                Err(e) => {
                    con = None;
                    self.went_down(&e.to_string());
                    retry_at = Instant::now() + Duration::from_secs(1);
                }
            }
        }
    }

    fn went_down(&self, why: &str) {
        let Some(l) = self.limits.link.as_ref() else {
            return;
        };
        // Once per outage: when it was up, or the first time it never came up.
        let was_up = !l.down.swap(true, Ordering::Relaxed);
        if was_up || !self.said.replace(true) {
            self.said.set(true);
            let then = if l.fail_closed {
                "limited routes answer 503 until it returns (cluster.on_failure = closed)"
            } else {
                "each gateway counts its limits alone until it returns (cluster.on_failure = open)"
            };
            tracing::warn!("Redis at {} unreachable ({why}): {then}", self.url);
        }
    }

    /// One pipeline: verdict changes, then the counts; the cluster's
    /// arrival times go into the buckets.
    fn exchange(
        &self,
        con: &mut redis::Connection,
        counts: &HashMap<u64, (u64, u64)>,
        shouts: &[Shout],
    ) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        for s in shouts {
            shout(&mut pipe, &self.node, s);
        }
        let keys: Vec<(u64, u64, u64)> = counts.iter().map(|(k, (n, i))| (*k, *n, *i)).collect();
        for chunk in keys.chunks(PER_CALL) {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(ADVANCE).arg(chunk.len());
            for (k, _, _) in chunk {
                cmd.arg(format!("gw:rl:{k:016x}"));
            }
            for (_, n, interval) in chunk {
                cmd.arg(*n).arg((interval / 1000).max(1));
            }
            pipe.add_command(cmd);
        }
        if shouts.is_empty() && keys.is_empty() {
            // A heartbeat, so an outage is seen even when idle.
            pipe.cmd("PING");
            let _: Vec<String> = pipe.query(con)?;
            return Ok(());
        }
        let answers: Vec<Vec<String>> = pipe.query(con)?;
        let buckets = &self.limits.buckets;
        let now = buckets.now_ns();
        // Each answer is how far ahead of now the cluster's bucket is.
        for (chunk, ahead) in keys.chunks(PER_CALL).zip(answers) {
            for ((key, _, _), ahead) in chunk.iter().zip(ahead) {
                if let Ok(us) = ahead.parse::<u64>() {
                    buckets.raise(*key, now.saturating_add(us.saturating_mul(1000)), now);
                }
            }
        }
        Ok(())
    }
}

fn shout(pipe: &mut redis::Pipeline, node: &str, s: &Shout) {
    match s {
        Shout::Placed {
            source,
            expires_unix_ms,
            reason,
            why,
        } => {
            // How long it has left, by this gateway's clock: the others
            // count from when they get it, so clocks need not agree.
            let left = expires_unix_ms.saturating_sub(unix_ms()).max(1);
            let msg = json!({
                "node": node, "op": "add", "source": source.to_string(),
                "left_ms": left, "reason": reason, "why": why,
            })
            .to_string();
            pipe.cmd("SET")
                .arg(format!("{VERDICT_PREFIX}{source}"))
                .arg(&msg)
                .arg("PX")
                .arg(left)
                .ignore();
            pipe.cmd("PUBLISH").arg(CHANNEL).arg(&msg).ignore();
        }
        Shout::Lifted { source } => {
            let msg =
                json!({"node": node, "op": "remove", "source": source.to_string()}).to_string();
            pipe.cmd("DEL")
                .arg(format!("{VERDICT_PREFIX}{source}"))
                .ignore();
            pipe.cmd("PUBLISH").arg(CHANNEL).arg(&msg).ignore();
        }
    }
}

/// The subscriber: other gateways' verdicts into this one's book.
struct Listen {
    client: redis::Client,
    book: Arc<Mutex<Book>>,
    node: String,
}

impl Listen {
    fn run(self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            if self.subscribed(stop).is_err() {
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }

    /// Subscribes, reads the stored verdicts, then applies what is
    /// published until the connection fails or the gateway stops.
    fn subscribed(&self, stop: &AtomicBool) -> redis::RedisResult<()> {
        let mut con = self
            .client
            .get_connection_with_timeout(Duration::from_secs(1))?;
        let mut snapshot = self
            .client
            .get_connection_with_timeout(Duration::from_secs(1))?;
        let mut ps = con.as_pubsub();
        ps.subscribe(CHANNEL)?;
        ps.set_read_timeout(Some(Duration::from_millis(250)))?;
        // Subscribed first, then the stored set: nothing falls in between.
        let stored: Vec<String> = stored_keys(&mut snapshot)?;
        for key in stored {
            // What is left is Redis's own expiry, not the stored figure.
            let (v, ttl): (Option<String>, i64) = redis::pipe()
                .cmd("GET")
                .arg(&key)
                .cmd("PTTL")
                .arg(&key)
                .query(&mut snapshot)?;
            if let (Some(v), Ok(ttl)) = (v, u64::try_from(ttl)) {
                self.apply(&v, Some(ttl));
            }
        }
        while !stop.load(Ordering::Relaxed) {
            match ps.get_message() {
                Ok(msg) => {
                    if let Ok(text) = msg.get_payload::<String>() {
                        self.apply(&text, None);
                    }
                }
                Err(e) if e.is_timeout() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Applies one verdict change; `left_ms` overrides the message's own
    /// (a stored verdict's time to live).
    fn apply(&self, text: &str, left_ms: Option<u64>) {
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            return;
        };
        if v["node"].as_str() == Some(self.node.as_str()) {
            return;
        }
        let Some(source) = v["source"].as_str().and_then(|s| s.parse::<IpAddr>().ok()) else {
            return;
        };
        let Ok(mut book) = self.book.lock() else {
            return;
        };
        let from = v["node"].as_str().unwrap_or("?");
        match v["op"].as_str() {
            Some("add") => {
                let left_ms = left_ms.or(v["left_ms"].as_u64()).unwrap_or(0);
                if left_ms > 0 {
                    let reason = v["reason"].as_u64().unwrap_or(1) as u32;
                    let why = v["why"].as_str().unwrap_or("");
                    book.apply_shared(source, left_ms, reason, why, from, Monotonic.now_ns());
                }
            }
            Some("remove") => book.lift_shared(source, from),
            _ => {}
        }
    }
}

fn stored_keys(con: &mut redis::Connection) -> redis::RedisResult<Vec<String>> {
    let mut cursor: u64 = 0;
    let mut out = Vec::new();
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{VERDICT_PREFIX}*"))
            .arg("COUNT")
            .arg(1000)
            .query(con)?;
        out.extend(keys);
        if next == 0 || out.len() > gateway_common::VERDICT_CAPACITY as usize {
            return Ok(out);
        }
        cursor = next;
    }
}
