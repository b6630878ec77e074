//! A WebSocket tunnel: once the upstream answered a handshake every stage
//! let through with 101, bytes pass both ways as they come, frames never
//! reassembled or unmasked (as Envoy and pingora pass them), within
//! bounds fixed when it opened (a reload never changes an open tunnel's):
//! an idle timeout, a lifetime, a byte rate each way, one bounded read
//! buffer each way (a side that stops reading stops the other's reads:
//! backpressure, not memory), and a largest client message, read from the
//! frame headers (`frames`). When the gateway ends a tunnel itself (idle,
//! lifetime, a message too big, shutdown) each side standing between two
//! frames gets a close frame (1001 going away; 1009 for the message), the
//! other is just closed. The caps on open tunnels are `count`'s.

pub mod count;
mod frames;

pub use count::{Slot, Tunnels};

use std::{
    cell::Cell,
    sync::atomic::{AtomicBool, Ordering::Relaxed},
    time::{Duration, Instant},
};

use tokio::io::{AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use super::{upstream_conn::UpstreamConn, upstream_io::UpstreamIo};
use crate::{
    buffers,
    tls::{TlsIo, TlsStream},
};
use frames::{Frames, TooBig, client_close, server_close};

/// How often an open tunnel looks at the clock (idle, lifetime, stopping).
const TICK: Duration = Duration::from_millis(500);
/// How long the gateway's own close frames may take to go out.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// The bounds a tunnel lives under.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Closed after this long without a byte either way.
    pub idle: Duration,
    /// Closed at this instant.
    pub until: Instant,
    /// Bytes a second each way (0: no limit).
    pub rate: u64,
    /// Bytes read at a time each way.
    pub buffer: usize,
    /// The largest client message (0: not checked).
    pub max_message: u64,
}

/// How a tunnel ended, for the access log.
#[derive(Debug, Clone, Copy)]
pub struct Ended {
    /// The reason code.
    pub reason: &'static str,
    /// Bytes from the client to the upstream.
    pub up: u64,
    /// Bytes from the upstream to the client.
    pub down: u64,
}

/// Why a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    ClientClosed,
    UpstreamClosed,
    ClientError,
    UpstreamError,
    Idle,
    Lifetime,
    TooBig,
    Shutdown,
}

impl End {
    fn reason(self) -> &'static str {
        match self {
            End::ClientClosed => "websocket.client_closed",
            End::UpstreamClosed => "websocket.upstream_closed",
            End::ClientError => "websocket.client_error",
            End::UpstreamError => "websocket.upstream_error",
            End::Idle => "websocket.idle_timeout",
            End::Lifetime => "websocket.lifetime",
            End::TooBig => "websocket.message_too_big",
            End::Shutdown => "websocket.shutdown",
        }
    }

    /// The close code the gateway sends when it ends the tunnel itself.
    fn close_code(self) -> Option<u16> {
        match self {
            End::TooBig => Some(1009),
            End::Idle | End::Lifetime | End::Shutdown => Some(1001),
            _ => None,
        }
    }
}

/// A byte rate: a second's worth may pass at once, then bytes wait for
/// their time.
struct Bucket {
    rate: u64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: u64) -> Self {
        Self {
            rate,
            tokens: rate as f64,
            at: Instant::now(),
        }
    }

    async fn take(&mut self, n: usize) {
        if self.rate == 0 {
            return;
        }
        let now = Instant::now();
        let rate = self.rate as f64;
        self.tokens =
            (self.tokens + now.saturating_duration_since(self.at).as_secs_f64() * rate).min(rate);
        self.at = now;
        self.tokens -= n as f64;
        if self.tokens < 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(-self.tokens / rate)).await;
            self.tokens = 0.0;
            self.at = Instant::now();
        }
    }
}

/// One direction's state.
struct Way {
    frames: Frames,
    rate: Bucket,
    /// The stream stands between frames after what was handed to it.
    clean: bool,
    /// Bytes handed to the stream.
    bytes: u64,
}

impl Way {
    fn new(max_message: u64, rate: u64) -> Self {
        Self {
            frames: Frames::new(max_message),
            rate: Bucket::new(rate),
            clean: true,
            bytes: 0,
        }
    }

    /// Passes `data` on to `to`: judged by its frame headers, within the
    /// rate, written and flushed.
    async fn pass<W: AsyncWrite + Unpin>(
        &mut self,
        to: &mut W,
        data: &[u8],
        broken: End,
    ) -> Result<(), End> {
        self.frames.feed(data).map_err(|TooBig| End::TooBig)?;
        self.rate.take(data.len()).await;
        self.clean = false;
        to.write_all(data).await.map_err(|_| broken)?;
        // All of it is queued on the stream now, whatever the flush does.
        self.clean = self.frames.at_boundary();
        self.bytes += data.len() as u64;
        to.flush().await.map_err(|_| broken)?;
        Ok(())
    }
}

/// Runs the tunnel between the client's stream `tls` (`early`: bytes the
/// client sent after its handshake, before the 101) and the upstream
/// connection `up` (what it sent after the 101 still in it), until one
/// side ends it or a bound does.
pub async fn run(
    tls: &mut TlsStream,
    early: Vec<u8>,
    up: UpstreamConn,
    b: Bounds,
    stopping: &AtomicBool,
) -> Ended {
    let client_fd = tls.fd();
    let upstream = UpstreamIo::new(up);
    let upstream_fd = upstream.fd();
    let (mut cr, mut cw) = tokio::io::split(TlsIo::new(tls));
    let (mut ur, mut uw) = tokio::io::split(upstream);
    let activity = Cell::new(Instant::now());
    let mut to_up = Way::new(b.max_message, b.rate);
    let mut to_client = Way::new(0, b.rate);
    let end = {
        let (to_up, to_client) = (&mut to_up, &mut to_client);
        let (uw, cw) = (&mut uw, &mut cw);
        let client_side = async {
            if !early.is_empty() {
                to_up.pass(uw, &early, End::UpstreamError).await?;
            }
            let mut buf = vec![0u8; buffers::SMALL.min(b.buffer)];
            loop {
                let n = cr.read(&mut buf).await.map_err(|_| End::ClientError)?;
                widen(&mut buf, n, b.buffer);
                if n == 0 {
                    // The client is done sending: so is the upstream's
                    // side of it; the upstream's answer still comes.
                    let _ = uw.shutdown().await;
                    return Ok::<(), End>(());
                }
                activity.set(Instant::now());
                to_up.pass(uw, &buf[..n], End::UpstreamError).await?;
            }
        };
        let upstream_side = async {
            let mut buf = vec![0u8; buffers::SMALL.min(b.buffer)];
            loop {
                let Ok(n) = ur.read(&mut buf).await else {
                    return End::UpstreamError;
                };
                widen(&mut buf, n, b.buffer);
                if n == 0 {
                    return End::UpstreamClosed;
                }
                activity.set(Instant::now());
                if let Err(e) = to_client.pass(cw, &buf[..n], End::ClientError).await {
                    return e;
                }
            }
        };
        tokio::pin!(client_side, upstream_side);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut client_done = false;
        loop {
            tokio::select! {
                r = &mut client_side, if !client_done => match r {
                    Ok(()) => client_done = true,
                    Err(e) => break e,
                },
                e = &mut upstream_side => break if client_done && e == End::UpstreamClosed {
                    End::ClientClosed
                } else {
                    e
                },
                _ = tick.tick() => {
                    let now = Instant::now();
                    if stopping.load(Relaxed) {
                        break End::Shutdown;
                    }
                    if now >= b.until {
                        break End::Lifetime;
                    }
                    if now.saturating_duration_since(activity.get()) >= b.idle {
                        break End::Idle;
                    }
                }
            }
        }
    };
    if let Some(code) = end.close_code() {
        let say = async {
            if to_client.clean {
                let _ = cw.write_all(&server_close(code)).await;
                let _ = cw.flush().await;
            }
            if to_up.clean {
                // The upstream did nothing wrong: it hears "going away".
                let code = if end == End::TooBig { 1001 } else { code };
                let _ = uw.write_all(&client_close(code, mask_key())).await;
                let _ = uw.flush().await;
            }
        };
        let _ = tokio::time::timeout(CLOSE_WAIT, say).await;
    }
    // The reads still in flight complete on the shut sockets and are
    // awaited before either descriptor can close (the client's write side
    // stays open for the session's close_notify).
    shutdown(client_fd, libc::SHUT_RD);
    shutdown(upstream_fd, libc::SHUT_RDWR);
    let (mut client, mut upstream) = (cr.unsplit(cw), ur.unsplit(uw));
    let settled = tokio::time::timeout(CLOSE_WAIT, async {
        client.settle().await;
        upstream.settle().await;
    })
    .await;
    if settled.is_err() {
        // A write stuck on a client that reads nothing: cut it both ways,
        // which fails the write at once.
        shutdown(client_fd, libc::SHUT_RDWR);
        client.settle().await;
        upstream.settle().await;
    }
    Ended {
        reason: end.reason(),
        up: to_up.bytes,
        down: to_client.bytes,
    }
}

/// Grows a read buffer that a read of `n` bytes filled, to `max`.
fn widen(buf: &mut Vec<u8>, n: usize, max: usize) {
    if n == buf.len() && n < max {
        buf.resize(max, 0);
    }
}

fn shutdown(fd: std::os::fd::RawFd, how: libc::c_int) {
    // SAFETY: shutdown(2) on a socket this tunnel's connections own.
    unsafe { libc::shutdown(fd, how) };
}

/// A fresh masking key for a close frame the gateway sends upstream
/// (RFC 6455 §5.3: unpredictable).
fn mask_key() -> [u8; 4] {
    use ring::rand::SecureRandom as _;
    let mut key = [0u8; 4];
    let _ = ring::rand::SystemRandom::new().fill(&mut key);
    key
}
