//! Deadlines on io_uring socket operations: dropping an operation does not
//! cancel it, so a deadline shuts the socket down, which completes it.

use std::{os::fd::RawFd, time::Duration};

/// Runs a write with a deadline; on expiry the socket is shut down both
/// ways, which fails the in-flight io_uring write (SHUT_RD alone would not).
pub async fn write_deadline<T>(
    fd: RawFd,
    limit: Duration,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    expire(fd, limit, libc::SHUT_RDWR, fut).await
}

/// Runs `fut` with a deadline; on expiry the socket's read side is shut
/// down so the in-flight io_uring read completes (dropping an operation does
/// not cancel it), while the write side stays open for a last response.
pub async fn deadline<T>(
    fd: RawFd,
    limit: Duration,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    expire(fd, limit, libc::SHUT_RD, fut).await
}

async fn expire<T>(
    fd: RawFd,
    limit: Duration,
    how: libc::c_int,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        r = fut => Some(r),
        _ = tokio::time::sleep(limit) => {
            // SAFETY: shutdown(2) on a descriptor the caller owns.
            unsafe { libc::shutdown(fd, how) };
            None
        }
    }
}

/// Shuts a socket down in both directions (the peer sees EOF at once).
pub fn shutdown_fd(fd: RawFd) {
    // SAFETY: shutdown(2) on a descriptor we own; errors (already closed) are harmless.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
}
