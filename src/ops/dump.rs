//! The state dump (SIGUSR1, or `GET /debug/state` on the admin address): what every thread is
//! doing, written to the log (or answered), for whoever debugs the proxy with `top -H`, gdb and
//! `/proc/PID/task`.
//!
//! One line per thread, from the kernel's own list (`/proc/self/task`): its id (`tid`: the PID
//! column of `top -H`, gdb's LWP, the directory in `/proc/PID/task`), its name as `top -H` shows
//! it, the kernel's state letter and the CPU time it has used (read from `/proc` for the threads
//! listed only), then what fxproxy knows it to be doing; for a client thread also its peer, key
//! prefix, queue and the time since it last wrote. Connections that have not authenticated have no
//! thread: the admission loop lists them (`pending` lines, oldest first). A summary line ends the
//! dump.
//!
//! It is written by a thread of its own, a line at a time, and takes no lock the quotes go through:
//! client threads keep their own records ([`crate::clients::activity`]), a queue's depth is read
//! from its counters, and the admission loop answers between two polls. It is bounded: at most
//! [`CLIENT_LINES`] client threads (those furthest behind first) and [`PENDING_LINES`] pending
//! connections are listed, the summary counts all of them. Fifteen thousand lines at once would
//! trip journald's rate limit (10,000 messages per 30 s by default), which then drops the proxy's
//! other messages too.

use crate::base::metrics::UpstreamState;
use crate::clients::activity::ClientActivity;
use crate::clients::admission::{Asker, PendingSnapshot};
use crate::clients::context::Context;
use log::Level;
use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Client threads listed at most; the summary counts every one.
pub const CLIENT_LINES: usize = 2000;
/// Pending connections listed at most, the oldest first.
pub const PENDING_LINES: usize = 500;
/// How long the admission loop has to answer.
const ASK_WAIT: Duration = Duration::from_secs(1);
/// Lines written (each after reading its thread's `/proc` entry) between two pauses.
const CHUNK: usize = 100;
/// The pause: the dump is in no hurry, and with the proxy busy on every core, a thread that
/// reads `/proc` and writes the log flat out takes a whole core from the client threads
/// for as long as it runs (0.1 to 0.25 s for 1,011 threads here).
const PAUSE: Duration = Duration::from_millis(1);
/// The unit of CPU times in `/proc/PID/task/TID/stat`: USER_HZ, 100 on every Linux
/// architecture fxproxy is built for.
const TICKS_PER_SEC: u64 = 100;

/// What a client thread can be doing (see [`ClientActivity::doing`]), in the summary's order.
const DOINGS: [&str; 7] = [
    "writing",
    "parked",
    "batch-wait",
    "blocked",
    "awaiting-pong",
    "joining",
    "closing",
];

/// One thread, as the kernel lists it.
#[derive(Debug, PartialEq)]
struct Task {
    tid: i32,
    /// Its name as `top -H` shows it (at most 15 bytes).
    name: String,
    /// R running, S sleeping, D in the kernel, T stopped, …
    state: char,
    cpu: Duration,
}

/// The id of every thread of this process, in order.
fn list_tids() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    let mut tids: Vec<i32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    tids
}

/// One thread as the kernel sees it now; `None` once it has gone. Read only for the threads
/// a dump lists: the file costs the kernel a few microseconds to make on an idle host, much
/// more on a busy one, and there may be fifteen thousand threads.
fn read_task(tid: i32) -> Option<Task> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    parse_stat(tid, &stat)
}

/// `/proc/PID/task/TID/stat`: `tid (name) state …`, where the name may hold spaces and
/// parentheses, so it runs to the last `)`; user and system time are fields 14 and 15.
fn parse_stat(tid: i32, text: &str) -> Option<Task> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let name = text.get(open + 1..close)?.to_string();
    let fields: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Task {
        tid,
        name,
        state,
        cpu: Duration::from_millis(ticks * 1000 / TICKS_PER_SEC),
    })
}

/// Where in the kernel a thread waits (`futex_wait_queue`, `do_epoll_wait`, …), where the
/// kernel tells.
fn wchan(tid: i32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/wchan")).ok()?;
    let text = text.trim();
    (!text.is_empty() && text != "0").then(|| text.to_string())
}

fn secs(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

/// A client thread's line, and what ranks it among those to list.
struct ClientRow {
    tid: i32,
    doing: &'static str,
    queue: usize,
    since_write: Option<Duration>,
    record: Arc<ClientActivity>,
}

impl ClientRow {
    /// Lower is more worth listing: a client in trouble, then the deepest queue, then the
    /// longest without a write.
    fn rank(&self) -> (u8, std::cmp::Reverse<usize>, std::cmp::Reverse<Duration>) {
        let trouble = match self.doing {
            "blocked" | "awaiting-pong" | "closing" => 0,
            _ if self.record.kicked().is_some() => 0,
            "writing" | "joining" => 1,
            _ => 2,
        };
        (
            trouble,
            std::cmp::Reverse(self.queue),
            std::cmp::Reverse(self.since_write.unwrap_or(Duration::ZERO)),
        )
    }

    /// As the kernel names the thread: `client-ID`, cut to 15 bytes as `top -H` shows it.
    fn name(&self) -> String {
        let mut name = format!("client-{}", self.record.id);
        name.truncate(15);
        name
    }

    fn line(&self, task: Option<&Task>, now: Instant) -> String {
        let r = &self.record;
        let (name, kernel) = match task {
            Some(t) => (
                t.name.clone(),
                format!("kernel={} cpu={}", t.state, secs(t.cpu)),
            ),
            None => (self.name(), "kernel=- cpu=-".to_string()),
        };
        let mut line = format!(
            "thread tid={} name={name} {kernel} doing={} peer={} key={} queue={} last_write={} connected={}",
            self.tid,
            self.doing,
            r.peer,
            r.key,
            self.queue,
            self.since_write.map_or("never".to_string(), secs),
            secs(r.age(now)),
        );
        if let Some(why) = r.kicked() {
            let _ = write!(line, " kicked={why}");
        }
        line
    }
}

/// What fxproxy's own threads do, by name.
fn service(ctx: &Context, task: &Task, pending: Option<&PendingSnapshot>) -> String {
    let now_ms = ctx.metrics.now_ms();
    let ago = |ms: u64| secs(Duration::from_millis(now_ms.saturating_sub(ms)));
    if task.tid as u32 == std::process::id() {
        return "doing=main (waits until the proxy stops)".to_string();
    }
    match task.name.as_str() {
        "upstream" => {
            let last = ctx.metrics.last_quote_ms.load(Ordering::Relaxed);
            let last = if last == 0 {
                "never".to_string()
            } else {
                ago(last)
            };
            match ctx.metrics.upstream() {
                UpstreamState::NotYetConnected => format!("doing=connecting last_quote={last}"),
                UpstreamState::Connected { since_ms } => format!(
                    "doing=reading-quotes connected={} last_quote={last}",
                    ago(since_ms)
                ),
                UpstreamState::Reconnecting { since_ms, reason } => format!(
                    "doing=reconnecting since={} reason={reason:?} last_quote={last}",
                    ago(since_ms)
                ),
                UpstreamState::Refused { since_ms, .. } => format!(
                    "doing=waiting-after-refusal since={} last_quote={last}",
                    ago(since_ms)
                ),
            }
        }
        "distributor" => format!(
            "doing=fanning-out quotes_received={} batching={}",
            ctx.metrics.quotes_received.load(Ordering::Relaxed),
            ctx.hub.batching()
        ),
        "admission" => match pending {
            Some(p) => format!(
                "doing=admitting pending={}{}",
                p.total,
                if p.paused { " accepting=paused" } else { "" }
            ),
            None => "doing=admitting (did not answer the dump within 1 s)".to_string(),
        },
        "watcher" => "doing=watching-client-sockets".to_string(),
        "housekeeping" => "doing=status-line-and-key-file-checks".to_string(),
        "reaper" => format!(
            "doing=joining-finished-threads threads_started={}",
            ctx.threads.live()
        ),
        "signals" => "doing=waiting-for-signals".to_string(),
        "state-dump" => "doing=writing-this-dump".to_string(),
        "http" => "doing=answering-http-requests (/healthz, /metrics, the page)".to_string(),
        "admin" => "doing=serving-admin_listen".to_string(),
        n if n.starts_with("sim-") => "doing=simulated-source".to_string(),
        n if n.starts_with("client-") => "doing=exiting (its connection is over)".to_string(),
        _ => "doing=-".to_string(),
    }
}

/// Where the dump's lines go, a chunk at a time: the log, or the text of `/debug/state`.
struct Out<'a> {
    ctx: &'a Context,
    emit: &'a mut dyn FnMut(&str),
    written: usize,
}

impl Out<'_> {
    /// False once the proxy is stopping: the rest of the dump is not worth the wait.
    fn line(&mut self, text: &str) -> bool {
        (self.emit)(text);
        self.written += 1;
        if self.written % CHUNK == 0 {
            std::thread::sleep(PAUSE);
            return !self.ctx.stop.is_set();
        }
        true
    }
}

/// Writes the dump to the log. Runs on a thread of its own (see
/// [`crate::server::Control::dump_state`]).
pub fn write(ctx: &Context, asker: &Asker) {
    // A dump is asked for: it is written at info, or at the most severe level the log lets
    // through when that is quieter.
    let Some(level) = log::max_level().to_level().map(|l| l.min(Level::Info)) else {
        return;
    };
    dump(ctx, asker, &mut |line| log::log!(level, "{line}"));
}

/// The dump as text, one line each, as `GET /debug/state` on the admin address answers it:
/// the lines SIGUSR1 writes to the log, without the log's time, level and thread.
pub fn text(ctx: &Context, asker: &Asker) -> String {
    let mut text = String::new();
    dump(ctx, asker, &mut |line| {
        text.push_str(line);
        text.push('\n');
    });
    text
}

/// The dump, a line at a time to `emit`: a header, fxproxy's own threads, the client threads,
/// the pending connections, and the summary; cut short once the proxy is stopping.
fn dump(ctx: &Context, asker: &Asker, emit: &mut dyn FnMut(&str)) {
    let started = Instant::now();
    let mut out = Out {
        ctx,
        emit,
        written: 0,
    };
    let tids = list_tids();
    let records = ctx.activity.snapshot();
    let pending = asker.pending(PENDING_LINES, ASK_WAIT);
    let now = Instant::now();
    let clients = Clients::gather(records, now);
    // fxproxy's own threads (and any other), as the kernel sees them.
    let others: Vec<Task> = tids
        .iter()
        .filter(|tid| !clients.tids.contains(tid))
        .filter_map(|tid| read_task(*tid))
        .collect();

    if !out.line(&header(tids.len(), clients.count, pending.as_ref())) {
        return;
    }
    if !out.threads(&others, pending.as_ref()) {
        return;
    }
    if !out.clients(&clients.rows, now) {
        return;
    }
    if !out.pending(pending.as_ref()) {
        return;
    }
    let summary = summary(
        tids.len(),
        &clients,
        others.len(),
        pending.as_ref(),
        started,
    );
    out.line(&summary);
}

/// The client threads: those the dump lists, and the figures of all of them.
struct Clients {
    /// The lines to write, by tid: every client thread, or those furthest behind.
    rows: Vec<ClientRow>,
    /// Every client thread, listed or not.
    count: usize,
    tids: HashSet<i32>,
    /// How many do each of [`DOINGS`].
    doing: Vec<(&'static str, usize)>,
    /// Frames queued, all queues together.
    queued: usize,
    /// The deepest queue and the thread it is for.
    deepest: Option<(usize, String)>,
    /// The longest time without a write and the thread it is for.
    stalest: Option<(Duration, String)>,
    /// Told to leave, and not gone yet.
    kicked: usize,
}

impl Clients {
    fn gather(records: Vec<Arc<ClientActivity>>, now: Instant) -> Clients {
        let mut rows: Vec<ClientRow> = records
            .into_iter()
            .map(|record| ClientRow {
                tid: record.tid,
                doing: record.doing(),
                queue: record.queued().unwrap_or(0),
                since_write: record.since_last_write(now),
                record,
            })
            .collect();
        let count = rows.len();
        let tids: HashSet<i32> = rows.iter().map(|r| r.tid).collect();
        let mut doing: Vec<(&str, usize)> = DOINGS.iter().map(|d| (*d, 0)).collect();
        for row in &rows {
            if let Some(entry) = doing.iter_mut().find(|(d, _)| *d == row.doing) {
                entry.1 += 1;
            }
        }
        let queued: usize = rows.iter().map(|r| r.queue).sum();
        let deepest = rows
            .iter()
            .max_by_key(|r| r.queue)
            .map(|r| (r.queue, r.name()));
        let stalest = rows
            .iter()
            .filter_map(|r| r.since_write.map(|d| (d, r.name())))
            .max_by_key(|(d, _)| *d);
        let kicked = rows.iter().filter(|r| r.record.kicked().is_some()).count();
        if rows.len() > CLIENT_LINES {
            rows.sort_by_key(ClientRow::rank);
            rows.truncate(CLIENT_LINES);
        }
        rows.sort_by_key(|r| r.tid);
        Clients {
            rows,
            count,
            tids,
            doing,
            queued,
            deepest,
            stalest,
            kicked,
        }
    }
}

/// The dump's first line: how many threads and connections, and how to find a thread.
fn header(threads: usize, clients: usize, pending: Option<&PendingSnapshot>) -> String {
    let pid = std::process::id();
    format!(
        "state dump: pid {pid}, {threads} threads ({clients} client threads), {} pending connections without a thread; tid is the PID column of `top -H`, the LWP in gdb and /proc/{pid}/task/TID",
        pending.map_or("?".to_string(), |p| p.total.to_string()),
    )
}

impl Out<'_> {
    /// A line for each of fxproxy's own threads (and any other): what the kernel says of it,
    /// and what it is there for.
    fn threads(&mut self, others: &[Task], pending: Option<&PendingSnapshot>) -> bool {
        for task in others {
            let mut line = format!(
                "thread tid={} name={} kernel={} cpu={}",
                task.tid,
                task.name,
                task.state,
                secs(task.cpu)
            );
            if let Some(w) = wchan(task.tid) {
                let _ = write!(line, " wchan={w}");
            }
            let _ = write!(line, " {}", service(self.ctx, task, pending));
            if !self.line(&line) {
                return false;
            }
        }
        true
    }

    /// A line for each client thread listed, with what the kernel says of it now.
    fn clients(&mut self, rows: &[ClientRow], now: Instant) -> bool {
        for row in rows {
            if !self.line(&row.line(read_task(row.tid).as_ref(), now)) {
                return false;
            }
        }
        true
    }

    /// A line for each pending connection listed, the oldest first.
    fn pending(&mut self, pending: Option<&PendingSnapshot>) -> bool {
        if let Some(p) = pending {
            for (peer, phase, age) in &p.oldest {
                let line = format!("pending peer={peer} phase={phase} age={}", secs(*age));
                if !self.line(&line) {
                    return false;
                }
            }
        }
        true
    }
}

/// The dump's last line: the threads by what they do, the pending connections by phase, the
/// queues, and how much of it all was listed.
fn summary(
    threads: usize,
    clients: &Clients,
    others: usize,
    pending: Option<&PendingSnapshot>,
    started: Instant,
) -> String {
    let count = clients.count;
    let mut summary = format!("state dump summary: {threads} threads: {count} client threads (");
    let counts: Vec<String> = clients
        .doing
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(d, n)| format!("{n} {d}"))
        .collect();
    let _ = write!(
        summary,
        "{}), {others} others",
        if counts.is_empty() {
            "none".to_string()
        } else {
            counts.join(", ")
        },
    );
    if clients.kicked > 0 {
        let _ = write!(summary, "; {} told to leave", clients.kicked);
    }
    summary.push_str(&pending_summary(pending));
    let _ = write!(summary, "; {} frames queued", clients.queued);
    if let Some((depth, name)) = clients.deepest.as_ref().filter(|(d, _)| *d > 0) {
        let _ = write!(summary, " (deepest {depth} on {name})");
    }
    if let Some((since, name)) = &clients.stalest {
        let _ = write!(
            summary,
            "; longest without a write {} ({name})",
            secs(*since)
        );
    }
    let listed = clients.rows.len();
    let _ = write!(
        summary,
        "; listed {listed} of {count} client threads{} and {} of {} pending connections (the oldest); written in {:.0} ms",
        if listed < count {
            " (those furthest behind)"
        } else {
            ""
        },
        pending.map_or(0, |p| p.oldest.len()),
        pending.map_or(0, |p| p.total),
        started.elapsed().as_secs_f64() * 1000.0
    );
    summary
}

/// The summary's part on the connections that have no thread yet.
fn pending_summary(pending: Option<&PendingSnapshot>) -> String {
    let Some(p) = pending else {
        return "; pending connections unknown (admission did not answer)".to_string();
    };
    let phases: Vec<String> = p
        .by_phase
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(phase, n)| format!("{n} {phase}"))
        .collect();
    format!(
        "; {} pending connections{}{}",
        p.total,
        if phases.is_empty() {
            String::new()
        } else {
            format!(" ({})", phases.join(", "))
        },
        if p.paused { ", accepting paused" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_name_state_and_cpu_even_with_odd_names() {
        let line = "4242 (client-17) S 1 1 1 0 -1 4194368 30 0 0 0 123 77 0 0 20 0 1 0 5 0 0";
        assert_eq!(
            parse_stat(4242, line),
            Some(Task {
                tid: 4242,
                name: "client-17".into(),
                state: 'S',
                cpu: Duration::from_secs(2),
            })
        );
        let odd = "7 (a (b) c) R 1 1 1 0 -1 0 0 0 0 0 5 5 0 0";
        let task = parse_stat(7, odd).unwrap();
        assert_eq!((task.name.as_str(), task.state), ("a (b) c", 'R'));
        assert_eq!(task.cpu, Duration::from_millis(100));
        assert_eq!(parse_stat(1, "garbage"), None);
    }

    #[test]
    fn this_process_lists_its_own_threads() {
        let me = nix::unistd::gettid().as_raw();
        assert!(list_tids().contains(&me));
        let task = read_task(me).expect("this thread's stat");
        assert_eq!(task.state, 'R', "it is running: it reads its own stat");
    }
}
