//! Why a TLS connection ended early: the one error type of the TLS
//! stream and the room its rustls calls write into.

use std::io;

/// Unprocessed input kept at most: rustls joins handshake messages of up
/// to 64 KiB across records, in place in this buffer.
pub(super) const MAX_INPUT: usize = 96 * 1024;

/// Why a TLS connection ended early.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The socket failed.
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    /// The peer broke the TLS protocol (an alert was sent).
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    /// The peer spoke plain HTTP to the TLS port.
    #[error("plain HTTP on the TLS port")]
    PlainHttp,
    /// The peer closed before the handshake ended.
    #[error("closed during the handshake")]
    HandshakeEof,
    /// A deadline passed.
    #[error("timed out")]
    TimedOut,
    /// The peer sent more than `MAX_INPUT` bytes without completing a
    /// TLS message.
    #[error("TLS message over {} KiB", MAX_INPUT / 1024)]
    Oversized,
    /// rustls is in a state the caller cannot move on from (asked to write
    /// before the handshake ended, or after the connection closed): the
    /// connection ends rather than spin.
    #[error("TLS state machine stalled")]
    Stalled,
}
