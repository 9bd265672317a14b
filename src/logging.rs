//! Log lines to stderr (the journal, under systemd) with the thread's name in each line, so a
//! line can be matched to `top -H` and gdb's thread list.

use simplelog::{ConfigBuilder, LevelFilter, ThreadLogMode, WriteLogger};

pub fn init(level: &str) {
    let filter = match level {
        "error" => LevelFilter::Error,
        "warn" => LevelFilter::Warn,
        "debug" => LevelFilter::Debug,
        "trace" => LevelFilter::Trace,
        _ => LevelFilter::Info,
    };
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
    // Only fails when a logger is already set (tests starting several servers): keep that one.
    let _ = WriteLogger::init(filter, config.build(), std::io::stderr());
}
