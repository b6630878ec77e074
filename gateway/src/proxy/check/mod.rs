//! Active health checks: one thread, off the request path, asks every
//! server of every upstream with a `health_check` for `GET path` on a
//! connection of its own (an HTTP/2 upstream: the gRPC health protocol,
//! `grpc`), every `interval_ms`. `unhealthy_threshold`
//! failures in a row (no connection, no status line within `timeout_ms`,
//! or a status not in `expect_status`) take the server out for every
//! worker at once; `healthy_threshold` passes bring it back. Servers start
//! in, and the first check runs at once.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

mod grpc;

use super::health::Registry;
use crate::{background::Background, config::HealthCheck};

/// How often the thread looks for checks that are due.
const TICK: Duration = Duration::from_millis(50);

/// The running checker.
pub struct Checker(Background);

impl Checker {
    /// Starts checking the upstreams `registry` holds (it follows reloads).
    pub fn start(registry: Arc<Registry>) -> std::io::Result<Self> {
        let mut b = Background::default();
        b.spawn("health-check", move |stop| run(&registry, stop))?;
        Ok(Self(b))
    }

    /// Stops, without waiting for a check in progress (it holds only its
    /// own socket).
    pub fn stop(self) {
        self.0.release();
    }
}

/// One server's run of results, kept by the checker thread.
struct Streak {
    due: Instant,
    passes: u32,
    fails: u32,
}

fn run(registry: &Registry, stop: &AtomicBool) {
    // Built at the first gRPC check: h2's client needs a reactor.
    let mut runtime = None;
    let mut streaks: HashMap<(String, SocketAddr), Streak> = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        let all = registry.all();
        // Forget servers no longer configured.
        streaks.retain(|(name, addr), _| {
            all.iter()
                .any(|u| u.name == *name && u.servers.iter().any(|s| s.addr == *addr))
        });
        for u in &all {
            let Some(check) = u.check() else { continue };
            for (i, s) in u.servers.iter().enumerate() {
                let now = Instant::now();
                let st = streaks.entry((u.name.clone(), s.addr)).or_insert(Streak {
                    due: now,
                    passes: 0,
                    fails: 0,
                });
                if st.due > now {
                    continue;
                }
                st.due = now + Duration::from_millis(check.interval_ms);
                let result = match &check.grpc_service {
                    None => probe(s.addr, &check, u.tls_for(s.addr)),
                    Some(service) => grpc::probe(
                        &mut runtime,
                        s.addr,
                        service,
                        Duration::from_millis(check.timeout_ms),
                        u.tls_for(s.addr),
                    ),
                };
                match result {
                    Ok(()) => {
                        s.checks_passed.fetch_add(1, Ordering::Relaxed);
                        st.passes += 1;
                        st.fails = 0;
                        if st.passes >= check.healthy_threshold && u.set_checked(i, true) {
                            tracing::info!(
                                "upstream {} server {}: health check passed {} times in a row: back in",
                                u.name,
                                s.addr,
                                st.passes
                            );
                        }
                    }
                    Err(why) => {
                        s.checks_failed.fetch_add(1, Ordering::Relaxed);
                        st.fails += 1;
                        st.passes = 0;
                        if st.fails >= check.unhealthy_threshold && u.set_checked(i, false) {
                            tracing::warn!(
                                "upstream {} server {}: health check failed {} times in a row ({why}): taken out",
                                u.name,
                                s.addr,
                                st.fails
                            );
                        }
                    }
                }
                if stop.load(Ordering::Relaxed) {
                    return;
                }
            }
        }
        std::thread::sleep(TICK);
    }
}

/// One check of `addr` (over TLS on a TLS hop): `Ok` when it answers an
/// expected status in time.
fn probe(
    addr: SocketAddr,
    check: &HealthCheck,
    tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
) -> Result<(), String> {
    let timeout = Duration::from_millis(check.timeout_ms);
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("no answer within {} ms", check.timeout_ms))
    };
    let tcp = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    // Set before the handshake, which runs inside the first write.
    tcp.set_write_timeout(Some(left()?))
        .and_then(|()| tcp.set_read_timeout(Some(left().unwrap_or(timeout))))
        .map_err(|e| e.to_string())?;
    let sni = tls.as_ref().map(|(_, n)| n.clone());
    let mut s: Box<dyn ReadWrite> = match tls {
        None => Box::new(tcp),
        Some((client, name)) => {
            let conn =
                rustls::ClientConnection::new(client, name).map_err(|e| format!("TLS: {e}"))?;
            Box::new(rustls::StreamOwned::new(conn, tcp))
        }
    };
    let host = check.host.clone().unwrap_or_else(|| match &sni {
        Some(rustls::pki_types::ServerName::DnsName(n)) => n.as_ref().to_owned(),
        _ => addr.to_string(),
    });
    let req = format!(
        "GET {} HTTP/1.1\r\nhost: {host}\r\nuser-agent: gateway-health-check\r\nconnection: close\r\n\r\n",
        check.path
    );
    s.write_all(req.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = [0u8; 512];
    let mut len = 0;
    while !buf[..len].windows(2).any(|w| w == b"\r\n") {
        s.tcp()
            .set_read_timeout(Some(left()?))
            .map_err(|e| e.to_string())?;
        match s.read(&mut buf[len..]) {
            Ok(0) => return Err("closed before a status line".into()),
            Ok(n) => len += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!("no answer within {} ms", check.timeout_ms));
            }
            Err(e) => return Err(format!("read: {e}")),
        }
        if len == buf.len() {
            return Err("no status line in the first 512 bytes".into());
        }
    }
    let status = status_of(&buf[..len]).ok_or("not an HTTP/1.x status line")?;
    if check.expect_status.contains(&status) {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}

/// A check's connection, plain or TLS.
trait ReadWrite: Read + Write {
    fn tcp(&self) -> &TcpStream;
}

impl ReadWrite for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl ReadWrite for rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    fn tcp(&self) -> &TcpStream {
        &self.sock
    }
}

/// The status code of `HTTP/1.x NNN ...`.
fn status_of(head: &[u8]) -> Option<u16> {
    let rest = head.strip_prefix(b"HTTP/1.")?;
    let code = rest.get(2..5)?;
    if rest.get(1) != Some(&b' ') || !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(status_of(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(status_of(b"HTTP/1.0 503 x\r\n"), Some(503));
        assert_eq!(status_of(b"HTTP/2 200\r\n"), None);
        assert_eq!(status_of(b"HTTP/1.1 20\r\n"), None);
        assert_eq!(status_of(b"SSH-2.0-OpenSSH\r\n"), None);
    }
}
