//! Threads off the request path (the admin API, health checks, the Redis
//! link) that run until told to stop: one flag they poll, joined on stop.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
};

/// Named threads sharing one stop flag.
#[derive(Default)]
pub struct Background {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Background {
    /// Starts thread `name` running `f` until the flag it gets is set.
    pub fn spawn(
        &mut self,
        name: &str,
        f: impl FnOnce(&AtomicBool) + Send + 'static,
    ) -> std::io::Result<()> {
        let flag = self.stop.clone();
        let t = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || f(&flag))?;
        self.threads.push(t);
        Ok(())
    }

    /// Sets the flag without waiting: for threads that hold nothing to
    /// close and may be in a blocking call (they end at their next look
    /// at the flag, or with the process).
    pub fn release(self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Sets the flag and waits for every thread.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}
