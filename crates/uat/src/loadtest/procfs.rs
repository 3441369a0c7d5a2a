//! Process CPU time and resident memory from Linux `/proc` (None elsewhere).

use std::time::Duration;

/// Clock ticks per second of `/proc/PID/stat` times. `USER_HZ` is 100 on
/// every Linux architecture the kernel exports to user space.
const USER_HZ: u64 = 100;

fn proc_dir(pid: Option<u32>) -> String {
    match pid {
        Some(p) => format!("/proc/{p}"),
        None => "/proc/self".to_string(),
    }
}

/// User + system CPU time of a process (all its threads, living and dead),
/// at 10 ms resolution. `None` = this process.
pub(crate) fn cpu_time(pid: Option<u32>) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("{}/stat", proc_dir(pid))).ok()?;
    parse_stat_cpu(&stat)
}

fn parse_stat_cpu(stat: &str) -> Option<Duration> {
    // The command name may hold spaces and parentheses: fields start after the last `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 1000 / USER_HZ))
}

/// Resident set size in bytes (`VmRSS`). `None` = this process.
pub(crate) fn rss_bytes(pid: Option<u32>) -> Option<u64> {
    let status = std::fs::read_to_string(format!("{}/status", proc_dir(pid))).ok()?;
    parse_rss(&status)
}

fn parse_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_a_tricky_command_name() {
        let stat = "1234 (uat (serve) x) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 6 0 100 1000 200";
        assert_eq!(parse_stat_cpu(stat), Some(Duration::from_millis(3250)));
    }

    #[test]
    fn parses_rss() {
        let status = "Name:\tuat\nVmPeak:\t  1000 kB\nVmRSS:\t    12345 kB\n";
        assert_eq!(parse_rss(status), Some(12345 * 1024));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_this_process() {
        assert!(cpu_time(None).is_some());
        assert!(rss_bytes(None).is_some_and(|b| b > 0));
    }
}
