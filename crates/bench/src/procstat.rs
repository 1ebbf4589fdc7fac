//! Process CPU time and memory from `/proc` (Linux).

use std::time::Duration;

/// Clock ticks per second for `/proc/PID/stat` times.
fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions; it only reads a configuration value.
    #[allow(unsafe_code)]
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// User + system CPU time a process has used.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after it start
    // after the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, i.e. 11 and 12 here.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let ticks = ticks_per_second();
    Some(Duration::from_micros((utime + stime) * 1_000_000 / ticks))
}

/// Resident set size in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The machine's CPU time so far from `/proc/stat`, in clock ticks over all
/// CPUs: (stolen by the hypervisor, total). Steal is time a virtual CPU
/// wanted to run but the host ran something else; during a latency run it
/// is the machine's share of the tail.
pub fn steal_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    // user nice system idle iowait irq softirq steal (guest time is
    // already counted in user).
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let steal = *fields.get(7)?;
    Some((steal, fields.iter().sum()))
}

/// Steal as a percentage of all CPU time between two [`steal_ticks`] readings.
pub fn steal_percent(before: (u64, u64), after: (u64, u64)) -> Option<f64> {
    let total = after.1.checked_sub(before.1)?;
    let steal = after.0.checked_sub(before.0)?;
    (total > 0).then(|| steal as f64 * 100.0 / total as f64)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]
    use super::*;

    #[test]
    fn steal_is_a_share_of_the_interval() {
        assert_eq!(steal_percent((10, 1000), (30, 1200)), Some(10.0));
        assert_eq!(steal_percent((10, 1000), (10, 1000)), None);
        assert_eq!(steal_percent((10, 1000), (5, 1200)), None);
        if std::path::Path::new("/proc/stat").exists() {
            let (steal, total) = steal_ticks().expect("/proc/stat has a cpu line");
            assert!(steal <= total);
        }
    }
}
