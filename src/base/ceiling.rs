//! How many threads, and so how many clients, the kernel really lets this process have.
//!
//! A client costs one thread. Past the kernel's limits a thread either fails to start (the
//! accept path refuses the client gracefully) or, worse, starts and then fails to map its
//! signal stack inside the standard library's thread start-up, where the runtime aborts the
//! whole process. So fxproxy works out its ceiling at start-up from every limit that applies
//! and admits no more clients than fit under it, counting threads that are still winding
//! down (see [`crate::base::threads`]).
//!
//! [`compute`] is pure and unit-tested; [`measure`] reads the limits from `/proc` and `/sys`.

use std::fmt;
use std::path::{Path, PathBuf};

/// Memory mappings per thread: its stack and guard page, its signal stack and guard page.
pub const MAPS_PER_THREAD: u64 = 4;
/// Mappings kept aside for the rest of the process: libraries, allocator arenas, large
/// allocations, and the C library's cache of freed thread stacks (up to 40 MiB of them).
const MAP_RESERVE: u64 = 256;
/// Address space one client thread takes: a 128 KiB stack and its guard page, a signal
/// stack and its guard page, and a share of the heap (queue, buffers).
pub const ADDRESS_SPACE_PER_THREAD: u64 = 192 * 1024;
/// Address space kept aside beyond the allocator's arenas: the C library's stack cache
/// (40 MiB) and headroom for the heap's growth.
const ADDRESS_SPACE_RESERVE: u64 = 128 << 20;
/// What glibc reserves for each malloc arena on a 64-bit host.
const ARENA_SIZE: u64 = 64 << 20;
/// Descriptors kept aside for files, the listener, the poll instances and the upstream.
pub const DESCRIPTOR_RESERVE: u64 = 64;
/// Threads kept aside under a limit that other processes share or that counts more than
/// threads (pids in a cgroup, the system-wide task count).
const SHARED_MARGIN: u64 = 32;

/// What this host and process look like now; `None` where a limit does not apply or could
/// not be read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inputs {
    pub max_map_count: Option<u64>,
    /// Mappings the process holds now.
    pub maps: u64,
    pub threads_max: Option<u64>,
    pub pid_max: Option<u64>,
    /// Threads on the whole host now (all processes).
    pub system_threads: Option<u64>,
    /// `RLIMIT_NPROC`, when it is enforced for this process (not for a privileged one).
    pub nproc: Option<u64>,
    /// Threads of the same user now (all of its processes).
    pub user_threads: Option<u64>,
    /// The tightest `pids.max` of this process's cgroup and its ancestors, with its
    /// `pids.current`.
    pub cgroup_pids: Option<(u64, u64)>,
    /// `RLIMIT_AS` in bytes, when set.
    pub address_space: Option<u64>,
    /// The process's address space now, in bytes.
    pub vm_size: u64,
    /// Address space the allocator may still reserve for arenas, in bytes.
    pub arena_reserve: u64,
    /// Threads of this process now.
    pub own_threads: u64,
    /// `RLIMIT_NOFILE`.
    pub nofile: Option<u64>,
    /// Descriptors open now.
    pub open_fds: u64,
}

/// One limit and the number of threads it allows this process in all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bound {
    /// As an operator knows it: `vm.max_map_count`, `TasksMax (pids.max)`, ...
    pub limit: &'static str,
    pub value: u64,
    pub threads: u64,
    /// What to raise, in a word.
    pub raise: &'static str,
}

/// The ceiling: the threads this process may have, and which limit sets it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ceiling {
    /// Threads the process may have in all; `u64::MAX` when nothing limits them.
    pub threads: u64,
    /// The limit that sets `threads`, if any does.
    pub set_by: Option<Bound>,
    /// Every limit that applies, for the log.
    pub bounds: Vec<Bound>,
    /// Descriptors the process may still open for connections (`RLIMIT_NOFILE` less those
    /// open and a reserve), if limited.
    pub connection_descriptors: Option<u64>,
    pub nofile: Option<u64>,
}

impl Ceiling {
    /// How many client threads fit beside `service_threads` of the proxy's own.
    pub fn clients(&self, service_threads: u64) -> u64 {
        self.threads.saturating_sub(service_threads)
    }

    /// A warning for each way `max_clients` (and `max_pending` connections, which hold a
    /// descriptor each) cannot all be had here, naming what to raise.
    pub fn warnings(
        &self,
        max_clients: u64,
        max_pending: u64,
        service_threads: u64,
    ) -> Vec<String> {
        let mut out = Vec::new();
        let clients = self.clients(service_threads);
        if let Some(bound) = &self.set_by {
            if clients < max_clients {
                out.push(format!(
                    "max_clients is {max_clients} but {} = {} lets this process have about {} threads, \
                     so at most {clients} clients; newcomers past that get HTTP 503. Raise {}",
                    bound.limit, bound.value, bound.threads, bound.raise
                ));
            }
        }
        if let (Some(fds), Some(nofile)) = (self.connection_descriptors, self.nofile) {
            if fds < max_clients + max_pending {
                out.push(format!(
                    "max_clients ({max_clients}) plus max_pending_connections ({max_pending}) need \
                     {} descriptors but the open-file limit ({nofile}, raised to the hard limit at \
                     start) leaves {fds}; connections past that wait in the listen queue. Raise \
                     LimitNOFILE= in the unit (the hard limit: ulimit -Hn in a shell, as root)",
                    max_clients + max_pending
                ));
            }
        }
        out
    }
}

impl fmt::Display for Ceiling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.set_by {
            None => write!(f, "no limit on threads found")?,
            Some(b) => write!(
                f,
                "about {} threads, set by {} = {}",
                b.threads, b.limit, b.value
            )?,
        }
        let others: Vec<String> = self
            .bounds
            .iter()
            .filter(|b| Some(*b) != self.set_by.as_ref())
            .map(|b| format!("{} = {} allows {}", b.limit, b.value, b.threads))
            .collect();
        if !others.is_empty() {
            write!(f, " ({})", others.join("; "))?;
        }
        if let Some(nofile) = self.nofile {
            write!(f, "; open-file limit {nofile}")?;
        }
        Ok(())
    }
}

/// Works out the ceiling from what [`measure`] read.
pub fn compute(i: &Inputs) -> Ceiling {
    let mut bounds = Vec::new();
    let own = i.own_threads;
    if let Some(max) = i.max_map_count {
        let free = max.saturating_sub(i.maps + MAP_RESERVE);
        bounds.push(Bound {
            limit: "vm.max_map_count",
            value: max,
            threads: own + free / MAPS_PER_THREAD,
            raise: "vm.max_map_count (sysctl; e.g. 262144 in /etc/sysctl.d/60-fxproxy.conf)",
        });
    }
    let others = |total: u64| total.saturating_sub(own);
    if let (Some(max), Some(total)) = (i.threads_max, i.system_threads) {
        bounds.push(Bound {
            limit: "kernel.threads-max",
            value: max,
            threads: max.saturating_sub(others(total) + SHARED_MARGIN),
            raise: "kernel.threads-max (sysctl)",
        });
    }
    if let (Some(max), Some(total)) = (i.pid_max, i.system_threads) {
        // Low pids are reserved for the kernel's first tasks.
        bounds.push(Bound {
            limit: "kernel.pid_max",
            value: max,
            threads: max.saturating_sub(others(total) + 300 + SHARED_MARGIN),
            raise: "kernel.pid_max (sysctl)",
        });
    }
    if let (Some(max), Some(user)) = (i.nproc, i.user_threads) {
        bounds.push(Bound {
            limit: "RLIMIT_NPROC",
            value: max,
            threads: max.saturating_sub(others(user) + SHARED_MARGIN),
            raise: "LimitNPROC= in the unit (ulimit -u in a shell)",
        });
    }
    if let Some((max, current)) = i.cgroup_pids {
        bounds.push(Bound {
            limit: "the cgroup's pids.max",
            value: max,
            threads: max.saturating_sub(others(current) + SHARED_MARGIN),
            raise: "TasksMax= in the unit",
        });
    }
    if let Some(max) = i.address_space {
        let free = max.saturating_sub(i.vm_size + i.arena_reserve + ADDRESS_SPACE_RESERVE);
        bounds.push(Bound {
            limit: "RLIMIT_AS",
            value: max,
            threads: own + free / ADDRESS_SPACE_PER_THREAD,
            raise: "LimitAS= in the unit (ulimit -v in a shell)",
        });
    }
    let set_by = bounds.iter().min_by_key(|b| b.threads).cloned();
    Ceiling {
        threads: set_by.as_ref().map_or(u64::MAX, |b| b.threads),
        set_by,
        bounds,
        connection_descriptors: i
            .nofile
            .map(|n| n.saturating_sub(i.open_fds + DESCRIPTOR_RESERVE)),
        nofile: i.nofile,
    }
}

/// The soft open-file limit raised to the hard one, as Go's runtime does for every server: a
/// shell's usual `ulimit -n` of 1024 would hold the proxy to about 950 clients, while the hard
/// limit is usually far higher. Returns the soft limit before and after; nothing changes when
/// it was at the hard limit already (or the limits cannot be read).
pub fn raise_open_files() -> Option<(u64, u64)> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft >= hard {
        return None;
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).ok()?;
    Some((soft, hard))
}

/// Reads the limits that apply to this process now.
pub fn measure() -> Ceiling {
    compute(&read_inputs())
}

fn read_inputs() -> Inputs {
    let status = read("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> Option<&str> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    let first_number = |name: &str| -> Option<u64> {
        field(name)?
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
    };
    let own_threads = first_number("Threads:").unwrap_or(1);
    let uid = first_number("Uid:");
    let vm_size = first_number("VmSize:").map_or(0, |kb| kb * 1024);
    let limits = read("/proc/self/limits").unwrap_or_default();
    let privileged = field("CapEff:")
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        // CAP_SYS_ADMIN (21) or CAP_SYS_RESOURCE (24) exempt a process from RLIMIT_NPROC.
        .is_some_and(|caps| caps & (1 << 21 | 1 << 24) != 0);
    let nproc = soft_limit(&limits, "Max processes").filter(|_| !privileged);
    Inputs {
        max_map_count: number("/proc/sys/vm/max_map_count"),
        maps: read("/proc/self/maps").map_or(0, |m| m.lines().count() as u64),
        threads_max: number("/proc/sys/kernel/threads-max"),
        pid_max: number("/proc/sys/kernel/pid_max"),
        // The fourth field of loadavg is running/total tasks on the host.
        system_threads: read("/proc/loadavg")
            .and_then(|l| l.split_whitespace().nth(3)?.split('/').nth(1)?.parse().ok()),
        user_threads: match (nproc, uid) {
            (Some(_), Some(uid)) => Some(threads_of_user(uid)),
            _ => None,
        },
        nproc,
        cgroup_pids: read("/proc/self/cgroup")
            .and_then(|c| cgroup_pids(&c, Path::new("/sys/fs/cgroup"))),
        address_space: soft_limit(&limits, "Max address space"),
        vm_size,
        arena_reserve: arena_reserve(),
        own_threads,
        nofile: soft_limit(&limits, "Max open files"),
        open_fds: std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64),
    }
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn number(path: &str) -> Option<u64> {
    read(path)?.trim().parse().ok()
}

/// The soft limit of one row of `/proc/self/limits`; `None` when unlimited.
pub fn soft_limit(limits: &str, row: &str) -> Option<u64> {
    let rest = limits.lines().find_map(|l| l.strip_prefix(row))?;
    rest.split_whitespace().next()?.parse().ok()
}

/// Threads of every process whose real user is `uid`.
fn threads_of_user(uid: u64) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(|e| {
        let name = e.ok()?.file_name();
        name.to_str()?.parse::<u64>().ok()?;
        let status = std::fs::read_to_string(format!("/proc/{}/status", name.to_str()?)).ok()?;
        let owner: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        if owner != uid {
            return None;
        }
        status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))?
            .trim()
            .parse::<u64>()
            .ok()
    })
    .sum()
}

/// The tightest `pids.max` (with its `pids.current`) over this process's cgroup and its
/// ancestors, for cgroup v2 (`0::/path`) or the v1 pids controller (`N:pids:/path`).
pub fn cgroup_pids(proc_cgroup: &str, root: &Path) -> Option<(u64, u64)> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let base = if controllers.is_empty() {
            root.to_path_buf()
        } else if controllers.split(',').any(|c| c == "pids") {
            root.join("pids")
        } else {
            continue;
        };
        let mut dir = base.join(path.trim_start_matches('/'));
        loop {
            dirs.push(dir.clone());
            if dir == base || !dir.pop() {
                break;
            }
        }
    }
    dirs.iter()
        .filter_map(|d| {
            let max: u64 = std::fs::read_to_string(d.join("pids.max"))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            let current: u64 = std::fs::read_to_string(d.join("pids.current"))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            Some((max, current))
        })
        .min_by_key(|(max, current)| max.saturating_sub(*current))
}

/// Address space glibc's malloc may yet reserve for arenas: `MALLOC_ARENA_MAX`, or eight per
/// core on a 64-bit host. musl has no arenas.
fn arena_reserve() -> u64 {
    if cfg!(target_env = "musl") {
        return 0;
    }
    let arenas = std::env::var("MALLOC_ARENA_MAX")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or_else(|| 8 * std::thread::available_parallelism().map_or(1, |n| n.get() as u64));
    arenas * ARENA_SIZE
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stock() -> Inputs {
        Inputs {
            max_map_count: Some(65_530),
            maps: 90,
            threads_max: Some(192_730),
            pid_max: Some(32_768),
            system_threads: Some(200),
            own_threads: 8,
            nofile: Some(20_000),
            open_fds: 12,
            vm_size: 200 << 20,
            arena_reserve: 1 << 30,
            ..Inputs::default()
        }
    }

    #[test]
    fn the_map_count_sets_the_ceiling_on_a_stock_host() {
        let c = compute(&stock());
        let bound = c.set_by.clone().unwrap();
        assert_eq!(bound.limit, "vm.max_map_count");
        // (65530 - 90 - 256) / 4 + 8
        assert_eq!(c.threads, 16_304);
        assert_eq!(c.connection_descriptors, Some(20_000 - 12 - 64));
        let text = c.to_string();
        assert!(
            text.starts_with("about 16304 threads, set by vm.max_map_count = 65530"),
            "{text}"
        );
        assert!(text.contains("kernel.pid_max = 32768 allows"), "{text}");
    }

    #[test]
    fn the_tightest_limit_wins_and_others_are_counted_out() {
        let mut i = stock();
        i.cgroup_pids = Some((12_288, 108));
        let c = compute(&i);
        assert_eq!(c.set_by.unwrap().limit, "the cgroup's pids.max");
        // 12288 - (108 - 8 other tasks in the cgroup) - 32
        assert_eq!(c.threads, 12_156);
        i.nproc = Some(4_096);
        i.user_threads = Some(1_008);
        assert_eq!(compute(&i).threads, 4_096 - 1_000 - 32);
    }

    #[test]
    fn an_address_space_limit_counts_the_arenas_it_must_leave_room_for() {
        let mut i = stock();
        i.address_space =
            Some((200 << 20) + (1 << 30) + (128 << 20) + 300 * ADDRESS_SPACE_PER_THREAD);
        let c = compute(&i);
        assert_eq!(c.set_by.unwrap().limit, "RLIMIT_AS");
        assert_eq!(c.threads, 308);
        i.address_space = Some(100 << 20);
        assert_eq!(compute(&i).threads, 8, "no room for any more");
    }

    #[test]
    fn warnings_name_what_to_raise() {
        let c = compute(&stock());
        assert!(
            c.warnings(10_000, 10_000, 16).len() == 1,
            "descriptors only"
        );
        let w = c.warnings(20_000, 10_000, 16);
        assert_eq!(w.len(), 2);
        assert!(
            w[0].contains("vm.max_map_count = 65530") && w[0].contains("at most 16288 clients"),
            "{}",
            w[0]
        );
        assert!(w[1].contains("LimitNOFILE="), "{}", w[1]);
        let unlimited = compute(&Inputs::default());
        assert_eq!(unlimited.threads, u64::MAX);
        assert!(unlimited.warnings(1_000_000, 10_000, 16).is_empty());
    }

    #[test]
    fn reads_limits_rows_and_cgroups() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max processes             96365                96365                processes\n\
                      Max open files            1024                 20000                files\n\
                      Max address space         unlimited            unlimited            bytes\n";
        assert_eq!(soft_limit(limits, "Max processes"), Some(96_365));
        assert_eq!(soft_limit(limits, "Max open files"), Some(1_024));
        assert_eq!(soft_limit(limits, "Max address space"), None);

        let root = std::env::temp_dir().join(format!("fxproxy-cgroup-{}", std::process::id()));
        let leaf = root.join("system.slice/fxproxy.service");
        std::fs::create_dir_all(&leaf).unwrap();
        std::fs::write(leaf.join("pids.max"), "12288\n").unwrap();
        std::fs::write(leaf.join("pids.current"), "40\n").unwrap();
        std::fs::write(root.join("system.slice/pids.max"), "max\n").unwrap();
        std::fs::write(root.join("system.slice/pids.current"), "300\n").unwrap();
        assert_eq!(
            cgroup_pids("0::/system.slice/fxproxy.service\n", &root),
            Some((12_288, 40))
        );
        let v1 = root.join("pids/test");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::write(v1.join("pids.max"), "300\n").unwrap();
        std::fs::write(v1.join("pids.current"), "7\n").unwrap();
        assert_eq!(
            cgroup_pids("12:pids:/test\n4:memory:/x\n", &root),
            Some((300, 7))
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}
