//! CPU accounting from /proc (the machine, a process, a process group),
//! the CPU lists benchmarks pin to, and the median the reports use.

use std::time::Duration;

use anyhow::{Result, bail};

/// CPU time of the whole machine so far, split by who spent it.
#[derive(Clone, Copy, Debug, Default)]
pub struct MachineCpu {
    /// user + nice + system: the processes (load generators, backends,
    /// proxies).
    pub task: Duration,
    /// irq + softirq: packet processing in interrupt context, where every
    /// drop path measured here runs (sampled at each tick when the kernel
    /// does not account IRQ time precisely: `CONFIG_IRQ_TIME_ACCOUNTING`).
    pub irq: Duration,
    /// idle + iowait: what nobody used.
    pub idle: Duration,
    /// steal: what the hypervisor gave other guests (a busy host).
    pub steal: Duration,
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
        let hz = u128::from(hz());
        // In u128: ticks times 1e9 passes u64 on a big machine's idle count.
        let d = |ticks: u64| Duration::from_nanos((u128::from(ticks) * 1_000_000_000 / hz) as u64);
        Ok(Self {
            task: d(f[0] + f[1] + f[2]),
            irq: d(f[5] + f[6]),
            idle: d(f[3] + f[4]),
            steal: d(f[7]),
        })
    }

    /// Busy time: processes and interrupts.
    pub fn busy(self) -> Duration {
        self.task + self.irq
    }

    /// Time spent since `earlier`.
    pub fn since(self, earlier: Self) -> Self {
        Self {
            task: self.task.saturating_sub(earlier.task),
            irq: self.irq.saturating_sub(earlier.irq),
            idle: self.idle.saturating_sub(earlier.idle),
            steal: self.steal.saturating_sub(earlier.steal),
        }
    }
}

/// The median (upper of the two middle values); NaN when empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

/// Pins the calling thread to `cpus` (taskset syntax: `0-3,8`).
pub fn pin(cpus: &str) -> anyhow::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    for part in cpus.split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        for c in a.trim().parse::<usize>()?..=b.trim().parse::<usize>()? {
            set.set(c)?;
        }
    }
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)?;
    Ok(())
}

/// The machine's CPUs split in two lists (taskset syntax): the first half
/// for the system measured, the second for the load; both "0" on one CPU.
pub fn halves() -> (String, String) {
    let n = std::thread::available_parallelism().map_or(2, |n| n.get());
    if n < 2 {
        return ("0".into(), "0".into());
    }
    let half = n / 2;
    let list = |a: usize, b: usize| {
        if a == b {
            a.to_string()
        } else {
            format!("{a}-{b}")
        }
    };
    (list(0, half - 1), list(half, n - 1))
}

/// CPUs in a taskset list ("0-3,8" is 5).
pub fn cpu_count(list: &str) -> usize {
    list.split(',')
        .map(|part| match part.split_once('-') {
            Some((a, b)) => {
                b.trim()
                    .parse::<usize>()
                    .unwrap_or(0)
                    .saturating_sub(a.trim().parse().unwrap_or(0))
                    + 1
            }
            None => usize::from(!part.trim().is_empty()),
        })
        .sum()
}

/// CPU time of a process, in clock ticks: in userspace and in the kernel
/// (the kernel part includes the softirq work its own sends trigger, which
/// on loopback is the receiver's TCP processing).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ticks {
    /// utime.
    pub user: u64,
    /// stime.
    pub system: u64,
}

impl Ticks {
    /// user + system.
    pub fn total(self) -> u64 {
        self.user + self.system
    }

    /// Ticks spent since `earlier`.
    pub fn since(self, earlier: Self) -> Self {
        Self {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }
}

impl std::iter::Sum for Ticks {
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        iter.fold(Self::default(), |a, b| Self {
            user: a.user + b.user,
            system: a.system + b.system,
        })
    }
}

/// Clock ticks per second.
pub fn hz() -> u64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64
}

/// A process's process group and its CPU ticks (all threads), from /proc.
fn stat(pid: u32) -> Option<(u32, Ticks)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the ")" that closes the command name.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // f[2] = pgrp, f[11] = utime, f[12] = stime.
    Some((
        f.get(2)?.parse().ok()?,
        Ticks {
            user: n(11),
            system: n(12),
        },
    ))
}

/// utime + stime of one process, in clock ticks.
pub fn process_ticks(pid: u32) -> u64 {
    stat(pid).map_or(0, |(_, t)| t.total())
}

/// Every process of a process group, with its CPU ticks.
fn group(pgid: u32) -> impl Iterator<Item = (u32, Ticks)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| stat(pid).map(|(g, t)| (pid, g, t)))
        .filter(move |&(_, g, _)| g == pgid)
        .map(|(pid, _, t)| (pid, t))
}

/// CPU ticks of every process in a process group.
pub fn group_ticks(pgid: u32) -> Ticks {
    group(pgid).map(|(_, t)| t).sum()
}

/// Resident memory of every process in a process group, in KiB.
pub fn group_rss_kib(pgid: u32) -> u64 {
    group(pgid)
        .filter_map(|(pid, _)| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// `program`, run on `cpus` (taskset syntax) when a CPU list is given.
pub fn pinned(cpus: Option<&str>, program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    match cpus {
        Some(c) => {
            let mut t = std::process::Command::new("taskset");
            t.arg("-c").arg(c).arg(program);
            t
        }
        None => std::process::Command::new(program),
    }
}
