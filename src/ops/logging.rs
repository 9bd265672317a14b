//! Log lines to stderr (the journal, under systemd) with the thread's name in each line, so a
//! line can be matched to `top -H` and gdb's thread list.
//!
//! Two formats (`log_format`): `text`, written by simplelog (`TIME [LEVEL] (thread) message`),
//! and `json`, one object a line with the same four fields (`time`, `level`, `thread`,
//! `message`) for log shippers. Peer text in a message is escaped before it is logged
//! (`base::logsafe`), so it reads the same in either; JSON only adds its own quoting.
//!
//! When stderr is the journal's stream (systemd says so in `$JOURNAL_STREAM`: the device and
//! inode of the socket it gave us, sd-daemon(3)), every line starts with its syslog priority,
//! `<3>` for an error to `<7>` for debug: journald takes the level from it, so
//! `journalctl -p warning` shows warnings and errors only.

use log::{Level, LevelFilter, Log, Metadata, Record};
use parking_lot::Mutex;
use simplelog::{Config, ConfigBuilder, ThreadLogMode, WriteLogger};
use std::io::{self, LineWriter, Stderr, Write};

pub use crate::config::LogFormat;

/// Bytes of one log line gathered before it is written (longer ones go out in pieces).
const LINE_BUFFER: usize = 8 * 1024;

/// Dependencies (rustls, tungstenite) log per frame at debug and below; they are left out.
const NOISY: [&str; 3] = ["rustls", "tungstenite", "mio"];

/// The environment variable systemd sets to the `DEVICE:INODE` of the stream it connected a
/// service's stdout or stderr to (systemd.exec(5)).
const JOURNAL_STREAM: &str = "JOURNAL_STREAM";

pub fn init(level: &str, format: LogFormat) {
    let journal = stderr_is_journal();
    let logger: Box<dyn Log> = match (format, journal) {
        (LogFormat::Text, false) => WriteLogger::new(LevelFilter::Trace, text_config(), stderr()),
        (LogFormat::Text, true) => Box::new(ByLevel::new()),
        (LogFormat::Json, journal) => Box::new(Json {
            journal,
            out: Mutex::new(stderr()),
        }),
    };
    // The logger passes every level and `log`'s global filter decides, so that a reload can
    // change the level (see `set_level`). Only fails when a logger is already set (tests
    // starting several servers): keep that one, and its level.
    if log::set_boxed_logger(logger).is_ok() {
        set_level(level);
    }
}

/// simplelog writes a line in some twenty pieces (the time alone in fourteen), and stderr
/// is unbuffered: a line buffer makes that one write(2) per line.
fn stderr() -> LineWriter<Stderr> {
    LineWriter::with_capacity(LINE_BUFFER, io::stderr())
}

fn text_config() -> Config {
    let mut config = ConfigBuilder::new();
    config
        .set_thread_level(LevelFilter::Error)
        .set_thread_mode(ThreadLogMode::Names)
        .set_target_level(LevelFilter::Off)
        .set_location_level(LevelFilter::Off)
        .set_time_format_rfc3339();
    for noisy in NOISY {
        config.add_filter_ignore_str(noisy);
    }
    config.build()
}

/// Logs from now on at `level` (`error` … `trace`, as in `proxy.conf`).
pub fn set_level(level: &str) {
    log::set_max_level(match level {
        "error" => LevelFilter::Error,
        "warn" => LevelFilter::Warn,
        "debug" => LevelFilter::Debug,
        "trace" => LevelFilter::Trace,
        _ => LevelFilter::Info,
    });
}

/// Whether stderr is the stream systemd connected to the journal.
fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Ok(named) = std::env::var(JOURNAL_STREAM) else {
        return false;
    };
    let Ok(fd) = io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    match std::fs::File::from(fd).metadata() {
        Ok(meta) => names_stream(&named, meta.dev(), meta.ino()),
        Err(_) => false,
    }
}

/// Whether `$JOURNAL_STREAM` (`DEVICE:INODE`, in decimal) names the file `dev`, `ino`. It is
/// inherited by whatever the service starts, whose stderr may be something else: only a
/// match counts.
fn names_stream(named: &str, dev: u64, ino: u64) -> bool {
    match named.trim().split_once(':') {
        Some((d, i)) => d.parse() == Ok(dev) && i.parse() == Ok(ino),
        None => false,
    }
}

/// The syslog priority of a level, as sd-daemon(3)'s `<N>` prefix writes it.
fn priority(level: Level) -> &'static str {
    match level {
        Level::Error => "<3>",
        Level::Warn => "<4>",
        Level::Info => "<6>",
        Level::Debug | Level::Trace => "<7>",
    }
}

fn noisy(target: &str) -> bool {
    NOISY.iter().any(|n| target.starts_with(n))
}

/// Text lines for the journal: one simplelog logger per level, each writing its priority at
/// the start of every line, so the text is exactly what it is elsewhere.
struct ByLevel {
    /// By `Level as usize - 1`: error, warn, info, debug, trace.
    loggers: Vec<WriteLogger<Prefixed<LineWriter<Stderr>>>>,
}

impl ByLevel {
    fn new() -> ByLevel {
        let levels = [
            Level::Error,
            Level::Warn,
            Level::Info,
            Level::Debug,
            Level::Trace,
        ];
        ByLevel {
            loggers: levels
                .iter()
                .map(|level| {
                    let out = Prefixed {
                        prefix: priority(*level).as_bytes(),
                        inner: stderr(),
                        at_start: true,
                    };
                    *WriteLogger::new(LevelFilter::Trace, text_config(), out)
                })
                .collect(),
        }
    }
}

impl Log for ByLevel {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if let Some(logger) = self.loggers.get(record.level() as usize - 1) {
            logger.log(record);
        }
    }

    fn flush(&self) {
        for logger in &self.loggers {
            logger.flush();
        }
    }
}

/// Writes `prefix` at the start of every line.
struct Prefixed<W: Write> {
    prefix: &'static [u8],
    inner: W,
    at_start: bool,
}

impl<W: Write> Write for Prefixed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut rest = buf;
        while !rest.is_empty() {
            if self.at_start {
                self.inner.write_all(self.prefix)?;
                self.at_start = false;
            }
            let line_end = rest.iter().position(|b| *b == b'\n');
            let (piece, after) = rest.split_at(line_end.map_or(rest.len(), |i| i + 1));
            self.inner.write_all(piece)?;
            self.at_start = line_end.is_some();
            rest = after;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// `log_format = json`: one object a line.
struct Json {
    journal: bool,
    out: Mutex<LineWriter<Stderr>>,
}

impl Log for Json {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) || noisy(record.target()) {
            return;
        }
        let now_micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let thread = std::thread::current();
        let line = json_line(
            now_micros,
            record.level(),
            thread.name().unwrap_or("unnamed"),
            &record.args().to_string(),
        );
        let mut out = self.out.lock();
        if self.journal {
            let _ = out.write_all(priority(record.level()).as_bytes());
        }
        let _ = out.write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = self.out.lock().flush();
    }
}

/// One record as a JSON object and a newline: `time` (RFC 3339, UTC, microseconds), `level`
/// (as `log_level` spells it), `thread` and `message`. serde_json escapes quotes, backslashes
/// and control characters, so a record is always one line.
fn json_line(micros: u64, level: Level, thread: &str, message: &str) -> String {
    let ms = micros / 1000;
    let (y, mo, d) = crate::base::market::Date::of(ms).ymd();
    let in_day = micros % 86_400_000_000;
    let time = format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        in_day / 3_600_000_000,
        in_day / 60_000_000 % 60,
        in_day / 1_000_000 % 60,
        in_day % 1_000_000
    );
    let mut line = serde_json::json!({
        "time": time,
        "level": level.as_str().to_ascii_lowercase(),
        "thread": thread,
        "message": message,
    })
    .to_string();
    line.push('\n');
    line
}

/// Sends panics to the log, with the thread's name and the place in the code, instead of
/// stderr's bare text: in the journal they then carry a time and a level like every other
/// error. What happens next is up to the thread's owner (see `server` and `client`).
pub fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let message = crate::base::threads::panic_message(info.payload());
        let place = info
            .location()
            .map_or(String::new(), |l| format!(" at {}:{}", l.file(), l.line()));
        // A panic's message may repeat peer text (a string slice's panic quotes the string).
        log::error!(
            "panic in thread '{}'{place}: {}",
            thread.name().unwrap_or("unnamed"),
            crate::base::logsafe::escaped(message)
        );
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_must_name_stderr_itself() {
        assert!(names_stream("8:12345", 8, 12345));
        assert!(names_stream("8:12345\n", 8, 12345));
        assert!(!names_stream("8:12345", 8, 12346), "another file");
        assert!(!names_stream("8:12345", 9, 12345));
        assert!(!names_stream("", 8, 12345));
        assert!(!names_stream("8-12345", 8, 12345));
    }

    #[test]
    fn levels_map_to_syslog_priorities() {
        assert_eq!(priority(Level::Error), "<3>");
        assert_eq!(priority(Level::Warn), "<4>");
        assert_eq!(priority(Level::Info), "<6>");
        assert_eq!(priority(Level::Debug), "<7>");
        assert_eq!(priority(Level::Trace), "<7>");
    }

    #[test]
    fn every_line_gets_the_prefix() {
        let mut out = Prefixed {
            prefix: b"<4>",
            inner: Vec::new(),
            at_start: true,
        };
        out.write_all(b"2026-12-05T12:00:00Z [WARN] ").unwrap();
        out.write_all(b"(upstream) first\n").unwrap();
        out.write_all(b"second\nthird").unwrap();
        assert_eq!(
            String::from_utf8(out.inner).unwrap(),
            "<4>2026-12-05T12:00:00Z [WARN] (upstream) first\n<4>second\n<4>third"
        );
    }

    #[test]
    fn a_json_record_is_one_object_on_one_line() {
        // 2026-12-05 12:34:56.789012 UTC
        let micros = 1_796_474_096_789_012;
        let line = json_line(
            micros,
            Level::Warn,
            "client-7",
            r#"127.0.0.1:1: unknown key "bad\n…""#,
        );
        assert!(
            line.ends_with("}\n") && line.matches('\n').count() == 1,
            "{line}"
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["time"], "2026-12-05T12:34:56.789012Z");
        assert_eq!(v["level"], "warn");
        assert_eq!(v["thread"], "client-7");
        assert_eq!(
            v["message"], r#"127.0.0.1:1: unknown key "bad\n…""#,
            "the text line's message, exactly"
        );
        assert_eq!(v.as_object().unwrap().len(), 4);
        let raw = json_line(micros, Level::Info, "x", "a\nb\u{1b}");
        assert!(
            !raw.trim_end().contains('\n') && !raw.contains('\u{1b}'),
            "{raw}"
        );
    }
}
