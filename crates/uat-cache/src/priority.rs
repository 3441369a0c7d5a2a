//! Background threads at a lower CPU priority. L3's SQLite writer runs on a
//! thread of its own (sqlx's worker for its one connection); its batches
//! are best-effort work that should yield the CPU to requests. On Linux a
//! thread's nice value is its own, so the writer's thread is found by name
//! and reniced; elsewhere this does nothing.

/// Nice value of L3's SQLite writer thread. Not 19: under a saturated CPU
/// a batch should still finish within L3's operation timeout (at nice 10 the
/// thread keeps about a tenth of a busy core's share) rather than be
/// dropped whole; what it cannot keep up with fills the write queue and is
/// dropped and counted, as for any full queue.
pub(crate) const WRITER_NICE: i32 = 10;

/// Name of L3's SQLite writer thread (at most 15 bytes, Linux's limit).
pub(crate) const WRITER_THREAD: &str = "uat-l3-writer";

/// Lowers every thread of this process named `name` to at least nice
/// value `nice` (one already there or lower is left alone). Returns how
/// many threads were changed.
#[cfg(target_os = "linux")]
pub(crate) fn lower_threads_named(name: &str, nice: i32) -> usize {
    use rustix::process::{Pid, getpriority_process, setpriority_process};
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    let mut changed = 0;
    for task in tasks.flatten() {
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
            .and_then(Pid::from_raw)
        else {
            continue;
        };
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        // PRIO_PROCESS with a thread id applies to that thread only (Linux).
        // Only ever lowered: raising it back is not allowed unprivileged.
        let now = getpriority_process(Some(tid)).unwrap_or(nice);
        if now < nice && setpriority_process(Some(tid), nice).is_ok() {
            changed += 1;
        }
    }
    changed
}

/// Not Linux: threads keep their priority.
#[cfg(not(target_os = "linux"))]
pub(crate) fn lower_threads_named(_name: &str, _nice: i32) -> usize {
    0
}

/// The nice value of each thread of this process named `name` (tests).
#[cfg(all(test, target_os = "linux"))]
pub(crate) fn nice_of_threads_named(name: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        // Field 19 of stat is the nice value; the name (field 2) is in parentheses.
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        if let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r)
            && let Some(n) = rest.split(' ').nth(16).and_then(|v| v.parse().ok())
        {
            out.push(n);
        }
    }
    out
}
