//! Connecting to an upstream server: a non-blocking connect awaited through
//! the runtime's reactor, so a timed-out attempt can be abandoned, and errors
//! sorted into the server's fault and the gateway's own.

use std::{io, net::SocketAddr, time::Duration};

use tokio_uring::net::TcpStream;

use super::upstream_conn::{UPSTREAM_READ, UpstreamConn};

/// Why a connection could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectError {
    /// Refused, unreachable or reset: the server is down.
    Refused,
    /// No answer within the connect timeout.
    TimedOut,
    /// The gateway itself ran out of something (file descriptors, memory,
    /// local ports): the server is not to blame and is not marked down.
    Local(i32),
}

impl ConnectError {
    /// Sorts an OS error: local exhaustion, or the server's refusal.
    fn from_os(e: &io::Error) -> Self {
        match e.raw_os_error() {
            Some(
                code @ (libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
                | libc::EADDRNOTAVAIL),
            ) => Self::Local(code),
            _ => Self::Refused,
        }
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused => f.write_str("refused"),
            Self::TimedOut => f.write_str("timed out"),
            Self::Local(code) => write!(
                f,
                "failed on the gateway's side: {}",
                io::Error::from_raw_os_error(*code)
            ),
        }
    }
}

/// Connects to `addr` within `limit`, with TCP_NODELAY.
///
/// Not tokio-uring's `connect`: dropping its future leaves the io_uring
/// connect in flight with the socket, which then sits in SYN_SENT for
/// about two minutes outside every cap. A non-blocking connect awaited
/// through the runtime's reactor can be abandoned: dropping the socket
/// closes it, and the kernel forgets a SYN_SENT socket at close.
pub async fn connect(
    addr: SocketAddr,
    server: usize,
    limit: Duration,
) -> Result<UpstreamConn, ConnectError> {
    use socket2::{Domain, Protocol, Socket, Type};
    use tokio::io::{Interest, unix::AsyncFd};

    let local = |e: io::Error| ConnectError::from_os(&e);
    let sock = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )
    .map_err(local)?;
    match sock.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {
            // SAFETY: `sock` owns its descriptor, which stays open and the
            // same until `into_inner` hands the socket back or it is dropped.
            let pending = unsafe { AsyncFd::register_with_interest(sock, Interest::WRITABLE) }
                .map_err(|e| local(e.into_parts().1))?;
            match tokio::time::timeout(limit, pending.writable()).await {
                // `pending` drops here and closes the socket.
                Err(_) => return Err(ConnectError::TimedOut),
                Ok(Err(e)) => return Err(local(e)),
                Ok(Ok(_ready)) => {}
            }
            let sock = pending.into_inner();
            if let Some(e) = sock.take_error().map_err(local)? {
                return Err(ConnectError::from_os(&e));
            }
            return finish_connect(sock, server);
        }
        Err(e) => return Err(ConnectError::from_os(&e)),
    }
    finish_connect(sock, server)
}

/// Turns a connected socket into an upstream connection.
fn finish_connect(sock: socket2::Socket, server: usize) -> Result<UpstreamConn, ConnectError> {
    let _ = sock.set_tcp_nodelay(true);
    // io_uring does not need O_NONBLOCK; a blocking socket is what
    // tokio-uring's own connect would have made.
    sock.set_nonblocking(false)
        .map_err(|e| ConnectError::from_os(&e))?;
    let tcp = TcpStream::from_std(std::net::TcpStream::from(sock));
    Ok(UpstreamConn {
        tcp,
        buf: Vec::with_capacity(UPSTREAM_READ),
        start: 0,
        server,
        reused: false,
        tls: None,
        idle_since: None,
    })
}
