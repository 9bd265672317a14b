//! Telling systemd what the proxy is doing (`sd_notify`), so that `systemctl` knows it:
//! `READY=1` once it serves, `RELOADING=1` (with `MONOTONIC_USEC`) and then `READY=1` around a
//! reload, with a `STATUS=` line that says whether the new configuration was taken and, if
//! not, why; `STOPPING=1` when it stops; and `WATCHDOG=1` while it really works (see
//! [`Watchdog`]).
//!
//! The protocol is one datagram of `KEY=VALUE` lines to the socket named by `NOTIFY_SOCKET` (a
//! path, or an abstract name written with a leading `@`). std's `UnixDatagram` sends it: no
//! library and no unsafe code. Without `NOTIFY_SOCKET` (not started by systemd, or a unit of
//! `Type=exec`) every call does nothing.

use crate::base::heartbeat::Heartbeats;
use crate::base::stop::Stop;
use log::{debug, warn};
use std::ffi::OsString;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// The longest `STATUS=` text sent: `systemctl status` shows one line.
const STATUS_MAX: usize = 400;
/// The watchdog thread only compares counters and sends a datagram.
const WATCHDOG_STACK: usize = 64 * 1024;

/// Where notifications go; does nothing when systemd did not ask for them.
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// From this process's `NOTIFY_SOCKET`. A socket that cannot be used is logged once and
    /// the proxy runs on without notifying (systemd then times the start out, which says why).
    pub fn from_env() -> Notifier {
        match std::env::var_os("NOTIFY_SOCKET") {
            None => Notifier::none(),
            Some(name) => Notifier::to(&name).unwrap_or_else(|e| {
                warn!(
                    "NOTIFY_SOCKET={}: cannot notify systemd: {e}",
                    crate::base::logsafe::escaped(&name.to_string_lossy())
                );
                Notifier::none()
            }),
        }
    }

    /// A notifier that sends nothing.
    pub fn none() -> Notifier {
        Notifier { target: None }
    }

    /// A notifier sending to `name`: a path, or `@name` for an abstract socket.
    pub fn to(name: &OsString) -> io::Result<Notifier> {
        let bytes = name.as_bytes();
        let addr = match bytes.first() {
            Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..])?,
            Some(b'/') => SocketAddr::from_pathname(name)?,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "neither an absolute path nor an abstract name (@…)",
                ))
            }
        };
        Ok(Notifier {
            target: Some((UnixDatagram::unbound()?, addr)),
        })
    }

    /// Whether systemd listens.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends `lines` as one datagram. A failure is logged (at debug: it recurs with every
    /// watchdog ping) and otherwise ignored: the proxy serves on either way.
    fn send(&self, lines: &str) {
        if let Some((socket, addr)) = &self.target {
            if let Err(e) = socket.send_to_addr(lines.as_bytes(), addr) {
                debug!("cannot notify systemd ({}): {e}", first_line(lines));
            }
        }
    }

    /// The proxy serves: `READY=1`, with a status line.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}", status_text(status)));
    }

    /// A reload begins: `RELOADING=1` with the time on `CLOCK_MONOTONIC`, which systemd
    /// compares with the moment it sent SIGHUP (`Type=notify-reload`).
    pub fn reloading(&self) {
        if !self.enabled() {
            return;
        }
        let mut lines = String::from("RELOADING=1\nSTATUS=reloading the configuration");
        match monotonic_usec() {
            Ok(usec) => lines.push_str(&format!("\nMONOTONIC_USEC={usec}")),
            Err(e) => debug!("cannot read CLOCK_MONOTONIC: {e}"),
        }
        self.send(&lines);
    }

    /// The reload is over, taken or refused: `READY=1` and a status line saying which.
    pub fn reloaded(&self, outcome: &Result<String, String>) {
        let status = match outcome {
            Ok(done) => done.clone(),
            Err(why) => {
                format!("configuration reload refused, the running configuration is kept: {why}")
            }
        };
        self.ready(&status);
    }

    /// The proxy stops: `STOPPING=1`, with why or how.
    pub fn stopping(&self, status: &str) {
        self.send(&format!("STOPPING=1\nSTATUS={}", status_text(status)));
    }

    fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }
}

/// `STATUS=` takes one line: control characters (a newline would start another assignment)
/// become spaces, and a long message is cut.
fn status_text(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > STATUS_MAX {
        let mut end = STATUS_MAX;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.push('…');
    }
    out
}

fn first_line(lines: &str) -> &str {
    lines.lines().next().unwrap_or("")
}

/// Microseconds on `CLOCK_MONOTONIC`, the clock systemd stamps a reload request with.
pub fn monotonic_usec() -> io::Result<u64> {
    let now = nix::time::ClockId::CLOCK_MONOTONIC
        .now()
        .map_err(io::Error::from)?;
    let secs = u64::try_from(now.tv_sec()).unwrap_or(0);
    let nanos = u64::try_from(now.tv_nsec()).unwrap_or(0);
    Ok(secs * 1_000_000 + nanos / 1_000)
}

/// How often to feed systemd's watchdog, from `WATCHDOG_USEC` and `WATCHDOG_PID` (as
/// `sd_watchdog_enabled` reads them): a third of the timeout, which keeps well inside the
/// "at least every half" systemd asks for even when a tick runs late on a busy host. `None`
/// when there is no watchdog, or it is meant for another process.
pub fn watchdog_period(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok() != Some(own_pid) {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    Some(Duration::from_micros(usec / 3).max(Duration::from_millis(10)))
}

/// [`watchdog_period`] of this process's environment.
pub fn watchdog_period_from_env() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    watchdog_period(usec.as_deref(), pid.as_deref(), std::process::id())
}

/// How long the watched loops may wait between two beats when the watchdog is fed every
/// `period`: a quarter of it (at most a second), so a loop with nothing to do still beats
/// several times between two checks.
pub fn beat_every(period: Option<Duration>) -> Duration {
    let every = crate::base::heartbeat::DEFAULT_EVERY;
    period.map_or(every, |p| (p / 4).clamp(Duration::from_millis(5), every))
}

/// Feeds systemd's watchdog, but only while the proxy works: every period it looks at the
/// distributor's and the admission loop's heartbeats, and sends `WATCHDOG=1` only when both
/// have beaten since it last looked. A loop that is stuck (a deadlock, an endless loop) stops
/// beating, the pings stop, and after `WatchdogSec=` systemd kills and restarts the proxy. A
/// timer that pinged blindly would keep a hung proxy alive for ever.
pub struct Watchdog {
    stop: Arc<Stop>,
    handle: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Starts the `watchdog` thread, checking every `period`.
    pub fn start(
        notifier: Arc<Notifier>,
        beats: Arc<Heartbeats>,
        period: Duration,
    ) -> io::Result<Watchdog> {
        let stop = Arc::new(Stop::new());
        let thread_stop = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("watchdog".into())
            .stack_size(WATCHDOG_STACK)
            .spawn(move || watch(&notifier, &beats, period, &thread_stop))?;
        Ok(Watchdog {
            stop,
            handle: Some(handle),
        })
    }

    /// Ends the thread and waits for it.
    pub fn stop(mut self) {
        self.stop.set();
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

fn watch(notifier: &Notifier, beats: &Heartbeats, period: Duration, stop: &Stop) {
    let mut last = beats.counts();
    let mut was_stuck = false;
    while !stop.wait(period) {
        let now = beats.counts();
        let stuck = stuck_loops(&last, &now);
        last = now;
        if let Some(verdict) = judge(&stuck, period, &mut was_stuck) {
            warn!("{verdict}");
        }
        if stuck.is_empty() {
            notifier.watchdog();
        }
    }
}

/// The loops whose count has not moved between two looks.
fn stuck_loops(last: &[(&'static str, u64)], now: &[(&'static str, u64)]) -> Vec<&'static str> {
    now.iter()
        .zip(last)
        .filter(|(n, l)| n.1 == l.1)
        .map(|(n, _)| n.0)
        .collect()
}

/// What to log about one check: a loop that stopped making progress (once, until it
/// recovers), and its recovery.
fn judge(stuck: &[&str], period: Duration, was_stuck: &mut bool) -> Option<String> {
    let now_stuck = !stuck.is_empty();
    let said = match (now_stuck, *was_stuck) {
        (true, false) => Some(format!(
            "watchdog: the {} loop made no progress in {:.1} s; systemd is not told the proxy is alive, and restarts it once WatchdogSec= passes",
            stuck.join(" and "),
            period.as_secs_f64()
        )),
        (false, true) => Some("watchdog: every loop makes progress again".to_string()),
        _ => None,
    };
    *was_stuck = now_stuck;
    said
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(tag: &str) -> (UnixDatagram, std::path::PathBuf) {
        let path =
            std::env::temp_dir().join(format!("fxproxy-notify-{tag}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        (socket, path)
    }

    fn next(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 1024];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn ready_reload_and_stop_reach_a_path_socket() {
        let (socket, path) = listener("path");
        let notifier = Notifier::to(&path.clone().into_os_string()).unwrap();
        assert!(notifier.enabled());
        notifier.ready("serving on 127.0.0.1:8765");
        assert_eq!(next(&socket), "READY=1\nSTATUS=serving on 127.0.0.1:8765");
        let before = monotonic_usec().unwrap();
        notifier.reloading();
        let reloading = next(&socket);
        let after = monotonic_usec().unwrap();
        let usec: u64 = reloading
            .lines()
            .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
            .expect("MONOTONIC_USEC")
            .parse()
            .unwrap();
        assert!(reloading.starts_with("RELOADING=1\n"), "{reloading}");
        assert!(before <= usec && usec <= after, "{before} {usec} {after}");
        notifier.reloaded(&Err(
            "proxy.conf:3: key `x`: unknown key\nsecond line".into()
        ));
        assert_eq!(
            next(&socket),
            "READY=1\nSTATUS=configuration reload refused, the running configuration is kept: proxy.conf:3: key `x`: unknown key second line"
        );
        notifier.stopping("stopping");
        assert_eq!(next(&socket), "STOPPING=1\nSTATUS=stopping");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn an_abstract_socket_is_written_with_an_at_sign() {
        let name = format!("fxproxy-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let notifier = Notifier::to(&OsString::from(format!("@{name}"))).unwrap();
        notifier.stopping("bye");
        assert_eq!(next(&socket), "STOPPING=1\nSTATUS=bye");
        assert!(Notifier::to(&OsString::from("relative/path")).is_err());
        assert!(!Notifier::none().enabled());
    }

    #[test]
    fn the_watchdog_period_is_a_third_of_the_timeout_and_only_for_this_process() {
        let third = Some(Duration::from_secs(10));
        assert_eq!(watchdog_period(Some("30000000"), None, 7), third);
        assert_eq!(watchdog_period(Some("30000000"), Some("7"), 7), third);
        assert_eq!(watchdog_period(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_period(None, None, 7), None);
        assert_eq!(watchdog_period(Some("0"), None, 7), None);
        assert_eq!(watchdog_period(Some("soon"), None, 7), None);
        assert_eq!(beat_every(None), Duration::from_secs(1));
        assert_eq!(beat_every(third), Duration::from_secs(1));
        assert_eq!(
            beat_every(Some(Duration::from_millis(400))),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn status_text_is_one_line_and_bounded() {
        assert_eq!(status_text("a\nb\tc"), "a b c");
        let long = "é".repeat(STATUS_MAX);
        let cut = status_text(&long);
        assert!(cut.len() <= STATUS_MAX + '…'.len_utf8() && cut.ends_with('…'));
    }

    #[test]
    fn a_stuck_loop_stops_the_pings_and_is_named_once() {
        let (socket, path) = listener("watchdog");
        let notifier = Arc::new(Notifier::to(&path.clone().into_os_string()).unwrap());
        let beats = Arc::new(Heartbeats::default());
        let period = Duration::from_millis(50);
        let dog = Watchdog::start(Arc::clone(&notifier), Arc::clone(&beats), period).unwrap();
        // Both beat: pings come.
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let mut buf = [0u8; 64];
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut pinged = false;
        while !pinged && std::time::Instant::now() < deadline {
            beats.distributor.beat();
            beats.admission.beat();
            pinged = matches!(socket.recv(&mut buf), Ok(n) if &buf[..n] == b"WATCHDOG=1");
        }
        assert!(pinged, "no WATCHDOG=1 while both loops beat");
        assert_eq!(
            stuck_loops(
                &[("distributor", 5), ("admission", 9)],
                &[("distributor", 6), ("admission", 9)]
            ),
            vec!["admission"]
        );
        assert!(stuck_loops(&[("distributor", 5)], &[("distributor", 6)]).is_empty());
        dog.stop();
        let _ = std::fs::remove_file(&path);

        let mut was = false;
        let said = judge(&["admission"], period, &mut was).unwrap();
        assert!(
            said.contains("the admission loop made no progress"),
            "{said}"
        );
        assert_eq!(judge(&["admission"], period, &mut was), None);
        assert!(judge(&[], period, &mut was).unwrap().contains("again"));
    }
}
