//! An open-loop load generator: requests go out at a constant rate on a
//! fixed schedule whether or not earlier ones were answered, and each
//! latency is measured from when its request was *due* (wrk2's correction
//! for coordinated omission), into an HdrHistogram of every request.
//!
//! Why our own: wrk2 is not packaged for Debian, and `oha` needs a long
//! cargo build and reports percentiles rather than the histogram. This is
//! wrk2's schedule (one connection = one fixed-interval stream) over rustls.

use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use hdrhistogram::Histogram;

/// Where the load goes and what it sends.
#[derive(Clone)]
pub struct Target {
    /// 127.0.0.1 port.
    pub port: u16,
    /// TLS (certificates unchecked: this measures, it does not trust).
    pub tls: bool,
    /// The whole request, sent as is on every turn.
    pub request: Vec<u8>,
}

/// How hard and how long.
#[derive(Clone, Debug)]
pub struct Load {
    /// Requests per second, all connections together.
    pub rate: u64,
    /// Keep-alive connections, each a thread with its own schedule.
    pub connections: usize,
    /// How long requests are scheduled.
    pub duration: Duration,
    /// CPU list the generator's threads are pinned to.
    pub cpus: Option<String>,
}

/// What one run measured.
pub struct Outcome {
    /// Latency of every answered request, from its due time, in µs.
    pub hist: Histogram<u64>,
    /// Requests answered.
    pub answered: u64,
    /// Requests that failed (connection lost, malformed answer, timeout,
    /// a status of 400 or more), as wrk counts them.
    pub errors: u64,
    /// How long requests were scheduled.
    pub elapsed: Duration,
}

impl Outcome {
    /// Answered requests per second of the schedule.
    pub fn rps(&self) -> f64 {
        self.answered as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A new latency histogram: 1 µs to 60 s at 3 significant digits.
pub fn histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 60_000_000, 3).context("histogram bounds")
}

/// Runs the schedule and returns every latency.
pub fn run(target: &Target, load: &Load) -> Result<Outcome> {
    if load.rate == 0 || load.connections == 0 {
        bail!("open loop needs a rate and connections above zero");
    }
    let conns = load.connections.min(load.rate as usize).max(1);
    let interval = Duration::from_secs_f64(conns as f64 / load.rate as f64);
    let tls = Arc::new(crate::client::any_cert_config()?);
    // Every thread connects first, then the schedule starts for all at once.
    let start = Instant::now() + Duration::from_millis(300);
    let end = start + load.duration;
    let threads: Vec<_> = (0..conns)
        .map(|k| {
            let (target, load, tls) = (target.clone(), load.clone(), tls.clone());
            let offset = interval.mul_f64(k as f64 / conns as f64);
            std::thread::spawn(move || {
                stream_on_schedule(&target, &load, tls, start + offset, interval, end)
            })
        })
        .collect();
    let mut out = Outcome {
        hist: histogram()?,
        answered: 0,
        errors: 0,
        elapsed: load.duration,
    };
    for t in threads {
        let one = t
            .join()
            .map_err(|_| anyhow::anyhow!("generator thread panicked"))??;
        out.hist.add(&one.hist).context("merging histograms")?;
        out.answered += one.answered;
        out.errors += one.errors;
    }
    Ok(out)
}

/// A byte stream, plain or TLS.
pub(crate) trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// A keep-alive connection to `target`.
pub(crate) fn connect(target: &Target, tls: &Arc<rustls::ClientConfig>) -> Result<Box<dyn Stream>> {
    let tcp = TcpStream::connect(("127.0.0.1", target.port))
        .with_context(|| format!("connecting to 127.0.0.1:{}", target.port))?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    if !target.tls {
        return Ok(Box::new(tcp));
    }
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let conn = rustls::ClientConnection::new(tls.clone(), name)?;
    Ok(Box::new(rustls::StreamOwned::new(conn, tcp)))
}

/// One connection's fixed-interval stream of requests.
fn stream_on_schedule(
    target: &Target,
    load: &Load,
    tls: Arc<rustls::ClientConfig>,
    first: Instant,
    interval: Duration,
    end: Instant,
) -> Result<Outcome> {
    if let Some(cpus) = &load.cpus {
        crate::cpu::pin(cpus)?;
    }
    // Sleep to the due time, not 50 µs past it (the default timer slack).
    // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's slack.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1u64, 0u64, 0u64, 0u64) };
    let mut out = Outcome {
        hist: histogram()?,
        answered: 0,
        errors: 0,
        elapsed: Duration::ZERO,
    };
    let mut stream = Some(connect(target, &tls)?);
    let mut buf = vec![0u8; 16 * 1024];
    for i in 0u32.. {
        let due = first + interval * i;
        if due >= end {
            break;
        }
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let Some(mut s) = stream.take().or_else(|| connect(target, &tls).ok()) else {
            out.errors += 1;
            continue;
        };
        match exchange(&mut *s, &target.request, &mut buf) {
            Ok(status) if status < 400 => {
                let us = due.elapsed().as_micros().clamp(1, 60_000_000) as u64;
                out.hist.saturating_record(us);
                out.answered += 1;
                stream = Some(s);
            }
            Ok(_) => {
                out.errors += 1;
                stream = Some(s);
            }
            Err(_) => out.errors += 1,
        }
    }
    Ok(out)
}

/// Sends one request and reads its response (Content-Length framed, or
/// none for a body-less status); returns its status.
pub(crate) fn exchange(s: &mut dyn Stream, request: &[u8], buf: &mut [u8]) -> Result<u16> {
    s.write_all(request)?;
    s.flush()?;
    let mut have = 0;
    let (head_len, body_len) = loop {
        if have == buf.len() {
            bail!("response head over {} bytes", buf.len());
        }
        let n = s.read(&mut buf[have..])?;
        if n == 0 {
            bail!("connection closed mid-response");
        }
        have += n;
        if let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
            break (end + 4, content_length(&buf[..end])?);
        }
    };
    let status = buf
        .get(9..12)
        .and_then(|d| std::str::from_utf8(d).ok()?.parse::<u16>().ok())
        .context("no status in the response")?;
    let mut left = (head_len + body_len).saturating_sub(have);
    while left > 0 {
        let cap = buf.len();
        let n = s.read(&mut buf[..left.min(cap)])?;
        if n == 0 {
            bail!("connection closed mid-body");
        }
        left -= n;
    }
    Ok(status)
}

/// The Content-Length of a response head; 0 when it has none.
fn content_length(head: &[u8]) -> Result<usize> {
    let head = std::str::from_utf8(head).context("response head is not UTF-8")?;
    for line in head.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.eq_ignore_ascii_case("content-length") {
            return value.trim().parse().context("bad Content-Length");
        }
        if name.eq_ignore_ascii_case("transfer-encoding") {
            bail!("chunked responses are not supported by the open-loop generator");
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stalled_server_shows_in_the_latency_of_requests_that_waited() {
        // One connection, 100 req/s for 1 s; the server answers the first
        // request only after 300 ms. A closed loop would record one slow
        // request; the open loop charges the wait to the ~30 requests that
        // were due during it.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            let (mut c, _) = listener.accept().expect("accept");
            let mut buf = [0u8; 4096];
            let mut first = true;
            while let Ok(n) = c.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if std::mem::take(&mut first) {
                    std::thread::sleep(Duration::from_millis(300));
                }
                let answers = buf[..n].windows(4).filter(|w| w == b"\r\n\r\n").count();
                for _ in 0..answers {
                    let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                }
            }
        });
        let target = Target {
            port,
            tls: false,
            request: b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        };
        let load = Load {
            rate: 100,
            connections: 1,
            duration: Duration::from_secs(1),
            cpus: None,
        };
        let out = run(&target, &load).expect("run");
        assert_eq!(out.errors, 0);
        assert!(out.answered >= 95, "{}", out.answered);
        // The first request waited 300 ms; the ones due while it waited
        // queued behind it, so the 80th percentile is still well over 0.
        let p_first = out.hist.value_at_quantile(1.0);
        assert!(p_first >= 290_000, "max {p_first} us");
        let waited = out.hist.count_between(100_000, 60_000_000);
        assert!(
            waited >= 15,
            "only {waited} requests charged with the stall"
        );
    }

    #[test]
    fn response_framing_is_read_from_the_head() {
        assert_eq!(
            content_length(b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\nX: y").expect("test setup"),
            12
        );
        assert_eq!(
            content_length(b"HTTP/1.1 204 No Content").expect("test setup"),
            0
        );
        assert!(content_length(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked").is_err());
    }
}
