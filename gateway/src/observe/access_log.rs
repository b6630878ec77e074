//! The access log: one line per request, JSON (or text) with who, when,
//! from where and what became of it, written off the request path.
//!
//! Each worker appends its lines to its own buffer ([`Lines`]) and hands a
//! full buffer (or, every 100 ms, whatever it holds) to a bounded queue; one
//! writer thread empties the queue into stderr, stdout or a file, which
//! SIGUSR1 reopens (logrotate). A slow disk fills the queue and the
//! batches that do not fit are dropped and counted, never waited for: the
//! count is logged every 10 s while it grows. Nothing here takes a lock a
//! worker could wait on.
//!
//! Never logged: keys, tokens, cookies, bodies, and the query (which may
//! carry any of them). Every string is JSON-escaped, or in text stripped of
//! control characters, so CR/LF can never forge a line.

use std::{
    fs::{File, OpenOptions},
    io::{BufWriter, Write},
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel},
    },
    time::{Duration, Instant, SystemTime},
};

/// A worker hands its buffer over at this size.
const FLUSH_BYTES: usize = 32 * 1024;
/// Batches queued at most (at `FLUSH_BYTES`, 8 MiB).
const QUEUE_BATCHES: usize = 256;

/// The line's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON object per line.
    #[default]
    Json,
    /// `client consumer "METHOD path" status reason upstream=... 12us 34B w0 id=...`.
    Text,
}

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// The gateway's stderr, beside its own log.
    Stderr,
    /// Its stdout.
    Stdout,
    /// A file, appended to, reopened on SIGUSR1.
    File(PathBuf),
}

/// What the log line says about one request.
#[derive(Debug)]
pub struct AccessRecord<'a> {
    /// The request id (also sent upstream as `x-request-id`).
    pub id: &'a str,
    /// The client (the TCP peer).
    pub peer: SocketAddr,
    /// `TLSv1.3` or `TLSv1.2`.
    pub tls: &'static str,
    /// The server name the client asked for (empty: none).
    pub sni: &'a str,
    /// The consumer id or token subject, `-` when anonymous.
    pub consumer: &'a str,
    /// The route taken, by name (`null` in the line when none).
    pub route: Option<&'a str>,
    /// Method.
    pub method: &'a str,
    /// The routed path (normalized, without `;` parameters or the query).
    pub path: &'a str,
    /// Status sent (0 if none could be).
    pub status: u16,
    /// Reason code of a refusal or failure, `-` otherwise.
    pub reason: &'a str,
    /// Request bytes read (head and body).
    pub bytes_in: u64,
    /// Response body bytes sent.
    pub bytes_out: u64,
    /// Upstream server that answered, if any.
    pub upstream: Option<SocketAddr>,
    /// Time spent on the upstream exchange, if there was one.
    pub upstream_time: Option<Duration>,
    /// Time from the full request head to the end of the response.
    pub elapsed: Duration,
    /// The worker that served it.
    pub worker: usize,
}

/// The writer side, shared by the workers.
pub struct AccessLog {
    tx: SyncSender<(Vec<u8>, u64)>,
    format: Format,
    /// Lines dropped: the queue was full or the write failed.
    pub dropped: Arc<AtomicU64>,
    /// Lines written.
    pub written: Arc<AtomicU64>,
    /// Lines queued.
    queued: AtomicU64,
    reopen: Arc<AtomicBool>,
}

impl AccessLog {
    /// Opens `output` and starts the writer thread.
    pub fn start(format: Format, output: Output) -> std::io::Result<Self> {
        let sink = Sink::open(&output)?;
        let (tx, rx) = sync_channel(QUEUE_BATCHES);
        let dropped = Arc::new(AtomicU64::new(0));
        let written = Arc::new(AtomicU64::new(0));
        let reopen = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            rx,
            sink,
            output,
            dropped: dropped.clone(),
            written: written.clone(),
            reopen: reopen.clone(),
        };
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer.run())?;
        Ok(Self {
            tx,
            format,
            dropped,
            written,
            queued: AtomicU64::new(0),
            reopen,
        })
    }

    /// Reopens a file output before the next write (SIGUSR1, after logrotate).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Relaxed);
    }

    /// Waits (at most `within`) until every queued line is written or dropped.
    pub fn settle(&self, within: Duration) {
        let until = Instant::now() + within;
        while self.written.load(Ordering::Relaxed) + self.dropped.load(Ordering::Relaxed)
            < self.queued.load(Ordering::Relaxed)
            && Instant::now() < until
        {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn send(&self, batch: Vec<u8>, lines: u64) {
        self.queued.fetch_add(lines, Ordering::Relaxed);
        match self.tx.try_send((batch, lines)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(lines, Ordering::Relaxed);
            }
        }
    }
}

/// A worker's lines not yet handed over.
#[derive(Default)]
pub struct Lines {
    buf: Vec<u8>,
    lines: u64,
}

impl Lines {
    /// Appends one request's line; hands the buffer over once it is full.
    pub fn push(&mut self, log: &AccessLog, r: &AccessRecord<'_>) {
        if self.buf.capacity() == 0 {
            self.buf.reserve(FLUSH_BYTES + 1024);
        }
        match log.format {
            Format::Json => write_json(&mut self.buf, r, SystemTime::now()),
            Format::Text => write_text(&mut self.buf, r),
        }
        self.lines += 1;
        if self.buf.len() >= FLUSH_BYTES {
            self.flush(log);
        }
    }

    /// Hands whatever is buffered to the writer.
    pub fn flush(&mut self, log: &AccessLog) {
        if self.lines == 0 {
            return;
        }
        let batch = std::mem::take(&mut self.buf);
        log.send(batch, std::mem::take(&mut self.lines));
    }
}

/// One JSON line.
pub fn write_json(out: &mut Vec<u8>, r: &AccessRecord<'_>, now: SystemTime) {
    let _ = write!(
        out,
        "{{\"ts\":\"{}\",\"id\":",
        humantime::format_rfc3339_micros(now)
    );
    string(out, r.id);
    let _ = write!(
        out,
        ",\"client\":\"{}\",\"tls\":\"{}\",\"sni\":",
        r.peer.ip(),
        r.tls
    );
    string(out, r.sni);
    out.extend_from_slice(b",\"consumer\":");
    string(out, r.consumer);
    match r.route {
        Some(name) => {
            out.extend_from_slice(b",\"route\":");
            string(out, name);
        }
        None => out.extend_from_slice(b",\"route\":null"),
    }
    out.extend_from_slice(b",\"method\":");
    string(out, r.method);
    out.extend_from_slice(b",\"path\":");
    string(out, r.path);
    let _ = write!(out, ",\"status\":{},\"reason\":", r.status);
    string(out, r.reason);
    let _ = write!(
        out,
        ",\"bytes_in\":{},\"bytes_out\":{},\"upstream\":",
        r.bytes_in, r.bytes_out
    );
    match r.upstream {
        Some(a) => {
            let _ = write!(out, "\"{a}\"");
        }
        None => out.extend_from_slice(b"null"),
    }
    match r.upstream_time {
        Some(t) => {
            let _ = write!(out, ",\"upstream_us\":{}", t.as_micros());
        }
        None => out.extend_from_slice(b",\"upstream_us\":null"),
    }
    let _ = writeln!(
        out,
        ",\"total_us\":{},\"worker\":{}}}",
        r.elapsed.as_micros(),
        r.worker
    );
}

/// A JSON string, escaped (control characters as `\u00XX`).
fn string(out: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(&mut *out, s);
}

/// One text line, control characters and spaces in fields written as `\xNN`.
pub fn write_text(out: &mut Vec<u8>, r: &AccessRecord<'_>) {
    let _ = write!(out, "{} ", r.peer.ip());
    text(out, r.consumer);
    out.extend_from_slice(b" \"");
    text(out, r.method);
    out.push(b' ');
    text(out, r.path);
    let _ = write!(out, "\" {} ", r.status);
    text(out, r.reason);
    let _ = write!(out, " upstream=");
    match r.upstream {
        Some(a) => {
            let _ = write!(out, "{a}");
        }
        None => out.push(b'-'),
    }
    let _ = write!(
        out,
        " {}us {}B w{} id=",
        r.elapsed.as_micros(),
        r.bytes_out,
        r.worker
    );
    text(out, r.id);
    out.push(b'\n');
}

fn text(out: &mut Vec<u8>, s: &str) {
    for b in s.bytes() {
        if b.is_ascii_control() || b == b'"' || b == b'\\' || b == b' ' {
            let _ = write!(out, "\\x{b:02x}");
        } else {
            out.push(b);
        }
    }
}

/// Where the writer writes.
enum Sink {
    Stderr,
    Stdout,
    File(BufWriter<File>),
}

impl Sink {
    fn open(output: &Output) -> std::io::Result<Self> {
        Ok(match output {
            Output::Stderr => Self::Stderr,
            Output::Stdout => Self::Stdout,
            Output::File(p) => Self::File(BufWriter::with_capacity(
                256 * 1024,
                OpenOptions::new().create(true).append(true).open(p)?,
            )),
        })
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Self::Stderr => std::io::stderr().lock().write_all(bytes),
            Self::Stdout => std::io::stdout().lock().write_all(bytes),
            Self::File(f) => f.write_all(bytes),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Stderr => Ok(()),
            Self::Stdout => std::io::stdout().lock().flush(),
            Self::File(f) => f.flush(),
        }
    }
}

/// The writer thread.
struct Writer {
    rx: Receiver<(Vec<u8>, u64)>,
    sink: Sink,
    output: Output,
    dropped: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
    reopen: Arc<AtomicBool>,
}

impl Writer {
    fn run(mut self) {
        let mut reported = 0;
        let mut last_report = Instant::now();
        loop {
            let mut lines = 0;
            match self.rx.recv_timeout(Duration::from_secs(1)) {
                Ok((batch, n)) => lines += self.write(&batch, n),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = self.sink.flush();
                    return;
                }
            }
            // Flush once the queue is empty, not after every batch.
            while let Ok((batch, n)) = self.rx.try_recv() {
                lines += self.write(&batch, n);
            }
            // Counted as written once it is out of our buffers.
            match self.sink.flush() {
                Ok(()) => self.written.fetch_add(lines, Ordering::Relaxed),
                Err(_) => self.dropped.fetch_add(lines, Ordering::Relaxed),
            };
            if self.reopen.swap(false, Ordering::Relaxed) {
                self.reopen_file();
            }
            let dropped = self.dropped.load(Ordering::Relaxed);
            if dropped > reported && last_report.elapsed() >= Duration::from_secs(10) {
                tracing::warn!(
                    "access log: {} lines dropped ({dropped} since start): the output is too slow",
                    dropped - reported
                );
                reported = dropped;
                last_report = Instant::now();
            }
        }
    }

    /// Writes a batch; the lines still to be flushed (0 if it failed).
    fn write(&mut self, batch: &[u8], lines: u64) -> u64 {
        match self.sink.write(batch) {
            Ok(()) => lines,
            Err(_) => {
                self.dropped.fetch_add(lines, Ordering::Relaxed);
                0
            }
        }
    }

    fn reopen_file(&mut self) {
        if let Output::File(p) = &self.output {
            match Sink::open(&self.output) {
                Ok(s) => {
                    self.sink = s;
                    tracing::info!("access log: reopened {}", p.display());
                }
                Err(e) => tracing::warn!("access log: cannot reopen {}: {e}", p.display()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record<'a>(consumer: &'a str, path: &'a str) -> AccessRecord<'a> {
        AccessRecord {
            id: "0123456789abcdef00000001",
            peer: "198.18.0.7:40000".parse().expect("addr"),
            tls: "TLSv1.3",
            sni: "api.test",
            consumer,
            route: Some("orders"),
            method: "GET",
            path,
            status: 403,
            reason: "waf.sqli",
            bytes_in: 120,
            bytes_out: 44,
            upstream: None,
            upstream_time: None,
            elapsed: Duration::from_micros(91),
            worker: 1,
        }
    }

    #[test]
    fn a_json_line_has_every_field_and_escapes_control_characters() {
        let mut out = Vec::new();
        let forged = "evil\r\n{\"status\":200}";
        write_json(
            &mut out,
            &record(forged, "/a\u{7}b"),
            SystemTime::UNIX_EPOCH,
        );
        let text = String::from_utf8(out).expect("utf8");
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v["ts"], "1970-01-01T00:00:00.000000Z");
        assert_eq!(v["consumer"], forged);
        assert_eq!(v["path"], "/a\u{7}b");
        assert_eq!(v["route"], "orders");
        assert_eq!(v["upstream"], serde_json::Value::Null);
        for k in [
            "id",
            "client",
            "tls",
            "sni",
            "method",
            "status",
            "reason",
            "bytes_in",
            "bytes_out",
            "upstream_us",
            "total_us",
            "worker",
        ] {
            assert!(v.get(k).is_some(), "{k} missing: {text}");
        }
    }

    #[test]
    fn a_text_line_cannot_be_split() {
        let mut out = Vec::new();
        write_text(&mut out, &record("a\r\nb", "/x\"y"));
        let text = String::from_utf8(out).expect("utf8");
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        assert!(text.contains("a\\x0d\\x0ab"), "{text}");
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let dir = std::env::temp_dir().join(format!("gw-access-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("access.log");
        let log = AccessLog::start(Format::Json, Output::File(path.clone())).expect("start");
        let mut lines = Lines::default();
        for _ in 0..1000 {
            lines.push(&log, &record("-", "/"));
        }
        lines.flush(&log);
        let deadline = Instant::now() + Duration::from_secs(5);
        while log.written.load(Ordering::Relaxed) + log.dropped.load(Ordering::Relaxed) < 1000
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            log.written.load(Ordering::Relaxed) + log.dropped.load(Ordering::Relaxed),
            1000
        );
        // Rotated away, then reopened: new lines land in the new file.
        std::fs::rename(&path, dir.join("access.log.1")).expect("rotate");
        log.reopen();
        std::thread::sleep(Duration::from_millis(1200));
        lines.push(&log, &record("-", "/after"));
        lines.flush(&log);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !std::fs::read_to_string(&path).is_ok_and(|t| t.contains("/after"))
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            std::fs::read_to_string(&path)
                .expect("reopened")
                .contains("/after")
        );
        // A queue nobody empties: sends never block, and drops are counted.
        let (tx, _rx) = sync_channel(1);
        let stuck = AccessLog {
            tx,
            format: Format::Json,
            dropped: Arc::new(AtomicU64::new(0)),
            written: Arc::new(AtomicU64::new(0)),
            queued: AtomicU64::new(0),
            reopen: Arc::new(AtomicBool::new(false)),
        };
        let started = Instant::now();
        for _ in 0..5 {
            stuck.send(b"x\n".to_vec(), 3);
        }
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(stuck.dropped.load(Ordering::Relaxed), 12);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
