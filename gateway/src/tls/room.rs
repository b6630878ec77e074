//! Room for what rustls' unbuffered calls write: a caller passes a slice,
//! rustls says how much it needed when the slice was too small.

use rustls::unbuffered::{EncodeError, EncryptError};

use super::StreamError;
use crate::buffers;

/// Room a call into rustls found too small, or a failure.
pub(super) enum Grow {
    To(usize),
    Fail(StreamError),
}

impl From<EncodeError> for Grow {
    fn from(e: EncodeError) -> Self {
        match e {
            EncodeError::InsufficientSize(s) => Grow::To(s.required_size),
            EncodeError::AlreadyEncoded => Grow::Fail(StreamError::Stalled),
        }
    }
}

impl From<EncryptError> for Grow {
    fn from(e: EncryptError) -> Self {
        match e {
            EncryptError::InsufficientSize(s) => Grow::To(s.required_size),
            EncryptError::EncryptExhausted => {
                Grow::Fail(StreamError::Tls(rustls::Error::EncryptError))
            }
        }
    }
}

/// Appends what `write` puts in a slice to `out` (a pooled buffer when it
/// has none), starting with `hint` bytes of room and growing to what rustls
/// says it needs.
pub(super) fn append(
    out: &mut Vec<u8>,
    hint: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, Grow>,
) -> Result<(), StreamError> {
    if out.capacity() == 0 {
        *out = buffers::take_write(hint);
    }
    let start = out.len();
    let mut room = hint;
    loop {
        out.resize(start + room, 0);
        match write(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(Grow::To(need)) if need > room => room = need,
            Err(Grow::To(_)) => {
                out.truncate(start);
                return Err(StreamError::Stalled);
            }
            Err(Grow::Fail(e)) => {
                out.truncate(start);
                return Err(e);
            }
        }
    }
}

/// Gives a buffer back to the pool it came from (by size; others are freed).
pub(super) fn give_back(b: Vec<u8>) {
    match b.capacity() {
        buffers::SMALL => buffers::give_small(b),
        buffers::READ => buffers::give_read(b),
        _ => {}
    }
}
