//! Memory per idle keep-alive TLS connection: the growth of a proxy's
//! resident memory while `n` connections, each after one request, sit idle,
//! divided by `n`.

use std::{sync::Arc, time::Duration};

use anyhow::{Context as _, Result};

use crate::{cpu::group_rss_kib, openloop};

/// Opens `n` keep-alive TLS connections to 127.0.0.1:`port`, sends one
/// request on each, and returns the KiB of RSS the process group `pgid`
/// grew by per connection while they are all open and idle.
pub fn per_connection_kib(pgid: u32, port: u16, n: usize) -> Result<f64> {
    let cfg = Arc::new(crate::client::any_cert_config()?);
    let target = openloop::Target {
        port,
        tls: true,
        request: format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").into_bytes(),
    };
    // Settle what starting and earlier scenarios left behind.
    std::thread::sleep(Duration::from_millis(300));
    let before = group_rss_kib(pgid);
    let mut open = Vec::with_capacity(n);
    let mut buf = vec![0u8; 16 * 1024];
    for i in 0..n {
        let mut s = openloop::connect(&target, &cfg)
            .with_context(|| format!("idle connection {i} of {n}"))?;
        let status = openloop::exchange(&mut *s, &target.request, &mut buf)
            .with_context(|| format!("request on idle connection {i} of {n}"))?;
        if status != 200 {
            anyhow::bail!("idle connection {i} of {n}: status {status}");
        }
        open.push(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = group_rss_kib(pgid);
    drop(open);
    Ok(after.saturating_sub(before) as f64 / n as f64)
}
