//! A bounded packet flood: one prebuilt frame sent through an AF_PACKET
//! socket with `sendmmsg`, bypassing the qdisc, until a count or a deadline.

use std::{
    mem::{size_of, zeroed},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

/// Sends `frame` out of interface `ifindex` (in the caller's namespace) up to
/// `count` times or for `max`, whichever ends first. Returns (sent, elapsed).
pub fn blast(ifindex: u32, frame: &[u8], count: u64, max: Duration) -> Result<(u64, Duration)> {
    const BATCH: usize = 64;
    // SAFETY: plain socket(2) call; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    if fd < 0 {
        bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
    }
    let guard = FdGuard(fd);
    let one: libc::c_int = 1;
    // SAFETY: valid fd and option pointer/length.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            (&raw const one).cast(),
            size_of::<libc::c_int>() as u32,
        );
    }
    // SAFETY: sockaddr_ll is plain data; zero is a valid start.
    let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_ifindex = ifindex as i32;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&frame[..6]);
    // SAFETY: valid fd and address of the right length.
    let r = unsafe {
        libc::bind(
            fd,
            (&raw const sll).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if r < 0 {
        bail!(
            "binding AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
    }
    let mut iov = libc::iovec {
        iov_base: frame.as_ptr() as *mut _,
        iov_len: frame.len(),
    };
    // SAFETY: mmsghdr is plain data; zero is a valid start.
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
    for m in &mut msgs {
        m.msg_hdr.msg_iov = &raw mut iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < count && start.elapsed() < max {
        let n = (count - sent).min(BATCH as u64) as u32;
        // SAFETY: msgs points at n valid headers whose iovec outlives the call.
        let r = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), n, 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOBUFS) {
                continue;
            }
            bail!("sendmmsg: {e}");
        }
        sent += r as u64;
    }
    drop(guard);
    Ok((sent, start.elapsed()))
}

struct FdGuard(libc::c_int);

impl Drop for FdGuard {
    fn drop(&mut self) {
        // SAFETY: we own this fd.
        unsafe { libc::close(self.0) };
    }
}

/// CPU time of the whole machine so far, split by who spent it.
#[derive(Clone, Copy, Debug, Default)]
pub struct MachineCpu {
    /// user + nice + system: the processes (here, the flood generator).
    pub task: Duration,
    /// irq + softirq: packet processing in interrupt context, where every
    /// drop path measured here runs (needs IRQ time accounting, which the
    /// kernels here have; otherwise it is charged to `task`).
    pub irq: Duration,
}

impl MachineCpu {
    /// Reads /proc/stat.
    pub fn now() -> Result<Self> {
        let stat = std::fs::read_to_string("/proc/stat")?;
        let line = stat.lines().next().unwrap_or_default();
        let f: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        if f.len() < 8 {
            bail!("unexpected /proc/stat: {line}");
        }
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        let d = |ticks: u64| Duration::from_nanos(ticks * 1_000_000_000 / hz);
        Ok(Self {
            task: d(f[0] + f[1] + f[2]),
            irq: d(f[5] + f[6]),
        })
    }

    /// Time spent since `earlier`.
    pub fn since(self, earlier: Self) -> Self {
        Self {
            task: self.task.saturating_sub(earlier.task),
            irq: self.irq.saturating_sub(earlier.irq),
        }
    }
}
