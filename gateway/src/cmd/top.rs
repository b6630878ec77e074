//! `gateway top`: the live figures of a running gateway, refreshed in place.

use std::io::{IsTerminal, Write};

use gateway::observe::top::{Sample, frame, interval};

use super::admin::admin_client;
use crate::AdminArgs;

/// Scrapes `/metrics` every `secs` and draws a frame for each interval;
/// `count` frames, or until interrupted when 0.
pub(crate) fn top(secs: f64, count: u64, a: &AdminArgs) -> Result<(), String> {
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!(
            "--interval {secs}: give a number of seconds above 0"
        ));
    }
    let c = admin_client(a)?;
    let every = interval(secs);
    let source = c.addr().to_string();
    let mut before = Sample::parse(&c.text("/metrics")?);
    let mut at = std::time::Instant::now();
    let tty = std::io::stdout().is_terminal();
    for n in 1.. {
        std::thread::sleep(every);
        let after = Sample::parse(&c.text("/metrics")?);
        // Rates over the time that really passed between the two scrapes.
        let elapsed = at.elapsed().as_secs_f64();
        at = std::time::Instant::now();
        let text = frame(&before, &after, elapsed, &source);
        let mut out = std::io::stdout().lock();
        // In place on a terminal; one frame after another otherwise.
        let clear = if tty { "\x1b[H\x1b[2J" } else { "" };
        let _ = write!(out, "{clear}{text}");
        if !tty {
            let _ = writeln!(out, "----");
        }
        let _ = out.flush();
        before = after;
        if count != 0 && n >= count {
            break;
        }
    }
    Ok(())
}
