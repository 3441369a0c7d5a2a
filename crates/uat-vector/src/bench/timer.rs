//! Wall and CPU clocks for the benchmark.

use std::time::Instant;

/// Wall time plus CPU time (this thread, whole process), read from
/// `/proc` on Linux: on a loaded machine CPU time tells what the code costs,
/// wall time what a user would have seen.
pub(super) struct Timer {
    wall: Instant,
    thread: Option<f64>,
    process: Option<f64>,
}

fn schedstat(path: &std::path::Path) -> Option<f64> {
    let s = std::fs::read_to_string(path).ok()?;
    let ns: f64 = s.split_whitespace().next()?.parse().ok()?;
    Some(ns / 1e9)
}

fn thread_cpu() -> Option<f64> {
    schedstat(std::path::Path::new("/proc/thread-self/schedstat"))
}

fn process_cpu() -> Option<f64> {
    let mut total = 0.0;
    for e in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        total += schedstat(&e.path().join("schedstat")).unwrap_or(0.0);
    }
    Some(total)
}

pub(super) fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl Timer {
    pub(super) fn start() -> Self {
        Self {
            wall: Instant::now(),
            thread: thread_cpu(),
            process: process_cpu(),
        }
    }
    pub(super) fn wall(&self) -> f64 {
        self.wall.elapsed().as_secs_f64()
    }
    /// CPU seconds of the calling thread (falls back to wall time).
    pub(super) fn thread(&self) -> f64 {
        match (self.thread, thread_cpu()) {
            (Some(a), Some(b)) if b > a => b - a,
            _ => self.wall(),
        }
    }
    /// CPU seconds of all threads of the process (falls back to wall time).
    pub(super) fn process(&self) -> f64 {
        match (self.process, process_cpu()) {
            (Some(a), Some(b)) if b > a => b - a,
            _ => self.wall(),
        }
    }
}
