//! Machine-wide CPU accounting from /proc/stat, and the median the reports use.

use std::time::Duration;

use anyhow::{Result, bail};

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
