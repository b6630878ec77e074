//! Time as the XDP program sees it: `CLOCK_MONOTONIC` nanoseconds
//! (`bpf_ktime_get_ns`), so userspace and kernel agree on verdict expiry;
//! and wall-clock milliseconds, for what other gateways and people read.

use nix::time::{ClockId, clock_gettime};

/// A source of monotonic nanoseconds; tests use a fake one.
pub trait Clock {
    /// Nanoseconds on the `CLOCK_MONOTONIC` scale.
    fn now_ns(&self) -> u64;
}

/// The system's monotonic clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct Monotonic;

impl Clock for Monotonic {
    fn now_ns(&self) -> u64 {
        // CLOCK_MONOTONIC cannot fail on Linux; 0 would only make verdicts
        // look unexpired until the next reading.
        clock_gettime(ClockId::CLOCK_MONOTONIC)
            .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
            .unwrap_or(0)
    }
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
