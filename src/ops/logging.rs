//! Log lines to stderr (the journal, under systemd) with the thread's name in each line, so a
//! line can be matched to `top -H` and gdb's thread list.

use simplelog::{ConfigBuilder, LevelFilter, ThreadLogMode, WriteLogger};
use std::io::LineWriter;

/// Bytes of one log line gathered before it is written (longer ones go out in pieces).
const LINE_BUFFER: usize = 8 * 1024;

pub fn init(level: &str) {
    let mut config = ConfigBuilder::new();
    config
        .set_thread_level(LevelFilter::Error)
        .set_thread_mode(ThreadLogMode::Names)
        .set_target_level(LevelFilter::Off)
        .set_location_level(LevelFilter::Off)
        .set_time_format_rfc3339();
    // Dependencies (rustls, tungstenite) log per frame at debug and below; keep them out.
    for noisy in ["rustls", "tungstenite", "mio"] {
        config.add_filter_ignore_str(noisy);
    }
    // The logger passes every level and `log`'s global filter decides, so that a reload can
    // change the level (see `set_level`). Only fails when a logger is already set (tests
    // starting several servers): keep that one, and its level.
    // simplelog writes a line in some twenty pieces (the time alone in fourteen), and stderr
    // is unbuffered: a line buffer makes that one write(2) per line.
    let stderr = LineWriter::with_capacity(LINE_BUFFER, std::io::stderr());
    if WriteLogger::init(LevelFilter::Trace, config.build(), stderr).is_ok() {
        set_level(level);
    }
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
