//! The access log: one line per request, written when it ends.

use std::{net::SocketAddr, time::Duration};

/// What the log line says about one request.
#[derive(Debug)]
pub struct AccessRecord<'a> {
    /// The client.
    pub peer: SocketAddr,
    /// The consumer id, `-` when anonymous.
    pub consumer: &'a str,
    /// Method.
    pub method: &'a str,
    /// Path and query.
    pub target: &'a str,
    /// Status sent (0 if none could be).
    pub status: u16,
    /// Reason code for failures, `-` otherwise.
    pub reason: &'a str,
    /// Upstream server that answered, if any.
    pub upstream: Option<SocketAddr>,
    /// Time from the full request head to the end of the response.
    pub elapsed: Duration,
    /// Response body bytes sent.
    pub bytes: u64,
    /// The worker that served it.
    pub worker: usize,
}

/// Writes the line (target `access`, so `RUST_LOG=access=off` silences it).
pub fn access(r: &AccessRecord<'_>) {
    tracing::info!(
        target: "access",
        "{} {} \"{} {}\" {} {} upstream={} {}us {}B w{}",
        r.peer.ip(),
        r.consumer,
        r.method,
        r.target,
        r.status,
        r.reason,
        r.upstream.map_or_else(|| "-".to_owned(), |a| a.to_string()),
        r.elapsed.as_micros(),
        r.bytes,
        r.worker
    );
}
