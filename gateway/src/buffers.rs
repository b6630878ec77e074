//! Each worker thread's free lists of byte buffers. A connection borrows a
//! buffer for the length of one socket read or write and gives it back
//! after, so memory follows the I/O in flight rather than the connections
//! open: an idle keep-alive connection's pending read holds only a small
//! buffer. Workers are threads (thread per core), so the lists are
//! thread-local: no lock, no atomic.

use std::cell::{Cell, RefCell};

/// The size of the buffer an idle connection's pending read holds: most
/// request heads arrive whole in it; a longer one takes a second read.
pub const SMALL: usize = 1024;

/// The size of a socket read while a request is in progress. Reads take a
/// buffer's whole capacity, and rustls refuses more than 16 KiB of
/// undecrypted-and-unread data, so read buffers come in this one size.
pub const READ: usize = 8 * 1024;

/// Buffers kept per list at most (the rest are freed).
const KEEP: usize = 256;

/// Idle waits per worker that may read into a [`READ`] buffer at once
/// (see [`take_wide_idle`]): a client can make its connection wait wide
/// with one long request, so the extra 7 KiB per idle connection is
/// bounded per worker (1.8 MiB), not per connection.
pub const MAX_WIDE_IDLE: usize = 256;

/// Buffers larger than this are freed, not kept.
const MAX_KEPT: usize = 64 * 1024;

/// Read-buffer bytes a connection holds for free; beyond, they count
/// against its worker's body memory (`limits.body_memory_per_worker`).
pub const BODY_FREE: usize = 16 * 1024;

thread_local! {
    static BODY_HELD: Cell<usize> = const { Cell::new(0) };
    static WRITES: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static SMALLS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static READS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static WIDE_IDLE: Cell<usize> = const { Cell::new(0) };
}

/// An empty buffer with room for at least `min` bytes, for writes (never
/// for a socket read: see [`READ`]).
pub fn take_write(min: usize) -> Vec<u8> {
    let mut b = WRITES.with_borrow_mut(Vec::pop).unwrap_or_default();
    b.reserve(min);
    b
}

/// Gives back a buffer from [`take_write`].
pub fn give_write(mut b: Vec<u8>) {
    if b.capacity() == 0 || b.capacity() > MAX_KEPT {
        return;
    }
    b.clear();
    WRITES.with_borrow_mut(|l| {
        if l.len() < KEEP {
            l.push(b);
        }
    });
}

/// An empty buffer of exactly [`SMALL`] bytes' room.
pub fn take_small() -> Vec<u8> {
    take_exact(&SMALLS, SMALL)
}

/// Gives back a buffer from [`take_small`].
pub fn give_small(b: Vec<u8>) {
    give_exact(&SMALLS, SMALL, b);
}

/// An empty buffer of exactly [`READ`] bytes' room.
pub fn take_read() -> Vec<u8> {
    take_exact(&READS, READ)
}

/// Gives back a buffer from [`take_read`].
pub fn give_read(b: Vec<u8>) {
    give_exact(&READS, READ, b);
}

/// Counts one idle wait reading into a [`READ`] buffer until dropped.
#[derive(Debug)]
pub struct WideIdle(());

impl Drop for WideIdle {
    fn drop(&mut self) {
        WIDE_IDLE.with(|n| n.set(n.get().saturating_sub(1)));
    }
}

/// A [`READ`] buffer for an idle wait, with the guard that counts it, while
/// fewer than [`MAX_WIDE_IDLE`] of this worker's idle waits hold one.
pub fn take_wide_idle() -> Option<(Vec<u8>, WideIdle)> {
    WIDE_IDLE.with(|n| {
        (n.get() < MAX_WIDE_IDLE).then(|| {
            n.set(n.get() + 1);
            (take_read(), WideIdle(()))
        })
    })
}

/// A connection's share of its worker's body memory: what its read
/// buffer holds beyond [`BODY_FREE`]. Given back when dropped, also when a
/// connection's task ends in a panic.
#[derive(Debug, Default)]
pub struct BodyHold {
    held: usize,
}

impl BodyHold {
    /// Moves this share to what a read buffer of `capacity` bytes holds;
    /// false, changing nothing, when growing it would take the worker's
    /// total past `budget` (shrinking always succeeds).
    pub fn fit(&mut self, capacity: usize, budget: usize) -> bool {
        let want = capacity.saturating_sub(BODY_FREE);
        BODY_HELD.with(|total| {
            let others = total.get() - self.held;
            if want > self.held && others + want > budget {
                return false;
            }
            total.set(others + want);
            self.held = want;
            true
        })
    }
}

impl Drop for BodyHold {
    fn drop(&mut self) {
        BODY_HELD.with(|total| total.set(total.get() - self.held));
    }
}

/// Body bytes this worker's connections hold (for metrics).
pub fn body_held() -> usize {
    BODY_HELD.with(Cell::get)
}

type List = std::thread::LocalKey<RefCell<Vec<Vec<u8>>>>;

fn take_exact(list: &'static List, size: usize) -> Vec<u8> {
    list.with_borrow_mut(Vec::pop)
        .unwrap_or_else(|| Vec::with_capacity(size))
}

fn give_exact(list: &'static List, size: usize, mut b: Vec<u8>) {
    // A buffer that is not of the list's size never joins it: a read takes
    // the whole capacity.
    if b.capacity() != size {
        return;
    }
    b.clear();
    list.with_borrow_mut(|l| {
        if l.len() < KEEP {
            l.push(b);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_empty_and_big_ones_are_freed() {
        let mut b = take_write(100);
        assert!(b.capacity() >= 100 && b.is_empty());
        b.extend_from_slice(b"abc");
        let ptr = b.as_ptr();
        give_write(b);
        let again = take_write(10);
        assert!(again.is_empty());
        assert_eq!(again.as_ptr(), ptr, "the same allocation is reused");
        give_write(again);
        give_write(Vec::with_capacity(MAX_KEPT + 1));
        assert!(take_write(0).capacity() <= MAX_KEPT);
        let s = take_small();
        assert_eq!(s.capacity(), SMALL);
        give_small(s);
        // A grown buffer never joins a fixed-size list.
        let mut r = take_read();
        assert_eq!(r.capacity(), READ);
        r.reserve(READ * 4);
        give_read(r);
        assert_eq!(take_read().capacity(), READ);
    }

    #[test]
    fn body_memory_is_held_within_the_workers_budget() {
        let budget = 100_000;
        let mut a = BodyHold::default();
        let mut b = BodyHold::default();
        assert!(a.fit(BODY_FREE, budget), "the free part costs nothing");
        assert_eq!(body_held(), 0);
        assert!(a.fit(BODY_FREE + 60_000, budget));
        assert!(!b.fit(BODY_FREE + 50_000, budget), "over the budget");
        assert_eq!(body_held(), 60_000, "a refusal changes nothing");
        assert!(b.fit(BODY_FREE + 40_000, budget));
        // Shrinking always works, and makes room.
        assert!(a.fit(0, budget));
        assert!(b.fit(BODY_FREE + 90_000, budget));
        drop(b);
        assert_eq!(body_held(), 0, "given back on drop");
    }

    #[test]
    fn wide_idle_waits_are_capped_per_worker() {
        let mut held: Vec<_> = (0..MAX_WIDE_IDLE)
            .map(|_| take_wide_idle().expect("under the cap"))
            .collect();
        assert!(held.iter().all(|(b, _)| b.capacity() == READ));
        assert!(take_wide_idle().is_none(), "over the cap");
        // A finished (or dropped) wait makes room for one more.
        held.pop();
        assert!(take_wide_idle().is_some());
        // Each worker thread counts its own.
        let other = std::thread::spawn(|| take_wide_idle().is_some());
        assert!(other.join().expect("thread"));
    }
}
