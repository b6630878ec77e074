//! What a reader needs to rerun a report: the machine, the kernel, and the
//! version of every program measured (the peers' OpenSSL included).

use std::{io::Read as _, process::Command};

/// A program's version line(s), or why there is none.
fn version(program: &str, args: &[&str], keep: &[&str]) -> String {
    match Command::new(program).args(args).output() {
        Ok(out) => {
            // nginx prints its version to stderr; others to stdout.
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let lines: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| keep.iter().any(|k| l.starts_with(k)))
                .collect();
            if lines.is_empty() {
                text.lines()
                    .next()
                    .unwrap_or("(no output)")
                    .trim()
                    .to_owned()
            } else {
                lines.join("; ")
            }
        }
        Err(_) => "not installed".into(),
    }
}

fn first_match(file: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_once([':', '=']))
        .map(|(_, v)| v.trim().trim_matches('"').to_owned())
}

/// Whether the kernel accounts IRQ time apart from the tasks it interrupts
/// (`CONFIG_IRQ_TIME_ACCOUNTING`), from /proc/config.gz; `None` when the
/// kernel does not publish its configuration. Without it, the softirq work
/// a process's own sends trigger is charged to that process's system time.
pub fn irq_time_accounting() -> Option<bool> {
    let file = std::fs::File::open("/proc/config.gz").ok()?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut text)
        .ok()?;
    Some(text.lines().any(|l| l == "CONFIG_IRQ_TIME_ACCOUNTING=y"))
}

/// The facts as Markdown list items.
pub fn facts(gateway: &std::path::Path, irq_time: Option<bool>) -> String {
    let uname = nix::sys::utsname::uname().ok();
    let kernel = uname.as_ref().map_or("?".into(), |u| {
        format!(
            "{} {} {}",
            u.sysname().to_string_lossy(),
            u.release().to_string_lossy(),
            u.machine().to_string_lossy()
        )
    });
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = first_match("/proc/meminfo", "MemTotal")
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or("?".into(), |kib| {
            format!("{:.1} GiB", kib / 1024.0 / 1024.0)
        });
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or("unknown".into(), |o| {
            String::from_utf8_lossy(&o.stdout).trim().to_owned()
        });
    let rows = [
        (
            "CPU",
            format!(
                "{} × {}",
                cpus,
                first_match("/proc/cpuinfo", "model name").unwrap_or_else(|| "?".into())
            ),
        ),
        ("memory", mem_gib),
        ("kernel", kernel),
        (
            "OS",
            first_match("/etc/os-release", "PRETTY_NAME").unwrap_or_else(|| "?".into()),
        ),
        (
            "gateway",
            format!(
                "{} (commit {commit}, {})",
                version(&gateway.display().to_string(), &["--version"], &[]),
                gateway.display()
            ),
        ),
        ("rustls", "0.23 (ring provider), in the gateway".into()),
        (
            "HAProxy",
            version(
                "haproxy",
                &["-vv"],
                &[
                    "HAProxy version",
                    "Built with OpenSSL version",
                    "Running on OpenSSL version",
                ],
            ),
        ),
        (
            "nginx",
            version("nginx", &["-V"], &["nginx version", "built with OpenSSL"]),
        ),
        ("wrk", version("wrk", &["-v"], &["wrk "])),
        (
            "CPU accounting",
            match irq_time {
                Some(true) => "IRQ time accounted apart (CONFIG_IRQ_TIME_ACCOUNTING=y)",
                Some(false) => {
                    "tick-based: softirq time is charged to the task it interrupts (no CONFIG_IRQ_TIME_ACCOUNTING)"
                }
                None => "unknown (no /proc/config.gz)",
            }
            .into(),
        ),
    ];
    rows.iter()
        .map(|(k, v)| format!("- **{k}:** {v}\n"))
        .collect()
}
