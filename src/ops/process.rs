//! The standard `process_*` series every Prometheus client library exports (CPU seconds,
//! memory, descriptors, start time, threads), read from `/proc/self` when `/metrics` is
//! scraped, and `fxproxy_build_info`. The parsers take the files' text, so tests feed them
//! strings; [`read`] does the I/O.

use std::sync::OnceLock;

/// The unit of CPU times and of a process's start time in `/proc`: USER_HZ, 100 on every
/// Linux architecture fxproxy is built for (as `ops::dump` assumes too).
const TICKS_PER_SEC: f64 = 100.0;

/// This process as the kernel sees it now. A field the kernel would not tell is `None` and
/// left out of `/metrics`, as client libraries do.
#[derive(Debug, Default, PartialEq)]
pub struct Process {
    /// User and system CPU time, in seconds.
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<u64>,
    pub virtual_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    /// The soft limit on open descriptors (`ulimit -n`, `LimitNOFILE=`); `None` when unlimited.
    pub max_fds: Option<u64>,
    /// When the process started, in seconds since the Unix epoch.
    pub start_time_seconds: Option<f64>,
    pub threads: Option<u64>,
}

/// Reads `/proc/self`: a handful of small files, and the size of `/proc/self/fd` (the kernel
/// gives the count of open descriptors there since Linux 6.2; before, the directory is listed,
/// fifteen thousand entries with as many clients).
pub fn read() -> Process {
    let file = |path: &str| std::fs::read_to_string(path).ok();
    let stat = file("/proc/self/stat").and_then(|s| parse_stat(&s));
    let status = file("/proc/self/status").map_or_else(Status::default, |s| parse_status(&s));
    Process {
        cpu_seconds: stat.map(|s| (s.utime + s.stime) as f64 / TICKS_PER_SEC),
        resident_bytes: status.rss_kb.map(|kb| kb * 1024),
        virtual_bytes: status.size_kb.map(|kb| kb * 1024),
        open_fds: open_fds(),
        max_fds: file("/proc/self/limits").and_then(|s| parse_max_fds(&s)),
        start_time_seconds: start_time(stat.map(|s| s.starttime)),
        threads: status.threads,
    }
}

fn open_fds() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let size = std::fs::metadata("/proc/self/fd").ok()?.size();
    if size > 0 {
        return Some(size);
    }
    // Older kernels: count the entries (the listing's own descriptor among them).
    let n = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(n.saturating_sub(1))
}

/// The start time never changes: worked out once (from the boot time in `/proc/stat`).
fn start_time(starttime_ticks: Option<u64>) -> Option<f64> {
    static START: OnceLock<Option<f64>> = OnceLock::new();
    *START.get_or_init(|| {
        let boot = parse_boot_time(&std::fs::read_to_string("/proc/stat").ok()?)?;
        Some(boot as f64 + starttime_ticks? as f64 / TICKS_PER_SEC)
    })
}

/// The fields of `/proc/self/stat` used here, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stat {
    utime: u64,
    stime: u64,
    /// Since boot.
    starttime: u64,
}

/// `/proc/PID/stat`: `pid (comm) state …`; the name may hold spaces and parentheses, so the
/// fields are counted from the last `)`. utime, stime and starttime are fields 14, 15 and 22.
fn parse_stat(text: &str) -> Option<Stat> {
    let fields: Vec<&str> = text
        .get(text.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        utime: field(14)?,
        stime: field(15)?,
        starttime: field(22)?,
    })
}

#[derive(Debug, Default, PartialEq)]
struct Status {
    rss_kb: Option<u64>,
    size_kb: Option<u64>,
    threads: Option<u64>,
}

/// `/proc/PID/status`: `VmRSS:`, `VmSize:` (in kB) and `Threads:`. Kernel threads have no
/// `Vm*` lines.
fn parse_status(text: &str) -> Status {
    let number = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    };
    Status {
        rss_kb: number("VmRSS:"),
        size_kb: number("VmSize:"),
        threads: number("Threads:"),
    }
}

/// The soft limit of `Max open files` in `/proc/PID/limits`; `None` for `unlimited`.
fn parse_max_fds(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.get("Max open files".len()..)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `btime` in `/proc/stat`: when the system booted, in seconds since the Unix epoch.
fn parse_boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// What `fxproxy_build_info` labels: the version, the target triple and the compiler the
/// binary was built for and with (set by build.rs).
pub struct Build {
    pub version: &'static str,
    pub target: &'static str,
    pub rustc: &'static str,
}

pub const BUILD: Build = Build {
    version: env!("CARGO_PKG_VERSION"),
    target: env!("FXPROXY_TARGET"),
    rustc: env!("FXPROXY_RUSTC"),
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let text = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 1 0 0 0 250 75 0 0 20 0 9 0 \
                    123456 10000 500 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0\n";
        assert_eq!(
            parse_stat(text),
            Some(Stat {
                utime: 250,
                stime: 75,
                starttime: 123456
            })
        );
        assert_eq!(parse_stat("4242 (x) S 1"), None);
    }

    #[test]
    fn status_gives_memory_and_threads() {
        let text = "Name:\tfxproxy\nVmPeak:\t  9000 kB\nVmSize:\t  8000 kB\nVmRSS:\t  2028 kB\n\
                    Threads:\t12\n";
        assert_eq!(
            parse_status(text),
            Status {
                rss_kb: Some(2028),
                size_kb: Some(8000),
                threads: Some(12)
            }
        );
        assert_eq!(parse_status("Name:\tkthreadd\nThreads:\t1\n").rss_kb, None);
    }

    #[test]
    fn limits_and_boot_time() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             96369                96369                processes \n\
                      Max open files            20000                524288               files     \n";
        assert_eq!(parse_max_fds(limits), Some(20000));
        assert_eq!(
            parse_max_fds(
                "Max open files            unlimited            unlimited            files\n"
            ),
            None
        );
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nintr 5\nbtime 1796513163\nprocesses 9\n"),
            Some(1_796_513_163)
        );
    }

    #[test]
    fn this_process_reads_itself() {
        let p = read();
        assert!(p.cpu_seconds.is_some());
        assert!(p.resident_bytes.unwrap() > 1024 * 1024);
        assert!(p.virtual_bytes.unwrap() >= p.resident_bytes.unwrap());
        assert!(p.open_fds.unwrap() >= 3, "stdin, stdout, stderr at least");
        assert!(p.threads.unwrap() >= 1);
        let started = p.start_time_seconds.unwrap();
        let now = crate::base::clock::now_ms() as f64 / 1000.0;
        assert!(
            started <= now + 1.0 && started > now - 86_400.0,
            "{started} vs {now}"
        );
        assert_eq!(BUILD.version, env!("CARGO_PKG_VERSION"));
        assert!(BUILD.target.contains("linux"), "{}", BUILD.target);
        assert!(BUILD.rustc.starts_with("1."), "{}", BUILD.rustc);
    }
}
