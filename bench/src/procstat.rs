//! CPU time, memory and thread count of a process, read from /proc.

use std::fs;

/// Linux reports utime/stime in USER_HZ ticks, which the kernel ABI fixes at 100 per second
/// on every architecture (CONFIG_HZ may differ; USER_HZ does not).
const USER_HZ: f64 = 100.0;

#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// utime + stime of all the process's threads, in seconds.
    pub cpu_s: f64,
    /// VmRSS, bytes.
    pub rss: u64,
    /// VmHWM (peak RSS), bytes.
    pub rss_peak: u64,
    pub threads: u64,
}

/// `pid` as a string: a number, or "self".
pub fn sample(pid: &str) -> Option<Sample> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mut s = parse_status(&status);
    s.cpu_s = parse_stat_cpu(&stat)?;
    Some(s)
}

/// CPU seconds the whole machine has spent busy (every state but idle and iowait), from the
/// first line of /proc/stat: with the proxy's and the load generator's own, this shows how
/// much other work shared the cores during a run.
pub fn machine_busy_s() -> Option<f64> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|n| n.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user)
    let busy: u64 = f
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    Some(busy as f64 / USER_HZ)
}

/// utime + stime (fields 14 and 15) from /proc/PID/stat. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted from the last ')'.
fn parse_stat_cpu(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')' the fields start at 3 (state), so utime (14) is index 11.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

fn parse_status(status: &str) -> Sample {
    let mut s = Sample::default();
    for line in status.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let num = || -> u64 {
            v.split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        match k {
            "VmRSS" => s.rss = num() * 1024,
            "VmHWM" => s.rss_peak = num() * 1024,
            "Threads" => s.threads = num(),
            _ => {}
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_counted_after_the_command_name() {
        let stat = "4242 (fx proxy) (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0";
        assert_eq!(parse_stat_cpu(stat), Some(3.0));
    }

    #[test]
    fn status_memory_and_threads() {
        let s = parse_status("Name:\tfxproxy\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\nThreads:\t7\n");
        assert_eq!((s.rss, s.rss_peak, s.threads), (1 << 20, 2 << 20, 7));
    }

    #[test]
    fn machine_busy() {
        assert!(machine_busy_s().unwrap() > 0.0);
    }

    #[test]
    fn reads_itself() {
        let s = sample("self").unwrap();
        assert!(s.rss > 0 && s.threads >= 1);
    }
}
